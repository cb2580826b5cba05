"""Where a benchmark's arrays come from: TFDS, a local folder of original files, or the
bundled MNIST sample. Every scenario records the source it used."""
import dataclasses
import importlib.resources
import logging

import numpy as np

from larq_engrams.benchmarks.formats import read_cifar10, read_idx, read_idx_dataset

__all__ = ["SOURCES", "DatasetArrays", "load_arrays", "load_bundled_mnist"]

log = logging.getLogger("larq_engrams.benchmarks")

SOURCES = ("auto", "tfds", "local", "bundled")
_TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}
_DOWNLOAD_HINTS = {
    "mnist": "the four IDX files from http://yann.lecun.com/exdb/mnist/",
    "fashion_mnist": "the four IDX files from https://github.com/zalandoresearch/fashion-mnist",
    "cifar10": "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extracted",
}
BUNDLED_TRAIN = 8000  # of the 10,000 bundled MNIST test images; the last 2,000 test


@dataclasses.dataclass(frozen=True)
class DatasetArrays:
    """Raw uint8 images and int labels of one dataset, and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # e.g. "tfds:mnist", "local:/data/mnist", "bundled:mnist-t10k[8000/2000]"


def load_bundled_mnist():
    """The real MNIST test set shipped with the package, split 8,000 train / 2,000 test
    (first / last images). Not the MNIST training set: results on it say so."""
    folder = importlib.resources.files("larq_engrams") / "data" / "mnist"
    with importlib.resources.as_file(folder / "t10k-images-idx3-ubyte.gz") as path:
        images = read_idx(path, 2051)
    with importlib.resources.as_file(folder / "t10k-labels-idx1-ubyte.gz") as path:
        labels = read_idx(path, 2049).astype(np.int64)
    n = BUNDLED_TRAIN
    return DatasetArrays(
        images[:n], labels[:n], images[n:], labels[n:],
        f"bundled:mnist-t10k[{n}/{len(images) - n}]",
    )


def _load_tfds(name, data_dir):
    """Loads a prepared TFDS dataset without downloading (raises if it is not there)."""
    import tensorflow_datasets as tfds

    splits = {}
    for split in ("train", "test"):
        ds = tfds.load(
            _TFDS_NAMES[name], split=split, as_supervised=True, data_dir=data_dir, download=False
        )
        xs, ys = [], []
        for x, y in tfds.as_numpy(ds.batch(10_000)):
            xs.append(x)
            ys.append(y)
        x = np.concatenate(xs)
        if x.ndim == 4 and x.shape[-1] == 1:  # (N, 28, 28, 1) -> (N, 28, 28), as IDX
            x = x[..., 0]
        splits[split] = (x.astype(np.uint8), np.concatenate(ys).astype(np.int64))
    where = f"tfds:{_TFDS_NAMES[name]}" + (f"@{data_dir}" if data_dir else "")
    return DatasetArrays(*splits["train"], *splits["test"], where)


def _load_local(name, data_dir):
    if data_dir is None:
        raise ValueError(f"source='local' needs `data_dir`: the folder holding {_DOWNLOAD_HINTS[name]}.")
    if name == "cifar10":
        splits = read_cifar10(data_dir)
    else:
        splits = read_idx_dataset(data_dir)
    (xt, yt), (xe, ye) = splits["train"], splits["test"]
    return DatasetArrays(xt, yt.astype(np.int64), xe, ye.astype(np.int64), f"local:{data_dir}")


def load_arrays(name, source="auto", data_dir=None):
    """Loads `name` ("mnist", "fashion_mnist", "cifar10") from `source`.

    Args:
        source: "tfds" (`tfds.load(..., download=False)`, `data_dir` is TFDS' data
            directory), "local" (`data_dir` holds the original files), "bundled" (the
            MNIST sample inside the package; MNIST only) or "auto": TFDS when it can
            load the set, otherwise the bundled sample where one exists, saying so in
            the log. Nothing is ever downloaded.
    """
    if name not in _TFDS_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(_TFDS_NAMES)}")
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES}, got {source!r}")
    if source == "local":
        arrays = _load_local(name, data_dir)
    elif source == "bundled":
        if name != "mnist":
            raise ValueError(f"there is no bundled sample of {name!r}; only of 'mnist'.")
        arrays = load_bundled_mnist()
    elif source == "tfds":
        arrays = _load_tfds(name, data_dir)
    else:
        try:
            arrays = _load_tfds(name, data_dir)
        except Exception as err:  # not prepared, no tfds metadata, no network...
            first_sentence = (str(err).splitlines() or [""])[0].split(". ")[0][:160]
            reason = f"{type(err).__name__}: {first_sentence}"
            if name != "mnist":
                raise FileNotFoundError(
                    f"no source for {name!r}: TFDS cannot load it ({reason}) and there is "
                    f"no bundled sample. Download {_DOWNLOAD_HINTS[name]} into a folder and "
                    f"pass source='local', data_dir=<folder>."
                ) from err
            arrays = load_bundled_mnist()
            log.warning(
                "Data source for %s: %s (TFDS could not load it: %s). This is the real "
                "MNIST test set split 8,000/2,000, not the MNIST training set.",
                name, arrays.source, reason,
            )
            return arrays
    log.info("Data source for %s: %s", name, arrays.source)
    return arrays
