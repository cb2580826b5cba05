"""Run a bit-packed binarized network without TensorFlow: NumPy only.

`larq_engrams.export.save_packed(model, path)` writes a trained `engram_bnn`, `bnn` or
`mbnn` model into one `.npz` file; this module loads and runs it. It imports NumPy and
the standard library only, so it can be copied onto a device by itself
(`python -c "import runtime"` beside the file works as well as
`import larq_engrams.runtime`), and a process that imports it never loads TensorFlow.

```python
from larq_engrams import runtime
net = runtime.load("engram_bnn.npz")
scores = net.predict(x)            # "infer": the engram is chosen per sample, as the Keras model does
scores = net.predict(x, task=2)    # "task": engram 2's network (its raw logits)
scores = net.predict(x, task=ids)  # one engram id per example (task-IL: the Keras model's `(x, ids)`)
tasks = net.infer_tasks(x)         # the engram chosen per sample
```

A model built without a router (`router=False`, task-incremental) is exported without
one: it needs `task=` (one id, or one per example), and "infer" says so in one line.

The maths (docs/method.md, sections 1, 3 and 4; the packed format in docs/deploying.md):

- Binary kernels are stored as sign bits, 1 for -1 (`bit_order` "little" along the
  output axis), and unpacked once at load into +-1 matrices.
- Hidden layers after the first see +-1 inputs (0 for units outside the engram), so
  their pre-activation z is an integer, computed exactly as a float32 product (every
  |z| < 2^24). BatchNorm followed by sign is monotone in z: it is folded into a per-unit
  integer threshold t and a direction d, out = +1 iff d z >= d t, found at export by
  running the trained layer itself on every possible z, so these layers equal Keras'
  sign activations bit for bit.
- The first layer sees real inputs: z = x W is a float sum, and out = +1 iff
  z * scale + offset >= 0 with TensorFlow's own BatchNorm scale and offset. The sum's
  order differs from TensorFlow's, so a unit whose value lies within rounding of its
  threshold can flip: agreement, not identity, is promised there.
- The output layer: logits = z * scale + offset, z an integer.
- "infer": the router scores g_{s,c}(x) = mu^T P relu(x R) - ... as the Keras model
  (R stored as sign bits and one scale), picks s* = argmax_s max_c g_{s,c}(x), and
  returns the product of experts restricted to s*'s classes (`floored_log_softmax`,
  the NumPy twin of `larq_engrams.task_inference.floored_log_softmax`; the tests check
  that both agree). With a shortlist of k (manifest `router.shortlist`), only the k
  engrams whose mean group scores best compete (`shortlisted`, the NumPy twin of
  `InputDiscriminant.shortlisted`).
- With the C kernels (`KERNELS == "c"`, built at install) the hidden and output layers
  run on their bits (XNOR-popcount, `csrc/engram_bits.c`), and the first layer and the
  router's features are sign-selected sums that skip zero inputs (`csrc/signed_sums.c`);
  the NumPy path computes the same values as float products.
"""
import ctypes
import glob
import hashlib
import json
import os
import zipfile

import numpy as np

__all__ = ["EMPTY_GROUP_SCORE", "FORMAT", "HAS_DATA_ABOVE", "KERNELS", "VERSION", "READABLE_VERSIONS", "PackedFormatError", "PackedNetwork", "conv_features",
           "floored_log_softmax", "engram_means", "shortlisted",
           "conv_kernel_fits", "load", "pack_signs", "unpack_signs", "checksum", "sign_words", "signed_conv_pool",
           "signed_dense", "signed_dense_words", "padded_signs", "SIGN_BLOCK", "xnor_threshold_words",
           "threshold_words", "xnor_dot"]

FORMAT = "larq-engrams-packed"
# 2: the router is optional (manifest "router": null); 3: its features may be convolutional;
# 4: it may hold each task's class evidence (router/class_kernel, class_bias), which a
# runtime reading only 1-3 would ignore and so predict otherwise; 5: it may route through a
# shortlist (manifest router.shortlist), which a runtime reading only 1-4 would ignore;
# 6: its convolutional features may normalize each patch (router.patch_floor)
VERSION = 6
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
EMPTY_GROUP_SCORE = -1e9  # the router's score of a group without data
HAS_DATA_ABOVE = EMPTY_GROUP_SCORE / 2  # a group scoring above this one has data
_REEXPORT = "; write it again from the Keras model with `larq_engrams.export.save_packed(model, path)`"


class PackedFormatError(ValueError):
    """A packed file that this runtime cannot load: another format or version, or
    corrupt (its one-line message says which)."""


def _load_bit_kernels():
    """The C XNOR-popcount kernels (`csrc/engram_bits.c`, built at install into
    `_engram_bits*.so` beside this file), or None: then the NumPy path runs.
    `LARQ_ENGRAMS_KERNELS=numpy` asks for the NumPy path."""
    if os.environ.get("LARQ_ENGRAMS_KERNELS", "").lower() == "numpy":
        return None
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_engram_bits*.so"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        address, i32 = ctypes.c_void_p, ctypes.c_int32  # arrays by address: data_as costs more than the call
        lib.le_xnor_dot.argtypes = [address, address, i32, i32, i32, i32, address]
        lib.le_threshold_bits.argtypes = [address, address, address, i32, i32, i32, address]
        lib.le_xnor_threshold_bits.argtypes = [address, address, i32, i32, i32, i32, address, address, i32, address]
        lib.le_signed_dense_bits.argtypes = [address, address, i32, i32, i32, i32, address, address, i32, address]
        lib.le_signed_dense.argtypes = [address, address, i32, i32, i32, i32, address]
        lib.le_binary_network.argtypes = [address, i32, i32, address, address, address, i32, address, address,
                                          address, address, address, i32, address]
        lib.le_signed_conv_pool.argtypes = [address, address] + [i32] * 7 + [ctypes.c_float] * 2 + [address]
        return lib
    return None


