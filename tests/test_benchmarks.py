"""Benchmarks: sources, formats, settings, permutations, pipelines."""
import gzip
import os
import pickle

import numpy as np
import pytest

from larq_engrams import benchmarks as B
from larq_engrams.benchmarks import sources


def as_arrays(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x)
        ys.append(y.numpy())
    if isinstance(xs[0], tuple):
        return (np.concatenate([a.numpy() for a, _ in xs]), np.concatenate([t.numpy() for _, t in xs])), np.concatenate(ys)
    return np.concatenate([x.numpy() for x in xs]), np.concatenate(ys)


@pytest.fixture(scope="module")
def bundled():
    return B.load_bundled_mnist()


@pytest.fixture
def no_tfds(monkeypatch):
    def unavailable(name, data_dir):
        raise B.DataNotFoundError(f"TFDS has no prepared {name!r} (simulated)")

    monkeypatch.setattr(sources, "_load_tfds", unavailable)
    monkeypatch.setattr(sources, "_tfds_prepared", lambda name, data_dir: False)


def test_bundled_sample_is_the_real_mnist_test_set(bundled):
    assert bundled.x_train.shape == (8000, 28, 28) and bundled.x_test.shape == (2000, 28, 28)
    assert bundled.x_train.dtype == np.uint8 and bundled.y_train.dtype == np.int64
    # The README of the data states the class counts of the 10,000 images.
    counts = np.bincount(np.concatenate([bundled.y_train, bundled.y_test]))
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert bundled.source == "bundled:mnist-t10k[8000/2000]"


@pytest.mark.parametrize("setting", ["class", "domain", "task"])
def test_split_mnist_labels_per_setting(setting, no_tfds):
    scenario = B.split_mnist(setting, source="auto")
    assert scenario.source.startswith("bundled") and scenario.num_tasks == 5
    assert scenario.num_classes == (2 if setting == "domain" else 10)
    assert scenario.provides_task_id == (setting == "task")
    for task in scenario:
        (x, y) = as_arrays(task.test)
        if setting == "task":
            x, ids = x
            assert np.all(ids == task.task_id)
        assert x.shape[1:] == (784,) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
        expected = {0, 1} if setting == "domain" else set(task.classes)
        assert set(np.unique(y)) == expected
        assert task.classes == (2 * task.task_id, 2 * task.task_id + 1)
        assert len(y) == task.num_test


def test_split_train_and_test_never_overlap(no_tfds):
    scenario = B.split_mnist("class")
    for task in scenario:
        (xtr, _), (xte, _) = as_arrays(task.train), as_arrays(task.test)
        train_rows = {row.tobytes() for row in (xtr * 255).round().astype(np.uint8)}
        test_rows = {row.tobytes() for row in (xte * 255).round().astype(np.uint8)}
        assert not train_rows & test_rows
        assert len(train_rows) > 1000


def test_class_orders():
    assert B.class_pairs() == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    random_a, random_b = B.class_pairs("random", seed=3), B.class_pairs("random", seed=3)
    assert random_a == random_b != B.class_pairs()
    assert sorted(c for p in random_a for c in p) == list(range(10))
    assert B.class_pairs([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])[0] == (9, 8)
    with pytest.raises(ValueError, match="class_order"):
        B.class_pairs([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])


def test_explicit_class_order_reaches_the_tasks(no_tfds):
    scenario = B.split_mnist("class", class_order=[3, 7, 0, 1, 2, 4, 5, 6, 8, 9])
    assert scenario.tasks[0].classes == (3, 7)
    assert set(np.unique(as_arrays(scenario.tasks[0].test)[1])) == {3, 7}


def test_permutations_are_seeded_true_permutations():
    a = B.pixel_permutations(4, seed=1)
    b = B.pixel_permutations(4, seed=1)
    c = B.pixel_permutations(4, seed=2)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
        assert sorted(p.tolist()) == list(range(784))
    assert not np.array_equal(a[0], c[0])
    assert all(not np.array_equal(a[i], a[j]) for i in range(4) for j in range(i))
    first = B.pixel_permutations(3, first_task_unpermuted=True)
    np.testing.assert_array_equal(first[0], np.arange(784))


