"""JAX: the mask update is a host callback inside ``lax.cond``; the forward pass uses masked weights.

A JAX train step cannot assign trainable variables from inside the forward pass, so pruned
positions are zeroed in the variables after each step by ``UpdatePruningStep``; within a step
(and across the steps of one ``steps_per_execution``) the wrapped layer runs on its weights
times their masks, and ranking reads the same masked values, so results do not depend on when
the zeros reach the variables.
"""

from __future__ import annotations

import jax
import keras
import numpy as np

from keras_prune._backend import is_update_step
from keras_prune._keras_compat import no_autocast, share_layout, stateless_scope

# The train step holds the variables as its own state and empties them meanwhile, so a
# constraint reading another variable would see what it held when the step was traced.
CONSTRAINTS_READ_VARIABLES = False


def in_step_problem(model) -> str | None:
    """Masks can always update inside this backend's train step."""
    return None


def place_masks(owner: str, weights: list, masks: list) -> None:
    """Lays each mask out over devices as its weight is (a ``LayoutMap`` names only the weights)."""
    for weight, mask in zip(weights, masks):
        share_layout(mask, weight)


def update_in_step(wrapper, step):
    """Recomputes ``wrapper``'s masks when its schedule updates at ``step``."""
    # Masks are not differentiable: the callback sees values with their gradient stopped.
    pairs = [(jax.lax.stop_gradient(w.value), m.value) for member in wrapper.mask_group.members
             for w, m in zip(member.prunable_weights(), member.mask_variables)]
    own = wrapper.prunable_weights()
    state = [*wrapper.mask_variables, *wrapper.threshold_variables]
    shapes = [jax.ShapeDtypeStruct(tuple(w.shape), w.dtype) for w in own]
    shapes += [jax.ShapeDtypeStruct((), w.dtype) for w in own]

    def host(s, *values):
        results = wrapper.host_update(int(s), [np.asarray(v) for v in values])
        return [np.asarray(r, dtype=spec.dtype).reshape(spec.shape) for r, spec in zip(results, shapes)]

    def update(operands):
        s, pairs = operands
        return jax.pure_callback(host, shapes, s, *[w * m for w, m in pairs])

    new = jax.lax.cond(is_update_step(wrapper.pruning_schedule, step), update,
                       lambda operands: [v.value for v in state], (step, pairs))
    for variable, value in zip(state, new):
        variable.assign(value)


def call_layer(wrapper, token, *args, training=None, **kwargs):
    """The wrapped layer's forward pass; in a train step, on its weights times their masks."""
    scope = stateless_scope()
    if not (training and wrapper.updates_in_step) or scope is None:
        return wrapper.layer(*args, **kwargs)
    originals = {}
    with no_autocast():
        for weight, mask in zip(wrapper.prunable_weights(), wrapper.mask_variables):
            value = scope.get_current_value(weight)
            if value is not None:
                originals[id(weight)] = value
                scope.state_mapping[id(weight)] = value * mask.value
    try:
        return wrapper.layer(*args, **kwargs)
    finally:
        scope.state_mapping.update(originals)


def loss_gradients(model, loss_fn, x, y) -> list:
    """Gradients of the mean of ``loss_fn(y, model(x))`` for each of ``model.trainable_variables``,
    as numpy arrays."""
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_of(trainable):
        y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return keras.ops.mean(loss_fn(y, y_pred))

    return [np.asarray(g) for g in jax.grad(loss_of)([v.value for v in model.trainable_variables])]
