"""Readers for the original dataset files, with format checks that name the file.

- MNIST / Fashion-MNIST: IDX (LeCun et al.), optionally gzip-compressed.
- CIFAR-10: the "python version" pickles (`cifar-10-batches-py`).
- CORe50: `core50_imgs.npz` (or the raw `core50_imgs.bin` the official loader writes)
  with `LUP.pkl` and `labels.pkl` (the official look-up tables).
"""
import gzip
import os
import pickle

import numpy as np

__all__ = [
    "DataFormatError",
    "read_idx",
    "read_idx_dataset",
    "missing_idx_files",
    "read_cifar10",
    "read_core50",
    "DataFormatError",
    "DataNotFoundError",
    "DataSourceError",
    "IDX_FILES",
    "CIFAR10_FILES",
    "CORE50_FILES",
]

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CORE50_FILES = ("core50_imgs.npz", "LUP.pkl", "labels.pkl")
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049


class DataSourceError(ValueError):
    """A data source cannot give the data set: its one-line message names what was
    expected and how to get it (the experiment scripts print it without a traceback)."""


class DataNotFoundError(DataSourceError, FileNotFoundError):
    """The files or the prepared data set are not where the source looks."""


class DataFormatError(DataSourceError):
    """A dataset file is truncated or not in the expected format."""


def _open_maybe_gzip(path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path, expected_magic=None):
    """Reads one IDX file (gzip-compressed or not) into a uint8 array.

    IDX header: two zero bytes, a type byte (0x08: uint8), the number of dimensions,
    then one big-endian int32 per dimension. The magic number is the first four bytes
    as a big-endian int: 2051 for image files, 2049 for label files.
    """
    try:
        with _open_maybe_gzip(path) as f:
            data = f.read()
    except OSError as err:
        raise DataFormatError(f"cannot read IDX file {path}: {err}") from err
    if len(data) < 4:
        raise DataFormatError(f"{path} is not an IDX file: only {len(data)} bytes")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataFormatError(
            f"{path} is not an unsigned-byte IDX file (magic number {magic})"
        )
    if expected_magic is not None and magic != expected_magic:
        raise DataFormatError(
            f"{path} has IDX magic number {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == _IDX_IMAGES_MAGIC else 'labels'})"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DataFormatError(
            f"{path} is truncated or corrupt: header says shape {shape} "
            f"({expected} bytes) but {len(data) - header} bytes follow"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find(directory, name, suffixes=("", ".gz")):
    for suffix in suffixes:
        path = os.path.join(directory, name + suffix)
        if os.path.exists(path):
            return path
    return None


def missing_idx_files(directory, splits=("train", "test")):
    """The standard IDX file names of `splits` that `directory` lacks (plain or .gz)."""
    return [name for split in splits for name in IDX_FILES[split] if _find(directory, name) is None]


def read_idx_dataset(directory, splits=("train", "test")):
    """Reads `{split: (images, labels)}` from the standard IDX file names in `directory`.

    Images come back as (N, 28, 28) uint8, labels as (N,) uint8.
    """
    missing = missing_idx_files(directory, splits)
    if missing:
        raise DataNotFoundError(
            f"missing IDX files in {directory}: {', '.join(missing)} (optionally .gz)"
        )
    out = {}
    for split in splits:
        image_name, label_name = IDX_FILES[split]
        image_path, label_path = _find(directory, image_name), _find(directory, label_name)
        images = read_idx(image_path, _IDX_IMAGES_MAGIC)
        labels = read_idx(label_path, _IDX_LABELS_MAGIC)
        if images.ndim != 3:
            raise DataFormatError(f"{image_path}: expected (N, rows, cols), got {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataFormatError(
                f"{label_path}: {labels.shape} labels for {len(images)} images in {image_path}"
            )
        out[split] = (images, labels)
    return out


def read_cifar10(directory):
    """Reads `{"train": (x, y), "test": (x, y)}` from the CIFAR-10 python pickles.

    Accepts the folder holding `data_batch_1..5` and `test_batch`, or its parent
    (holding `cifar-10-batches-py`). Images come back as (N, 32, 32, 3) uint8.
    """
    nested = os.path.join(directory, "cifar-10-batches-py")
    if os.path.isdir(nested):
        directory = nested
    missing = [n for n in CIFAR10_FILES if not os.path.exists(os.path.join(directory, n))]
    if missing:
        raise DataNotFoundError(f"missing CIFAR-10 pickles in {directory}: {', '.join(missing)}")

    def load(name):
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
        except Exception as err:  # unpickling errors come in many types
            raise DataFormatError(f"{path} is not a CIFAR-10 pickle: {err}") from err
        try:
            data = np.asarray(batch[b"data"], np.uint8)
            labels = np.asarray(batch[b"labels"], np.int64)
        except (KeyError, TypeError) as err:
            raise DataFormatError(f"{path} lacks the b'data'/b'labels' entries") from err
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataFormatError(
                f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}"
            )
        # Rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image.
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    train = [load(n) for n in CIFAR10_FILES[:-1]]
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": load(CIFAR10_FILES[-1]),
    }