def test_permuted_mnist_applies_each_tasks_permutation(bundled, no_tfds):
    scenario = B.permuted_mnist(3, first_task_unpermuted=True, seed=5)
    assert scenario.setting == "domain" and scenario.num_classes == 10
    perms = B.pixel_permutations(3, seed=5, first_task_unpermuted=True)
    plain = bundled.x_test.reshape(-1, 784).astype(np.float32) / 255.0
    for task, perm in zip(scenario, perms):
        x, y = as_arrays(task.test)
        np.testing.assert_array_equal(y, bundled.y_test)
        np.testing.assert_allclose(x, plain[:, perm], rtol=1e-6)


def test_training_sets_reshuffle_each_epoch_reproducibly(no_tfds):
    def first_labels():
        task = B.split_mnist("class", seed=4)[0]
        return [next(iter(task.train))[1].numpy() for _ in range(2)]

    (a1, a2), (b1, b2) = first_labels(), first_labels()
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)


def test_normalization_is_stated_and_applied(no_tfds):
    x, _ = as_arrays(B.split_mnist("class", normalize=True)[0].test)
    raw, _ = as_arrays(B.split_mnist("class")[0].test)
    np.testing.assert_allclose(x, (raw - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)


def test_auto_without_tfds_and_without_sample_says_what_to_do(no_tfds, monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*source='local'"):
        B.split_fashion_mnist()
    with pytest.raises(ValueError, match="no bundled sample"):
        B.split_cifar10(source="bundled")


def test_every_data_source_problem_is_one_line_saying_what_to_do(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (dict(source="local", data_dir=str(empty)), "missing IDX files.*expected the four IDX files"),
        (dict(source="local", data_dir=str(tmp_path / "absent")), "is not a folder"),
        (dict(source="local"), "needs `data_dir`"),
        (dict(source="tfds", data_dir=str(empty)), "TFDS has no prepared 'mnist'.*tfds build mnist.*source='local'"),
        # "auto" with the user's own folder never falls back to other data.
        (dict(data_dir=str(empty)), "no 'mnist' in data_dir.*missing IDX files"),
    ]
    for kwargs, message in cases:
        with pytest.raises(B.DataSourceError, match=message) as error:
            B.load_arrays("mnist", **kwargs)
        assert "\n" not in str(error.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        write_idx(str(bad / name), np.zeros((4, 28, 28), np.uint8), 2051)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        write_idx(str(bad / name), np.zeros(3, np.uint8), 2049)  # 3 labels for 4 images
    with pytest.raises(B.DataFormatError, match=r"\(3,\) labels for 4 images") as error:
        B.load_arrays("mnist", "local", str(bad))
    assert "\n" not in str(error.value)


def test_auto_logs_the_fallback(no_tfds, caplog):
    with caplog.at_level("INFO", logger="larq_engrams.benchmarks"):
        B.load_arrays("mnist")
    assert any("bundled:mnist-t10k" in r.getMessage() and "TFDS has not prepared it" in r.getMessage()
               for r in caplog.records)


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=30):
        scenario = B.split_mnist("class", source="tfds")
        assert scenario.source == "tfds:mnist"
        arrays = B.load_arrays("cifar10", source="tfds")
    assert arrays.x_train.shape[1:] == (32, 32, 3) and arrays.x_train.dtype == np.uint8


def test_bad_arguments():
    with pytest.raises(ValueError, match="setting"):
        B.split_mnist("online")
    with pytest.raises(ValueError, match="source"):
        B.split_mnist(source="internet")
    with pytest.raises(ValueError, match="num_tasks"):
        B.permuted_mnist(0)
    with pytest.raises(ValueError, match="batch_size"):
        B.split_mnist(batch_size=0)
    with pytest.raises(ValueError, match="data_dir"):
        B.split_mnist(source="local")


def test_empty_task_is_a_clear_error(monkeypatch, bundled):
    keep = ~np.isin(bundled.y_train, [8, 9])
    no_last_pair = B.DatasetArrays(bundled.x_train[keep], bundled.y_train[keep],
                                   bundled.x_test, bundled.y_test, "test:no-8-9")
    monkeypatch.setattr("larq_engrams.benchmarks.split.load_arrays", lambda *a, **k: no_last_pair)
    with pytest.raises(ValueError, match=r"task 4 \(classes \(8, 9\)\) has 0 training.*test:no-8-9"):
        B.split_mnist("class")


# ------------------------------------------------------------ original formats
def write_idx(path, array, magic, compress=False):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path + ".gz", "wb") if compress else open(path, "wb")) as f:
        f.write(data)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n, compress in (("train", 60, True), ("t10k", 20, False)):
        write_idx(str(tmp_path / f"{split}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)), 2051, compress)
        write_idx(str(tmp_path / f"{split}-labels-idx1-ubyte"), np.arange(n) % 10, 2049, compress)
    return tmp_path


def test_resolve_source_names_the_data_load_arrays_reads_without_reading_it(idx_dir, no_tfds, monkeypatch):
    cases = [("mnist", "auto", None), ("mnist", "bundled", None), ("mnist", "local", idx_dir),
             ("mnist", "auto", idx_dir)]
    if os.path.isdir(sources.DEBIAN_FASHION_MNIST):
        cases.append(("fashion_mnist", "auto", None))
    expected = [B.load_arrays(*case).source for case in cases]

    def no_reading(*args, **kwargs):
        raise AssertionError("resolve_source read data")

    for reader in ("read_idx", "read_idx_dataset", "load_bundled_mnist"):
        monkeypatch.setattr(sources, reader, no_reading)
    assert [B.resolve_source(*case) for case in cases] == expected
    assert expected[:3] == ["bundled:mnist-t10k[8000/2000]"] * 2 + [f"local:{idx_dir}"]


def test_local_idx_files(idx_dir):
    for constructor in (B.split_mnist, B.split_fashion_mnist):
        scenario = constructor("class", source="local", data_dir=str(idx_dir))
        assert scenario.source == f"local:{idx_dir}"
        assert sum(t.num_train for t in scenario) == 60 and sum(t.num_test for t in scenario) == 20


def test_idx_errors_name_the_file(idx_dir):
    labels = str(idx_dir / "t10k-labels-idx1-ubyte")
    write_idx(labels, np.arange(20) % 10, 2051)  # images magic on a labels file
    with pytest.raises(B.DataFormatError, match="t10k-labels-idx1-ubyte.*2051"):
        B.load_arrays("mnist", "local", str(idx_dir))
    write_idx(labels, np.arange(20) % 10, 2049)
    with open(labels, "ab") as f:
        f.write(b"extra")
    with pytest.raises(B.DataFormatError, match="t10k-labels-idx1-ubyte.*truncated or corrupt"):
        B.load_arrays("mnist", "local", str(idx_dir))
    os.remove(labels)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        B.load_arrays("mnist", "local", str(idx_dir))


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, n in [(f"data_batch_{i}", 10) for i in range(1, 6)] + [("test_batch", 10)]:
        # Each row: 1024 red values, 1024 green, 1024 blue; encode the channel as 10/20/30.
        data = np.concatenate([np.full((n, 1024), c, np.uint8) for c in (10, 20, 30)], axis=1)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(np.arange(n) % 10)}, f)
    splits = B.read_cifar10(str(tmp_path))
    x, y = splits["train"]
    assert x.shape == (50, 32, 32, 3) and len(y) == 50
    np.testing.assert_array_equal(x[0, 5, 7], [10, 20, 30])  # channels last
    scenario = B.split_cifar10("domain", source="local", data_dir=str(tmp_path))
    assert scenario.input_shape == (3072,) and scenario.num_classes == 2
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(B.DataFormatError, match="test_batch"):
        B.read_cifar10(str(folder))


