"""Surgery: rebuild a smaller dense model from a plan and copy the kept weight slices."""

from __future__ import annotations

import keras
import numpy as np

from keras_prune import handlers
from keras_prune.structured import transformer
from keras_prune.structured.plan import ChannelPlan


def apply_plan(plan: ChannelPlan) -> keras.Model:
    """Returns a new model without the plan's removed units; the input model is unchanged.

    Layers keep their names. Configs shrink (the key named by the layer's handler:
    ``units``, ``filters``, ``output_dim``, ``num_heads``; a Reshape's ``target_shape``); every weight is sliced along the axes
    whose channels were removed. A KerasHub backbone is rebuilt as the same class from its
    config with fewer heads and FFN units (or as a functional model of keras-prune blocks when
    its class cannot hold fewer heads of the same size); a model around it (a task such as
    ``GPT2CausalLM``, or a functional model calling the backbone and its layers) is rebuilt
    around the new backbone. The new model is not compiled.
    """
    model = plan.graph.model
    rebuilt = {id(hub.site.layer): transformer.rebuild(hub) for hub in plan.hub}
    if id(model) in rebuilt:
        return rebuilt[id(model)]
    inner = {}  # id(a layer inside an old backbone) -> the same layer in its new backbone
    for hub in plan.hub:
        inner.update(transformer.matching_layers(hub.site.layer, rebuilt[id(hub.site.layer)]))
    if plan.hub and transformer.is_task(model):
        return _rebuild_task(model, plan, rebuilt)
    configs = {layer.name: _resized_config(layer, plan) for layer in model.layers}

    def clone(layer):
        if id(layer) in rebuilt or id(layer) in inner:
            return rebuilt.get(id(layer)) or inner[id(layer)]
        return layer.__class__.from_config(configs.get(layer.name) or layer.get_config())

    new_model = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights and id(layer) not in rebuilt and id(layer) not in inner:
            _copy_weights(layer, new_model.get_layer(layer.name), plan)
    return new_model


def _rebuild_task(model, plan: ChannelPlan, rebuilt: dict) -> keras.Model:
    """A KerasHub task rebuilt from its config around its new backbone, other weights copied."""
    (hub,) = plan.hub
    config = model.get_config()
    config["backbone"] = rebuilt[id(hub.site.layer)]
    config["preprocessor"] = getattr(model, "preprocessor", None)
    new_model = type(model).from_config(config)
    old_backbone = {id(w) for w in hub.site.layer.weights}
    rest = [w for w in model.weights if id(w) not in old_backbone]
    new_backbone = {id(w) for w in config["backbone"].weights}
    new_rest = [w for w in new_model.weights if id(w) not in new_backbone]
    if [tuple(w.shape) for w in rest] != [tuple(w.shape) for w in new_rest]:
        raise RuntimeError(f"Internal error rebuilding the task '{model.name}' around its smaller backbone.")
    for source, target in zip(rest, new_rest):
        target.assign(keras.ops.convert_to_numpy(source))
    return new_model


def _resized_config(layer, plan: ChannelPlan) -> dict | None:
    slots = plan.graph.slots(layer.name)
    if not slots:
        return None
    config = layer.get_config()
    handler = handlers.handler_for(layer)
    if handler is None:
        return config
    slot = plan.graph.producer_slot(layer.name)
    if handler.width_key is not None and slot is not None:
        config[handler.width_key] = int(plan.keep_mask(layer.name, slot).sum())
    elif handler.trace == "reshape" and "out" in slots and config["target_shape"][-1] != -1:
        width = int(plan.keep_mask(layer.name, "out").sum())
        config["target_shape"] = tuple(config["target_shape"][:-1]) + (width,)
    return config


def _copy_weights(old, new, plan: ChannelPlan) -> None:
    specs = {spec.index: spec.axes for spec in plan.graph.weight_slots.get(old.name, [])}
    values = []
    for i, variable in enumerate(old.weights):
        value = keras.ops.convert_to_numpy(variable)
        for axis, slot in enumerate(specs.get(i, ())):
            if slot is not None:
                value = np.compress(plan.keep_mask(old.name, slot), value, axis=axis)
        values.append(value)
    targets = new.weights
    shapes = [tuple(v.shape) for v in targets]
    if shapes != [v.shape for v in values]:
        raise RuntimeError(
            f"Internal error rebuilding layer '{old.name}': sliced weight shapes "
            f"{[v.shape for v in values]} do not match the new layer's {shapes}."
        )
    for variable, value in zip(targets, values):
        variable.assign(value)


def removal_masks(plan: ChannelPlan) -> list:
    """``(variable, 0/1 array)`` for every trainable weight holding a slice of a removed unit."""
    masks = []
    model = plan.graph.model
    for name, specs in plan.graph.weight_slots.items():
        layer = model.get_layer(name)
        for spec in specs:
            variable = layer.weights[spec.index]
            if not variable.trainable:
                continue
            mask = np.ones(variable.shape, dtype=variable.dtype)
            for axis, slot in enumerate(spec.axes):
                if slot is not None:
                    keep = plan.keep_mask(name, slot)
                    shape = [1] * mask.ndim
                    shape[axis] = -1
                    mask = mask * keep.reshape(shape)
            if not mask.all():
                masks.append((variable, mask))
    for hub in plan.hub:
        for variable, axis, keep in hub.masks():
            if variable.trainable:
                shape = [1] * len(variable.shape)
                shape[axis] = -1
                mask = np.broadcast_to(keep.reshape(shape), variable.shape).astype(variable.dtype)
                masks.append((variable, mask))
    return masks


def zero_removed(plan: ChannelPlan) -> None:
    """Zeroes, in the plan's own model, every trainable weight slice of the removed units
    (channels, attention heads, FFN units).

    The model keeps its shape; :func:`apply_plan` on the same plan then gives a smaller
    model with the same outputs.
    """
    for variable, mask in removal_masks(plan):
        variable.assign(keras.ops.multiply(variable, mask))
