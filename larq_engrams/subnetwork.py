"""`EngramSubnetwork`: the part of an engram model that one engram uses, gathered.

With engram units E_1, ..., E_L in the L hidden layers (E_0: all inputs), engram t's
sub-network is

```
h_l    = sign(BN_l[E_l](h_{l-1} @ sign(W_l[E_{l-1}, E_l]))) * g_l[E_l]      l = 1..L
logits = BN_out(h_L @ sign(W_out[E_L, :]))
```

which is exactly the masked network restricted to the engram: every unit outside E_l
outputs 0 there, so the rows of W_{l+1} outside E_l multiply zeros and the columns
outside E_l feed units that are gated off. At rho = 0.2 and 784-2048-2048-10 the blocks
hold about 8.5 % of the weights, and training and inference cost scale with them.
"""
import numpy as np
import tensorflow as tf

from larq_engrams.block_updates import (
    Block,
    BlockSlotCache,
    apply_block_gradients,
    gather_block,
    has_slots,
    latent_variable,
    supports_block_updates,
)
from larq_engrams.protection import EngramProtection

__all__ = ["EngramSlots", "EngramSubnetwork", "InferenceBlockCache", "StackedEngramSubnetworks"]


class EngramSubnetwork:
    """The blocks of an `EngramModel`'s weights that engram `task` uses, and a forward
    pass over them.

    Attributes:
        units: per hidden layer, the engram's unit indices (int32 tensors).
        blocks: `Block`s of the trainable variables: per hidden layer the kernel block
            W_l[E_{l-1}, E_l], gamma_l[E_l], beta_l[E_l]; the output kernel rows
            W_out[E_L, :]; the output BatchNorm's gamma and beta (whole).
        weights: the blocks' values: gathered tensors (sign-free latent weights for the
            binary kernels), or the variables themselves for whole blocks. Gradients
            of a loss computed by `__call__` w.r.t. `weights` are the block gradients.

    Build it outside a `GradientTape` and `watch` the weights, so the tape holds no
    gather; `train_step` does exactly that.
    """

    def __init__(self, model, task, cache=None):
        """`task`: an int32 scalar. `cache`: a `BlockSlotCache` loaded with this
        engram's blocks, whose compact copies of the weight blocks are then read instead
        of gathering them."""
        self.model = model
        self.task = tf.cast(task, tf.int32)
        self._protection = None
        self.units = [layer.engram_units(task) for layer in model.engram_layers]
        blocks, rows = [], None
        for layer, units in zip(model.engram_layers, self.units):
            blocks += layer.engram_blocks(units, rows)
            rows = units
        blocks.append(Block(model.classifier.kernel, rows))
        blocks += [Block(v) for v in model.classifier_norm.trainable_weights]
        self.blocks = blocks
        use_cache = cache is not None and cache.is_open and cache.model is model
        self.weights = [
            b.variable if b.rows is None and b.cols is None
            else cache.weights(i).value() if use_cache
            else gather_block(tf.convert_to_tensor(latent_variable(b.variable)), b.rows, b.cols)
            for i, b in enumerate(blocks)
        ]

    @property
    def partial_variables(self):
        """The variables of which only a block is used."""
        return [b.variable for b in self.blocks if b.rows is not None or b.cols is not None]

    def __call__(self, x, training=False, with_excitation=False):
        """Logits (and, with `with_excitation`, the excitation score per sample: the sum
        over layers of `EngramDense.engram_deviation`)."""
        model = self.model
        protection = self.protection if training else None
        h = model.flatten(x)
        weights = iter(self.weights)
        excitation = 0.0
        for i, (layer, units) in enumerate(zip(model.engram_layers, self.units)):
            frozen = None if protection is None else protection.shared_units(i)
            h, z = layer.call_engram(h, units, [next(weights) for _ in range(3)], training, frozen)
            if with_excitation:
                excitation += layer.engram_deviation(z, units)
        kernel = next(weights)
        classifier = model.classifier
        if classifier.input_quantizer is not None:
            h = classifier.input_quantizer(h)
        if classifier.kernel_quantizer is not None:
            kernel = classifier.kernel_quantizer(kernel)
        z = tf.matmul(h, kernel)
        if protection is None:
            logits = model.classifier_norm(z, training=training)
        else:
            logits = _protected_batchnorm(model.classifier_norm, z, protection.shared_classes())
        return (logits, excitation) if with_excitation else logits

    @property
    def protection(self):
        """The `EngramProtection` of this engram's blocks, or None (`protect_engrams` off)."""
        if not getattr(self.model, "protect_engrams", False):
            return None
        if self._protection is None:
            self._protection = EngramProtection(self.model, self.task, self.units)
        return self._protection

    def train_step(self, x, loss_fn, optimizer, cache=None):
        """One optimizer step on this sub-network: returns `(logits, loss)`.

        `loss_fn(logits)` returns the scalar loss; it may include `model.losses`, whose
        gradients on whole variables make the step dense (see `apply_block_gradients`).
        """
        gathered = [w for w in self.weights if not isinstance(w, tf.Variable)]
        partial = self.partial_variables
        with tf.GradientTape() as tape:
            tape.watch(gathered)
            logits = self(x, training=True)
            loss = loss_fn(logits)
        gradients, extra = tape.gradient(loss, [self.weights, partial])
        if self.protection is not None:  # what the other engrams use gets no gradient
            gradients = [None if g is None else g * tf.cast(scale, g.dtype)
                         for g, scale in zip(gradients, self.protection.gradient_scales())]
        apply_block_gradients(
            optimizer,
            gradients,
            self.blocks,
            self.model.trainable_variables,
            extra_gradients=zip(extra, partial),
            cache=cache,
        )
        return logits, loss