@pytest.fixture
def core50_dir(tmp_path):
    # The official layout: images indexed globally; LUP/labels[scenario][run][batch], the
    # last batch being the test set. Objects 0..49, category = object // 5.
    rng = np.random.default_rng(0)
    n_per, sessions = 10, 8
    images = rng.integers(0, 256, (n_per * (sessions + 1), 16, 16, 3), dtype=np.uint8)
    lup = [list(range(b * n_per, (b + 1) * n_per)) for b in range(sessions + 1)]
    labels = [[int(i) for i in rng.integers(0, 50, n_per)] for _ in range(sessions + 1)]
    np.savez(tmp_path / "core50_imgs.npz", x=images)
    for name, table in (("LUP.pkl", lup), ("labels.pkl", labels)):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"ni": [table], "nc": [[]]}, f)
    return tmp_path, images, labels


def test_core50_ni(core50_dir):
    folder, images, labels = core50_dir
    scenario = B.core50_ni(str(folder), image_size=8)
    assert scenario.num_tasks == 8 and scenario.num_classes == 50 and scenario.setting == "domain"
    assert scenario.input_shape == (8 * 8 * 3,)
    x, y = as_arrays(scenario[0].test)
    np.testing.assert_array_equal(y, labels[-1])
    assert scenario[0].test is scenario[7].test  # one common test set
    # Area resizing 16 -> 8 averages 2x2 blocks.
    block = images[80:82, :2, :2, :].reshape(2, 4, 3).mean(axis=1) / 255.0
    np.testing.assert_allclose(x[:2].reshape(2, 8, 8, 3)[:, 0, 0], block, atol=1 / 255 + 1e-6)
    categories = B.core50_ni(str(folder), labels="category", image_size=None)
    assert categories.num_classes == 10
    np.testing.assert_array_equal(as_arrays(categories[3].train)[1].max() <= 9, True)
    os.remove(folder / "LUP.pkl")
    with pytest.raises(FileNotFoundError, match="LUP.pkl"):
        B.core50_ni(str(folder))


