"""TensorFlow: the mask update is a host function inside a ``tf.cond``, run only on update steps.

Its results are assigned in the graph, and the wrapped layer reads its weights under a control
dependency on the update, so the forward pass of an update step already sees the new zeros.
Host functions cannot run inside XLA, so ``UpdatePruningStep`` updates masks from the host
between steps when a model is compiled with ``jit_compile=True``.
"""

from __future__ import annotations

import tensorflow as tf

from keras_prune._backend import is_update_step


def update_in_step(wrapper, step):
    """Recomputes ``wrapper``'s masks when its schedule updates at ``step``; returns a token."""
    own = wrapper.prunable_weights()

    def host(s, *values):
        return wrapper.host_update(int(s), [v.numpy() for v in values])

    def update():
        values = [w.value for member in wrapper.mask_group.members for w in member.prunable_weights()]
        results = tf.py_function(host, [step, *values], Tout=[w.dtype for w in own] * 2)
        for weight, mask, threshold, keep, value in zip(
            own, wrapper.mask_variables, wrapper.threshold_variables, results[: len(own)], results[len(own):]
        ):
            keep = tf.ensure_shape(keep, weight.shape)
            mask.assign(keep)
            threshold.assign(tf.reshape(value, ()))
            weight.assign(tf.where(keep > 0.5, weight.value, tf.zeros_like(keep)))
        return tf.constant(True)

    return tf.cond(is_update_step(wrapper.pruning_schedule, step), update, lambda: tf.constant(False))


def call_layer(wrapper, token, *args, training=None, **kwargs):
    """The wrapped layer's forward pass, reading its weights after the update."""
    if token is None or tf.executing_eagerly():
        return wrapper.layer(*args, **kwargs)
    with tf.control_dependencies([token]):
        return wrapper.layer(*args, **kwargs)