class StackedEngramSubnetworks:
    r"""Several engrams' sub-networks run together: "infer" mode in sparse execution.

    The engrams' unit indices are read once (they are fixed after allocation, and
    `EngramModel` retraces its inference graph when an engram is allocated), padded to
    the largest engram of each layer, and stacked. Each layer is then one gather and
    one batched matmul over the K engrams,

    ```
    Z_l[k] = H_{l-1}[k] @ sign(W_l[E_{l-1}^k, E_l^k])          (K, batch, r_l)
    H_l[k] = sign(BN_l[E_l^k](Z_l[k])) * valid_l[k]              padded units output 0
    ```

    instead of K separate chains of small ops. Padded units point at unit 0 and are
    zeroed, so they add nothing downstream; the excitation averages over the valid
    units only.
    """

    def __init__(self, model, tasks):
        self.model = model
        self.tasks = list(tasks)
        self.units, self.valid = [], []
        for layer in model.engram_layers:
            with tf.init_scope():  # constants of the traced graph
                masks = [layer.engram_mask(t) for t in self.tasks]
            width = max(1, max(int(m.sum()) for m in masks))
            units = np.zeros((len(masks), width), np.int32)
            valid = np.zeros((len(masks), width), np.float32)
            for k, mask in enumerate(masks):
                index = np.flatnonzero(mask)
                units[k, : index.size] = index
                valid[k, : index.size] = 1.0
            self.units.append(tf.constant(units))
            self.valid.append(tf.constant(valid))

    def kernel_blocks(self):
        """The quantized kernel blocks: per hidden layer (inputs, K, r_1) for the first
        and (K, r_{l-1}, r_l) after it, then (K, r_L, classes) for the output."""
        model, blocks, rows = self.model, [], None
        for layer, units in zip(model.engram_layers, self.units):
            kernel = tf.convert_to_tensor(latent_variable(layer.dense.kernel))
            if rows is None:  # every engram sees all inputs
                block = tf.gather(kernel, units, axis=1)
            else:  # rows of the previous layer's engram, columns of this one
                block = tf.gather(tf.gather(kernel, rows), units, axis=2, batch_dims=1)
            blocks.append(_quantize(layer.dense.kernel_quantizer, block))
            rows = units
        kernel = tf.gather(tf.convert_to_tensor(latent_variable(model.classifier.kernel)), rows)
        blocks.append(_quantize(model.classifier.kernel_quantizer, kernel))
        return blocks

    def __call__(self, x, with_excitation=False, cache=None):
        """(K, batch, classes) logits (and (K, batch) excitation scores). With an
        `InferenceBlockCache`, the kernel blocks are read from it (computed and stored
        when it is not valid)."""
        blocks = self.kernel_blocks() if cache is None else cache.blocks(self)
        return self._run(self.model.flatten(x), blocks, self.units, self.valid, with_excitation)

    def chosen(self, x, choice, cache=None):
        """(batch, classes) logits of engram `tasks[choice[i]]` for each sample i.

        The samples are sorted by engram and each engram's chain runs on its own rows
        only, in a `tf.while_loop` over the engrams (one traced body, whatever K), so a
        sample costs one engram's sub-network instead of K: the route of "infer" when
        the router alone picks the engram."""
        blocks = self.kernel_blocks() if cache is None else cache.blocks(self)
        h = self.model.flatten(x)
        k = len(self.tasks)
        order = tf.argsort(choice, stable=True)
        counts = tf.math.bincount(choice, minlength=k, maxlength=k)
        starts = tf.cumsum(counts, exclusive=True)
        rows = tf.gather(h, order)

        def body(j, outputs):
            one = slice(j, j + 1)
            own = [blocks[0][:, one]] + [block[one] for block in blocks[1:]]
            part = rows[starts[j]: starts[j] + counts[j]]
            logits = self._run(part, own, [u[one] for u in self.units], [v[one] for v in self.valid])[0]
            return j + 1, outputs.write(j, logits)

        outputs = tf.TensorArray(h.dtype, size=k, infer_shape=False,
                                 element_shape=tf.TensorShape([None, self.model.num_classes]))
        _, outputs = tf.while_loop(lambda j, _: j < k, body, (tf.constant(0), outputs))
        return tf.gather(outputs.concat(), tf.math.invert_permutation(order))  # back to the batch's order

    def _run(self, h, blocks, units_per_layer, valid_per_layer, with_excitation=False):
        """The stacked chain on flat inputs `h` for the engrams of `units_per_layer`
        (leading axis K'), with their kernel blocks."""
        model = self.model
        excitation = 0.0
        for i, (layer, units, valid) in enumerate(zip(model.engram_layers, units_per_layer, valid_per_layer)):
            if i == 0:
                x_in = h if layer.dense.input_quantizer is None else layer.dense.input_quantizer(h)
                z = tf.einsum("bi,ikr->kbr", x_in, blocks[0])
            else:
                z = tf.matmul(h, blocks[i])
            mean = tf.gather(layer.moving_mean, units)[:, None, :]
            variance = tf.gather(layer.moving_variance, units)[:, None, :]
            gamma = tf.gather(layer.gamma, units)[:, None, :]
            beta = tf.gather(layer.beta, units)[:, None, :]
            h = layer.normalized_sign(z, mean, variance, gamma, beta) * valid[:, None, :]
            if with_excitation:
                standardized = layer.standardized_square(z, mean, variance)
                count = tf.reduce_sum(valid, axis=-1)[:, None]
                excitation += tf.reduce_sum(standardized * valid[:, None, :], axis=-1) / tf.maximum(count, 1.0)
        classifier = model.classifier
        if classifier.input_quantizer is not None:
            h = classifier.input_quantizer(h)
        logits = tf.matmul(h, blocks[-1])
        shape = tf.shape(logits)
        logits = tf.reshape(
            model.classifier_norm(tf.reshape(logits, [-1, shape[-1]]), training=False), shape
        )
        return (logits, excitation) if with_excitation else logits


