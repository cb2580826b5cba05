"""Block-sparse optimizer steps: update only a sub-block of a variable and of its slots.

While task t trains an engram model, the only non-zero gradients sit on blocks of the
weights: W_1[:, E_1], W_2[E_1, E_2], W_out[E_2, :] and the engram units' BatchNorm
parameters. `apply_block_gradients` applies an optimizer step to such blocks only: for
each `Block(variable, rows, cols)` it gathers the block of the variable and of every
Adam slot, applies the Adam (or `MetaplasticAdam`) update to it, and scatters it back.
Every entry outside the blocks, of the weights and of the slots, stays exactly as it
was: not even Adam's momentum moves it.

With a fresh (or reset) optimizer at each task this equals the dense step on the masked
network: there, the entries outside the blocks have zero gradient and zero moments, so
their update m / (sqrt(v) + eps) is exactly 0. With an optimizer kept across tasks they
differ by design: the dense step keeps moving old entries by their decaying momentum.

Optimizers without a block rule (anything but plain Adam and `MetaplasticAdam`, or Adam
with gradient clipping, weight decay, EMA or AMSGrad), and steps whose loss has terms
with gradients outside the blocks (a `model.add_loss` penalty such as EWC), fall back
to the optimizer's own dense `apply_gradients` on the block gradients scattered into
zeros: the same result as the masked computation, without the saving.
"""
import functools
from typing import NamedTuple, Optional

import tensorflow as tf

from larq_engrams.optimizers import Adam, MetaplasticAdam, adam_hyperparameters, adam_update, variable_path

__all__ = [
    "Block", "BlockSlotCache", "apply_block_gradients", "gather_block", "has_slots", "latent_variable",
    "supports_block_updates",
]


class Block(NamedTuple):
    """The entries `variable[rows][:, cols]` (None: all rows / all columns)."""

    variable: tf.Variable
    rows: Optional[tf.Tensor] = None
    cols: Optional[tf.Tensor] = None


def latent_variable(variable):
    """The variable that holds the values: a Larq `QuantizedVariable`'s latent weights
    W_h (reading the `QuantizedVariable` itself would give sign(W_h))."""
    return getattr(variable, "latent_variable", variable)


def gather_block(tensor, rows=None, cols=None):
    """`tensor[rows][:, cols]`, either index vector optional."""
    if rows is not None:
        tensor = tf.gather(tensor, rows)
    if cols is not None:
        tensor = tf.gather(tensor, cols, axis=1)
    return tensor


def _block_indices(shape, rows, cols):
    """(r, c, 2) or (r, 1) indices of the block's entries, for scatter_nd."""
    if len(shape) == 1:
        return rows[:, None]
    rows = tf.range(shape[0]) if rows is None else rows
    cols = tf.range(shape[1]) if cols is None else cols
    return tf.stack(tf.meshgrid(rows, cols, indexing="ij"), axis=-1)


def _read(handle):
    return tf.raw_ops.ReadVariableOp(resource=handle, dtype=tf.float32)


def _scatter_block(handle, shape, values, rows, cols):
    if rows is None and cols is None:
        tf.raw_ops.AssignVariableOp(resource=handle, value=values)
    else:
        indices = _block_indices(shape, rows, cols)
        tf.raw_ops.ResourceScatterNdUpdate(ref=handle, indices=indices, updates=values)


def _adam_on_block(w, m, v, gradient, strength, *hyper):
    """Adam's (or MetaplasticAdam's) update of one block: the new (w, m, v)."""
    return adam_update(w, m, v, gradient, strength, *hyper)[:3]


# Gathers, Adam's arithmetic and scatters of a block fuse in one XLA cluster (outside
# XLA the same scatters cost ~5x more on a 2-core CPU). It takes resource handles, not
# variables: a tf.function keeps the variables it was first traced with, while handles
# are ordinary inputs, so one trace serves every model.
@tf.function(jit_compile=True)
def _adam_block_steps(handles, gradients, rows, cols, strengths, *hyper):
    for (variable, m, v), gradient, r, c, strength in zip(handles, gradients, rows, cols, strengths):
        w_full = _read(variable)
        blocks = [gather_block(_read(h), r, c) for h in (variable, m, v)]
        for handle, value in zip((variable, m, v), _adam_on_block(*blocks, gradient, strength, *hyper)):
            _scatter_block(handle, w_full.shape, value, r, c)


