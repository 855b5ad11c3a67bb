"""Weight clustering (tfmot's ``cluster_weights``) on Keras 3: plan, apply, fine-tune, strip.

Each clustered tensor (or each output channel of it) keeps only ``number_of_clusters``
distinct values, its centroids, so it compresses to a small table plus a few bits per weight.
The same pattern as pruning: :func:`plan_clusters` computes the centroids and the cluster of
every weight without changing the model; :func:`cluster_weights` applies them in a
:class:`ClusteredModel`, which keeps each weight on its centroid while it is fine-tuned (the
centroids train); :func:`strip_clustering` returns the model. See ``docs/clustering.md``.
"""

from __future__ import annotations

import keras
import numpy as np  # noqa: F401  (the examples use it)

from keras_prune.clustering.centroids import CentroidInitialization
from keras_prune.clustering.clustered_model import ClusteredModel, cluster_state_of
from keras_prune.clustering.plan import ClusterCounts, WeightClusters, plan_clusters
from keras_prune.oneshot import LayerFilter

__all__ = [
    "CentroidInitialization",
    "ClusteredModel",
    "WeightClusters",
    "cluster_weights",
    "is_clustered",
    "plan_clusters",
    "strip_clustering",
]


def cluster_weights(
    to_cluster: keras.Model,
    number_of_clusters: ClusterCounts,
    cluster_centroids_init: CentroidInitialization | str = CentroidInitialization.KMEANS_PLUS_PLUS,
    preserve_sparsity: bool = False,
    cluster_per_channel: bool = False,
    layers: LayerFilter = None,
    seed: int = 0,
) -> ClusteredModel:
    """Clusters the weights of a model: each tensor keeps ``number_of_clusters`` distinct values.

    tfmot's ``cluster_weights`` arguments, on Keras 3, for any model: the kernels of Dense,
    Conv, EinsumDense, Embedding, RNN and attention layers are found at any depth (nested
    models, custom layers, KerasHub blocks); biases stay as they are. Fine-tune the result
    with a plain ``fit`` (the centroids train, each weight following its centroid), then call
    :func:`strip_clustering`.

    Args:
        to_cluster: a built model (its weights change in place).
        number_of_clusters: clusters per tensor (per channel with ``cluster_per_channel``), >= 2;
            or ``{weight key: clusters}`` (``{"fc1/kernel": 8, "fc2/kernel": 16}``, keys as
            :func:`keras_prune.allocate` and ``keras-prune inspect`` name weights): only the
            weights it names are clustered, each to its own count.
        cluster_centroids_init: ``CentroidInitialization.KMEANS_PLUS_PLUS`` (default),
            ``LINEAR``, ``DENSITY_BASED`` or ``RANDOM``, or their names.
        preserve_sparsity: keep weights that are exactly 0.0 (a pruned model's zeros) at
            exactly 0.0 and outside the clusters, also while fine-tuning.
        cluster_per_channel: cluster each output channel (slice of the last axis) on its own.
        layers: which layers to cluster: a regular expression searched in each layer's path, a
            list of paths or names, a callable ``layer -> bool``, or ``None`` for all.
        seed: for the ``RANDOM`` and ``KMEANS_PLUS_PLUS`` initializations.

    Returns:
        A :class:`ClusteredModel` holding the model.

    Raises:
        TypeError, ValueError: ``number_of_clusters`` < 2 or larger than a tensor's (non-zero,
            with ``preserve_sparsity``; per channel) weights, an unknown initialization,
            nothing to cluster, a ``layers`` selection that picks nothing, a model already
            clustered (or being pruned); raised before anything changes.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> clustered = cluster_weights(model, 3, CentroidInitialization.LINEAR)
        >>> [len(np.unique(v)) for v in clustered.weight_values()]
        [3]
    """
    if not isinstance(to_cluster, keras.Model):
        raise TypeError(
            "Argument `to_cluster` must be a Keras model (Sequential, functional, subclassed, KerasHub); "
            f"choose its layers with `layers`. Received: to_cluster={to_cluster!r}"
        )
    return ClusteredModel(to_cluster, number_of_clusters, cluster_centroids_init, preserve_sparsity,
                          cluster_per_channel, layers=layers, seed=seed)


def is_clustered(model: keras.layers.Layer) -> bool:
    """Whether ``model`` is a :class:`ClusteredModel` or holds weights being clustered.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> is_clustered(model), is_clustered(cluster_weights(model, 2))
        (False, True)
    """
    return isinstance(model, ClusteredModel) or any(cluster_state_of(w) is not None for w in model.weights)


def strip_clustering(model: keras.Model) -> keras.Model:
    """Removes the clustering state: returns the model, each clustered weight on its centroids.

    The stripped model is the one that was clustered (same object, class and config); each
    clustered tensor holds at most ``number_of_clusters`` distinct values (per channel), plus
    0.0 with ``preserve_sparsity``. A model that is not clustered is returned as it is.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> stripped = strip_clustering(cluster_weights(model, 2))
        >>> stripped is model, len(np.unique(stripped.layers[0].kernel.numpy()))
        (True, 2)
    """
    if isinstance(model, ClusteredModel):
        model.release_constraints()
        return model.layer
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    holders = {id(state): state for w in model.weights if (state := cluster_state_of(w)) is not None}
    if holders:
        inner = next(iter(holders.values()))
        raise ValueError(
            f"Model '{model.name}' holds the clustered model '{inner.name}'; strip that one "
            "(keras_prune.strip_clustering(clustered)) and build the outer model around the result."
        )
    return model

