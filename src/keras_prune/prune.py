"""Gradual magnitude pruning: prepare a model (or layer) for pruning while it trains, then strip.

A model is pruned in place, at any depth, by a :class:`keras_prune.PrunedModel` holding it
with the masks of its weights; a layer (or a list of layers) is wrapped in a
:class:`keras_prune.PruneLowMagnitude`. Both keep their state the same way
(:mod:`keras_prune.core`) and are driven by :class:`keras_prune.UpdatePruningStep`.
"""

from __future__ import annotations

import warnings

import keras

from keras_prune import masks, registry
from keras_prune.callbacks import collect_pruning
from keras_prune.compat.wrapping import PruningPolicy, unwrap_model
from keras_prune.core import PruningState, check_schedule, check_scope, pruning_state_of
from keras_prune.handlers import input_axes
from keras_prune.oneshot import LayerFilter, _check_layer_filter, pattern_warnings, select_weights
from keras_prune.pruned_model import PrunedModel
from keras_prune.schedules import ConstantSparsity, PruningSchedule
from keras_prune.wrapper import PruneLowMagnitude, check_layer

__all__ = ["PruningPolicy", "prune_low_magnitude", "strip_pruning"]


def prune_low_magnitude(
    to_prune,
    pruning_schedule: PruningSchedule | None = None,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
    layers: LayerFilter = None,
    scope: str = "layer",
    sparsities: dict[str, float] | None = None,
    **kwargs,
):
    """Prepares a model, a layer, or a list of layers for gradual magnitude pruning.

    The arguments of tfmot's ``prune_low_magnitude``, on Keras 3, for any model: layers are
    found at any depth (nested models, custom layers, KerasHub transformer blocks). Train the
    result with the :class:`UpdatePruningStep` callback, then call :func:`strip_pruning`.

    Args:
        to_prune: a model (Sequential, functional, subclassed, KerasHub, nested...), a layer,
            or a list of layers.
        pruning_schedule: when and how much to prune; default ``ConstantSparsity(0.5, 0)``.
        block_size: prune ``(rows, cols)`` blocks of each weight's 2-D view.
        block_pooling_type: ``"AVG"`` or ``"MAX"`` pooling of a block's magnitudes.
        sparsity_m_by_n: ``(m, n)``: ``m`` zeros in every ``n`` weights along the input axis.
        layers: which layers of a model to prune: a regular expression searched in each
            layer's path (``keras-prune inspect`` lists them), a list of paths or names, a
            callable ``layer -> bool``, or ``None`` for every layer with prunable weights.
            Layers holding weights keras-prune does not know how to prune (a KerasHub
            ``PositionEmbedding``, a custom layer's own variables) stay dense.
        scope: ``"layer"`` (each tensor ranked alone) or ``"global"`` (one ranking across all
            pruned weights of the model).
        sparsities: per-weight final sparsities of a model, ``{weight key: fraction}`` (a
            :func:`keras_prune.allocate` result): only the weights it names are pruned, each
            reaching its own sparsity when the schedule reaches its final one (and in step with
            the schedule before: at half the final sparsity, each weight is at half its own).
        **kwargs: passed to :class:`PrunedModel` (or to each :class:`PruneLowMagnitude`).

    Returns:
        For a model, a :class:`PrunedModel` holding it: the model itself is the one trained
        (its weights change in place) and :func:`strip_pruning` returns it. For a layer or a
        list of layers, :class:`PruneLowMagnitude` wrappers. A ``UserWarning`` names each
        layer whose weights the pattern does not fit (an N:M input axis shorter than N, a
        block larger than the weight), which will not be pruned as asked.

    Raises:
        TypeError, ValueError: bad arguments, an already pruned model, a model with nothing
            to prune, a ``layers`` selection that picks nothing (or only layers keras-prune
            cannot prune), or a pattern that fits none of the layers to prune; raised before
            anything changes.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc")])
        >>> pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0))
        >>> pruned.pruned_layers
        ['fc']
    """
    if "pruning_policy" in kwargs:
        raise TypeError(
            "keras_prune.prune_low_magnitude() chooses layers with `layers=` (a regex, a list of "
            "paths, or a callable `layer -> bool`, e.g. `layers=policy.allow_pruning`); "
            "tfmot's `pruning_policy` is in keras_prune.compat.tfmot."
        )
    schedule = check_schedule(pruning_schedule or ConstantSparsity(0.5, 0))
    block, pooling, m_by_n = masks.check_pattern(block_size, block_pooling_type, sparsity_m_by_n)
    check_scope(scope, block, m_by_n)
    _check_layer_filter(layers)
    pattern = {"block_size": block, "block_pooling_type": pooling, "sparsity_m_by_n": m_by_n, "scope": scope}
    if isinstance(to_prune, keras.Model):
        _check_unpruned(to_prune)
        if sparsities is not None:
            kwargs["sparsities"] = sparsities
        if not to_prune.built:  # layers are chosen when it is built
            return PrunedModel(to_prune, schedule, layers=layers, **pattern, **kwargs)
        _check_pattern_fit(to_prune, select_weights(to_prune, layers, sparsities), block, m_by_n, built_all=True)
        return PrunedModel(to_prune, schedule, layers=layers, **pattern, **kwargs)
    if sparsities is not None:
        raise ValueError("Argument `sparsities` names weights of a model by their keys; pass the model. "
                         f"Received: to_prune={to_prune!r}")
    if layers is not None:
        raise ValueError(
            "Argument `layers` chooses layers of a model; pass the model, or the layers to prune "
            f"themselves. Received: layers={layers!r} with to_prune={to_prune!r}"
        )
    return wrap_layers(to_prune, schedule, **pattern, **kwargs)