def _protected_batchnorm(norm, z, frozen):
    """Keras' `BatchNormalization` in training on (batch, C) inputs, but the `frozen`
    channels ((C,) 0/1) are normalized by their moving statistics and keep them (as
    `EngramDense.call_engram` does for frozen units)."""
    mean, variance = tf.nn.moments(z, axes=[0])
    decay = (1.0 - norm.momentum) * (1.0 - frozen)
    norm.moving_mean.assign_sub((norm.moving_mean - mean) * decay)
    norm.moving_variance.assign_sub((norm.moving_variance - variance) * decay)
    mean = tf.where(frozen > 0.5, norm.moving_mean, mean)
    variance = tf.where(frozen > 0.5, norm.moving_variance, variance)
    return tf.nn.batch_normalization(z, mean, variance, norm.beta, norm.gamma, norm.epsilon)


def _quantize(quantizer, kernel):
    return kernel if quantizer is None else quantizer(kernel)


class EngramSlots:
    """The optimizer-slot lifecycle of an `EngramModel`'s sparse training.

    A step updates only the active engram's blocks of the weights and of Adam's moments
    (`EngramSubnetwork.train_step`, `apply_block_gradients`). During each epoch those
    moments are held compact (`BlockSlotCache`: `load` at the epoch's start, `flush` at
    its end); with a fresh optimizer per task they are task-scoped: the optimizer has
    no slots for the engram blocks (`build_task_optimizer`), and the compact moments,
    the only ones, live from the task's first step to its end. docs/sparse_execution.md.
    """

    def __init__(self, model):
        self.model = model
        self.cache = BlockSlotCache()

    def train(self, x, loss_fn, optimizer):
        """One optimizer step on the active engram's sub-network; `(logits, loss)`."""
        cache = self.cache
        # Which path a step takes is fixed when it is traced: refuse to run it with the
        # cache in the other state (its copies and the full slots would diverge).
        tf.debugging.assert_equal(
            cache.loaded, cache.is_open and cache.optimizer is optimizer,
            message="EngramModel: this train step was traced with the optimizer-slot cache "
                    "(load_engram_slots) in another state than it runs with; retrace it "
                    "(make a new tf.function).",
        )
        subnetwork = EngramSubnetwork(self.model, self.model.engram_layers[0].active_task, cache=cache)
        return subnetwork.train_step(x, loss_fn, optimizer, cache=cache)

    def can_cache(self, optimizer, any_task=False):
        """Whether steps of the active engram (`any_task`: of whichever engram will be
        active) can be block sparse with `optimizer`'s moments held compact: sparse
        execution, an active engram, Adam or `MetaplasticAdam` without clipping or
        weight decay, no `model.losses` penalties, one replica."""
        model = self.model
        return not (
            model.execution != "sparse"
            or (model.active_task is None and not any_task)
            or model.distribute_strategy.num_replicas_in_sync > 1
            or model.losses
            or not supports_block_updates(optimizer)
        )

    def load(self, optimizer):
        """Gathers the active engram's blocks of the optimizer's moments into the
        compact cache (a no-op unless the steps can be block sparse)."""
        if not self.can_cache(optimizer):
            return False
        if self.cache.is_open and self.cache.optimizer is optimizer:
            return True  # already loaded for the active engram (begin_task flushes)
        model = self.model
        subnetwork = EngramSubnetwork(model, tf.constant(model.active_task, tf.int32))
        self.cache.load(optimizer, subnetwork.blocks, model.trainable_variables, model=model)
        return True

    def flush(self, end_of_task=False):
        """Writes the compact moments back into the optimizer's slots and closes the
        cache; task-scoped moments stay loaded until the task ends (`end_of_task`)."""
        if self.cache.is_open and self.cache.task_scoped and not end_of_task:
            return  # the only copy of this task's moments
        self.cache.flush()

    def block_variables(self):
        """The trainable variables sparse execution only ever updates by blocks of rows
        or columns (the hidden and output kernels, the hidden BatchNorm's gamma and
        beta): those whose optimizer slots `build_task_optimizer` leaves out."""
        model = self.model
        some = tf.zeros([0], tf.int32)  # the variables do not depend on which units
        return [*(b.variable for layer in model.engram_layers for b in layer.engram_blocks(some, some)),
                model.classifier.kernel]

    def build_task_optimizer(self, optimizer):
        """Builds a fresh optimizer with task-scoped moments (see `EngramModel.
        build_task_optimizer`); returns whether the moments are task-scoped."""
        model = self.model
        if not model.built:
            raise RuntimeError("EngramModel.build_task_optimizer: build the model first.")
        variables = model.trainable_variables
        if self.can_cache(optimizer, any_task=True):
            blocked = {id(v) for v in self.block_variables()}
            variables = [v for v in variables if id(v) not in blocked]
        with tf.init_scope():
            if hasattr(optimizer, "resolve_strengths"):  # MetaplasticAdam: m for every variable
                optimizer.resolve_strengths(model.trainable_variables)
            optimizer.build(variables)  # a no-op if it is built already
        return not all(has_slots(optimizer, v) for v in self.block_variables())


