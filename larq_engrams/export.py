"""Export a trained binarized network as one bit-packed file for `larq_engrams.runtime`.

`save_packed(model, path)` writes an `engram_bnn` (`EngramModel`) or a plain Larq BNN
(`bnn`, `mbnn`: the `tf.keras.Sequential` of `models.bnn`) into one `.npz` file: per
layer the kernel's signs at 1 bit per weight; for the binary layers BatchNorm and the
sign folded into a per-unit integer threshold and direction (the first layer, whose
inputs are real, keeps TensorFlow's BatchNorm scale and offset); the output layer's
affine in float32; the engram masks packed; the router's inference part (its random
projection as sign bits and one scale, the discriminant's kernel and bias) and the
engram classes; and a manifest (format version, bit order, shapes, class restriction,
product-of-experts weight, checksum). A model built without a router (`router=False`,
task-incremental) is written without one, and the runtime then needs the task ids.
docs/deploying.md has the format.

The thresholds are found by running the trained layer itself (its own BatchNorm and
sign, in TensorFlow) on every integer pre-activation the layer can see, so the
runtime's hidden layers after the first equal Keras' sign activations exactly
(docs/method.md, section 1; the runtime's docstring).
"""
import json

import numpy as np
import tensorflow as tf

from larq_engrams.runtime import FORMAT, VERSION, checksum, pack_signs
from larq_engrams.task_inference import sign_bytes, unpack_symmetric
from larq_engrams.c_export import save_c  # noqa: F401  (export.save_c, the C99 export)

__all__ = ["save_packed", "packed_arrays", "save_c"]


def _latent(variable):
    return tf.convert_to_tensor(getattr(variable, "latent_variable", variable)).numpy()


def _affine(scale_shift):
    """(scale, offset) float32 of y = z * scale + offset, as tf.nn.batch_normalization
    computes them: inv = rsqrt(var + eps) * gamma, offset = beta - mean * inv."""
    mean, variance, gamma, beta, epsilon = scale_shift
    inv = tf.math.rsqrt(tf.convert_to_tensor(variance) + epsilon) * gamma
    return inv.numpy().astype(np.float32), (beta - mean * inv).numpy().astype(np.float32)


def _integer_thresholds(sign_of, inputs, units):
    """Per unit, `(threshold, direction)` with out = +1 iff direction * z >= direction *
    threshold, from `sign_of(z)` (the layer's own BatchNorm and sign, TensorFlow) on
    every integer z in [-inputs, inputs]. The output is monotone in z; a unit whose
    output never changes gets a threshold outside that range."""
    grid = np.arange(-inputs, inputs + 1, dtype=np.float32)
    positive = np.asarray(sign_of(np.repeat(grid[:, None], units, axis=1))) > 0  # (2K+1, units)
    rising = positive[-1] | ~positive[0]  # +1 for large z, or -1 for small z
    threshold = np.empty(units, np.int32)
    direction = np.where(rising, 1, -1).astype(np.int8)
    for unit in range(units):
        column = positive[:, unit]
        on = np.flatnonzero(column)
        if direction[unit] > 0:
            threshold[unit] = grid[on[0]] if on.size else inputs + 1
            monotone = on.size == 0 or column[on[0]:].all()
        else:
            threshold[unit] = grid[on[-1]] if on.size else -inputs - 1
            monotone = on.size == 0 or column[: on[-1] + 1].all()
        if not monotone:
            raise ValueError(f"save_packed: unit {unit}'s BatchNorm and sign are not monotone in its input "
                             "(a BatchNorm with non-finite statistics?); it cannot be folded into a threshold")
    return threshold, direction


