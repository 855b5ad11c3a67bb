"""TensorFlow: the mask update is a host function inside a ``tf.cond``, run only on update steps.

Its results are assigned in the graph, and the wrapped layer reads its weights under a control
dependency on the update, so the forward pass of an update step already sees the new zeros.
Host functions cannot run inside XLA, so ``UpdatePruningStep`` updates masks from the host
between steps when a model is compiled with ``jit_compile=True``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_prune._backend import is_update_step

# Variable constraints run inside the train step; here they can read other variables' live values.
CONSTRAINTS_READ_VARIABLES = True


def in_step_problem(model) -> str | None:
    """Why masks cannot update inside ``model``'s compiled train step, or ``None`` if they can."""
    if getattr(model, "jit_compile", False):
        return "XLA (jit_compile=True) cannot call the host; compile with jit_compile=False"
    if model.distribute_strategy.num_replicas_in_sync > 1:
        # Each replica would call the host inside its own branch of the step's graph, which
        # tf.distribute cannot run; between steps, one host update writes every replica.
        return f"under tf.distribute ({type(model.distribute_strategy).__name__}) masks update between steps only"
    return None


def place_masks(owner: str, weights: list, masks: list) -> None:
    """Refuses masks that would not live where the weights they mask live (same strategy).

    Masks are created in the strategy scope active when pruning starts; the weights were
    created in the one active when the model was built. They must be the same.
    """
    strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    for weight in weights:
        distributed = isinstance(weight.value, tf.distribute.DistributedValues)
        if distributed and strategy is None:
            raise ValueError(
                f"Weight '{weight.path}' of '{owner}' was created under a tf.distribute strategy, "
                "but pruning starts outside it: call prune_low_magnitude (and compile) inside the "
                "same `with strategy.scope():` that built the model."
            )
        if strategy is not None and not distributed:
            raise ValueError(
                f"Weight '{weight.path}' of '{owner}' was created outside the tf.distribute strategy "
                f"({type(strategy).__name__}) now in scope: build or load the model inside "
                "`with strategy.scope():`, then prune and compile it there."
            )


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


def loss_gradients(model, loss_fn, x, y) -> list:
    """Gradients of the mean of ``loss_fn(y, model(x))`` for each of ``model.trainable_variables``,
    as numpy arrays (zeros for a variable the loss does not depend on)."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn(y, model(x, training=False)))
    grads = tape.gradient(loss, variables)
    return [np.zeros(tuple(v.shape)) if g is None else g.numpy() for v, g in zip(variables, grads)]
