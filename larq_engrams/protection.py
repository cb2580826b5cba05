r"""`EngramProtection`: what the earlier engrams use, frozen while a later engram trains.

Engram t's sub-network (docs/method.md, section 3) uses, per hidden layer l, the kernel
entries W_l[i, j] with i in E_t^{l-1} (E^0: every input) and j in E_t^l, the BatchNorm
parameters and statistics of the units in E_t^l, the output kernel rows W_out[i, c] with
i in E_t^L and c one of its classes C_t, and the output BatchNorm of those classes. When
engrams share units, training engram t changes what the other engrams compute: that is
where the engram networks forget (results/ablation/README.md: mostly the hidden kernels,
then the output kernel and the BatchNorms).

With protection on (`EngramModel(protect_engrams=True)`), everything an allocated engram
s != t uses is frozen while t trains:

```
owned_l[i, j]  = OR_{s != t} E_s^{l-1}[i] E_s^l[j]         hidden kernels
owned_l[j]     = OR_{s != t} E_s^l[j]                      hidden gamma, beta, statistics
owned_out[i,c] = OR_{s != t} E_s^L[i] C_s[c]               output kernel
owned_out[c]   = OR_{s != t} C_s[c]                        output gamma, beta, statistics
grad <- grad * (1 - owned)
```

(C_s: the classes engram s was trained on with `restrict_to_engram_classes`, else every
class.) A zero gradient gives Adam (and `MetaplasticAdam`) zero moments and a zero
update, so the entry stays as it was. A frozen unit is also normalized by its moving
statistics while training, as at inference, and its statistics are not updated. Then
every earlier engram computes, with its task given, exactly what it computed when its
task ended: its network forgets nothing. The price is plasticity: a later engram trains
only what no earlier one uses, plus its own units' share of the layer.

The masks are computed in-graph from the engram bank, so a compiled step follows
`begin_task` without retracing; they cost a (T x r) by (T x r') product per layer.
"""
import tensorflow as tf

__all__ = ["EngramProtection"]


class EngramProtection:
    """The entries of engram `task`'s blocks that other allocated engrams use.

    Args:
        model: an `EngramModel`.
        task: the engram being trained (an int32 scalar tensor).
        units: its unit indices per hidden layer (`EngramSubnetwork.units`).
    """

    def __init__(self, model, task, units):
        first = model.engram_layers[0]
        others = first.allocated * (1.0 - tf.one_hot(task, tf.shape(first.allocated)[0], dtype=first.allocated.dtype))
        self.others = others  # (T,) 1 for every allocated engram but `task`
        # Per layer, the (T, r_l) memberships of this engram's units in the other engrams.
        self._members = [tf.gather(layer.engram_masks, u, axis=1) * others[:, None]
                         for layer, u in zip(model.engram_layers, units)]
        classes = model.engram_classes if model.restrict_to_engram_classes else tf.ones_like(model.engram_classes)
        self._classes = classes * others[:, None]  # (T, C)

    def shared_units(self, layer_index):
        """(r_l,) 1.0 where the unit belongs to another engram."""
        return tf.reduce_max(self._members[layer_index], axis=0)

    def shared_kernel(self, layer_index):
        """Layer `layer_index`'s kernel block: (inputs, r_1) for the first layer (its
        rows are every input, so a shared unit's whole column), (r_{l-1}, r_l) after."""
        if layer_index == 0:
            return self.shared_units(0)[None, :]
        product = tf.matmul(self._members[layer_index - 1], self._members[layer_index], transpose_a=True)
        return tf.cast(product > 0.5, product.dtype)

    def shared_output_kernel(self):
        """(r_L, C): the output rows of this engram's last-layer units, per class."""
        product = tf.matmul(self._members[-1], self._classes, transpose_a=True)
        return tf.cast(product > 0.5, product.dtype)

    def shared_classes(self):
        """(C,) 1.0 for a class another engram was trained on: its output BatchNorm."""
        return tf.reduce_max(self._classes, axis=0)

    def gradient_scales(self):
        """`1 - owned` for every block of `EngramSubnetwork.blocks`, in their order:
        per hidden layer kernel, gamma, beta; the output kernel rows; output gamma, beta."""
        scales = []
        for i in range(len(self._members)):
            free = 1.0 - self.shared_units(i)
            scales += [1.0 - self.shared_kernel(i), free, free]
        free_classes = 1.0 - self.shared_classes()
        return scales + [1.0 - self.shared_output_kernel(), free_classes, free_classes]