def _engram_arrays(model, learning=False):
    router = model.task_discriminant
    if learning and (router is None or router.scatter is None):
        raise ValueError("save_packed: learning=True exports the router's statistics, and this model has no router "
                         "with a shared covariance (router=False, or another confidence)")
    if router is not None and model.confidence != "input_lda":
        raise ValueError(f"save_packed: the runtime infers the task with the router (confidence 'input_lda'); "
                         f"this model uses {model.confidence!r}")
    if router is not None and router.projection_bits is None:
        raise ValueError("save_packed: the router works on the raw inputs (lda_features=None); the runtime needs "
                         "its random features")
    arrays, hidden = {}, []
    inputs = int(np.prod(model.sample_shape))
    for i, layer in enumerate(model.engram_layers):
        kernel = _latent(layer.dense.kernel)
        arrays[f"hidden_{i}/kernel_bits"] = pack_signs(kernel)
        stats = (layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta)
        if i == 0:
            arrays["hidden_0/scale"], arrays["hidden_0/offset"] = _affine((*stats, layer.epsilon))
        else:
            arrays[f"hidden_{i}/threshold"], arrays[f"hidden_{i}/direction"] = _integer_thresholds(
                lambda z, layer=layer, stats=stats: layer.normalized_sign(tf.constant(z), *stats).numpy(),
                kernel.shape[0], layer.units)
        arrays[f"hidden_{i}/engram_bits"] = np.packbits(layer.engram_masks.numpy() > 0.5, axis=-1, bitorder="little")
        hidden.append(layer.units)
    norm = model.classifier_norm
    arrays["output/kernel_bits"] = pack_signs(_latent(model.classifier.kernel))
    arrays["output/scale"], arrays["output/offset"] = _affine(
        (norm.moving_mean, norm.moving_variance, norm.gamma, norm.beta, norm.epsilon))
    conv = router is not None and router.conv_geometry is not None
    if router is not None:
        columns = router.conv_geometry.filters if conv else router.num_features
        arrays["router/projection_bits"] = sign_bytes(router.projection_bits.numpy(), columns)
        arrays["router/kernel"] = router.kernel.numpy().astype(np.float32)
        arrays["router/bias"] = router.bias.numpy().astype(np.float32)
        if router.class_kernel is not None:
            arrays["router/class_kernel"] = router.class_kernel.numpy().astype(np.float32)
            arrays["router/class_bias"] = router.class_bias.numpy().astype(np.float32)
    if learning:  # what a device keeps to learn new classes (runtime.PackedNetwork.learn)
        size = router.num_features
        full = unpack_symmetric(router.scatter, size).numpy()
        arrays["router/counts"] = router.counts.numpy().astype(np.float32)
        arrays["router/sums"] = router.sums.numpy().astype(np.float32)
        arrays["router/scatter_upper"] = full[np.triu_indices(size)].astype(np.float32)
    arrays["engram_classes"] = (model.engram_classes.numpy() > 0).astype(np.uint8)
    manifest = {
        "kind": "engram", "input_shape": list(model.sample_shape), "num_classes": model.num_classes,
        "hidden": hidden, "allocated_tasks": list(model.allocated_tasks), "active_task": model.active_task,
        "inference_mode": model.inference_mode, "inference_task": model.get_config()["inference_task"],
        "restrict_to_engram_classes": model.restrict_to_engram_classes, "lda_weight": model.lda_weight,
        "outside_mass": "1e-3 / num_classes",
        "router": None if router is None else {
            "features": router.num_features, "projection_scale": router.projection_scale, "inputs": inputs,
            "feature_map": router.feature_map, "shrinkage": router.shrinkage, "learning": bool(learning),
            "class_covariance": router.class_covariance, "shortlist": router.shortlist,
            **({"image_shape": list(router.conv_geometry.image_shape), "filters": router.conv_geometry.filters,
                "kernel_size": router.conv_geometry.kernel_size, "pool": router.conv_geometry.pool,
                "patch_floor": router.conv_geometry.patch_floor} if conv else {})},
    }
    return arrays, manifest


def _sequential_arrays(model):
    """A `models.bnn`: QuantDense (sign inputs after the first) + BatchNorm per layer."""
    dense = [layer for layer in model.layers if hasattr(layer, "kernel_quantizer")]
    norms = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    if not dense or len(dense) != len(norms) or any(getattr(d, "use_bias", False) for d in dense):
        raise ValueError("save_packed: expects an EngramModel or a Larq BNN as `larq_engrams.models.bnn` builds "
                         "it (QuantDense without bias, then BatchNormalization, per layer)")
    arrays, hidden = {}, []
    for i, (layer, norm) in enumerate(zip(dense[:-1], norms[:-1])):
        kernel = _latent(layer.kernel)
        arrays[f"hidden_{i}/kernel_bits"] = pack_signs(kernel)
        stats = (norm.moving_mean, norm.moving_variance, norm.gamma, norm.beta, norm.epsilon)
        if i == 0:
            arrays["hidden_0/scale"], arrays["hidden_0/offset"] = _affine(stats)
        else:
            arrays[f"hidden_{i}/threshold"], arrays[f"hidden_{i}/direction"] = _integer_thresholds(
                lambda z, norm=norm: np.where(norm(tf.constant(z), training=False).numpy() >= 0, 1, -1),
                kernel.shape[0], kernel.shape[1])
        hidden.append(int(kernel.shape[1]))
    arrays["output/kernel_bits"] = pack_signs(_latent(dense[-1].kernel))
    norm = norms[-1]
    arrays["output/scale"], arrays["output/offset"] = _affine(
        (norm.moving_mean, norm.moving_variance, norm.gamma, norm.beta, norm.epsilon))
    manifest = {"kind": "bnn", "input_shape": list(model.input_shape[1:]),
                "num_classes": int(dense[-1].kernel.shape[1]), "hidden": hidden}
    return arrays, manifest


def packed_arrays(model, learning=False):
    """`(arrays, manifest)` of `save_packed`, before they are written."""
    if learning and not hasattr(model, "engram_layers"):
        raise ValueError("save_packed: learning=True needs an engram model's router; a plain BNN has none")
    arrays, manifest = (_engram_arrays(model, learning) if hasattr(model, "engram_layers")
                        else _sequential_arrays(model))
    manifest.update({"format": FORMAT, "version": VERSION, "bit_order": "little",
                     "bits": "1 = weight -1, 0 = weight +1 (Larq's sign(0) = +1)", "checksum": checksum(arrays)})
    return arrays, manifest


def save_packed(model, path, learning=False):
    """Writes `model` (a trained `EngramModel`, or a `bnn` / `mbnn`) to `path` (.npz)
    for `larq_engrams.runtime.load`; returns the manifest.

    `learning=True` adds the router's statistics (counts, sums and the within-group
    scatter, M (M + 1) / 2 floats: 8 MiB at M = 2048), so that the device can learn new
    classes without TensorFlow (`runtime.PackedNetwork.learn`)."""
    arrays, manifest = packed_arrays(model, learning)
    encoded = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    with open(path, "wb") as f:  # a file object: numpy adds no ".npz" to the name
        np.savez_compressed(f, manifest=encoded, **arrays)
    return manifest
