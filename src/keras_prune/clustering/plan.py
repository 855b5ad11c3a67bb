"""The clustering plan: which weights, their centroids, and the cluster of each weight (numpy only).

:func:`plan_clusters` looks at a model and changes nothing; :class:`keras_prune.ClusteredModel`
applies a plan (each weight set to its centroid) and keeps it during fine-tuning. Weights are
chosen as pruning chooses them (:func:`keras_prune.oneshot.select_weights`): the kernels of
Dense, Conv, EinsumDense, Embedding, RNN and attention layers at any depth; biases and
normalization weights stay as they are, as in tfmot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import keras
import numpy as np

from keras_prune import _host
from keras_prune._validation import check_int
from keras_prune.clustering.centroids import CentroidInitialization, assign, check_init, init_centroids
from keras_prune.oneshot import LayerFilter, _check_layer_filter, select_weights, weight_key

ZERO = -1  # the cluster index of a zero kept out of the clusters (preserve_sparsity)

# Clusters per tensor: one count for all, or ``{weight key: count}`` naming the weights to cluster.
ClusterCounts = int | Mapping[str, int]


@dataclasses.dataclass(frozen=True)
class WeightClusters:
    """The clusters of one weight.

    Attributes:
        key: the weight's :func:`keras_prune.oneshot.weight_key` (``"block/fc/kernel"``).
        path: the path of the layer holding it.
        variable: the weight.
        position: its place among all the model's prunable weights (``select_weights`` order).
        centroids: the centroids, sorted: shape ``(k,)``, or ``(channels, k)`` per channel.
        indices: the cluster of each weight (int32, the weight's shape); ``-1`` marks a zero
            kept out of the clusters (``preserve_sparsity``).
    """

    key: str
    path: str
    variable: keras.Variable
    position: int
    centroids: np.ndarray
    indices: np.ndarray

    @property
    def per_channel(self) -> bool:
        return self.centroids.ndim == 2

    def values(self) -> np.ndarray:
        """The weight with every entry at its centroid (0.0 where ``indices`` is -1)."""
        table = self.centroids.reshape(self.centroids.shape[0] if self.per_channel else 1, -1)
        channel = _channels(self.indices.shape, self.per_channel)
        values = table[channel, np.maximum(self.indices, 0)]
        return np.where(self.indices == ZERO, 0.0, values).astype(self.variable.dtype)

    def segments(self) -> np.ndarray:
        """One id per entry: ``channel * k + cluster``, or ``channels * k`` for a kept zero."""
        k = self.centroids.shape[-1]
        channel = _channels(self.indices.shape, self.per_channel)
        ids = channel * k + self.indices
        return np.where(self.indices == ZERO, segment_count(self.centroids.shape) - 1, ids).astype(np.int32)


def segment_count(centroid_shape: tuple[int, ...]) -> int:
    """Segments of a clustered weight: one per cluster (per channel), plus one for kept zeros."""
    return int(np.prod(centroid_shape)) + 1


def plan_clusters(
    model: keras.Model,
    number_of_clusters: ClusterCounts,
    cluster_centroids_init: CentroidInitialization | str = CentroidInitialization.KMEANS_PLUS_PLUS,
    preserve_sparsity: bool = False,
    cluster_per_channel: bool = False,
    layers: LayerFilter = None,
    seed: int = 0,
) -> list[WeightClusters]:
    """The clusters of each weight to cluster in ``model``; the model is not changed.

    Args:
        model: a built model.
        number_of_clusters: clusters per tensor (per channel with ``cluster_per_channel``), >= 2;
            or ``{weight key: clusters}`` (keys as :func:`keras_prune.oneshot.weight_key`,
            ``"fc1/kernel"``): only the weights it names are clustered, each to its own count.
        cluster_centroids_init: a :class:`CentroidInitialization` (or its name).
        preserve_sparsity: keep the weights that are exactly 0.0 at 0.0, outside the clusters.
        cluster_per_channel: cluster each slice of the last axis (output channel) on its own.
        layers: which layers, as for :func:`keras_prune.prune_low_magnitude` (``None``: all).
        seed: for the random and k-means++ initializations.

    Raises:
        TypeError, ValueError: bad arguments, nothing to cluster, a ``layers`` selection that
            picks nothing, a weight already being clustered, or a tensor (channel) with fewer
            weights than clusters.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> [plan] = plan_clusters(model, 3, "linear")
        >>> plan.key, plan.centroids.shape, len(np.unique(plan.values()))
        ('fc/kernel', (3,), 3)
        >>> two = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="a"), keras.layers.Dense(4, name="b")])
        >>> [(plan.key, plan.centroids.shape) for plan in plan_clusters(two, {"a/kernel": 8, "b/kernel": 2})]
        [('a/kernel', (8,)), ('b/kernel', (2,))]
    """
    counts, init = check_arguments(number_of_clusters, cluster_centroids_init, layers)
    everything = select_weights(model)
    position = {id(weight): i for i, (_, weight) in enumerate(everything)}
    named = counts if isinstance(counts, Mapping) else None
    selected = select_weights(model, layers, named, argument="number_of_clusters")
    check_unclustered([weight for _, weight in selected])
    rng = np.random.default_rng(seed)
    plans = []
    for path, weight in selected:
        key = weight_key(path, weight)
        k = clusters_for(counts, key)
        values = _host.read(weight)
        _check_size(key, values, k, preserve_sparsity, cluster_per_channel)
        centroids, indices = _cluster(values, k, init, preserve_sparsity, cluster_per_channel, rng)
        plans.append(WeightClusters(key, path, weight, position[id(weight)], centroids, indices))
    return plans


def check_arguments(
    number_of_clusters: object, init: object, layers: LayerFilter
) -> tuple[ClusterCounts, CentroidInitialization]:
    """The checked ``(number_of_clusters, init)``; raises on a bad argument."""
    if isinstance(number_of_clusters, Mapping):
        if not number_of_clusters:
            raise ValueError("Argument `number_of_clusters` is an empty mapping: name at least one weight.")
        counts: ClusterCounts = {}
        for key, k in number_of_clusters.items():
            if not isinstance(key, str):
                raise TypeError(f"Argument `number_of_clusters` maps weight keys (str) to counts. Received key {key!r}")
            counts[key] = check_int(f"number_of_clusters['{key}']", k, 2)
    else:
        counts = check_int("number_of_clusters", number_of_clusters, 2)
    _check_layer_filter(layers)
    return counts, check_init(init)


def clusters_for(counts: ClusterCounts, key: str) -> int:
    """The number of clusters of the weight named ``key``."""
    return counts[key] if isinstance(counts, Mapping) else counts


def check_unclustered(weights: list) -> None:
    for weight in weights:
        if getattr(weight, "_keras_prune_clusters", None) is not None:
            raise ValueError(
                f"Weight '{weight.path}' is already being clustered. Call "
                "keras_prune.strip_clustering() first to cluster it again with other settings."
            )


def _check_size(key: str, values: np.ndarray, k: int, preserve_sparsity: bool, per_channel: bool) -> None:
    # With preserve_sparsity a tensor (channel) may keep fewer non-zero weights than clusters, as
    # a small layer of a heavily pruned model does: each of them is then its own cluster.
    if per_channel and values.ndim:
        count, what = values.size // max(values.shape[-1], 1), "weights per channel"
    else:
        count, what = values.size, "weights"
    if k > count:
        raise ValueError(
            f"Argument `number_of_clusters` ({k}) is larger than the {count} {what} of '{key}'; "
            "use fewer clusters, or leave this layer out with `layers`."
        )


def _cluster(values, k, init, preserve_sparsity, per_channel, rng) -> tuple[np.ndarray, np.ndarray]:
    if not per_channel:
        return _cluster_one(values, k, init, preserve_sparsity, rng)
    channels = values.reshape(-1, values.shape[-1])
    parts = [_cluster_one(channels[:, c], k, init, preserve_sparsity, rng) for c in range(channels.shape[1])]
    centroids = np.stack([c for c, _ in parts])
    indices = np.stack([i for _, i in parts], axis=-1).reshape(values.shape)
    return centroids, indices


def _cluster_one(values, k, init, preserve_sparsity, rng) -> tuple[np.ndarray, np.ndarray]:
    """Centroids ``(k,)`` and indices (``values``' shape) of one tensor or channel."""
    values = np.asarray(values)
    kept = values != 0 if preserve_sparsity else np.ones(values.shape, bool)
    if not kept.any():  # a channel of zeros only: nothing to cluster, all kept at 0
        return np.zeros(k), np.full(values.shape, ZERO, np.int32)
    centroids = init_centroids(values[kept], k, init, rng)
    indices = np.where(kept, assign(values, centroids), ZERO).astype(np.int32)
    return centroids, indices


def _channels(shape: tuple[int, ...], per_channel: bool) -> np.ndarray:
    """The channel (slice of the last axis) of each entry of a weight, or 0 for all."""
    if not per_channel or not shape:
        return np.zeros(shape, np.int64)
    return np.broadcast_to(np.arange(shape[-1]), shape)
