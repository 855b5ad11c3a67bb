"""``ClusteredModel``: a model whose weights are clustered, kept on their centroids while it trains.

As :class:`keras_prune.PrunedModel` does for masks, the clustered model holds the model as it
is (not rebuilt, no layer replaced) plus, per clustered weight, a non-trainable int32 variable
giving each entry its cluster. The centroids are not separate variables: they are the weight's
own values, since every entry of a cluster holds the same one.

How fine-tuning moves the centroids: each clustered weight gets a variable constraint, which
Keras optimizers apply right after every update (inside the compiled train step, on every
backend and for every optimizer). It sets each centroid to the mean of its cluster's updated
entries and every entry back to its centroid. With plain SGD a centroid thus moves by the
learning rate times the *mean* gradient of its entries: the gradients reach the centroids, as
in Deep Compression (Han et al., 2016), whose centroid gradient is their sum. Assignments are
fixed, as in Deep Compression (tfmot may reassign weights to the nearest centroid while
training). With ``preserve_sparsity``, the entries that were exactly 0.0 form a segment of their
own that the constraint sets to +0.0: they stay zero and are in no cluster.

A ``.keras`` file saved mid-fine-tuning loads back (no ``custom_objects``) with the same cluster
of every entry, and training continues from there; :func:`keras_prune.strip_clustering` hands
the model back, its weights holding at most ``number_of_clusters`` distinct values per tensor
(per channel), plus 0.0 with ``preserve_sparsity``.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_prune import _backend, _host
from keras_prune._keras_compat import untracked
from keras_prune.clustering.centroids import CentroidInitialization
from keras_prune.clustering.plan import (
    ClusterCounts,
    WeightClusters,
    check_arguments,
    check_unclustered,
    clusters_for,
    plan_clusters,
    segment_count,
)
from keras_prune.core import PACKAGE
from keras_prune.oneshot import LayerFilter, select_weights, weight_key


class ClusterConstraint(keras.constraints.Constraint):
    """Sets each centroid to the mean of its updated entries and every entry to its centroid.

    ``segments`` gives each entry its segment (cluster, per channel); the last of the
    ``count`` segments holds the zeros kept out of the clusters, set to +0.0. Runtime state
    only: the clustered model re-attaches it when built, so it is never serialized.
    """

    def __init__(self, segments, count: int, inner=None):
        self.segments = segments
        self.count = count
        self.inner = inner
        self.fixed = None  # the segments as a numpy array, for JAX (see ClusteredModel.refresh_segments)

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        flat = keras.ops.reshape(w, (-1,))
        # JAX's train step holds the model's variables as its own state and empties the
        # Variables meanwhile, so the constraint reads the (fixed) segments from a host copy.
        live = _backend.current().CONSTRAINTS_READ_VARIABLES
        segments = self.segments if live or self.fixed is None else self.fixed
        ids = keras.ops.reshape(keras.ops.convert_to_tensor(segments), (-1,))
        sums = keras.ops.segment_sum(flat, ids, num_segments=self.count)
        counts = keras.ops.segment_sum(keras.ops.ones_like(flat), ids, num_segments=self.count)
        means = sums / keras.ops.maximum(counts, 1)
        means = keras.ops.where(keras.ops.arange(self.count) == self.count - 1, keras.ops.cast(0, w.dtype), means)
        return keras.ops.reshape(keras.ops.take(means, ids), keras.ops.shape(w))


def cluster_state_of(variable) -> ClusteredModel | None:
    """The clustered model keeping ``variable`` on its centroids, if any."""
    return getattr(variable, "_keras_prune_clusters", None)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClusteredModel(keras.Model):
    """A model whose weights are clustered; usually made by :func:`keras_prune.cluster_weights`.

    It calls the model it holds (:attr:`layer`) and trains that model's own variables; after
    every optimizer step each clustered weight is back on its centroids, which move with the
    mean update of their entries. Train it with a plain ``fit`` (no callback needed), then get
    the model back with :func:`keras_prune.strip_clustering`.

    Args:
        model: the built model to cluster (changed in place: its weights are the ones trained).
        number_of_clusters: clusters per tensor (per channel with ``cluster_per_channel``), >= 2,
            or ``{weight key: clusters}`` for the weights to cluster, each to its own count.
        cluster_centroids_init: a :class:`keras_prune.CentroidInitialization` or its name.
        preserve_sparsity: keep the entries that are exactly 0.0 at 0.0, in no cluster.
        cluster_per_channel: cluster each slice of the last axis (output channel) on its own.
        layers: which layers to cluster, as for :func:`keras_prune.prune_low_magnitude`.
        clustered_weights: which weights, as positions among the model's prunable weights
            (what a saved clustered model records).
        seed: for the random and k-means++ initializations.
        restore: internal: the cluster of each entry comes from a saved file, not a new plan.
        **kwargs: passed to ``keras.Model`` (``name``).

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> clustered = ClusteredModel(model, 3)
        >>> clustered.clustered_layers, [len(np.unique(v)) for v in clustered.weight_values()]
        (['fc'], [3])
    """

    def __init__(
        self,
        model: keras.Model,
        number_of_clusters: ClusterCounts,
        cluster_centroids_init: CentroidInitialization | str = CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity: bool = False,
        cluster_per_channel: bool = False,
        layers: LayerFilter = None,
        clustered_weights: list[int] | None = None,
        seed: int = 0,
        restore: bool = False,
        **kwargs,
    ):
        counts, init = check_arguments(number_of_clusters, cluster_centroids_init, layers)
        if isinstance(model, ClusteredModel):
            raise ValueError(f"Model '{model.name}' is already clustered. Call keras_prune.strip_clustering() "
                             "first to cluster it again with other settings.")
        if not isinstance(model, keras.Model):
            raise TypeError(f"Argument `model` must be a Keras model. Received: model={model!r}")
        if not model.built:
            raise ValueError(f"Model '{model.name}' has no weights yet; build it first (call it on data "
                             "or `model.build(input_shape)`), clustering needs its trained values.")
        if clustered_weights is not None and not restore:
            raise ValueError("Argument `clustered_weights` is what a saved clustered model records; choose "
                             f"the weights to cluster with `layers`. Received: clustered_weights={clustered_weights!r}")
        plans = None if restore else plan_clusters(model, counts, init, preserve_sparsity, cluster_per_channel, layers, seed)
        kwargs.setdefault("name", model.name)
        super().__init__(**kwargs)
        self.layer = model
        self.number_of_clusters = counts
        self.cluster_centroids_init = init
        self.preserve_sparsity = bool(preserve_sparsity)
        self.cluster_per_channel = bool(cluster_per_channel)
        self.seed = seed
        if restore:
            self._restore(list(clustered_weights or []))
        else:
            self._apply(plans)

    # -- state ------------------------------------------------------------------------------

    def _apply(self, plans: list[WeightClusters]) -> None:
        selected = [(plan.path, plan.variable) for plan in plans]
        shapes = [plan.centroids.shape for plan in plans]
        self._create_state(selected, [plan.position for plan in plans], shapes)
        for plan, index in zip(plans, self._indices):
            _host.write(index, plan.segments())
            _host.write(plan.variable, plan.values())
        self.refresh_segments()

    def _restore(self, positions: list[int]) -> None:
        everything = select_weights(self.layer)
        if max(positions, default=-1) >= len(everything):
            raise ValueError(
                f"Model '{self.layer.name}' has {len(everything)} clusterable weights, but the clustered "
                f"model was saved clustering weight #{max(positions)}: the model's architecture changed."
            )
        selected = [everything[i] for i in positions]
        check_unclustered([weight for _, weight in selected])
        shapes = []
        for path, weight in selected:
            k = clusters_for(self.number_of_clusters, weight_key(path, weight))
            shapes.append((int(weight.shape[-1]), k) if self.cluster_per_channel and len(weight.shape) else (k,))
        self._create_state(selected, positions, shapes)  # the indices are loaded with the weights

    def _create_state(self, selected: list, positions: list[int], centroid_shapes: list) -> None:
        self._positions = list(positions)
        self._indices = []
        for i, (_, weight) in enumerate(selected):
            self._indices.append(self.add_weight(
                name=f"cluster_index_{i}", shape=weight.shape, dtype="int32", initializer="zeros", trainable=False,
            ))
        with untracked():  # the model owns these variables; this state only points at them
            self._clustered = [weight for _, weight in selected]
            self._weight_paths = [path for path, _ in selected]
            self._segment_counts = [segment_count(shape) for shape in centroid_shapes]
            self._cluster_counts = [int(shape[-1]) for shape in centroid_shapes]
        self.clustered_layers = list(dict.fromkeys(self._weight_paths))
        for weight, index, count in zip(self._clustered, self._indices, self._segment_counts):
            weight._keras_prune_clusters = self
            weight.constraint = ClusterConstraint(index, count, inner=weight.constraint)
        self.built = True

    def refresh_segments(self) -> None:
        """Copies the segments to the constraints' host copies, which JAX's train step reads (a
        JAX train step holds the variables as its own state). Runs when the clustering is applied,
        when saved indices are loaded, and when ``fit`` builds its train function."""
        for weight, index in zip(self._clustered, self._indices):
            if isinstance(weight.constraint, ClusterConstraint):
                weight.constraint.fixed = _host.read(index)

    def load_own_variables(self, store) -> None:
        super().load_own_variables(store)
        self.refresh_segments()

    def make_train_function(self, force: bool = False):
        self.refresh_segments()
        return super().make_train_function(force)

    def release_constraints(self) -> None:
        """Puts every weight exactly on its centroids and restores the variables' own constraints."""
        self.snap()
        for weight in self._clustered:
            if isinstance(weight.constraint, ClusterConstraint):
                weight.constraint = weight.constraint.inner
            weight._keras_prune_clusters = None

    def snap(self) -> None:
        """Sets each centroid to the mean of its entries and every entry to its centroid, on the host
        (what the constraint does after each optimizer step)."""
        for weight, index, count in zip(self._clustered, self._indices, self._segment_counts):
            values, ids = _host.read(weight), _host.read(index).reshape(-1)
            flat = values.reshape(-1).astype(np.float64)
            means = np.bincount(ids, flat, count) / np.maximum(np.bincount(ids, minlength=count), 1)
            means[count - 1] = 0.0
            _host.write(weight, means[ids].reshape(values.shape).astype(values.dtype))

    # -- inspection -------------------------------------------------------------------------

    def clustered_weights(self) -> list[tuple[str, keras.Variable]]:
        """``(layer path, variable)`` for each clustered weight."""
        return list(zip(self._weight_paths, self._clustered))

    def weight_names(self) -> list[str]:
        """``<layer path>/<weight>`` per clustered weight (as :func:`keras_prune.oneshot.weight_key`)."""
        return [weight_key(path, weight) for path, weight in self.clustered_weights()]

    def cluster_counts(self) -> list[int]:
        """The number of clusters of each clustered weight (per channel, with ``cluster_per_channel``)."""
        return list(self._cluster_counts)

    def weight_values(self) -> list[np.ndarray]:
        """The current values of the clustered weights, as numpy arrays."""
        return [_host.read(w) for w in self._clustered]

    def cluster_indices(self) -> list[np.ndarray]:
        """The cluster of each entry of each clustered weight (int32, the weight's shape): its
        cluster ``0..k-1`` (within its channel, per channel), or ``-1`` for a kept zero."""
        out = []
        for index, count, k in zip(self._indices, self._segment_counts, self._cluster_counts):
            ids = _host.read(index)
            out.append(np.where(ids == count - 1, -1, ids % k).astype(np.int32))
        return out

    def centroids(self) -> list[np.ndarray]:
        """The current centroids of each clustered weight: ``(k,)``, or ``(channels, k)`` per
        channel; a cluster without entries (possible with few distinct values) reads NaN."""
        out = []
        for values, index, count, k in zip(self.weight_values(), self._indices, self._segment_counts,
                                           self._cluster_counts):
            ids = _host.read(index).reshape(-1)
            sums = np.bincount(ids, values.reshape(-1).astype(np.float64), count)[:-1]
            sizes = np.bincount(ids, minlength=count)[:-1]
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(sizes > 0, sums / np.maximum(sizes, 1), np.nan)
            out.append(means.reshape(-1, k) if self.cluster_per_channel and index.shape
                       else means)
        return out

    def get_layer(self, name: str | None = None, index: int | None = None) -> keras.layers.Layer:
        """A layer of the model being clustered (``clustered.get_layer("dense")`` as on the model)."""
        return self.layer.get_layer(name, index)

    def call(self, inputs, training=None):
        return self.layer(inputs, training=training)

    # -- serialization ----------------------------------------------------------------------

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.layer),
            "number_of_clusters": self.number_of_clusters,
            "cluster_centroids_init": self.cluster_centroids_init.value,
            "preserve_sparsity": self.preserve_sparsity,
            "cluster_per_channel": self.cluster_per_channel,
            "clustered_weights": list(self._positions),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config, restore=True)
