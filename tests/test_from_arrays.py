"""Scenarios from a user's own arrays, and the named benchmarks as their wrappers."""
import numpy as np
import pytest
import tensorflow as tf

from larq_engrams import benchmarks as B
from larq_engrams.models import mlp
from larq_engrams.training import ContinualTrainer


def batches(ds):
    xs, ys = zip(*[(x, y.numpy()) for x, y in ds])
    if isinstance(xs[0], tuple):
        return (np.concatenate([a.numpy() for a, _ in xs]), np.concatenate([t.numpy() for _, t in xs])), np.concatenate(ys)
    return np.concatenate([x.numpy() for x in xs]), np.concatenate(ys)


def toy(n=60, classes=6, shape=(2, 3), dtype=np.float32, seed=0):
    """Example i of class c: every value equals c + i / 1000 (so examples can be traced)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n // classes)
    rng.shuffle(y)
    x = (y[:, None] + np.arange(len(y))[:, None] / 1000.0) * np.ones((1, int(np.prod(shape))))
    return x.reshape(len(y), *shape).astype(dtype), y


def test_split_by_classes_groups_relabels_and_keeps_float_inputs():
    x, y = toy()
    xt, yt = toy(30, seed=1)
    s = B.split_by_classes(x, y, xt, yt, setting="domain", classes_per_task=3, batch_size=7)
    assert s.num_tasks == 2 and s.num_classes == 3 and s.input_shape == (6,) and s.source == "arrays"
    assert [t.classes for t in s] == [(0, 1, 2), (3, 4, 5)] and [t.labels for t in s] == [(0, 1, 2)] * 2
    for task in s:
        xb, yb = batches(task.train)
        # Float inputs pass unscaled; the label is the position of the class in its group.
        original = np.floor(xb[:, 0] + 1e-6).astype(int)
        assert set(original) == set(task.classes)
        np.testing.assert_array_equal(yb, original - task.classes[0])
        assert len(yb) == task.num_train == 30
    task_il = B.split_by_classes(x, y, xt, yt, setting="task", classes_per_task=4)
    assert [t.classes for t in task_il] == [(0, 1, 2, 3), (4, 5)]  # the last group is smaller
    (_, ids), _ = batches(task_il[1].test)
    assert set(ids) == {1}


def test_uint8_inputs_are_scaled_and_normalization_applies():
    x, y = toy(dtype=np.uint8)
    s = B.split_by_classes(x, y, x, y, normalization=(0.5, 0.25), classes_per_task=6)
    xb, _ = batches(s[0].test)
    np.testing.assert_allclose(xb, (x.reshape(len(x), -1) / 255.0 - 0.5) / 0.25, rtol=1e-6)


def test_permuted_permutes_every_task_but_the_labels():
    x, y = toy()
    s = B.permuted_tasks(x, y, x, y, num_tasks=3, first_task_unpermuted=True, seed=4)
    assert s.setting == "domain" and s.num_classes == 6 and s.num_tasks == 3
    flat = x.reshape(len(x), -1)
    perms = B.pixel_permutations(3, 6, seed=4, first_task_unpermuted=True)
    for task, perm in zip(s, perms):
        xb, yb = batches(task.test)
        np.testing.assert_array_equal(xb, flat[:, perm])
        np.testing.assert_array_equal(yb, y)


def test_tasks_from_arrays_keeps_each_task_and_holds_out_validation_per_task():
    a, b = toy(seed=0), toy(seed=1)
    s = B.tasks_from_arrays([(*a, *a), (*b, *b)], setting="class")
    assert s.num_tasks == 2 and s.num_classes == 6 and [t.num_train for t in s] == [60, 60]
    v = B.tasks_from_arrays([(a[0], a[1], None, None), (b[0], b[1], None, None)], evaluate_on="validation",
                            validation_fraction=0.2)
    assert "validation[0.2 of each task's train" in v.source
    for task in v:
        (xtr, _), (xva, _) = batches(task.train), batches(task.test)
        assert task.num_test == 12 and task.num_train == 48  # 2 of 10 per class, stratified
        assert not {r.tobytes() for r in xtr} & {r.tobytes() for r in xva}


@pytest.mark.parametrize("call, message", [
    (lambda x, y: B.split_by_classes(x, y[:-1], x, y), "one int per example"),
    (lambda x, y: B.split_by_classes(x, y.astype(float), x, y), "labels must be ints"),
    (lambda x, y: B.split_by_classes(x, y, None, None), "test arrays: images and labels are both needed"),
    (lambda x, y: B.split_by_classes(x, y, x[:, :1], y), "differ in shape"),
    (lambda x, y: B.split_by_classes(x, y, x, y, setting="joint"), "`setting` must be one of"),
    (lambda x, y: B.permuted_tasks(x, y, x, y, num_tasks=0), "`num_tasks` must be a positive int"),
    (lambda x, y: B.tasks_from_arrays([(x, y)]), r"task 0 must be \(x_train, y_train, x_test, y_test\)"),
    (lambda x, y: B.tasks_from_arrays([(x, y, x, y), (x[:, :1], y, x[:, :1], y)]), "one shape"),
])
def test_bad_arrays_are_clear_errors(call, message):
    x, y = toy()
    with pytest.raises(ValueError, match=message):
        call(x, y)


def test_split_mnist_is_split_by_classes_on_its_arrays():
    data = B.load_bundled_mnist()
    named = B.split_mnist("class", source="bundled", seed=3, class_order="random")
    own = B.split_by_classes(data.x_train, data.y_train, data.x_test, data.y_test, seed=3, class_order="random")
    assert [t.classes for t in named] == [t.classes for t in own]
    for a, b in zip(named, own):
        for left, right in zip(batches(a.train), batches(b.train)):
            np.testing.assert_array_equal(left, right)


def test_a_trainer_learns_from_own_arrays():
    x, y = toy(n=300, classes=4, shape=(4,))
    s = B.split_by_classes(x, y, x, y, classes_per_task=2, batch_size=20)
    result = ContinualTrainer(mlp((4,), 4, hidden=(16,)), lambda: tf.keras.optimizers.Adam(0.05),
                              epochs=5, verbose=0, jit_compile=False).fit(s)
    assert result.accuracy_matrix[0][0] > 0.9  # classes 0 and 1 are separable by their value