def wrap_layers(to_prune, schedule: PruningSchedule, **settings):
    """``PruneLowMagnitude`` wrappers for a layer or a list of layers; ``settings`` are the pattern and scope."""
    check_fit = pattern_fit_check(settings["block_size"], settings["sparsity_m_by_n"])

    def wrap(layer):
        return PruneLowMagnitude(layer, schedule, **settings)

    if isinstance(to_prune, (list, tuple)):
        for layer in to_prune:
            check_layer(layer)
        check_fit([(layer.name, layer) for layer in to_prune])
        return [wrap(layer) for layer in to_prune]
    if not isinstance(to_prune, keras.layers.Layer) or isinstance(to_prune, keras.Model):
        raise TypeError(
            "Argument `to_prune` must be a Keras layer, a list of layers or a model. "
            f"Received: to_prune={to_prune!r}"
        )
    check_layer(to_prune)
    check_fit([(to_prune.name, to_prune)])
    return wrap(to_prune)


def pattern_fit_check(block, m_by_n, prunable=registry.prunable_weights):
    """``check_fit(targets)``: warns for each ``(path, layer)`` the pattern does not fit (see
    :func:`_check_pattern_fit`); ``prunable(layer)`` gives the weights a wrapper prunes."""

    def check_fit(targets):
        built = [(path, layer, prunable(layer)) for path, layer in targets if layer.built]
        weights = [(path, w) for path, _, own in built for w in own]
        axes = [axis for _, layer, own in built for axis in input_axes(layer, own)]
        _check_pattern_fit(None, weights, block, m_by_n, built_all=len(built) == len(targets), axes=axes)

    return check_fit


def _check_unpruned(model: keras.Model) -> None:
    if collect_pruning(model) or any(pruning_state_of(w) for w in model.weights):
        raise ValueError(
            f"Model '{model.name}' is already pruned. Call keras_prune.strip_pruning() "
            "first to prune it again with other settings."
        )


def _check_pattern_fit(root, weights: list, block, m_by_n, built_all: bool, axes=None) -> None:
    """Warns for each ``(path, weight)`` of ``root`` the pattern does not fit; raises if it fits none.

    Unbuilt layers get their weights' shapes only later, so while some are unbuilt
    (``built_all`` false) a pattern that fits none of the built ones only warns.
    """
    if tuple(block) == (1, 1) and m_by_n is None:
        return
    if axes is None:
        axes = input_axes(root, [w for _, w in weights])
    for note in pattern_warnings(weights, block, m_by_n, require_fit=built_all, axes=axes):
        warnings.warn(f"Layer '{note.layer}': {note.message}.", UserWarning, stacklevel=4)


def strip_pruning(model):
    """Removes the pruning state: returns the model as it was, with its pruned weights at 0.

    The stripped model is of the pruned model's class, its ``get_config()`` equals the
    unpruned model's, and its predictions equal the pruned model's. A model with
    ``PruneLowMagnitude`` wrappers (tfmot-style) is cloned without them, or restored in
    place if subclassed.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> stripped = strip_pruning(prune_low_magnitude(model))
        >>> stripped is model, stripped.get_config() == model.get_config()
        (True, True)
    """
    if isinstance(model, PruningState):
        model.release_constraints()
        return model.layer
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    nested = [state for state in collect_pruning(model) if isinstance(state, PrunedModel)]
    if nested:
        raise ValueError(
            f"Model '{model.name}' holds the pruned model '{nested[0].name}'; strip that one "
            "(keras_prune.strip_pruning(pruned)) and build the outer model around the result."
        )
    return unwrap_model(model)