class InferenceBlockCache:
    """The stacked engrams' quantized kernel blocks, kept between inference calls.

    Gathering the blocks costs about as much as a dense forward pass at 2048-2048 (it
    reads most of W_2's rows), while the weights do not change between the batches of
    an evaluation. The first call after `invalidate()` computes and stores them (in the
    graph, under `tf.cond`); later calls read them. `EngramModel` invalidates it at
    every training step, `begin_task`, `set_inference`, `set_weights` and
    `load_weights`; code that assigns the model's variables directly must call
    `invalidate()` (or `set_inference`) itself.
    """

    def __init__(self):
        # Written in training steps, which may run in a replica context.
        self.valid = tf.Variable(False, trainable=False, name="inference_blocks_valid",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._variables = []

    def invalidate(self):
        self.valid.assign(False)

    def blocks(self, stacked):
        shapes = [b.shape for b in _static_block_shapes(stacked)]
        with tf.init_scope():
            while len(self._variables) < len(shapes):
                rank = len(shapes[len(self._variables)])
                self._variables.append(tf.Variable(
                    tf.zeros([0] * rank), shape=tf.TensorShape([None] * rank), trainable=False))
        variables = self._variables[: len(shapes)]

        def refresh():
            blocks = stacked.kernel_blocks()
            with tf.control_dependencies([v.assign(b) for v, b in zip(variables, blocks)]):
                with tf.control_dependencies([self.valid.assign(True)]):
                    return [tf.identity(b) for b in blocks]

        def read():
            return [v.value() for v in variables]

        blocks = tf.cond(self.valid, read, refresh)
        for block, shape in zip(blocks, shapes):
            block.set_shape(shape)
        return blocks


def _static_block_shapes(stacked):
    """tf.TensorSpecs of `kernel_blocks()` (known from the index tables)."""
    model, specs, previous = stacked.model, [], None
    for layer, units in zip(model.engram_layers, stacked.units):
        k, r = units.shape
        if previous is None:
            specs.append(tf.TensorSpec([layer.dense.kernel.shape[0], k, r]))
        else:
            specs.append(tf.TensorSpec([k, previous, r]))
        previous = r
    specs.append(tf.TensorSpec([stacked.units[-1].shape[0], previous, model.classifier.kernel.shape[1]]))
    return specs
