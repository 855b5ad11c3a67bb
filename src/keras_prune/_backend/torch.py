"""PyTorch: the train step runs eagerly, so mask updates are those of :mod:`.eager`; gradients
for Taylor importance come from ``torch.autograd``."""

from __future__ import annotations

import keras
import numpy as np
import torch

from keras_prune._backend.eager import (
    CONSTRAINTS_READ_VARIABLES,
    call_layer,
    in_step_problem,
    place_masks,
    update_in_step,
)

__all__ = ["CONSTRAINTS_READ_VARIABLES", "MAX_STEPS_PER_EXECUTION", "call_layer", "in_step_problem",
           "loss_gradients", "place_masks", "update_in_step"]

MAX_STEPS_PER_EXECUTION = 1  # Keras' torch trainer refuses more


def loss_gradients(model, loss_fn, x, y) -> list:
    """Gradients of the mean of ``loss_fn(y, model(x))`` for each of ``model.trainable_variables``,
    as numpy arrays (zeros for a variable the loss does not depend on)."""
    variables = model.trainable_variables
    with torch.enable_grad():
        loss = keras.ops.mean(loss_fn(y, model(x, training=False)))
        grads = torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
    return [
        np.zeros(tuple(v.shape)) if g is None else g.detach().cpu().numpy()
        for v, g in zip(variables, grads)
    ]
