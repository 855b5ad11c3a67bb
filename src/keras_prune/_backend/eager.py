"""Backends that run the train step eagerly (PyTorch): the update is plain Python."""

from __future__ import annotations

import keras

from keras_prune import _host


def update_in_step(wrapper, step):
    """Recomputes ``wrapper``'s masks when its schedule updates at ``step``."""
    step = int(keras.ops.convert_to_numpy(step))
    if not wrapper.pruning_schedule.should_update(step):
        return
    members = wrapper.mask_group.members
    values = [_host.read(w) for member in members for w in member.prunable_weights()]
    own = wrapper.prunable_weights()
    results = wrapper.host_update(step, values)
    for weight, mask, threshold, keep, value in zip(own, wrapper.mask_variables, wrapper.threshold_variables,
                                                    results[: len(own)], results[len(own):]):
        _host.write(mask, keep)
        _host.write(threshold, value)
        weight.assign(keras.ops.where(keras.ops.convert_to_tensor(keep) > 0.5, weight, 0))


def call_layer(wrapper, token, *args, training=None, **kwargs):
    """The wrapped layer's forward pass, unchanged."""
    return wrapper.layer(*args, **kwargs)
