"""A namespace shaped like ``tensorflow_model_optimization``, backed by keras-prune.

Migrating tfmot code to Keras 3 is a one-line change::

    import keras_prune.compat.tfmot as tfmot

    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=tfmot.sparsity.keras.PolynomialDecay(0.3, 0.7, 0, 1000)
    )
    ...
    final = tfmot.sparsity.keras.strip_pruning(pruned)
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import keras

import keras_prune
from keras_prune import clustering as _clustering
from keras_prune import masks, registry
from keras_prune.callbacks import collect_pruning
from keras_prune.clustering import CentroidInitialization, ClusteredModel
from keras_prune.compat.callbacks import PruningSummaries, UpdatePruningStep
from keras_prune.compat.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule, core_schedule
from keras_prune.compat.wrapper import PruneLowMagnitude, check_wrappable, tfmot_prunable_weights
from keras_prune.compat.wrapping import PruningPolicy, unwrap_model, wrap_model
from keras_prune.core import PruningState, check_scope
from keras_prune.prune import pattern_fit_check
from keras_prune.pruned_model import PrunedModel


def prune_low_magnitude(
    to_prune,
    pruning_schedule: PruningSchedule | None = None,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    pruning_policy: PruningPolicy | None = None,
    sparsity_m_by_n: tuple[int, int] | None = None,
    **kwargs,
):
    """tfmot's ``prune_low_magnitude``: wraps a layer, each layer of a list, or each layer of a model.

    As in tfmot, every layer of a Sequential or functional model is wrapped in a
    ``PruneLowMagnitude`` found in ``model.layers`` (layers with nothing to prune, such as
    Dropout or Add, in a wrapper that only passes through), around the same layer objects;
    layers already wrapped are kept, and ``pruning_policy`` chooses the layers. Subclassed
    models (which tfmot refuses) get wrappers in place for their prunable sub-layers.
    ``**kwargs`` go to the wrapper of a single layer.

    Raises:
        ValueError: what tfmot rejects (an object that is not a layer, a list or a model, a
            custom layer that declares nothing to prune, bad schedule or pattern arguments),
            and a model with nothing to prune.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.1)])
        >>> pruned = prune_low_magnitude(model)
        >>> [type(layer).__name__ for layer in pruned.layers], pruned.layers[0].layer is model.layers[0]
        (['PruneLowMagnitude', 'PruneLowMagnitude'], True)
    """
    block, pooling, m_by_n = masks.check_pattern(block_size, block_pooling_type, sparsity_m_by_n)
    settings = {
        "pruning_schedule": core_schedule(pruning_schedule or ConstantSparsity(0.5, 0)),
        "block_size": block,
        "block_pooling_type": pooling,
        "sparsity_m_by_n": m_by_n,
        "scope": check_scope(kwargs.pop("scope", "layer"), block, m_by_n),
    }
    check_fit = pattern_fit_check(block, m_by_n, tfmot_prunable_weights)

    def wrap(layer):
        return PruneLowMagnitude(layer, **settings)

    if isinstance(to_prune, list):
        return _wrap_list(to_prune, wrap, check_fit)
    if isinstance(to_prune, keras.Model):
        return _wrap_model(to_prune, wrap, pruning_policy, check_fit)
    if isinstance(to_prune, keras.layers.Layer):
        check_wrappable(to_prune)
        check_fit([(to_prune.name, to_prune)] if _prunes(to_prune) else [])
        return PruneLowMagnitude(to_prune, **settings, **kwargs)
    raise ValueError(
        "`prune_low_magnitude` can only prune an object of the following types: "
        "keras.models.Sequential, keras functional model, keras.layers.Layer, list of "
        f"keras.layers.Layer. Received: an object of type {type(to_prune).__name__}"
    )


def _prunes(layer: keras.layers.Layer) -> bool:
    """Whether the wrapper of ``layer`` will prune something (an unbuilt layer: by its type)."""
    if layer.built:
        return bool(tfmot_prunable_weights(layer))
    return registry.has_rule(layer) and not isinstance(layer, keras.layers.DepthwiseConv2D)


def _wants_wrapper(layer: keras.layers.Layer, policy: PruningPolicy | None) -> bool:
    """tfmot wraps every layer but inputs, models and wrappers, unless the policy says no."""
    if isinstance(layer, (keras.Model, keras.layers.InputLayer, PruningState)):
        return False
    if policy is not None and not policy.allow_pruning(layer):
        return False  # before the checks, so an excluded custom layer needs no declaration
    check_wrappable(layer)
    return True


def _wrap_list(layers: list, wrap, check_fit) -> list:
    """tfmot's list: wrappers kept, input layers copied, every other layer wrapped."""
    for layer in layers:
        if not isinstance(layer, (PruningState, keras.layers.InputLayer)):
            check_wrappable(layer)
    check_fit([(layer.name, layer) for layer in layers if not isinstance(layer, PruningState) and _prunes(layer)])
    return [
        layer if isinstance(layer, PruningState)
        else type(layer).from_config(layer.get_config()) if isinstance(layer, keras.layers.InputLayer)
        else wrap(layer)
        for layer in layers
    ]


