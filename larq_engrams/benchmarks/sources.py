"""Where a benchmark's arrays come from: TFDS, a local folder of original files, or the
bundled MNIST sample. Every scenario records the source it used."""
import contextlib
import dataclasses
import importlib.resources
import logging
import os

import numpy as np

from larq_engrams.benchmarks.formats import (
    DataNotFoundError,
    DataSourceError,
    missing_idx_files,
    read_cifar10,
    read_idx,
    read_idx_dataset,
)

__all__ = ["SOURCES", "EVALUATION_SPLITS", "DatasetArrays", "hold_out_validation", "load_arrays",
           "load_bundled_mnist", "resolve_source", "select_evaluation", "validation_source"]

log = logging.getLogger("larq_engrams.benchmarks")

SOURCES = ("auto", "tfds", "local", "bundled")
_TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}
_DOWNLOAD_HINTS = {
    "mnist": "the four IDX files from http://yann.lecun.com/exdb/mnist/",
    "fashion_mnist": "the four IDX files from https://github.com/zalandoresearch/fashion-mnist",
    "cifar10": "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extracted",
}
BUNDLED_TRAIN = 8000  # of the 10,000 bundled MNIST test images; the last 2,000 test
BUNDLED_SOURCE = f"bundled:mnist-t10k[{BUNDLED_TRAIN}/{10_000 - BUNDLED_TRAIN}]"
# Where the Debian package `dataset-fashion-mnist` installs the original IDX files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
EVALUATION_SPLITS = ("test", "validation")


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
    return DatasetArrays(images[:n], labels[:n], images[n:], labels[n:], BUNDLED_SOURCE)


def hold_out_validation(arrays, fraction=0.1, seed=0):
    """The arrays for model selection: a seeded, class-stratified `fraction` of the
    *training* data becomes the evaluation split, the rest stays for training, and the
    test split is dropped, so nothing built from the result can read test data.

    Per class c with n_c training examples, round(fraction * n_c) of them (at least
    one) are drawn without replacement by `numpy.random.default_rng([seed, c])`.
    """
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`validation_fraction` must be in (0, 1), got {fraction!r}.")
    held = np.zeros(len(arrays.y_train), bool)
    for c in np.unique(arrays.y_train):
        index = np.flatnonzero(arrays.y_train == c)
        count = max(1, int(round(fraction * index.size)))
        if count >= index.size:
            raise ValueError(f"class {c} has {index.size} training examples: too few to hold out {fraction:g}.")
        held[np.random.default_rng([int(seed), int(c)]).choice(index, count, replace=False)] = True
    return DatasetArrays(
        arrays.x_train[~held], arrays.y_train[~held], arrays.x_train[held], arrays.y_train[held],
        validation_source(arrays.source, fraction, seed),
    )


def validation_source(source, fraction, seed):
    """The source recorded for `hold_out_validation(arrays from source, fraction, seed)`."""
    return f"{source} validation[{float(fraction):g} of train, seed {int(seed)}]"


def select_evaluation(arrays, evaluate_on="test", validation_fraction=0.1, seed=0):
    """`arrays` unchanged for "test"; `hold_out_validation(...)` for "validation"."""
    if evaluate_on not in EVALUATION_SPLITS:
        raise ValueError(f"`evaluate_on` must be one of {EVALUATION_SPLITS}, got {evaluate_on!r}.")
    if evaluate_on == "test":
        return arrays
    return hold_out_validation(arrays, validation_fraction, seed)


@contextlib.contextmanager
def _tfds_logs_off():
    """TFDS' warnings (it logs through absl) off while "auto" probes whether it has the data."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_tfds(name, data_dir):
    """Loads a prepared TFDS dataset without downloading (`DataNotFoundError` if it is
    not there)."""
    import tensorflow_datasets as tfds  # here, not at the top: importing it takes seconds

    splits = {}
    try:
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
    except Exception as err:  # TFDS says "not prepared" with AssertionError, among others
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        raise DataNotFoundError(
            f"TFDS has no prepared {_TFDS_NAMES[name]!r} in {where} ({type(err).__name__}); prepare it with "
            f"`tfds build {_TFDS_NAMES[name]}` where there is internet access and copy that folder here, or "
            f"use source='local' with data_dir=<a folder of {_DOWNLOAD_HINTS[name]}>") from err
    return DatasetArrays(*splits["train"], *splits["test"], _tfds_source(name, data_dir))


def _load_local(name, data_dir):
    """The original files in `data_dir` (which `resolve_source` has checked by name)."""
    try:
        splits = read_cifar10(data_dir) if name == "cifar10" else read_idx_dataset(data_dir)
    except DataNotFoundError as err:
        raise DataNotFoundError(f"{err}; expected {_DOWNLOAD_HINTS[name]}") from err
    (xt, yt), (xe, ye) = splits["train"], splits["test"]
    return DatasetArrays(xt, yt.astype(np.int64), xe, ye.astype(np.int64), f"local:{data_dir}")


def _tfds_prepared(name, data_dir):
    """Whether TFDS has `name` prepared (in `data_dir`, or its default folder); reads
    no data."""
    try:
        import tensorflow_datasets as tfds  # here, not at the top: importing it takes seconds

        with _tfds_logs_off():
            return bool(tfds.builder(_TFDS_NAMES[name], data_dir=data_dir).is_prepared())
    except Exception:  # no metadata, a broken install...: TFDS cannot give the data
        return False


def _check_original_files(name, folder):
    """`DataNotFoundError`, with the message loading would give, unless `folder` holds
    the data set's original files (checked by name: nothing is read)."""
    if not os.path.isdir(folder):
        raise DataNotFoundError(f"data_dir {folder} is not a folder; expected one holding {_DOWNLOAD_HINTS[name]}")
    if name == "cifar10":
        if not (os.path.isdir(os.path.join(folder, "cifar-10-batches-py"))
                or os.path.exists(os.path.join(folder, "data_batch_1"))):
            raise DataNotFoundError(f"no CIFAR-10 batches in {folder}; expected {_DOWNLOAD_HINTS[name]}")
        return
    missing = missing_idx_files(folder)
    if missing:
        raise DataNotFoundError(f"missing IDX files in {folder}: {', '.join(missing)} (optionally .gz); "
                                f"expected {_DOWNLOAD_HINTS[name]}")


