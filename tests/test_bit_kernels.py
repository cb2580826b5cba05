"""The runtime's C kernels (XNOR-popcount, sign-selected sums): the maths by hand, and the
same answers as the NumPy path (skipped with a reason where no C compiler built them at install)."""
import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams import runtime
from larq_engrams.export import save_packed

pytestmark = pytest.mark.skipif(runtime.KERNELS != "c", reason="the C bit kernels were not built (no C compiler "
                                                               "at install): the runtime runs its NumPy path")


def test_xnor_dot_and_thresholds_by_hand():
    rng = np.random.default_rng(0)
    x = rng.choice([-1, 1], size=(3, 70))  # 70 entries: two words, 58 padding bits
    w = rng.choice([-1, 1], size=(5, 70))
    z = runtime.xnor_dot(runtime.sign_words(x < 0), runtime.sign_words(w < 0), 70)
    np.testing.assert_array_equal(z, x @ w.T)  # n - 2 popcount(x XOR w) is the integer dot product
    threshold = np.array([0, 4, -70, 71, 2], np.int32)
    direction = np.array([1, 1, 1, 1, -1], np.int8)
    words = runtime.threshold_words(z, threshold, direction)
    positive = np.where(direction > 0, z >= threshold, z <= threshold)
    np.testing.assert_array_equal(words, runtime.sign_words(~positive))
    fused = runtime.xnor_threshold_words(runtime.sign_words(x < 0), runtime.sign_words(w < 0), 70, threshold, direction)
    np.testing.assert_array_equal(fused, words)  # the layer in one call: the same bits
    assert (positive[:, 2]).all() and not positive[:, 3].any()  # thresholds outside [-n, n]


def test_sign_selected_sums_by_hand():
    x = np.array([[0, 2, 0, -1], [3, 0, 0, 0]], np.float32)
    w = np.array([[1, -1], [-1, -1], [1, 1], [1, -1]], np.float32)
    # row 0: 2 (-1, -1) - (1, -1) = (-3, -1); row 1: 3 (1, -1); zero inputs add nothing
    np.testing.assert_array_equal(runtime.signed_dense(x, w), [[-3, -1], [3, -3]])
    # the first layer straight to bits: (-3, -1) 2 + (5, 1) = (-1, -1) -> both -1; (3, -3) 2 + (5, 1) = (11, -5)
    scale, offset = np.array([2, 2], np.float32), np.array([5, 1], np.float32)
    words = runtime.signed_dense_words(x, runtime.sign_words(w < 0), 2, scale, offset)
    np.testing.assert_array_equal(words, runtime.sign_words(np.array([[True, True], [False, True]])))
    image = np.array([[1, 0, 2], [0, 3, 0], [4, 0, 0]], np.float32).reshape(1, 9)
    filters = np.array([[1, 1], [1, -1], [1, -1], [1, 1]], np.float32)  # 2 x 2, patch order (row, column)
    # 2 x 2 valid positions, one 2 x 2 pooling window. Filter 0 sums each window: 4, 5, 7, 3.
    # Filter 1 (+ - / - +): 4, -5, -7, 3, rectified to 4, 0, 0, 3.
    np.testing.assert_array_equal(runtime.signed_conv_pool(image, filters, (3, 3), 2, 2), [[19, 7]])
    np.testing.assert_array_equal(runtime.conv_features(image, filters, (3, 3), 2, 2), [[19 / 4, 7 / 4]])
    rng = np.random.default_rng(3)
    x, w = rng.random((4, 50)).astype(np.float32), rng.choice([-1.0, 1.0], (50, 130)).astype(np.float32)
    x[x < 0.5] = 0  # 130 units: two blocks of 64 and a part
    np.testing.assert_allclose(runtime.signed_dense(x, w), x @ w, rtol=1e-6, atol=1e-5)


def test_sign_selected_convolution_is_the_numpy_twins():
    rng = np.random.default_rng(2)
    # 130 filters: two whole blocks of 64 and a part; 64 pixels wide: a whole row mask
    for shape, k, p, filters in (((28, 28), 5, 4, 56), ((9, 64, 1), 3, 2, 130), ((7, 6), 3, 2, 4)):
        x = rng.random((5, int(np.prod(shape)))).astype(np.float32)
        x[x < 0.6] = 0  # sparse, as a digit
        w = rng.choice([-1.0, 1.0], size=(k * k, filters)).astype(np.float32)
        for floor in (None, 0.01):  # normalized patches: the sums stay over the nonzero pixels
            np.testing.assert_allclose(runtime.signed_conv_pool(x, w, shape, k, p, patch_floor=floor) / p**2,
                                       runtime.conv_features(x, w, shape, k, p, floor), rtol=1e-5, atol=1e-4)
    assert runtime.conv_kernel_fits((28, 28), 8)
    for shape, k in (((9, 8, 3), 3), ((8, 65), 3), ((28, 28), 9)):  # NumPy's path
        assert not runtime.conv_kernel_fits(shape, k)


def test_the_c_path_gives_the_numpy_paths_answers(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = (x[:, :4].argmax(axis=1)).astype(np.int32)
    engram = le.engram_bnn((16,), 4, hidden=(100, 70), max_tasks=2, engram_fraction=0.6, lda_features=32)
    for t in (0, 1):
        engram.begin_task(t)
        engram.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        engram.fit(x + t, y, batch_size=50, epochs=1, verbose=0)
    engram.set_inference("infer")
    plain = le.bnn((16,), 4, hidden=(90, 130, 65))  # three hidden layers: two on bits
    for name, model in (("engram", engram), ("plain", plain)):
        path = str(tmp_path / f"{name}.npz")
        save_packed(model, path)
        on_bits, on_floats = runtime.load(path, kernels="c"), runtime.load(path, kernels="numpy")
        assert on_bits.kernels == "c" and on_floats.kernels == "numpy"
        # The networks agree exactly (the first layer is the same NumPy code on both paths, the
        # rest integer sums of signs); the router's features are C's sign-selected sums on one
        # and a BLAS product on the other, whose summation order BLAS picks per CPU.
        out_bits, out_floats = on_bits.predict(x), on_floats.predict(x)
        np.testing.assert_allclose(out_bits, out_floats, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out_bits.argmax(-1), out_floats.argmax(-1))
        if name == "engram":
            np.testing.assert_allclose(on_bits.router_features(x), on_floats.router_features(x), rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(on_bits.infer_tasks(x), on_floats.infer_tasks(x))
            for t in (0, 1):
                np.testing.assert_array_equal(on_bits.predict(x, task=t), on_floats.predict(x, task=t))
