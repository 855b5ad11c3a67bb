"""Backends that run the train step eagerly (PyTorch): the update is plain Python."""

from __future__ import annotations

import keras

# Variable constraints run inside the train step; here they can read other variables' live values.
CONSTRAINTS_READ_VARIABLES = True


def in_step_problem(model) -> str | None:
    """Masks can always update inside this backend's train step."""
    return None


def place_masks(owner: str, weights: list, masks: list) -> None:
    """Nothing to do: masks live where Keras creates them on this backend."""


def update_in_step(wrapper, step):
    """Recomputes ``wrapper``'s masks when its schedule updates at ``step``."""
    step = int(keras.ops.convert_to_numpy(step))
    if wrapper.pruning_schedule.should_update(step):
        wrapper.update_from_host(step)


def call_layer(wrapper, token, *args, training=None, **kwargs):
    """The wrapped layer's forward pass, unchanged."""
    return wrapper.layer(*args, **kwargs)