_KERNELS = _load_bit_kernels()
KERNELS = "c" if _KERNELS is not None else "numpy"  # which path binary layers take in this process


def _address(array, dtype):
    """A C-contiguous array's data address, for the kernels (which keep no reference)."""
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise TypeError(f"runtime: the C kernels take C-contiguous {np.dtype(dtype)} arrays, got {array.dtype}.")
    return array.ctypes.data


def sign_words(negative):
    """(rows, n) booleans (True: sign -1) as (rows, ceil(n / 64)) uint64 words, bit i in
    bit i % 64 of word i / 64, padding 0: the C kernels' operands."""
    negative = np.asarray(negative, bool)
    rows, n = negative.shape
    packed = np.packbits(negative, axis=1, bitorder="little")
    padded = np.zeros((rows, 8 * (-(-n // 64))), np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view("<u8")


def xnor_dot(x_words, w_words, n):
    """Integer z = x . w for the +-1 vectors of `sign_words`: (batch, units) int32, by
    z = n - 2 popcount(x XOR w) in the C kernel."""
    batch, units = len(x_words), len(w_words)
    z = np.empty((batch, units), np.int32)
    _KERNELS.le_xnor_dot(_address(x_words, np.uint64), _address(w_words, np.uint64), batch, units, x_words.shape[1],
                         n, _address(z, np.int32))
    return z


def threshold_words(z, threshold, direction):
    """The next layer's input words: +1 iff direction z >= direction threshold (C kernel)."""
    batch, units = z.shape
    out = np.empty((batch, -(-units // 64)), np.uint64)
    _KERNELS.le_threshold_bits(_address(z, np.int32), _address(threshold, np.int32), _address(direction, np.int8),
                               batch, units, out.shape[1], _address(out, np.uint64))
    return out


SIGN_BLOCK = 64  # the C convolution takes +-1 filters in whole blocks of this many (csrc/signed_sums.c)


def padded_signs(signs):
    """+-1 float32 columns `signs` (n, filters) with zero columns appended up to a
    multiple of SIGN_BLOCK, as `signed_conv_pool` takes them (make it once per network:
    it is a copy)."""
    signs = np.asarray(signs, np.float32)
    padded = np.zeros((signs.shape[0], -(-signs.shape[1] // SIGN_BLOCK) * SIGN_BLOCK), np.float32)
    padded[:, : signs.shape[1]] = signs
    return padded


def xnor_threshold_words(x_words, w_words, n, threshold, direction):
    """A hidden binary layer on bits: `threshold_words(xnor_dot(...), ...)` in one C call."""
    batch, units = len(x_words), len(w_words)
    out = np.empty((batch, -(-units // 64)), np.uint64)
    _KERNELS.le_xnor_threshold_bits(_address(x_words, np.uint64), _address(w_words, np.uint64), batch, units,
                                    x_words.shape[1], n, _address(threshold, np.int32), _address(direction, np.int8),
                                    out.shape[1], _address(out, np.uint64))
    return out


def signed_dense_words(x, negative, units, scale, offset):
    """The first binary layer's outputs as the next layer's input words: +1 iff
    (x W)_u scale_u + offset_u >= 0, W's signs given as `sign_words(W < 0)` (C kernel;
    the same float32 roundings as NumPy's `x @ W * scale + offset >= 0` with x W summed
    in the inputs' order)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty((len(x), -(-int(units) // 64)), np.uint64)
    _KERNELS.le_signed_dense_bits(_address(x, np.float32), _address(negative, np.uint64), len(x), negative.shape[0],
                                  int(units), negative.shape[1], _address(scale, np.float32),
                                  _address(offset, np.float32), out.shape[1], _address(out, np.uint64))
    return out


def signed_dense(x, signs, units=None):
    """x W for real inputs `x` (batch, n) and a +-1 W (n, units), as sign-selected sums of
    the nonzero inputs (C kernel): (batch, units) float32. `signs` is W as float32, or its
    signs as `sign_words(W < 0)` words (n, ceil(units / 64)) with `units` given (make
    them once per layer)."""
    if signs.dtype != np.uint64:
        signs, units = sign_words(np.asarray(signs) < 0), signs.shape[1]
    x = np.ascontiguousarray(x, np.float32)
    z = np.empty((len(x), int(units)), np.float32)
    _KERNELS.le_signed_dense(_address(x, np.float32), _address(signs, np.uint64), len(x), signs.shape[0], int(units),
                             signs.shape[1], _address(z, np.float32))
    return z


def signed_conv_pool(x, signs, image_shape, kernel_size, pool, filters=None, scale=1.0, patch_floor=None):
    """`scale` times the sums over each pooling window of relu(conv(x, W)) for flat inputs
    `x` (batch, H W) and +-1 float32 filters `signs` (k k, F) (C kernel; one channel,
    W <= 64, k <= 8, as `conv_kernel_fits` says): (batch, gh gw F), in `conv_features`'
    order; `conv_features` with filters s W is this with scale s / p^2. `signs` may come
    from `padded_signs`, with `filters` the columns that count. With a `patch_floor` eps
    each window u is normalized first, (u - mean(u)) / sqrt(var(u) + eps)."""
    if not conv_kernel_fits(image_shape, kernel_size):
        raise ValueError(f"runtime: the C convolution takes one channel, images up to 64 wide and filters up to 8 "
                         f"wide, got {image_shape} and {kernel_size}.")
    height, width = (int(v) for v in tuple(image_shape)[:2])
    k, p = int(kernel_size), int(pool)
    filters = signs.shape[1] if filters is None else int(filters)
    if signs.shape[1] % SIGN_BLOCK:
        signs = padded_signs(signs)
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty((len(x), ((height - k + 1) // p) * ((width - k + 1) // p) * filters), np.float32)
    _KERNELS.le_signed_conv_pool(_address(x, np.float32), _address(signs, np.float32), len(x), height, width, k, p,
                                 filters, signs.shape[1], np.float32(scale), np.float32(patch_floor or 0.0),
                                 _address(out, np.float32))
    return out


def conv_kernel_fits(image_shape, kernel_size):
    """Whether `signed_conv_pool` takes images of this shape and filters of this size
    (one channel, at most 64 pixels wide: a row's nonzero pixels are one 64-bit mask;
    k <= 8: a window's are one as well)."""
    shape = tuple(int(v) for v in image_shape)
    return (len(shape) == 2 or shape[2] == 1) and shape[1] <= 64 and int(kernel_size) <= 8


def pack_signs(weights):
    """The sign bits of a (rows, columns) array, packed along the columns: bit 1 for a
    negative entry (sign -1), 0 for >= 0 (Larq's sign(0) = +1); little bit order."""
    return np.packbits(np.asarray(weights) < 0, axis=-1, bitorder="little")


def unpack_signs(bits, columns, dtype=np.float32):
    """The +-1 matrix of `pack_signs` (`columns`: the unpacked width)."""
    return (1 - 2 * np.unpackbits(bits, axis=-1, count=columns, bitorder="little").astype(np.int8)).astype(dtype)


def checksum(arrays):
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def floored_log_softmax(logits, allowed, outside_mass=None):
    """NumPy twin of `larq_engrams.task_inference.floored_log_softmax`: log-probabilities
    with (1 - eps) of the mass on the `allowed` classes and eps spread over the others
    (eps = 1e-3 / C by default)."""
    logits = np.asarray(logits, np.float32)
    classes = logits.shape[-1]
    eps = np.float32(1e-3 / classes if outside_mass is None else outside_mass)
    inside = np.where(allowed, logits, np.float32(-1e9))
    inside = inside - inside.max(axis=-1, keepdims=True)
    inside = inside - np.log(np.exp(inside).sum(axis=-1, keepdims=True))
    outside_count = np.maximum((~allowed).sum(axis=-1, keepdims=True), 1).astype(np.float32)
    return np.where(allowed, inside + np.log(np.float32(1.0) - eps), np.log(eps / outside_count)).astype(np.float32)


def engram_means(kernel, bias):
    """NumPy twin of `InputDiscriminant.engram_means`: each engram's mean group over its
    classes with data, (K, M) and (K,) from the groups' kernel (K, C, M) and bias (K, C)."""
    has = (bias > HAS_DATA_ABOVE).astype(np.float32)
    count = has.sum(axis=-1)
    mean_kernel = np.einsum("tc,tcm->tm", has, kernel) / np.maximum(count, 1.0)[:, None]
    mean_bias = np.where(count > 0, (has * bias).sum(axis=-1) / np.maximum(count, 1.0), np.float32(EMPTY_GROUP_SCORE))
    return mean_kernel.astype(np.float32), mean_bias.astype(np.float32)


def shortlisted(features, mean_kernel, mean_bias, shortlist):
    """NumPy twin of `InputDiscriminant.shortlisted`: (batch, K) bool, the `shortlist`
    engrams with the best mean group a_s(x) for each input's features (all while K <= k)."""
    means = features @ mean_kernel.T + mean_bias  # a_s(x)
    rank = means.shape[1] - min(int(shortlist), means.shape[1])  # the k-th largest's place, ascending
    return means >= np.partition(means, rank, axis=1)[:, rank:rank + 1]


def conv_features(x, filters, image_shape, kernel_size, pool, patch_floor=None):
    """NumPy twin of `larq_engrams.task_inference.ConvGeometry.features_of`: flat inputs
    (batch, H W C), filters (k k C, F) -> avgpool_p(relu(conv_k(n(x)))), flattened
    (batch, gh gw F) in TensorFlow's order; n normalizes each patch u to
    (u - mean(u)) / sqrt(var(u) + patch_floor), or is the identity without a floor."""
    chunk = 32  # examples at a time: the patches and responses stay a few MiB (peak RSS)
    if len(x) > chunk:
        return np.concatenate([conv_features(x[i:i + chunk], filters, image_shape, kernel_size, pool, patch_floor)
                               for i in range(0, len(x), chunk)])
    shape = tuple(int(v) for v in image_shape)
    height, width, channels = shape if len(shape) == 3 else (*shape, 1)
    k, p, n = int(kernel_size), int(pool), len(x)
    images = np.asarray(x, np.float32).reshape(n, height, width, channels)
    windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(1, 2))  # (n, oh, ow, C, k, k)
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n, height - k + 1, width - k + 1, k * k * channels)
    grid_h, grid_w = (height - k + 1) // p, (width - k + 1) // p
    patches = patches[:, : grid_h * p, : grid_w * p]  # whole pooling windows only
    if patch_floor is not None:
        centred = patches - patches.mean(axis=-1, keepdims=True)
        patches = centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + np.float32(patch_floor))
    z = np.maximum(patches @ filters, 0)
    pooled = z.reshape(n, grid_h, p, grid_w, p, -1).mean(axis=(2, 4), dtype=np.float32)
    return pooled.reshape(n, -1)


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _Layer:
    """One binary dense layer with BatchNorm and sign folded in."""

    def __init__(self, kernel, scale=None, offset=None, threshold=None, direction=None):
        self.kernel = np.ascontiguousarray(kernel)  # (inputs, units) +-1 float32, rows for the C kernels
        self.scale, self.offset = scale, offset  # float layer
        self.threshold, self.direction = threshold, direction  # integer layer
        self._words = None

    def bit_operands(self):
        """(weight words (units, words of inputs), int32 thresholds, int8 directions)
        for the C kernels, made once."""
        if self._words is None:
            self._words = (sign_words(self.kernel.T < 0), np.ascontiguousarray(self.threshold, np.int32),
                           np.ascontiguousarray(self.direction, np.int8))
        return self._words

    def __call__(self, h):
        z = h @ self.kernel
        if self.threshold is None:
            positive = z * self.scale + self.offset >= 0
        else:
            positive = np.where(self.direction > 0, z >= self.threshold, z <= self.threshold)
        return np.where(positive, np.float32(1), np.float32(-1))


class _BitNetwork:
    """A network's operands for the C kernels' `le_binary_network` (csrc/binary_network.c),
    made once: the first layer's sign words and BatchNorm, each later layer's weight words,
    thresholds and directions (by address), the output layer's words."""

    def __init__(self, layers, output):
        first, later = layers[0], [layer.bit_operands() for layer in layers[1:]]
        self._arrays = (sign_words(first.kernel < 0), np.ascontiguousarray(first.scale, np.float32),
                        np.ascontiguousarray(first.offset, np.float32),
                        np.array([layer.kernel.shape[1] for layer in layers], np.int32), output.words(), later)
        self.hidden, self.classes, self.inputs = len(later), output.kernel.shape[1], first.kernel.shape[0]
        pointers = ctypes.c_void_p * max(len(later), 1)
        self._tables = [pointers(*[operands[k].ctypes.data for operands in later]) for k in range(3)]

    def __call__(self, x):
        """The output layer's integer sums (batch, classes) for real inputs `x` (batch, inputs)."""
        negative, scale, offset, widths, out_words, _ = self._arrays
        x = np.ascontiguousarray(x, np.float32)
        z = np.empty((len(x), self.classes), np.int32)
        w, t, d = (ctypes.addressof(table) for table in self._tables)
        _KERNELS.le_binary_network(_address(x, np.float32), len(x), self.inputs, _address(negative, np.uint64),
                                   _address(scale, np.float32), _address(offset, np.float32), self.hidden,
                                   _address(widths, np.int32), w, t, d, _address(out_words, np.uint64), self.classes,
                                   _address(z, np.int32))
        return z


class _Output:
    """The output layer's +-1 kernel (inputs, classes), and its words for the C kernels."""

    def __init__(self, kernel):
        self.kernel, self._words = kernel, None
        self.bit_network = None  # the C kernels' operands of the network this layer ends (`_BitNetwork`)

    def words(self):
        if self._words is None:
            self._words = sign_words(self.kernel.T < 0)
        return self._words


class PackedNetwork:
    """A loaded packed network (see the module docstring); build it with `load`."""

    def __init__(self, manifest, arrays, kernels=None):
        if kernels not in (None, "c", "numpy"):
            raise ValueError(f"runtime: kernels must be 'c', 'numpy' or None, got {kernels!r}.")
        if kernels == "c" and _KERNELS is None:
            raise ValueError("runtime: the C bit kernels are not built here (no C compiler at install?); "
                             "use kernels='numpy'.")
        # "c": hidden and output layers on bits (XNOR-popcount); "numpy": +-1 float products.
        self.kernels = kernels or KERNELS
        self.manifest = manifest
        self.kind = manifest["kind"]
        self.num_classes = int(manifest["num_classes"])
        self.input_size = int(np.prod(manifest["input_shape"]))
        hidden = manifest["hidden"]
        self._layer_arrays = {name: value for name, value in arrays.items() if name.startswith("hidden_")}
        self._layers = self._unpacked_layers() if self.kind != "engram" else None  # engrams: only if asked for
        self.output_kernel = unpack_signs(arrays["output/kernel_bits"], self.num_classes)
        self._plain_output = _Output(self.output_kernel)
        self.output_scale, self.output_offset = arrays["output/scale"], arrays["output/offset"]
        self.allocated_tasks = list(manifest.get("allocated_tasks", []))
        self._engrams, self._masks = {}, None
        if self.kind == "engram":
            self._masks = [np.unpackbits(arrays[f"hidden_{i}/engram_bits"], axis=-1, count=units, bitorder="little")
                           .astype(bool) for i, units in enumerate(hidden)]
            for task in self.allocated_tasks:
                self._engrams[task] = self._engram_network([m[task] for m in self._masks])
            self.engram_classes = arrays["engram_classes"].astype(bool)
        self.has_router = self.kind == "engram" and manifest.get("router") is not None
        if self.has_router:
            router = manifest["router"]
            self.router_conv = router if router.get("feature_map", "dense") == "conv" else None
            columns = int(router["filters"] if self.router_conv else router["features"])
            self.router_signs = unpack_signs(arrays["router/projection_bits"], columns)  # R / scale, +-1
            self.router_scale = np.float32(router["projection_scale"])
            self.router_projection = self.router_signs * self.router_scale
            # the C kernels' operand: the dense projection's sign bits, or the filters padded to whole blocks
            self._router_operand = (padded_signs(self.router_signs) if self.router_conv
                                    else sign_words(self.router_signs < 0))
            self.router_kernel = arrays["router/kernel"]  # (tasks, classes, M)
            self.router_bias = arrays["router/bias"]  # (tasks, classes)
            # class_covariance "task": each task's own class evidence (tasks, classes, M) and (tasks, classes)
            self.router_class_kernel = arrays.get("router/class_kernel")
            self.router_class_bias = arrays.get("router/class_bias")
        self._learner = None
        if self.has_router and router.get("learning"):
            self._learner = _RouterLearner(arrays["router/counts"], arrays["router/sums"],
                                           arrays["router/scatter_upper"], float(router["shrinkage"]),
                                           task_evidence=self.router_class_kernel is not None)
        self.router_tasks = []  # tasks learned here, by the router alone (no engram network)
        self._live_groups = None  # ((the router arrays read), groups with data, their kernel and bias)
        self._means = None  # ((the router arrays read, the engrams), their mean groups): for a shortlist

    def _engram_network(self, masks):
        """The engram's sub-network: its layers restricted to its units, unpacked from
        the sign bits of its rows only (no whole float layer is made)."""
        arrays, layers, previous = self._layer_arrays, [], None
        for i, mask in enumerate(masks):
            units = np.flatnonzero(mask)
            bits = arrays[f"hidden_{i}/kernel_bits"]
            kernel = unpack_signs(bits if previous is None else bits[previous], mask.size)[:, units]
            if i == 0:
                layers.append(_Layer(kernel, arrays["hidden_0/scale"][units], arrays["hidden_0/offset"][units]))
            else:
                layers.append(_Layer(kernel, threshold=arrays[f"hidden_{i}/threshold"][units].astype(np.float32),
                                     direction=arrays[f"hidden_{i}/direction"][units]))
            previous = units
        return layers, _Output(self.output_kernel[previous])

    @property
    def layers(self):
        """The whole hidden layers, +-1 kernels unpacked from their sign bits (for an
        engram network, only when asked for: its engrams keep their own blocks)."""
        if self._layers is None:
            self._layers = self._unpacked_layers()
        return self._layers

    def _unpacked_layers(self):
        arrays, layers = self._layer_arrays, []
        widths = [self.input_size, *self.manifest["hidden"]]
        for i, units in enumerate(self.manifest["hidden"]):
            kernel = unpack_signs(arrays[f"hidden_{i}/kernel_bits"], units)
            if kernel.shape != (widths[i], units):
                raise PackedFormatError(f"runtime: hidden_{i} holds a {kernel.shape} kernel, the manifest says "
                                        f"{(widths[i], units)}")
            if i == 0:
                layers.append(_Layer(kernel, arrays["hidden_0/scale"], arrays["hidden_0/offset"]))
            else:
                layers.append(_Layer(kernel, threshold=arrays[f"hidden_{i}/threshold"].astype(np.float32),
                                     direction=arrays[f"hidden_{i}/direction"]))
        return layers

    def engram_network(self, task):
        """Engram `task`'s sub-network: `(layers, output)`, the hidden layers restricted
        to its units (the first a float layer, the others integer ones) and the output
        layer's rows of its last units."""
        return self._engrams[self._task(task)]

    def _flat(self, x):
        x = np.asarray(x, np.float32)
        if x.shape == tuple(self.manifest["input_shape"]):  # one example
            x = x[None]
        x = x.reshape(len(x), -1)
        if x.shape[1] != self.input_size:
            raise ValueError(f"runtime: inputs of {x.shape[1]} values per example, the network takes "
                             f"{self.input_size} (shape {tuple(self.manifest['input_shape'])}).")
        bad = ~np.isfinite(x)
        if bad.any():  # a NaN compares false with every threshold: the answer would be arbitrary
            raise ValueError(f"runtime: NaN or Inf in {int(bad.any(axis=1).sum())} of {len(x)} examples "
                             f"(the first: example {int(np.flatnonzero(bad.any(axis=1))[0])}); clean the inputs.")
        return x

    def _logits(self, h, layers, output):
        if self.kernels == "c":  # on the bits after the first layer, one C call
            if output.bit_network is None:
                output.bit_network = _BitNetwork(layers, output)
            return output.bit_network(h).astype(np.float32) * self.output_scale + self.output_offset
        for layer in layers:
            h = layer(h)
        return (h @ output.kernel) * self.output_scale + self.output_offset

    def hidden_outputs(self, x, task=None):
        """Each hidden layer's outputs (+-1, 0 outside the engram) for inputs `x`: the
        values Keras' sign activations take (for tests and inspection)."""
        h, out = self._flat(x), []
        masks = [None] * len(self.layers)
        if self.kind == "engram":
            masks = [m[self._task(task)].astype(np.float32) for m in self._masks]
        for layer, mask in zip(self.layers, masks):
            h = layer(h) if mask is None else layer(h) * mask
            out.append(h)
        return out

    def _task(self, task):
        task = self.manifest.get("inference_task") if task is None else task
        task = self.manifest.get("active_task") if task is None else task
        if task not in self._engrams:
            raise ValueError(f"runtime: engram {task} is not allocated; allocated: {self.allocated_tasks}.")
        return int(task)

    def _require_router(self):
        if not self.has_router:
            raise ValueError("runtime: this network was exported without a router (a task-incremental model): "
                             "pass task= (one engram id, or one per example).")

    def router_features(self, x):
        """f(x), the router's fixed random features (batch, M)."""
        self._require_router()
        x, c = self._flat(x), self.router_conv
        if self.kernels == "c" and c is None:  # sign-selected sums; relu commutes with the positive scale
            return np.maximum(signed_dense(x, self._router_operand, self.router_signs.shape[1]), 0) * self.router_scale
        if self.kernels == "c" and conv_kernel_fits(c["image_shape"], c["kernel_size"]):  # and so does the pooling
            return signed_conv_pool(x, self._router_operand, c["image_shape"], c["kernel_size"], c["pool"],
                                    self.router_signs.shape[1], self.router_scale / c["pool"] ** 2,
                                    c.get("patch_floor"))
        if c is None:
            return np.maximum(x @ self.router_projection, 0)
        return conv_features(x, self.router_projection, c["image_shape"], c["kernel_size"], c["pool"],
                             c.get("patch_floor"))

    def router_scores(self, x):
        """(batch, tasks, classes) router scores g_{s,c}(x)."""
        return self._group_scores(self.router_features(x))

    def _group_scores(self, features):
        if self._learner is not None and self._learner.stale:
            self.router_kernel, self.router_bias = self._learner.discriminant()
            if self.router_class_kernel is not None:
                self.router_class_kernel, self.router_class_bias = self._learner.task_evidence(
                    self.router_class_kernel, self.router_class_bias)
        read = self._live_groups[0] if self._live_groups is not None else (None, None)
        if read[0] is not self.router_kernel or read[1] is not self.router_bias:
            # a group without data has a zero kernel and scores its bias: only the others are computed
            # (in class-IL a task's groups of other classes: four in five on Split MNIST)
            bias = self.router_bias.reshape(-1)
            live = np.flatnonzero(bias > HAS_DATA_ABOVE)
            kernel = self.router_kernel.reshape(len(bias), -1)
            self._live_groups = ((self.router_kernel, self.router_bias), live,
                                 np.ascontiguousarray(kernel[live].T), bias[live])
        _, live, kernel, bias = self._live_groups
        scores = np.empty((len(features), self.router_bias.size), np.float32)
        scores[:] = self.router_bias.reshape(-1)
        scores[:, live] = features @ kernel + bias  # BLAS, unlike einsum
        return scores.reshape(len(features), *self.router_bias.shape)

    def _engram_means(self, tasks):
        """`engram_means` of the engrams `tasks`, computed once per discriminant (not per
        call: predicting one example at a time would redo K C M work each time)."""
        read = self._means[0] if self._means is not None else (None, None, None)
        if read[0] is not self.router_kernel or read[1] is not self.router_bias or read[2] != tuple(tasks):
            self._means = ((self.router_kernel, self.router_bias, tuple(tasks)),
                           engram_means(self.router_kernel[tasks], self.router_bias[tasks]))
        return self._means[1]

    def _task_evidence(self, features, tasks):
        """(batch, classes) h_{s,c}: sample i's class evidence from task tasks[i]'s own
        covariance (class_covariance "task")."""
        out = np.empty((len(features), self.num_classes), np.float32)
        for t in np.unique(tasks):
            rows = tasks == t
            out[rows] = features[rows] @ self.router_class_kernel[t].T + self.router_class_bias[t]
        return out

    def infer_tasks(self, x):
        """The engram chosen per sample in "infer" mode (an int array of task ids)."""
        return self._infer(self._flat(x))[1]

    def predict(self, x, task=None):
        """Class scores for `x` (a batch, or one example): the plain network's logits;
        for an engram network, the logits of engram `task` (one id, or an int array of
        one id per example, as the Keras model's `(x, task_ids)` inputs), or with
        `task=None` the "infer" output (log-probabilities, as the Keras model in "infer"
        mode)."""
        x = self._flat(x)
        if self.kind != "engram":
            return self._logits(x, self.layers, self._plain_output)
        if task is None:
            return self._infer(x)[0]
        return self._task_logits(x, task)

    def _task_logits(self, x, task):
        """Flat `x` through engram `task` (one id, or one per example)."""
        ids = np.asarray(task)
        if ids.ndim == 0:
            return self._logits(x, *self._engrams[self._task(int(ids))])
        if ids.shape != (len(x),):
            raise ValueError(f"runtime: task= holds {ids.size} ids for {len(x)} examples; give one id, or one "
                             "per example.")
        out = np.empty((len(x), self.num_classes), np.float32)
        for t in np.unique(ids):  # each engram's sub-network once, on its examples
            rows = ids == t
            out[rows] = self._logits(x[rows], *self._engrams[self._task(int(t))])
        return out

    def _infer(self, x):
        self._require_router()
        if not self.allocated_tasks:
            raise ValueError("runtime: 'infer' needs at least one allocated engram.")
        tasks = self.allocated_tasks + self.router_tasks
        features = self.router_features(x)
        groups = np.transpose(self._group_scores(features)[:, tasks], (1, 0, 2))  # (K, batch, C)
        scores = groups.max(axis=-1)  # (K, batch)
        shortlist = self.manifest["router"].get("shortlist")
        if shortlist is not None:  # only the shortlisted engrams compete
            keep = shortlisted(features, *self._engram_means(tasks), shortlist)
            scores = np.where(keep.T, scores, np.float32(EMPTY_GROUP_SCORE))
        best = scores.argmax(axis=0)
        rows = np.arange(len(x))
        chosen_tasks = np.asarray(tasks)[best]
        if self.router_class_kernel is not None:  # the chosen task's own class evidence (groups is a fresh array)
            groups[best, rows] = self._task_evidence(features, chosen_tasks)
        by_router = best >= len(self.allocated_tasks)
        if by_router.any():  # tasks learned here: the router's own class evidence decides
            out = np.empty((len(x), self.num_classes), np.float32)
            lda = groups[best[by_router], rows[by_router]]
            out[by_router] = floored_log_softmax(lda, lda > HAS_DATA_ABOVE)
            if not by_router.all():
                out[~by_router] = self._engram_outputs(x[~by_router], chosen_tasks[~by_router],
                                                        groups[best[~by_router], rows[~by_router]])
            return out, chosen_tasks
        return self._engram_outputs(x, chosen_tasks, groups[best, rows]), chosen_tasks

    def _engram_outputs(self, x, chosen_tasks, lda):
        """The "infer" outputs of samples routed to engrams `chosen_tasks`, with the
        router's scores `lda` of their chosen engram's groups."""
        chosen = self._task_logits(x, chosen_tasks)  # each sample through its chosen engram only
        weight, restrict = float(self.manifest["lda_weight"]), bool(self.manifest["restrict_to_engram_classes"])
        if not (restrict or weight > 0):
            return chosen
        log_probs = _log_softmax(chosen)
        if weight > 0:
            log_probs = log_probs + np.float32(weight) * floored_log_softmax(lda, lda > HAS_DATA_ABOVE)
        if not restrict:
            return _log_softmax(log_probs)
        known = self.engram_classes[chosen_tasks]
        known = known | ~known.any(axis=-1, keepdims=True)
        return floored_log_softmax(log_probs, known)

    # ------------------------------------------------------------- on-device learning
    def add_task(self):
        """Opens a task learned here, by the router alone: a new group of router
        statistics (no engram network: its classes are predicted from the router's
        class evidence until the model is trained again with TensorFlow). Returns its
        id, for `learn`. Needs a file written with `save_packed(model, path,
        learning=True)`."""
        learner = self._require_learner()
        task = max(self.allocated_tasks + self.router_tasks, default=-1) + 1  # after every task in use
        learner.add_row(task)
        self.router_tasks.append(task)
        if task >= len(self.engram_classes):
            self.engram_classes = np.concatenate([self.engram_classes, np.zeros((1, self.num_classes), bool)])
        return task

    def learn(self, x, y, task):
        """Adds inputs `x` with labels `y` to task `task`'s router statistics (a batch
        at a time, each example seen once; no input is stored). The discriminant is
        recomputed at the next prediction (one M x M Cholesky solve)."""
        learner = self._require_learner()
        if task not in self.router_tasks:
            raise ValueError(f"runtime: learn into a task opened by add_task() ({self.router_tasks}), not {task!r}.")
        y = np.asarray(y).astype(np.int64).reshape(-1)
        if len(y) != len(self._flat(x)) or (y < 0).any() or (y >= self.num_classes).any():
            raise ValueError(f"runtime: learn needs one label in [0, {self.num_classes}) per example.")
        learner.observe(self.router_features(x), y, task)
        self.engram_classes[task, np.unique(y)] = True

    def learning_bytes(self):
        """The bytes the device keeps only to learn (counts, sums, the scatter as held)."""
        return self._require_learner().nbytes()

    def _require_learner(self):
        if self._learner is None:
            raise ValueError("runtime: this file holds no router statistics to learn with; write it with "
                             "`larq_engrams.export.save_packed(model, path, learning=True)`.")
        return self._learner


class _RouterLearner:
    """The router's streaming statistics, updated without TensorFlow: the NumPy twin of
    `larq_engrams.task_inference.InputDiscriminant.observe` and `refresh` (the same
    merge of batch statistics, float32 sums, a float64 solve)."""

    def __init__(self, counts, sums, scatter_upper, shrinkage, task_evidence=False):
        self.counts, self.sums = counts.astype(np.float32), sums.astype(np.float32)
        size = sums.shape[-1]
        self.scatter = np.zeros((size, size), np.float32)
        self.scatter[np.triu_indices(size)] = scatter_upper
        self.scatter = np.triu(self.scatter) + np.triu(self.scatter, 1).T
        self.shrinkage = shrinkage
        self.stale = False
        # class_covariance "task": the scatter of the task being learned here, from its first example
        self.task_evidence_on = bool(task_evidence)
        self.scatter_task, self.task_scatter, self.task_count = -1, None, 0.0
        self.finished = {}  # task -> its class evidence (kernel, bias), computed when the next task began

    def _open_task_evidence(self):
        """{task: (kernel, bias)} of the task being learned, from its own scatter ({} if none)."""
        if self.scatter_task < 0 or self.task_count <= 0:
            return {}
        t = self.scatter_task
        return {t: self._solve(self.task_scatter, self.task_count, self.sums[t], self.counts[t].astype(np.float64))}

    def add_row(self, task):
        """Makes room for task row `task` (the arrays grow past the model's max_tasks)."""
        grow = task + 1 - len(self.counts)
        if grow > 0:
            self.counts = np.concatenate([self.counts, np.zeros((grow, self.counts.shape[1]), np.float32)])
            self.sums = np.concatenate([self.sums, np.zeros((grow, *self.sums.shape[1:]), np.float32)])
        self.stale = True  # the discriminant gets the task's (empty) row

    def observe(self, f, y, task):
        onehot = np.eye(self.counts.shape[1], dtype=np.float32)[y]
        batch_counts = onehot.sum(axis=0)
        batch_sums = onehot.T @ f
        counts = self.counts[task]
        means = self.sums[task] / np.maximum(counts, 1.0)[:, None]
        batch_means = batch_sums / np.maximum(batch_counts, 1.0)[:, None]
        centered = f - onehot @ batch_means
        weight = counts * batch_counts / np.maximum(counts + batch_counts, 1.0)
        shift = (means - batch_means) * np.sqrt(weight)[:, None]
        increment = centered.T @ centered + shift.T @ shift
        self.scatter += increment
        if self.task_evidence_on:
            if task != self.scatter_task:
                self.finished.update(self._open_task_evidence())
                self.scatter_task, self.task_scatter, self.task_count = task, np.zeros_like(self.scatter), 0.0
            self.task_scatter += increment
            self.task_count += float(batch_counts.sum())
        self.counts[task] += batch_counts
        self.sums[task] += batch_sums
        self.stale = True

    def discriminant(self):
        """(kernel (tasks, classes, M), bias (tasks, classes)) float32: mu^T P and
        -mu^T P mu / 2 per group, P the inverse of the shrunk shared covariance."""
        tasks, classes, size = self.sums.shape
        counts = self.counts.reshape(-1).astype(np.float64)
        kernel, bias = self._solve(self.scatter, counts.sum(), self.sums.reshape(-1, size), counts)
        self.stale = False
        return kernel.reshape(tasks, classes, size), bias.reshape(tasks, classes)

    def task_evidence(self, class_kernel, class_bias):
        """`class_kernel`, `class_bias` (grown to the learner's tasks) with the row of
        the task being learned here from its own covariance (class_covariance "task")."""
        tasks, classes, size = self.sums.shape
        grow = tasks - len(class_kernel)
        if grow > 0:
            class_kernel = np.concatenate([class_kernel, np.zeros((grow, classes, size), np.float32)])
            class_bias = np.concatenate([class_bias, np.full((grow, classes), EMPTY_GROUP_SCORE, np.float32)])
        class_kernel, class_bias = class_kernel.copy(), class_bias.copy()
        for t, (kernel, bias) in {**self.finished, **self._open_task_evidence()}.items():
            class_kernel[t], class_bias[t] = kernel, bias
        return class_kernel, class_bias

    def _solve(self, scatter, total, sums, counts):
        """The discriminant (kernel, bias) float32 of groups with `sums` and `counts`
        under the shrunk covariance of `scatter` over `total` examples (float64 solve)."""
        size = scatter.shape[0]
        total = max(float(total), 1.0)
        means = sums.astype(np.float64) / np.maximum(counts, 1.0)[:, None]
        scatter = scatter.astype(np.float64)
        variances = np.diag(scatter) / total
        mean_variance = variances.sum() / size
        ridge = self.shrinkage * mean_variance + 1e-9 * max(mean_variance, 1e-12)
        covariance = scatter * ((1.0 - self.shrinkage) / total)
        covariance[np.diag_indices(size)] = (1.0 - self.shrinkage) * variances + ridge
        chol = np.linalg.cholesky(covariance)
        kernel = np.linalg.solve(chol.T, np.linalg.solve(chol, means.T)).T
        bias = np.where(counts > 0, -0.5 * (kernel * means).sum(axis=-1), EMPTY_GROUP_SCORE)
        kernel = np.where(counts[:, None] > 0, kernel, 0.0)
        return kernel.astype(np.float32), bias.astype(np.float32)

    def nbytes(self):
        """Counts, sums and the scatter's M (M + 1) / 2 floats, as stored (this NumPy
        learner holds the scatter unpacked in memory: M^2 floats); with the per-task class
        evidence a second scatter for the task being learned."""
        size = self.scatter.shape[0]
        scatters = 2 if self.task_evidence_on else 1
        return int(self.counts.nbytes + self.sums.nbytes + scatters * 4 * size * (size + 1) // 2)


def load(path, kernels=None):
    """A `PackedNetwork` from a file written by `larq_engrams.export.save_packed`;
    `PackedFormatError` (one line) for another format or version, or a corrupt file.
    `kernels`: "c" (the XNOR-popcount kernels), "numpy", or None (C where built)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise PackedFormatError(f"{path} is not a packed larq-engrams network ({type(error).__name__}: "
                                f"{str(error).splitlines()[0] if str(error) else 'unreadable'}){_REEXPORT}") from None
    try:
        manifest = json.loads(arrays.pop("manifest").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise PackedFormatError(f"{path} has no readable manifest: it is not a packed larq-engrams network{_REEXPORT}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") not in READABLE_VERSIONS:
        raise PackedFormatError(
            f"{path} is {manifest.get('format')!r} version {manifest.get('version')!r}; this runtime reads "
            f"{FORMAT!r} versions {', '.join(map(str, READABLE_VERSIONS))}{_REEXPORT}, with this package's version")
    if checksum(arrays) != manifest.get("checksum"):
        raise PackedFormatError(f"{path} is corrupt: its arrays do not match the manifest's checksum{_REEXPORT}")
    return PackedNetwork(manifest, arrays, kernels)
