"""Centroid initializations and 1-D k-means, in numpy: pure functions, no Keras state.

tfmot's four initializations of the cluster centroids of one tensor (or one channel):

* ``LINEAR``: ``k`` evenly spaced values from the smallest weight to the largest.
* ``RANDOM``: ``k`` values drawn uniformly between the smallest and the largest weight.
* ``DENSITY_BASED``: ``k`` evenly spaced quantiles of the weights (more centroids where the
  weights are dense), from the smallest to the largest.
* ``KMEANS_PLUS_PLUS``: k-means++ seeding (each next centroid drawn with probability
  proportional to the squared distance to the nearest one so far), then Lloyd's iterations of
  1-D k-means until the assignment no longer changes. This is the one that minimises the
  quantization error, and the default, as in tfmot.

Each weight then belongs to its nearest centroid (:func:`assign`).
"""

from __future__ import annotations

import enum

import numpy as np

SEED_SAMPLE = 20_000  # k-means++ seeding and quantiles look at most this many weights
MAX_ITERATIONS = 100


class CentroidInitialization(str, enum.Enum):
    """How the centroids of each clustered tensor start (tfmot's names and values).

    Example:
        >>> CentroidInitialization("LINEAR") is CentroidInitialization.LINEAR
        True
    """

    LINEAR = "LINEAR"
    RANDOM = "RANDOM"
    DENSITY_BASED = "DENSITY_BASED"
    KMEANS_PLUS_PLUS = "KMEANS_PLUS_PLUS"


ALIASES = {
    "linear": CentroidInitialization.LINEAR,
    "random": CentroidInitialization.RANDOM,
    "density": CentroidInitialization.DENSITY_BASED,
    "density_based": CentroidInitialization.DENSITY_BASED,
    "kmeans++": CentroidInitialization.KMEANS_PLUS_PLUS,
    "kmeans_plus_plus": CentroidInitialization.KMEANS_PLUS_PLUS,
}


def check_init(value: object) -> CentroidInitialization:
    """``value`` as a :class:`CentroidInitialization`: a member, its value (``"LINEAR"``), or a
    short name (``"linear"``, ``"random"``, ``"density"``, ``"kmeans++"``).

    Example:
        >>> check_init("kmeans++").name
        'KMEANS_PLUS_PLUS'
    """
    if isinstance(value, CentroidInitialization):
        return value
    if isinstance(value, str):
        text = value.split(".")[-1]  # "CentroidInitialization.LINEAR" as str() of a member prints
        if text.upper() in CentroidInitialization.__members__:
            return CentroidInitialization[text.upper()]
        if text.lower() in ALIASES:
            return ALIASES[text.lower()]
    names = ", ".join(f"'{m.value}'" for m in CentroidInitialization)
    raise ValueError(
        f"Argument `cluster_centroids_init` must be a CentroidInitialization ({names}, or 'linear', "
        f"'random', 'density', 'kmeans++'). Received: cluster_centroids_init={value!r}"
    )


def init_centroids(values: np.ndarray, k: int, init: CentroidInitialization | str,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """``k`` sorted centroids for ``values`` (any shape, read flat) by ``init``.

    Example:
        >>> init_centroids(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 3, "LINEAR").tolist()
        [0.0, 2.0, 4.0]
    """
    init = check_init(init)
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        raise ValueError("Cannot cluster an empty set of weights.")
    rng = rng if rng is not None else np.random.default_rng(0)
    low, high = float(flat.min()), float(flat.max())
    if init is CentroidInitialization.LINEAR:
        centroids = np.linspace(low, high, k)
    elif init is CentroidInitialization.RANDOM:
        centroids = rng.uniform(low, high, k)
    elif init is CentroidInitialization.DENSITY_BASED:
        centroids = np.quantile(_sample(flat, rng), np.linspace(0.0, 1.0, k))
        centroids[0], centroids[-1] = low, high
    else:
        centroids = kmeans(flat, kmeans_plus_plus(_sample(flat, rng), k, rng))
    return np.sort(centroids)


def kmeans_plus_plus(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding of ``k`` centroids for the 1-D ``values`` (sorted)."""
    centroids = [values[rng.integers(values.size)]]
    nearest = (values - centroids[0]) ** 2
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:  # fewer distinct values than clusters: the rest stay unused
            centroids.append(centroids[-1])
            continue
        pick = values[rng.choice(values.size, p=nearest / total)]
        centroids.append(pick)
        nearest = np.minimum(nearest, (values - pick) ** 2)
    return np.sort(np.asarray(centroids, dtype=np.float64))


def kmeans(values: np.ndarray, centroids: np.ndarray, iterations: int = MAX_ITERATIONS) -> np.ndarray:
    """Lloyd's 1-D k-means from ``centroids`` (sorted) until assignments settle; an empty
    cluster keeps its centroid.

    Example:
        >>> kmeans(np.array([0.0, 0.2, 1.0, 1.2]), np.array([0.0, 0.1])).round(3).tolist()
        [0.1, 1.1]
    """
    values = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    centroids = np.sort(np.asarray(centroids, dtype=np.float64))
    bounds = None
    for _ in range(iterations):
        # In 1-D the clusters are runs of the sorted values, split at the midpoints.
        new_bounds = np.searchsorted(values, (centroids[1:] + centroids[:-1]) / 2, side="right")
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [values.size]])
        sums = np.concatenate([[0.0], np.cumsum(values)])
        counts = ends - starts
        means = (sums[ends] - sums[starts]) / np.maximum(counts, 1)
        centroids = np.sort(np.where(counts > 0, means, centroids))
    return centroids


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of the nearest of the sorted ``centroids`` for each value (ties: the lower).

    Example:
        >>> assign(np.array([-1.0, 0.4, 0.6, 5.0]), np.array([0.0, 1.0])).tolist()
        [0, 0, 1, 1]
    """
    values = np.asarray(values, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values, side="left").astype(np.int32)


def quantization_error(values: np.ndarray, centroids: np.ndarray) -> float:
    """Mean squared distance of ``values`` to their nearest centroid.

    Example:
        >>> quantization_error(np.array([0.0, 1.0, 3.0]), np.array([0.0, 2.0]))
        0.6666666666666666
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(np.mean((values - np.asarray(centroids)[assign(values, centroids)]) ** 2))


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most :data:`SEED_SAMPLE` of ``values`` (sorted), for seeding large tensors quickly."""
    if values.size > SEED_SAMPLE:
        values = rng.choice(values, SEED_SAMPLE, replace=False)
    return np.sort(values)