def _wrap_model(model: keras.Model, wrap, policy, check_fit) -> keras.Model:
    if isinstance(model, PruningState):
        raise ValueError(
            f"Model '{model.name}' is already pruned by keras_prune.prune_low_magnitude(); strip it "
            "with keras_prune.strip_pruning() first."
        )
    if policy is not None and not isinstance(policy, PruningPolicy):
        raise ValueError(
            f"Argument `pruning_policy` must be a PruningPolicy. Received: pruning_policy={policy!r}"
        )
    return wrap_model(model, wrap, lambda layer: _wants_wrapper(layer, policy), _prunes, policy, check_fit)


def strip_pruning(model: keras.Model) -> keras.Model:
    """tfmot's ``strip_pruning``: the model without its wrappers, around the same layer objects.

    Layers of any class come back as they are (no copy through their config), with their
    pruned weights at 0. A model pruned by :func:`keras_prune.prune_low_magnitude` is
    stripped as :func:`keras_prune.strip_pruning` does.

    Raises:
        ValueError: ``model`` is not a Keras model (as in tfmot).

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> strip_pruning(prune_low_magnitude(model)).layers[0] is model.layers[0]
        True
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Argument `model` must be a keras.Model. Received: model={model!r}")
    if any(isinstance(state, PrunedModel) for state in collect_pruning(model)):
        return keras_prune.strip_pruning(model)  # pruned by the core, not by wrappers: the core's rules
    return unwrap_model(model, reuse=True)


@contextlib.contextmanager
def prune_scope():
    """tfmot's deserialization scope. keras-prune classes are registered, so it is optional."""
    objects = {
        "PruneLowMagnitude": PruneLowMagnitude,
        "ConstantSparsity": ConstantSparsity,
        "PolynomialDecay": PolynomialDecay,
    }
    with keras.saving.custom_object_scope(objects):
        yield


def cluster_weights(
    to_cluster,
    number_of_clusters: int,
    cluster_centroids_init: CentroidInitialization | str = CentroidInitialization.KMEANS_PLUS_PLUS,
    **kwargs,
) -> ClusteredModel:
    """tfmot's ``cluster_weights`` for a model: :func:`keras_prune.clustering.cluster_weights`.

    ``preserve_sparsity`` and ``cluster_per_channel`` (any layer, not only Conv2D) are passed
    on. Layers are clustered in place inside a :class:`keras_prune.clustering.ClusteredModel`
    rather than wrapped, so a layer or a list of layers is refused: pass the model (and choose
    its layers with ``layers=``). Each centroid moves by the mean update of its weights (tfmot's
    ``cluster_gradient_aggregation`` is not available).

    Raises:
        ValueError: ``to_cluster`` is not a model, an unknown keyword, and what
            :func:`keras_prune.clustering.cluster_weights` refuses.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
        >>> clustered = cluster_weights(model, number_of_clusters=3,
        ...                             cluster_centroids_init=CentroidInitialization.LINEAR)
        >>> strip_clustering(clustered) is model
        True
    """
    if not isinstance(to_cluster, keras.Model):
        raise ValueError(
            "keras_prune clusters the weights of a model in place, so `to_cluster` must be a Keras model "
            "(choose its layers with `layers=`, a regex, a list of names or a callable). "
            f"Received: an object of type {type(to_cluster).__name__}"
        )
    allowed = {"preserve_sparsity", "cluster_per_channel", "layers", "seed"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"Unsupported keyword arguments for cluster_weights: {unknown}. Supported: {sorted(allowed)} "
            "(each centroid moves by the mean update of its weights, so there is no "
            "`cluster_gradient_aggregation`)."
        )
    return _clustering.cluster_weights(to_cluster, number_of_clusters, cluster_centroids_init, **kwargs)


def strip_clustering(model: keras.Model) -> keras.Model:
    """tfmot's ``strip_clustering``: the model back, each clustered weight on its centroids
    (see :func:`keras_prune.clustering.strip_clustering`).

    Raises:
        ValueError: ``model`` is not a Keras model (as in tfmot).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Argument `model` must be a keras.Model. Received: model={model!r}")
    return _clustering.strip_clustering(model)


@contextlib.contextmanager
def cluster_scope():
    """tfmot's deserialization scope for clustered models. keras-prune's are registered, so it is optional."""
    with keras.saving.custom_object_scope({"ClusteredModel": ClusteredModel}):
        yield


sparsity = SimpleNamespace(
    keras=SimpleNamespace(
        prune_low_magnitude=prune_low_magnitude,
        strip_pruning=strip_pruning,
        prune_scope=prune_scope,
        UpdatePruningStep=UpdatePruningStep,
        PruningSummaries=PruningSummaries,
        PruningSchedule=PruningSchedule,
        ConstantSparsity=ConstantSparsity,
        PolynomialDecay=PolynomialDecay,
        PrunableLayer=keras_prune.PrunableLayer,
        PruningPolicy=PruningPolicy,
        PruneLowMagnitude=PruneLowMagnitude,
    )
)

clustering_keras = SimpleNamespace(
    cluster_weights=cluster_weights,
    strip_clustering=strip_clustering,
    cluster_scope=cluster_scope,
    CentroidInitialization=CentroidInitialization,
)
clustering = SimpleNamespace(keras=clustering_keras)

__all__ = ["cluster_scope", "cluster_weights", "clustering", "prune_low_magnitude", "prune_scope", "sparsity",
           "strip_clustering", "strip_pruning"]
