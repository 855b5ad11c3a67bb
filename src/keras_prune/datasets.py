"""Readers for the real datasets the benchmarks and the demo use (no network access).

MNIST and Fashion-MNIST come as the four official gzipped IDX files; the demo's embedded
subset comes as one ``.npz`` file inside the package.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one (optionally gzipped) IDX file of unsigned bytes into an array.

    The header is big-endian: two zero bytes, a type code (0x08 = uint8), the number of
    dimensions, then one 4-byte size per dimension.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"'{path}' is not an IDX file of unsigned bytes.")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(f"'{path}' is truncated: header says shape {shape}.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_dataset(folder: str | Path, scale: float = 1 / 255) -> dict[str, np.ndarray]:
    """Loads an MNIST-shaped dataset folder: ``x_*`` as float32 pixels times ``scale`` (in [0, 1]
    by default), ``y_*`` as int64.

    Example:
        ``load_idx_dataset("../shared/data/mnist")["x_train"].shape == (60000, 28, 28)``
    """
    folder = Path(folder)
    missing = [name for name in IDX_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Dataset folder '{folder}' lacks {', '.join(missing)}.")
    arrays = {key: read_idx(folder / name) for key, name in IDX_FILES.items()}
    for key in ("x_train", "x_test"):
        arrays[key] = arrays[key].astype("float32") / np.float32(1 / scale)  # exactly x / 255 by default
    for key in ("y_train", "y_test"):
        arrays[key] = arrays[key].astype("int64")
    return arrays


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def load_cifar10(
    tar_path: str | Path, cache_dir: str | Path | None = None
) -> dict[str, np.ndarray]:
    """Loads the CIFAR-10 JPEG tree tar (``train/<class>/*.jpg``, ``test/<class>/*.jpg``).

    Images are decoded once into uint8 arrays of shape ``(N, 32, 32, 3)``; labels (int64)
    follow the sorted class folder names. The decoded arrays are cached as an ``.npz`` in
    ``cache_dir`` (default ``~/.cache/keras-prune``), keyed by the tar's size and mtime.

    Example:
        ``load_cifar10("../shared/data/cifar10-jpg/CIFAR-10-images.tar")["x_test"].shape
        == (10000, 32, 32, 3)``
    """
    import hashlib
    import tarfile

    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise FileNotFoundError(f"CIFAR-10 tar '{tar_path}' does not exist. Check the path.")
    stat = tar_path.stat()
    key = hashlib.sha1(f"{tar_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache = Path(cache_dir or Path.home() / ".cache" / "keras-prune")
    cached = cache / f"cifar10-{key.hexdigest()[:12]}.npz"
    if cached.is_file():
        with np.load(cached) as data:
            return {name: data[name] for name in data.files}
    with tarfile.open(tar_path) as tar:
        arrays = _decode_image_tree(tar)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(cached)
    return arrays


def _decode_image_tree(tar) -> dict[str, np.ndarray]:
    """Decodes ``<split>/<class>/<file>.jpg`` members into x/y arrays per split."""
    import io

    from PIL import Image

    members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")]
    parts = [Path(m.name).parts[-3:] for m in members]
    classes = sorted({p[1] for p in parts})
    arrays = {}
    for split in ("train", "test"):
        chosen = sorted((p, m) for p, m in zip(parts, members) if p[0] == split)
        if not chosen:
            raise ValueError(f"The tar has no '{split}/<class>/*.jpg' images.")
        images = [
            np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
            for _, m in chosen
        ]
        arrays[f"x_{split}"] = np.stack(images).astype(np.uint8)
        arrays[f"y_{split}"] = np.array([classes.index(p[1]) for p, _ in chosen], np.int64)
    return arrays
