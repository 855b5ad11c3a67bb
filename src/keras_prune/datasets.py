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


def load_idx_dataset(folder: str | Path) -> dict[str, np.ndarray]:
    """Loads an MNIST-shaped dataset folder: ``x_*`` as float32 in [0, 1], ``y_*`` as int64.

    Example:
        ``load_idx_dataset("../shared/data/mnist")["x_train"].shape == (60000, 28, 28)``
    """
    folder = Path(folder)
    missing = [name for name in IDX_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Dataset folder '{folder}' lacks {', '.join(missing)}.")
    arrays = {key: read_idx(folder / name) for key, name in IDX_FILES.items()}
    for key in ("x_train", "x_test"):
        arrays[key] = arrays[key].astype("float32") / 255.0
    for key in ("y_train", "y_test"):
        arrays[key] = arrays[key].astype("int64")
    return arrays