@tf.function(jit_compile=True)
def _adam_cached_steps(handles, slots, gradients, rows, cols, strengths, *hyper):
    """The step on compact copies: the new weight blocks are also scattered into the
    full variables, so those stay current at every step."""
    for variable, (m, v, w), gradient, r, c, strength in zip(
        handles, slots, gradients, rows, cols, strengths
    ):
        w_block = _read(w) if w is not None else _read(variable)
        w_block, m_block, v_block = _adam_on_block(w_block, _read(m), _read(v), gradient, strength, *hyper)
        tf.raw_ops.AssignVariableOp(resource=m, value=m_block)
        tf.raw_ops.AssignVariableOp(resource=v, value=v_block)
        if w is not None:
            tf.raw_ops.AssignVariableOp(resource=w, value=w_block)
        _scatter_block(variable, _read(variable).shape, w_block, r, c)


def _scatter_blocks(handles, values, rows, cols):
    """The compact blocks scattered back into the full variables, eagerly: this runs
    once per epoch, and engrams differ in size, so a compiled function would be traced
    again at every task (and TensorFlow would warn about the retracing)."""
    for handle, value, r, c in zip(handles, values, rows, cols):
        _scatter_block(handle, _read(handle).shape, value, r, c)


class BlockSlotCache:
    """Compact copies of the blocks being trained: Adam's moments and the weights.

    Gathering and scattering the moments m, v of every block at every step costs more
    than a dense Adam pass when a block holds a large part of its variable (XLA's
    scatters cost ~3 ns per entry and array on a 2-core CPU, a dense Adam pass ~1.3 ns
    per entry). Between `load` (the blocks gathered into compact variables) and `flush`
    (the moments scattered back), a step reads the compact weight blocks, updates the
    compact moments and weights with dense arithmetic, and scatters only the new
    weight blocks into the full variables, which therefore stay current at every step.
    `EngramModel.fit` and `ContinualTrainer` load at the start of every epoch and flush
    at its end, so between epochs the optimizer's own slots hold the exact state;
    inside an epoch they lag (a callback reading Adam's slots per batch sees the
    epoch's starting values), and weights must change only through the steps.

    Task-scoped moments: an optimizer built without slots for the engram blocks
    (`EngramModel.build_task_optimizer`, what `ContinualTrainer` does with an optimizer
    fresh at every task) has its block moments here only. They start at zero at the
    first load of a task, stay loaded across its epochs (`EngramModel.flush_engram_slots`
    keeps them), and are dropped when the task ends: the full-size Adam moments, two
    float32 copies of every kernel, are never allocated.

    Only for one replica (no `tf.distribute` strategy with several).
    """

    def __init__(self):
        self.optimizer = None
        self.model = None
        self.blocks = ()
        self._slots = []  # per block: (m, v, w or None) compact variables of any shape
        self._indices = []  # per block: (rows, cols) variables or None
        self.loaded = tf.Variable(False, trainable=False, name="block_slot_cache_loaded",
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    @property
    def task_scoped(self):
        """Whether some loaded block has no optimizer slots: its compact moments are
        the only ones (`EngramModel.build_task_optimizer`)."""
        return self.is_open and not all(has_slots(self.optimizer, b.variable) for b in self.blocks)

    @property
    def is_open(self):
        """Whether blocks are loaded (Python-side: steps traced now use the cache)."""
        return self.optimizer is not None

    def attenuated_fractions(self):
        """`MetaplasticAdam.attenuated_fractions` for the task-scoped blocks, whose
        moments only this cache holds: per attenuated kernel, the fraction of its
        entries (all of them, as the optimizer's own count) whose first moment points
        toward zero. Entries outside the engram have m = 0 and are not counted."""
        optimizer = self.optimizer
        if not self.is_open or not isinstance(optimizer, MetaplasticAdam):
            return {}
        out = {}
        for i, block in enumerate(self.blocks):
            if has_slots(optimizer, block.variable) or optimizer.metaplastic_strength(block.variable) <= 0.0:
                continue
            m, _, w = self._slots[i]
            shrinking = tf.reduce_sum(tf.cast(tf.sign(w) * m > 0, tf.float32))
            out[variable_path(block.variable)] = float(shrinking) / block.variable.shape.num_elements()
        return out

    @property
    def variables(self):
        """Every compact variable the cache holds (moments, weight blocks, indices)."""
        return [v for group in (*self._slots, *self._indices) for v in group if v is not None]

    def slots(self, index):
        """(m, v, w) of block `index`: compact variables; w is None for whole blocks."""
        return self._slots[index]

    def weights(self, index):
        return self._slots[index][2]

    def load(self, optimizer, blocks, variables, model=None):
        """Gathers `blocks` of the weights and moments (eagerly; the optimizer is built
        on `variables` first, as a step would). `model`: the model whose steps may
        read the compact weights."""
        if self.is_open:
            self.flush()
        with tf.init_scope():
            optimizer.build(list(variables))
        for i, block in enumerate(blocks):
            whole = block.rows is None and block.cols is None
            weights = None if whole else gather_block(
                tf.convert_to_tensor(latent_variable(block.variable)), block.rows, block.cols)
            if has_slots(optimizer, block.variable):
                values = [gather_block(tf.convert_to_tensor(s), block.rows, block.cols)
                          for s in _moments(optimizer, block.variable)] + [weights]
            elif whole:
                raise ValueError(f"BlockSlotCache: the optimizer has no slots for {block.variable.name}, "
                                 "which is trained whole; only blocks of rows or columns may go without.")
            else:  # task-scoped moments: they start at zero and live here only
                values = [tf.zeros_like(weights), tf.zeros_like(weights), weights]
            if i == len(self._slots):
                shape = _block_shape(block)
                self._slots.append(tuple(_dynamic_variable(v, shape) for v in values))
                self._indices.append(tuple(_dynamic_variable(t, [None]) for t in (block.rows, block.cols)))
            else:
                for variable, value in [*zip(self._slots[i], values),
                                        *zip(self._indices[i], (block.rows, block.cols))]:
                    if variable is not None:
                        variable.assign(value)
        self.optimizer, self.model, self.blocks = optimizer, model, tuple(blocks)
        self.loaded.assign(True)

    def flush(self):
        """Scatters the compact moments into the optimizer's slots; closes the cache."""
        if not self.is_open:
            return
        optimizer = self.optimizer
        handles, values, rows, cols = [], [], [], []
        for i, block in enumerate(self.blocks):
            if not has_slots(optimizer, block.variable):
                continue  # task-scoped moments: dropped with the cache
            r, c = (None if t is None else t.value() for t in self._indices[i])
            for full, compact in zip(_moments(optimizer, block.variable), self._slots[i][:2]):
                handles.append(full.handle)
                values.append(compact.value())
                rows.append(r)
                cols.append(c)
        _scatter_blocks(handles, values, rows, cols)
        self.optimizer, self.model, self.blocks = None, None, ()
        self.loaded.assign(False)


def _block_shape(block):
    """The block's static shape: None along the indexed (engram-sized) axes."""
    shape = list(block.variable.shape)
    if block.rows is not None:
        shape[0] = None
    if block.cols is not None:
        shape[1] = None
    return shape


def _dynamic_variable(value, shape):
    """A variable that later loads may give another size (engrams differ in size)."""
    if value is None:
        return None
    return tf.Variable(value, shape=tf.TensorShape(shape), trainable=False)


def supports_block_updates(optimizer) -> bool:
    """Whether `apply_block_gradients` can update `optimizer`'s slots block by block:
    this package's `Adam` or `MetaplasticAdam` (whose moments can be read; or a subclass
    that keeps their `update_step`), with no clipping, weight decay, EMA or AMSGrad. A
    stock `tf.keras.optimizers.Adam` takes the dense path: `EngramModel.compile` swaps it
    for the readable one (`as_readable_adam`)."""
    if not isinstance(optimizer, Adam):
        return False
    if type(optimizer).update_step not in (Adam.update_step, MetaplasticAdam.update_step):
        return False
    return not (
        getattr(optimizer, "clipnorm", None)
        or getattr(optimizer, "clipvalue", None)
        or getattr(optimizer, "global_clipnorm", None)
        or getattr(optimizer, "weight_decay", None)
        or getattr(optimizer, "use_ema", False)
        or getattr(optimizer, "amsgrad", False)
    )


def apply_block_gradients(optimizer, gradients, blocks, variables, extra_gradients=(), cache=None):
    """One optimizer step from gradients on blocks of the variables.

    Args:
        optimizer: a Keras optimizer (see `supports_block_updates` for the fast path).
        gradients: one tensor per block, of the block's shape (None: no gradient).
        blocks: `Block`s, each naming one of `variables` and its rows / columns.
        variables: all the variables the optimizer trains (`model.trainable_variables`):
            it is built on them, in this order, as a dense `apply_gradients` would.
        extra_gradients: `(gradient, variable)` pairs of further loss terms that reach
            whole variables (a `model.add_loss` penalty); None gradients are ignored.
            Any other one makes the step dense.
        cache: an open `BlockSlotCache` loaded with the same blocks, for this optimizer:
            the step updates its compact copies (one replica only).

    Returns:
        The optimizer's iteration counter, as `apply_gradients`.
    """
    variables = list(variables)
    gradients = list(gradients)
    extra = [(g, v) for g, v in extra_gradients if g is not None]
    if extra or not supports_block_updates(optimizer):
        if cache is not None and cache.is_open and cache.optimizer is optimizer:
            raise RuntimeError(
                "BlockSlotCache is open for this optimizer, but this step is dense (a "
                "loss term reaches whole variables, or the optimizer has no block rule): "
                "flush the cache before adding penalties or changing the optimizer."
            )
        _check_slots(optimizer, blocks)
        return _apply_densely(optimizer, gradients, blocks, variables, extra)

    with tf.name_scope(optimizer.name or "optimizer"):
        with tf.init_scope():  # slots are created once, outside any function, as Keras does
            optimizer.build(variables)
        replica = tf.distribute.get_replica_context()
        if cache is not None and cache.is_open and cache.optimizer is optimizer and (
            replica is None or replica.num_replicas_in_sync == 1
        ):
            return _update_cached_blocks(optimizer, cache, gradients, blocks)
        _check_slots(optimizer, blocks)
        pairs = [(g, b) for g, b in zip(gradients, blocks) if g is not None]
        if replica is not None and replica.num_replicas_in_sync > 1:
            summed = replica.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
            pairs = [(g, b) for g, (_, b) in zip(summed, pairs)]
        update = lambda strategy, pairs: _update_blocks(optimizer, strategy, pairs)  # noqa: E731
        if replica is None:  # cross-replica context: the strategy's own
            return update(tf.distribute.get_strategy(), pairs)
        return replica.merge_call(update, args=(pairs,))


def _moments(optimizer, variable):
    """Adam's (m, v) slot variables of `variable`."""
    return optimizer.moments(variable)[:2]


def has_slots(optimizer, variable):
    """Whether the (built) optimizer holds slots for `variable`: not so for the engram
    blocks of an optimizer built with task-scoped moments
    (`EngramModel.build_task_optimizer`), whose moments live in a `BlockSlotCache`."""
    return not isinstance(optimizer, Adam) or optimizer.has_moments(variable)


def _check_slots(optimizer, blocks):
    if not isinstance(optimizer, Adam) or not optimizer.built:
        return  # the step builds it on every variable
    missing = [b.variable.name for b in blocks if not has_slots(optimizer, b.variable)]
    if missing:
        raise RuntimeError(
            f"The optimizer was built with task-scoped moments (no slots for {missing[:3]}), "
            "which live in the engram model's slot cache: load it "
            "(`model.load_engram_slots(optimizer)`) before such steps, or build the "
            "optimizer on every variable.")


def _strength(optimizer, variable):
    m = optimizer.metaplastic_strength(variable) if isinstance(optimizer, MetaplasticAdam) else 0.0
    return tf.constant(m, tf.float32) if m > 0.0 else None


def _update_cached_blocks(optimizer, cache, gradients, blocks):
    handles, slots, grads, rows, cols, strengths = [], [], [], [], [], []
    for i, (gradient, block) in enumerate(zip(gradients, blocks)):
        if gradient is None:
            continue
        handles.append(latent_variable(block.variable).handle)
        slots.append(tuple(None if s is None else s.handle for s in cache.slots(i)))
        grads.append(gradient)
        rows.append(block.rows)
        cols.append(block.cols)
        strengths.append(_strength(optimizer, block.variable))
    _adam_cached_steps(handles, slots, grads, rows, cols, strengths, *adam_hyperparameters(optimizer))
    return optimizer.iterations.assign_add(1)


def _update_blocks(optimizer, strategy, pairs):
    hyper = adam_hyperparameters(optimizer)
    for gradient, block in pairs:
        # Slots and indices go through `args`: each device's update gets its own copy
        # (after the merge, the replicas' tensors arrive as per-replica values).
        strategy.extended.update(
            block.variable,
            functools.partial(_update_one_block, hyper=hyper, strength=_strength(optimizer, block.variable)),
            args=(gradient, *_moments(optimizer, block.variable), block.rows, block.cols),
            group=False,
        )
    return optimizer.iterations.assign_add(1)


def _update_one_block(variable, gradient, m, v, rows, cols, hyper, strength):
    handles = [(latent_variable(variable).handle, m.handle, v.handle)]
    _adam_block_steps(handles, [gradient], [rows], [cols], [strength], *hyper)


def _apply_densely(optimizer, gradients, blocks, variables, extra):
    """The optimizer's own step on the block gradients scattered into zeros."""
    dense = {id(latent_variable(v)): None for v in variables}
    for gradient, block in [*zip(gradients, blocks), *((g, Block(v)) for g, v in extra)]:
        if gradient is None:
            continue
        if block.rows is not None or block.cols is not None:
            indices = _block_indices(block.variable.shape, block.rows, block.cols)
            gradient = tf.scatter_nd(indices, gradient, tf.shape(block.variable))
        key = id(latent_variable(block.variable))
        dense[key] = gradient if dense[key] is None else dense[key] + gradient
    return optimizer.apply_gradients(
        [(dense[id(latent_variable(v))], v) for v in variables if dense[id(latent_variable(v))] is not None]
    )
