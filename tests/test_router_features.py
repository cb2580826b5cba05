"""The router's convolutional random features: the maths by hand, the NumPy twin, export."""
import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams import runtime
from larq_engrams.class_statistics import ClassStatisticsClassifier
from larq_engrams.export import save_packed
from larq_engrams.task_inference import ConvGeometry, InputDiscriminant

LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _by_hand(images, filters, k, p, floor=None):
    """Loops over every position: relu of each k x k window (normalized to
    (u - mean) / sqrt(var + floor) with a floor) dotted with each filter, averaged over
    p x p blocks of positions."""
    n, height, width = images.shape
    grid_h, grid_w = (height - k + 1) // p, (width - k + 1) // p
    out = np.zeros((n, grid_h, grid_w, filters.shape[1]))
    for b in range(n):
        for gi in range(grid_h):
            for gj in range(grid_w):
                for i in range(gi * p, gi * p + p):
                    for j in range(gj * p, gj * p + p):
                        window = images[b, i:i + k, j:j + k].reshape(-1).astype(np.float64)
                        if floor is not None:
                            window = (window - window.mean()) / np.sqrt(window.var() + floor)
                        out[b, gi, gj] += np.maximum(window @ filters, 0) / p**2
    return out.reshape(n, -1)


def test_conv_features_by_hand_in_tensorflow_and_numpy():
    rng = np.random.default_rng(0)
    images = rng.random((3, 7, 6)).astype(np.float32)  # 5 x 4 positions: the last row is cut by the pooling
    geometry = ConvGeometry((7, 6), filters=4, kernel_size=3, pool=2)
    assert geometry.grid == (2, 2) and geometry.features == 16 and geometry.patch_size == 9
    filters = rng.choice([-1.0, 1.0], size=(9, 4)).astype(np.float32) / 3.0
    expected = _by_hand(images, filters, 3, 2)
    flat = images.reshape(3, -1)
    np.testing.assert_allclose(geometry.features_of(tf.constant(flat), tf.constant(filters)).numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runtime.conv_features(flat, filters, (7, 6), 3, 2), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("floor", [0.01, 1.0])
def test_patch_normalized_features_by_hand_in_tensorflow_numpy_and_c(floor):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 7, 6)).astype(np.float32)
    images[0, :4, :4] = 0.5  # flat patches: zero after centring, whatever the floor
    geometry = ConvGeometry((7, 6), filters=4, kernel_size=3, pool=2, patch_floor=floor)
    filters = rng.choice([-1.0, 1.0], size=(9, 4)).astype(np.float32) / 3.0
    expected = _by_hand(images, filters, 3, 2, floor)
    assert expected[0, :4].tolist() == [0.0] * 4  # the first pooled position sees flat patches only
    flat = images.reshape(3, -1)
    np.testing.assert_allclose(geometry.features_of(tf.constant(flat), tf.constant(filters)).numpy(), expected,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runtime.conv_features(flat, filters, (7, 6), 3, 2, floor), expected,
                               rtol=1e-5, atol=1e-6)
    if runtime.KERNELS == "c":
        np.testing.assert_allclose(runtime.signed_conv_pool(flat, filters * 3.0, (7, 6), 3, 2, scale=1 / 12,
                                                            patch_floor=floor), expected, rtol=1e-5, atol=1e-6)


def test_patch_normalization_by_hand():
    # One 2 x 2 patch u = (1, 3, 1, 3): mean 2, var 1; with eps = 1, n(u) = (u - 2) / sqrt(2).
    # Filter (+1, +1, -1, +1) / 2: n(u) . R = (-1 + 1 + 1 + 1) / (2 sqrt 2) = 1 / sqrt(2);
    # its negation gives -1 / sqrt(2), rectified to 0.
    geometry = ConvGeometry((2, 2), filters=2, kernel_size=2, pool=1, patch_floor=1.0)
    filters = np.array([[1, -1], [1, -1], [-1, 1], [1, -1]], np.float32) / 2
    image = np.array([[1, 3, 1, 3]], np.float32)
    np.testing.assert_allclose(geometry.features_of(tf.constant(image), tf.constant(filters)).numpy(),
                               [[2 ** -0.5, 0.0]], rtol=1e-6)
    # Brightness and contrast do not change it with the floor in the same units:
    # 10 + 100 u has var 1e4, and eps 1e4 gives the same n.
    np.testing.assert_allclose(runtime.conv_features(10 + 100 * image, filters, (2, 2), 2, 1, 1e4),
                               [[2 ** -0.5, 0.0]], rtol=1e-5)
    with pytest.raises(ValueError, match="patch_floor"):
        ConvGeometry((2, 2), filters=2, kernel_size=2, pool=1, patch_floor=0.0)


