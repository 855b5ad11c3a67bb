"""tfmot's way of pruning a model: a ``PruneLowMagnitude`` wrapper spliced in for each layer.

:mod:`keras_prune.compat.tfmot` uses it, so code written for tfmot finds the wrappers it
expects in ``model.layers``. As in tfmot, Sequential and functional models are cloned around
the same layer objects: the pruned model holds the original layers and weights (wrapped),
and stripping hands them back. Subclassed models cannot be cloned, so their prunable
sub-layers are swapped for wrappers in place, after every check has passed.
:func:`keras_prune.prune_low_magnitude` prunes any model, at any depth, without wrappers
(see :class:`keras_prune.PrunedModel`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_prune import registry
from keras_prune._keras_compat import all_layers, is_functional, producer_of, retrack_sublayer
from keras_prune.oneshot import ensure_prunable, list_paths
from keras_prune.wrapper import PruneLowMagnitude


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
    return isinstance(model, keras.Sequential) or is_functional(model)


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
    reuse: bool = False,
) -> keras.Model:
    """Clones ``model`` (recursing into nested models), passing chosen layers through ``replace``.

    With ``reuse``, the clone holds the same layer objects (tfmot's way); otherwise every layer
    is a fresh copy, so the result shares no state with ``model``, and weights are copied once
    the clone is built.
    """
    pairs = []

    def clone(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation (x[..., 0], ops.add, ...) is reused as is
        if isinstance(layer, keras.Model) and _is_clonable(layer):
            return transform_layers(layer, replace, wants, reuse)
        if wants(layer):
            new = replace(layer)
        elif reuse:
            return layer
        else:
            new = _copy_layer(layer)
        pairs.append((layer, new))
        return new

    inputs = None
    if is_functional(model) and not isinstance(model, keras.Sequential):
        inputs = keras.tree.map_structure(_same_input, model.input)
    cloned = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    for old, new in [] if reuse else pairs:
        # Weights live in the wrapped layer: stripping unwraps it into a copy.
        source = old.layer if isinstance(old, PruneLowMagnitude) else old
        target = new.layer if isinstance(new, PruneLowMagnitude) else new
        if source.built:
            target.set_weights(source.get_weights())
    return cloned


def _same_input(tensor):
    """A new input like ``tensor``, with its name, so the clone's config matches."""
    source = producer_of(tensor)
    return keras.Input(
        batch_shape=tensor.shape, dtype=tensor.dtype, sparse=tensor.sparse, name=source.name
    )


def _sublayer_slots(container):
    """``(holder, key, layer)`` for each sub-layer attribute or list item of ``container``."""
    for name, value in _attributes(container):
        if name.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            yield container, name, value
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    yield value, i, item


def _attributes(container) -> list:
    """``(name, value)`` for each attribute of ``container``.

    On PyTorch a layer is a ``torch.nn.Module``, which keeps attributes holding modules (so
    every sub-layer) in its ``_modules`` instead of ``__dict__``; those are included.
    """
    found = dict(vars(container))
    found.update(vars(container).get("_modules") or {})
    return list(found.items())


def _swap(container, holder, key, old, new) -> None:
    retrack_sublayer(container, old, new)
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


def _clonable_targets(model: keras.Model, wants, prefix: str = ""):
    """``(path, layer)`` for each layer :func:`transform_layers` will wrap, in model order."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model) and _is_clonable(layer):
            yield from _clonable_targets(layer, wants, prefix=f"{path}/")
        elif wants(layer):
            yield path, layer


def _check_targets(model: keras.Model, targets: list, policy: PruningPolicy | None, check_fit) -> None:
    """Raises unless something will be pruned and the pattern fits it; warns where it does not."""
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
    check_fit(targets)


def wrap_model(model: keras.Model, wrap, wants, prunes, policy: PruningPolicy | None, check_fit) -> keras.Model:
    """``model`` with ``wrap(layer)`` for each layer ``wants`` chooses (cloned, or in place).

    ``prunes(layer)`` says whether a chosen layer has weights to prune: a subclassed model
    gets wrappers for those only, and a model where none has any is refused (unless it is
    already partly pruned). ``check_fit(targets)`` checks the pattern against the
    ``(path, layer)`` pairs that prune.
    """
    if policy is not None:
        policy.ensure_model_supports_pruning(model)
    partly_pruned = any(isinstance(layer, PruneLowMagnitude) for layer in all_layers(model))
    if _is_clonable(model):
        targets = [(path, layer) for path, layer in _clonable_targets(model, wants) if prunes(layer)]
        if targets or not partly_pruned:
            _check_targets(model, targets, policy, check_fit)
        return transform_layers(model, wrap, wants, reuse=True)
    if not model.built:
        raise ValueError(
            f"Subclassed model '{model.name}' must be built before pruning: call it on a "
            "batch of data (or model.build(input_shape)) first."
        )
    plan = _plan_in_place(model, lambda layer: wants(layer) and prunes(layer), [])
    _check_targets(model, [(layer.name, layer) for _, _, _, layer in plan], policy, check_fit)
    wrappers = [wrap(layer) for _, _, _, layer in plan]  # may raise; nothing swapped yet
    for (container, holder, key, layer), wrapper in zip(plan, wrappers):
        _swap(container, holder, key, layer, wrapper)
    return model


def _unwrap(wrapper: PruneLowMagnitude) -> keras.layers.Layer:
    wrapper.release_constraints()
    return wrapper.layer


def unwrap_model(model: keras.Model, reuse: bool = False) -> keras.Model:
    """``model`` without its ``PruneLowMagnitude`` wrappers (cloned, or restored in place).

    With ``reuse``, the clone holds the wrapped layer objects themselves (tfmot's way);
    otherwise copies of them.
    """
    def is_wrapper(layer):
        return isinstance(layer, PruneLowMagnitude)

    if _is_clonable(model):
        return transform_layers(model, _unwrap if reuse else lambda w: _copy_layer(w.layer), is_wrapper, reuse)
    for container, holder, key, wrapper in _plan_in_place(model, is_wrapper, []):
        _swap(container, holder, key, wrapper, _unwrap(wrapper))
    return model
