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
import tensorflow as tf

from larq_engrams.block_updates import Block, apply_block_gradients, gather_block, latent_variable

__all__ = ["EngramSubnetwork"]


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
        h = model.flatten(x)
        weights = iter(self.weights)
        excitation = 0.0
        for layer, units in zip(model.engram_layers, self.units):
            h, z = layer.call_engram(h, units, [next(weights) for _ in range(3)], training)
            if with_excitation:
                excitation += layer.engram_deviation(z, units)
        kernel = next(weights)
        classifier = model.classifier
        if classifier.input_quantizer is not None:
            h = classifier.input_quantizer(h)
        if classifier.kernel_quantizer is not None:
            kernel = classifier.kernel_quantizer(kernel)
        logits = model.classifier_norm(tf.matmul(h, kernel), training=training)
        return (logits, excitation) if with_excitation else logits

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
        apply_block_gradients(
            optimizer,
            gradients,
            self.blocks,
            self.model.trainable_variables,
            extra_gradients=zip(extra, partial),
            cache=cache,
        )
        return logits, loss