def test_the_feature_budget_sets_the_filters():
    geometry = ConvGeometry.for_budget((28, 28), 2048)  # 5 x 5 filters, 4 x 4 pooling: 36 positions
    assert (geometry.filters, geometry.features) == (56, 2016)
    router = InputDiscriminant(2, 10, features=2048, feature_map="conv", image_shape=(28, 28))
    router.build((None, 784))
    assert router.num_features == 2016 and tuple(router.projection_bits.shape) == (25, 2)
    # another geometry: 3 x 3 filters, 3 x 3 pooling: 8 x 8 = 64 positions, 32 filters, 9 taps
    router = InputDiscriminant(2, 10, features=2048, feature_map="conv", image_shape=(28, 28), conv_kernel_size=3,
                               conv_pool=3)
    router.build((None, 784))
    assert (router.conv_geometry.kernel_size, router.conv_geometry.pool, router.num_features) == (3, 3, 2048)
    with pytest.raises(ValueError, match="needs images"):
        InputDiscriminant(2, 10, feature_map="conv", image_shape=(784,))
    with pytest.raises(ValueError, match="router_features='conv' needs image inputs"):
        le.engram_bnn((784,), 10, hidden=(8,), router_features="conv")


def _image_tasks(seed=0):
    """Two tasks of 8 x 8 images: bright bars in different places per class."""
    rng = np.random.default_rng(seed)
    tasks = []
    for t, classes in enumerate(((0, 1), (2, 3))):
        y = rng.choice(classes, 200).astype(np.int32)
        x = rng.random((200, 8, 8)).astype(np.float32) * 0.3
        for i, c in enumerate(y):
            if c % 2:
                x[i, :, 2 * c % 8] += 1.0  # a vertical bar
            else:
                x[i, 2 * c % 8 + 1, :] += 1.0  # a horizontal bar
        tasks.append((x, y))
    return tasks


def test_a_conv_router_exports_and_runs_the_same_without_tensorflow(tmp_path):
    tasks = _image_tasks()
    model = le.engram_bnn((8, 8), 4, hidden=(32,), max_tasks=2, engram_fraction=0.5, lda_features=72,
                          router_features="conv")
    assert model.task_discriminant.conv_geometry.filters == 72  # 8 x 8, 5 x 5 filters, 4 x 4 pool: 1 position
    for t, (x, y) in enumerate(tasks):
        model.begin_task(t)
        model.compile(optimizer="adam", loss=LOSS)
        model.fit(x, y, batch_size=50, epochs=2, verbose=0)
    model.set_inference("infer")
    x = np.concatenate([t[0] for t in tasks])
    truth = np.repeat([0, 1], 200)
    assert (model.infer_tasks(x).numpy() == truth).mean() > 0.9
    save_packed(model, str(tmp_path / "conv.npz"))
    net = runtime.load(str(tmp_path / "conv.npz"))
    assert net.manifest["router"]["feature_map"] == "conv" and net.manifest["version"] == runtime.VERSION
    np.testing.assert_array_equal(net.infer_tasks(x), model.infer_tasks(x).numpy())
    np.testing.assert_allclose(net.router_scores(x), model.task_discriminant.group_scores(x.reshape(400, -1)).numpy(),
                               rtol=1e-4, atol=1e-3)
    assert (net.predict(x).argmax(-1) == model.predict(x, verbose=0).argmax(-1)).mean() > 0.999
    assert net.manifest["router"]["patch_floor"] == model.router_patch_floor == 0.01  # the default map
    restored = le.EngramModel.from_config(model.get_config())
    assert restored.router_features == "conv" and restored.image_shape == (8, 8)
    assert restored.task_discriminant.conv_geometry.patch_floor == 0.01
    old = {k: v for k, v in model.get_config().items() if k != "router_patch_floor"}  # saved before it existed
    assert le.EngramModel.from_config(old).task_discriminant.conv_geometry.patch_floor is None


def test_slda_on_conv_features_round_trips_its_config():
    model = ClassStatisticsClassifier((784,), 10, features=2048, feature_map="conv", image_shape=(28, 28))
    config = model.get_config()
    assert config["feature_map"] == "conv" and config["image_shape"] == [28, 28]
    assert ClassStatisticsClassifier(**config).discriminant.num_features == 2016
    config = ClassStatisticsClassifier((784,), 10, features=2048, feature_map="conv", image_shape=(28, 28),
                                       conv_kernel_size=7, conv_pool=5).get_config()
    assert (config["conv_kernel_size"], config["conv_pool"]) == (7, 5)  # 4 x 4 positions of 128 filters
    assert ClassStatisticsClassifier(**config).discriminant.num_features == 2048
    assert config["conv_patch_floor"] == 0.01
    del config["conv_patch_floor"]  # a config saved before the patches were normalized
    assert ClassStatisticsClassifier.from_config(config).discriminant.conv_geometry.patch_floor is None