# ------------------------------------------------------------------ validation protocol
def _rows(x):
    return {bytes(row) for row in np.asarray(x).reshape(len(x), -1)}


def test_validation_split_is_held_out_of_training_stratified_and_seeded(bundled):
    arrays = B.hold_out_validation(bundled, 0.1, seed=3)
    assert len(arrays.y_test) + len(arrays.y_train) == 8000
    train_rows, val_rows = _rows(arrays.x_train), _rows(arrays.x_test)
    assert not train_rows & val_rows  # disjoint from what is trained on
    assert val_rows <= _rows(bundled.x_train) and not val_rows & _rows(bundled.x_test)
    counts, held = np.bincount(bundled.y_train), np.bincount(arrays.y_test)
    np.testing.assert_array_equal(held, np.maximum(1, np.round(0.1 * counts)).astype(int))  # per class
    again = B.hold_out_validation(bundled, 0.1, seed=3)
    np.testing.assert_array_equal(again.y_test, arrays.y_test)
    assert _rows(B.hold_out_validation(bundled, 0.1, seed=4).x_test) != val_rows
    assert "validation[0.1 of train, seed 3]" in arrays.source
    with pytest.raises(ValueError, match="validation_fraction"):
        B.hold_out_validation(bundled, 1.5)


@pytest.mark.parametrize("build", [
    lambda **k: B.split_mnist("class", **k),
    lambda **k: B.split_mnist("task", **k),
    lambda **k: B.permuted_mnist(2, **k),
], ids=["split_class", "split_task", "permuted"])
def test_selection_scenarios_never_read_the_test_split(build, bundled, monkeypatch):
    """The test arrays are replaced by None: a validation scenario still builds and
    evaluates on held-out training data; a test scenario cannot."""
    no_test = sources.DatasetArrays(bundled.x_train, bundled.y_train, None, None, bundled.source)
    for module in ("split", "permuted"):
        monkeypatch.setattr(f"larq_engrams.benchmarks.{module}.load_arrays", lambda *a, **k: no_test)
    scenario = build(evaluate_on="validation", seed=1)
    assert scenario.details["evaluated_on"] == "validation" and "validation[" in scenario.source
    x_val, _ = as_arrays(scenario[0].test)
    x_train, _ = as_arrays(scenario[0].train)
    x_val = x_val[0] if isinstance(x_val, tuple) else x_val
    assert len(x_val) and len(x_train)
    with pytest.raises((TypeError, AttributeError, ValueError)):
        build(evaluate_on="test")
    with pytest.raises(ValueError, match="evaluate_on"):
        build(evaluate_on="train")


@pytest.mark.skipif(not os.path.isdir(sources.DEBIAN_FASHION_MNIST),
                    reason="the Debian package dataset-fashion-mnist is not installed")
def test_auto_finds_the_debian_fashion_mnist(no_tfds):
    scenario = B.split_fashion_mnist("class", evaluate_on="validation")
    assert scenario.source.startswith(f"local:{sources.DEBIAN_FASHION_MNIST}")
    assert sum(t.num_train + t.num_test for t in scenario) == 60000