def _tfds_source(name, data_dir):
    return f"tfds:{_TFDS_NAMES[name]}" + (f"@{data_dir}" if data_dir else "")


def resolve_source(name, source="auto", data_dir=None):
    """Where `load_arrays(name, source, data_dir)` reads its data, as recorded in every
    result (e.g. "tfds:mnist", "local:/data/mnist", "bundled:mnist-t10k[8000/2000]"),
    found without reading any data: TFDS' metadata and the folder's file names only.
    A result's settings hold this string, so checking whether a saved run is stale
    costs no data loading.

    Raises:
        DataSourceError: as `load_arrays`, when no source can give the data set.
    """
    if name not in _TFDS_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(_TFDS_NAMES)}")
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES}, got {source!r}")
    if source == "local":
        if data_dir is None:
            raise DataNotFoundError(f"source='local' needs `data_dir`: the folder holding {_DOWNLOAD_HINTS[name]}.")
        _check_original_files(name, data_dir)
        return f"local:{data_dir}"
    if source == "bundled":
        if name != "mnist":
            raise ValueError(f"there is no bundled sample of {name!r}; only of 'mnist'.")
        return BUNDLED_SOURCE
    if source == "tfds":
        return _tfds_source(name, data_dir)  # loading says why, if TFDS has not prepared it
    if data_dir is not None:  # "auto" in the user's folder: TFDS' layout or the original files
        if _tfds_prepared(name, data_dir):
            return _tfds_source(name, data_dir)
        try:
            _check_original_files(name, data_dir)
        except DataNotFoundError as error:
            raise DataNotFoundError(f"no {name!r} in data_dir {data_dir}: {error} (TFDS found no prepared "
                                    "data set there either)") from None
        return f"local:{data_dir}"
    if _tfds_prepared(name, None):
        return _tfds_source(name, None)
    if name == "fashion_mnist":
        if os.path.isdir(DEBIAN_FASHION_MNIST):
            return f"local:{DEBIAN_FASHION_MNIST}"
        raise DataNotFoundError(
            f"no source for 'fashion_mnist': TFDS has not prepared it and {DEBIAN_FASHION_MNIST} "
            f"does not exist. On Debian/Ubuntu: `apt-get install dataset-fashion-mnist`; elsewhere "
            f"download {_DOWNLOAD_HINTS[name]} and pass source='local', data_dir=<folder>.")
    if name != "mnist":
        raise DataNotFoundError(
            f"no source for {name!r}: TFDS has not prepared it and there is no bundled sample. "
            f"Download {_DOWNLOAD_HINTS[name]} into a folder and pass source='local', data_dir=<folder>.")
    return BUNDLED_SOURCE


def load_arrays(name, source="auto", data_dir=None):
    """Loads `name` ("mnist", "fashion_mnist", "cifar10") from `source`.

    Args:
        source: "tfds" (`tfds.load(..., download=False)`, `data_dir` is TFDS' data
            directory), "local" (`data_dir` holds the original files), "bundled" (the
            MNIST sample inside the package; MNIST only) or "auto": with `data_dir`,
            TFDS' data there or else the original files there; without it, TFDS when
            it has prepared the set; otherwise, for Fashion-MNIST, the Debian package's
            folder (`apt-get install dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist),
            and for MNIST the bundled sample, saying so in the log. Nothing is ever
            downloaded. `resolve_source` names the choice without reading data.

    Raises:
        DataSourceError: the source cannot give the data set; the one-line message
            names what was expected and how to get it.
    """
    where = resolve_source(name, source, data_dir)
    if where == BUNDLED_SOURCE:
        arrays = load_bundled_mnist()
        if source == "auto":
            # The documented offline default, and recorded in every result and summary:
            # information, not a warning.
            log.info(
                "Data source for %s: %s (TFDS has not prepared it). This is the real "
                "MNIST test set split 8,000/2,000, not the MNIST training set.",
                name, arrays.source,
            )
            return arrays
    elif where.startswith("tfds:"):
        arrays = _load_tfds(name, data_dir)
    else:
        arrays = _load_local(name, where[len("local:"):])
    log.info("Data source for %s: %s", name, arrays.source)
    return arrays
