"""Regenerates the MNIST subset that `keras-prune demo` ships with the package.

The subset is class-balanced and cut deterministically from the official MNIST files:
for each digit, a seeded NumPy generator (PCG64, seed 0) picks `--train-per-class` of the
training images and `--test-per-class` of the test images; the picks keep their original
order. The `.npz` is written with fixed zip timestamps, so rerunning the script gives the
same bytes. It prints the SHA-256 of the file.

Example:
    .venv/bin/python benchmarks/make_demo_subset.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from keras_prune.datasets import IDX_FILES, read_idx
from keras_prune.io import atomic_write

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "src" / "keras_prune" / "data" / "mnist_subset.npz"
SEED = 0
ZIP_DATE = (1998, 11, 1, 0, 0, 0)  # any fixed date: it only makes the bytes reproducible


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each label, chosen by ``rng``, returned in file order."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def cut_subset(folder: Path, train_per_class: int, test_per_class: int) -> dict[str, np.ndarray]:
    """The uint8 subset: ``x_train``, ``y_train``, ``x_test``, ``y_test``."""
    raw = {key: read_idx(folder / name) for key, name in IDX_FILES.items()}
    rng = np.random.default_rng(SEED)
    subset = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        keep = balanced_indices(raw[f"y_{split}"], per_class, rng)
        subset[f"x_{split}"] = np.ascontiguousarray(raw[f"x_{split}"][keep])
        subset[f"y_{split}"] = np.ascontiguousarray(raw[f"y_{split}"][keep])
    return subset


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed``, but with fixed timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding mnist/ with the four official IDX .gz files "
                        "(default: ../shared/data from the repository root)")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: the packaged file")
    args = parser.parse_args()

    subset = cut_subset(args.data_dir / "mnist", args.train_per_class, args.test_per_class)
    atomic_write(args.output, lambda tmp: write_npz(Path(tmp), subset))
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    for key, array in subset.items():
        print(f"{key}: {array.shape} {array.dtype}")
    print(f"wrote {args.output.name}: {args.output.stat().st_size:,} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
