"""Gradual magnitude pruning: wrap a model's prunable layers, later strip the wrappers.

Sequential and functional models are cloned (layers copied with their weights), so the
model passed in is never modified. Subclassed models cannot be cloned; their prunable
sub-layers are swapped for wrappers in place, after every check has passed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import keras
from keras.src.models.functional import Functional  # Keras exports no public type for it

from keras_prune import masks, registry
from keras_prune.callbacks import collect_wrappers
from keras_prune.oneshot import ensure_prunable, list_paths, pattern_warnings
from keras_prune.schedules import ConstantSparsity, PruningSchedule
from keras_prune.wrapper import (
    PruneLowMagnitude,
    check_layer,
    check_schedule,
    check_scope,
)


class PruningPolicy:
    """Decides which layers of a model get pruned (tfmot's ``pruning_policy`` hook).

    Subclass and override :meth:`allow_pruning` (and optionally
    :meth:`ensure_model_supports_pruning`, which may raise for unsuitable models).

    Example:
        >>> class SkipLast(PruningPolicy):
        ...     def allow_pruning(self, layer):
        ...         return layer.name != "logits"
    """

    def allow_pruning(self, layer: keras.layers.Layer) -> bool:
        return True

    def ensure_model_supports_pruning(self, model: keras.Model) -> None:
        return None


def _is_clonable(model: keras.Model) -> bool:
    return isinstance(model, (keras.Sequential, Functional))


def _wants_pruning(layer, policy: PruningPolicy | None) -> bool:
    if isinstance(layer, PruneLowMagnitude):
        check_layer(layer)  # raises: pruning an already pruned model
    if isinstance(layer, (keras.Model, keras.layers.InputLayer)):
        return False
    if policy is not None and not policy.allow_pruning(layer):
        return False  # before the registry, so an excluded custom layer needs no declaration
    return bool(registry.prunable_weights(layer) if layer.built else registry.has_rule(layer))


def _copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh layer with the same config, built the same way (weights copied later)."""
    copy = layer.__class__.from_config(layer.get_config())
    build_config = layer.get_build_config() if layer.built else None
    if build_config:
        copy.build_from_config(build_config)
    return copy


def transform_layers(
    model: keras.Model,
    replace: Callable[[keras.layers.Layer], keras.layers.Layer],
    wants: Callable[[keras.layers.Layer], bool],
) -> keras.Model:
    """Clones ``model`` (recursing into nested models), passing chosen layers through ``replace``.

    Every layer is a fresh copy, so the result shares no state with ``model``; weights are
    copied once the clone is built.
    """
    pairs = []

    def clone(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation (x[..., 0], ops.add, ...) is reused as is
        if isinstance(layer, keras.Model) and _is_clonable(layer):
            return transform_layers(layer, replace, wants)
        new = replace(layer) if wants(layer) else _copy_layer(layer)
        pairs.append((layer, new))
        return new

    inputs = None
    if isinstance(model, Functional) and not isinstance(model, keras.Sequential):
        inputs = keras.tree.map_structure(_same_input, model.input)
    cloned = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    for old, new in pairs:
        # Weights live in the wrapped layer: pruning wraps the copy, stripping unwraps it.
        source = old.layer if isinstance(old, PruneLowMagnitude) else old
        target = new.layer if isinstance(new, PruneLowMagnitude) else new
        if source.built:
            target.set_weights(source.get_weights())
    return cloned


def _same_input(tensor):
    """A new input like ``tensor``, with its name, so the clone's config matches."""
    source = tensor._keras_history.operation
    return keras.Input(
        batch_shape=tensor.shape, dtype=tensor.dtype, sparse=tensor.sparse, name=source.name
    )


def _sublayer_slots(container):
    """``(holder, key, layer)`` for each sub-layer attribute or list item of ``container``."""
    for name, value in list(vars(container).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            yield container, name, value
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    yield value, i, item


def _swap(container, holder, key, old, new) -> None:
    container._tracker.replace_tracked_value("layers", old, new)
    if holder is container:
        setattr(container, key, new)
    else:
        holder[key] = new


def _plan_in_place(container, wants, plan) -> list:
    """Finds the sub-layers to swap, descending into custom container layers and models."""
    for holder, key, layer in _sublayer_slots(container):
        if _is_container(layer):
            _plan_in_place(layer, wants, plan)
        elif wants(layer):
            plan.append((container, holder, key, layer))
    return plan


def _is_container(layer) -> bool:
    """A model, or a custom layer without a pruning rule that only groups other layers."""
    if isinstance(layer, keras.Model):
        return True
    if registry.is_builtin(layer) or registry.has_rule(layer):
        return False
    children = [child for _, _, child in _sublayer_slots(layer)]
    inner = {id(w) for child in children for w in child.weights}
    return bool(children) and all(id(w) in inner for w in layer.weights)


def prune_low_magnitude(
    to_prune,
    pruning_schedule: PruningSchedule | None = None,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
    pruning_policy: PruningPolicy | None = None,
    scope: str = "layer",
    **kwargs,
):
    """Prepares a layer, a list of layers, or a model for gradual magnitude pruning.

    Same arguments and behaviour as tfmot's ``prune_low_magnitude``, on Keras 3. Train the
    result with the :class:`UpdatePruningStep` callback, then call :func:`strip_pruning`.

    Args:
        to_prune: a layer, a list of layers, or a Sequential, functional (possibly nested) or
            subclassed model. Sequential and functional models are cloned with their weights;
            subclassed models (which Keras cannot clone) are changed in place and returned.
        pruning_schedule: when and how much to prune; default ``ConstantSparsity(0.5, 0)``.
        block_size: prune ``(rows, cols)`` blocks of each weight's 2-D view.
        block_pooling_type: ``"AVG"`` or ``"MAX"`` pooling of a block's magnitudes.
        sparsity_m_by_n: ``(m, n)``: ``m`` zeros in every ``n`` weights along the input axis.
        pruning_policy: a :class:`PruningPolicy` deciding which layers to prune.
        scope: ``"layer"`` (each tensor ranked alone) or ``"global"`` (one ranking across all
            pruned weights of the model).
        **kwargs: passed to each :class:`PruneLowMagnitude` wrapper.

    Returns:
        The pruning-ready layer, list of layers, or model. A ``UserWarning`` names each built
        layer whose weights the pattern does not fit (an N:M input axis shorter than N, a
        block larger than the weight), which will not be pruned as asked.

    Raises:
        TypeError, ValueError: bad arguments, an already pruned model, a layer that cannot be
            pruned, a model with nothing to prune, a ``pruning_policy`` that allows no
            prunable layer, or a pattern that fits none of the (built) layers to prune;
            raised before anything changes.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0))
        >>> type(pruned.layers[0]).__name__
        'PruneLowMagnitude'
    """
    schedule = check_schedule(pruning_schedule or ConstantSparsity(0.5, 0))
    block, pooling, m_by_n = masks.check_pattern(block_size, block_pooling_type, sparsity_m_by_n)
    check_scope(scope, block, m_by_n)
    if pruning_policy is not None and not isinstance(pruning_policy, PruningPolicy):
        raise TypeError(
            "Argument `pruning_policy` must be a keras_prune.PruningPolicy. "
            f"Received: pruning_policy={pruning_policy!r}"
        )

    def wrap(layer):
        return PruneLowMagnitude(layer, schedule, block, pooling, m_by_n, scope, **kwargs)

    def wants(layer):
        return _wants_pruning(layer, pruning_policy)

    if isinstance(to_prune, (list, tuple)):
        for layer in to_prune:
            check_layer(layer)
        _check_pattern_fit([(layer.name, layer) for layer in to_prune], block, m_by_n)
        return [wrap(layer) for layer in to_prune]
    if not isinstance(to_prune, keras.Model):
        if not isinstance(to_prune, keras.layers.Layer):
            raise TypeError(
                "Argument `to_prune` must be a Keras layer, a list of layers or a model. "
                f"Received: to_prune={to_prune!r}"
            )
        check_layer(to_prune)
        _check_pattern_fit([(to_prune.name, to_prune)], block, m_by_n)
        return wrap(to_prune)
    if collect_wrappers(to_prune):
        raise ValueError(
            f"Model '{to_prune.name}' is already pruned. Call keras_prune.strip_pruning() "
            "first to prune it again with other settings."
        )
    if pruning_policy is not None:
        pruning_policy.ensure_model_supports_pruning(to_prune)
    if _is_clonable(to_prune):
        _check_all(to_prune, wants)
        _check_targets(to_prune, list(_clonable_targets(to_prune, wants)), pruning_policy, block, m_by_n)
        return transform_layers(to_prune, lambda layer: wrap(_copy_layer(layer)), wants)
    if not to_prune.built:
        raise ValueError(
            f"Subclassed model '{to_prune.name}' must be built before pruning: call it on a "
            "batch of data (or model.build(input_shape)) first."
        )
    plan = _plan_in_place(to_prune, wants, [])
    _check_targets(to_prune, [(layer.name, layer) for _, _, _, layer in plan], pruning_policy, block, m_by_n)
    wrappers = [wrap(layer) for _, _, _, layer in plan]  # may raise; nothing swapped yet
    for (container, holder, key, layer), wrapper in zip(plan, wrappers):
        _swap(container, holder, key, layer, wrapper)
    return to_prune


def _check_all(model: keras.Model, wants) -> None:
    """Visits every layer first, so an unsupported one raises before any cloning."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Layer) and not isinstance(layer, keras.Model):
            wants(layer)


def _clonable_targets(model: keras.Model, wants, prefix: str = ""):
    """``(path, layer)`` for each layer :func:`transform_layers` will wrap, in model order."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model) and _is_clonable(layer):
            yield from _clonable_targets(layer, wants, prefix=f"{path}/")
        elif wants(layer):
            yield path, layer


def _check_targets(model: keras.Model, targets: list, policy: PruningPolicy | None, block, m_by_n) -> None:
    """Raises unless something will be wrapped and the pattern fits it; warns where it does not."""
    if not targets:
        candidates = list_paths(ensure_prunable(model))  # raises: the model has nothing to prune
        if policy is None:
            raise ValueError(
                f"None of the layers with prunable weights of model '{model.name}' ({candidates}) "
                "can be wrapped: they sit in a subclassed model nested in it. Pass that nested "
                "model to prune_low_magnitude() instead."
            )
        raise ValueError(
            f"Argument `pruning_policy` allows none of the layers with prunable weights of model "
            f"'{model.name}' ({candidates}), so nothing would be pruned. "
            f"Received: pruning_policy={policy!r}; make its `allow_pruning(layer)` return True "
            "for the layers to prune."
        )
    _check_pattern_fit(targets, block, m_by_n, stacklevel=4)


def _check_pattern_fit(targets: list, block, m_by_n, stacklevel: int = 3) -> None:
    """Warns for each built layer whose weights the pattern does not fit; raises if it fits none.

    Unbuilt layers get their weights' shapes only later, so they are not checked here, and
    while some are unbuilt a pattern that fits none of the built ones only warns.
    """
    if tuple(block) == (1, 1) and m_by_n is None:
        return
    built = [(path, layer) for path, layer in targets if layer.built]
    selected = [(path, weight) for path, layer in built for weight in registry.prunable_weights(layer)]
    notes = pattern_warnings(selected, block, m_by_n, require_fit=len(built) == len(targets))
    for note in notes:
        warnings.warn(f"Layer '{note.layer}': {note.message}.", UserWarning, stacklevel=stacklevel)


def strip_pruning(model):
    """Removes pruning wrappers: returns the model as it was, with its pruned weights at 0.

    The stripped model's ``get_config()`` equals the unpruned model's, and its predictions
    equal the pruned model's. Sequential/functional models are cloned; subclassed models are
    restored in place.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> stripped = strip_pruning(prune_low_magnitude(model))
        >>> stripped.get_config() == model.get_config()
        True
    """
    if isinstance(model, PruneLowMagnitude):
        model.release_constraints()
        return model.layer
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    if _is_clonable(model):
        return transform_layers(
            model,
            lambda wrapper: _copy_layer(wrapper.layer),
            lambda layer: isinstance(layer, PruneLowMagnitude),
        )
    for container, holder, key, wrapper in _plan_in_place(
        model, lambda layer: isinstance(layer, PruneLowMagnitude), []
    ):
        wrapper.release_constraints()
        _swap(container, holder, key, wrapper, wrapper.layer)
    return model