def read_core50(directory, scenario="ni", run=0):
    """Reads the CORe50 images and the official look-up tables for one scenario/run.

    Returns `(images, batches, test)`: `images` indexable by the official image index
    (a memory map when `core50_imgs.bin` exists, else the npz array), `batches` a list
    of `(indices, object_labels)` per training session, `test` the same for the test
    sessions. Object labels are 0-49; category = object // 5.
    """
    lup_path, labels_path = (os.path.join(directory, n) for n in ("LUP.pkl", "labels.pkl"))
    bin_path, npz_path = (os.path.join(directory, n) for n in ("core50_imgs.bin", "core50_imgs.npz"))
    missing = [p for p in (lup_path, labels_path) if not os.path.exists(p)]
    if not os.path.exists(bin_path) and not os.path.exists(npz_path):
        missing.append(npz_path)
    if missing:
        raise DataNotFoundError(
            "missing CORe50 files: " + ", ".join(missing) + ". Download core50_imgs.npz, "
            "LUP.pkl and labels.pkl from https://vlomonaco.github.io/core50/ (section "
            "Download) into that folder."
        )
    tables = []
    for path in (lup_path, labels_path):
        try:
            with open(path, "rb") as f:
                table = pickle.load(f, encoding="latin1")
            tables.append(table[scenario][run])
        except Exception as err:
            raise DataFormatError(
                f"{path} is not a CORe50 look-up table with scenario {scenario!r}, run {run}: {err}"
            ) from err
    lup, labels = tables
    if len(lup) != len(labels) or any(len(a) != len(b) for a, b in zip(lup, labels)):
        raise DataFormatError(f"{lup_path} and {labels_path} disagree on the batch sizes")
    count = 1 + max(max(batch) for batch in lup if len(batch))
    if os.path.exists(bin_path):
        size = os.path.getsize(bin_path)
        side = 128
        if size % (side * side * 3) != 0:
            raise DataFormatError(f"{bin_path}: {size} bytes is not a whole number of 128x128x3 images")
        images = np.memmap(bin_path, np.uint8, "r").reshape(-1, side, side, 3)
    else:
        try:
            with np.load(npz_path) as archive:
                images = archive["x"]
        except Exception as err:
            raise DataFormatError(f"{npz_path} is not the CORe50 npz (array 'x'): {err}") from err
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataFormatError(
                f"{npz_path}: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}"
            )
    if len(images) < count:
        raise DataFormatError(
            f"the CORe50 images hold {len(images)} images but LUP.pkl indexes up to {count - 1}"
        )
    as_pairs = [(np.asarray(i, np.int64), np.asarray(y, np.int64)) for i, y in zip(lup, labels)]
    return images, as_pairs[:-1], as_pairs[-1]
