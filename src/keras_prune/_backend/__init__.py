"""The few places where pruning differs per Keras backend: the mask update inside the train step.

Each backend module has ``update_in_step(wrapper, step)``, run by the wrapper's forward pass in
training before the wrapped layer is called, and ``call_layer(wrapper, *args, **kwargs)``,
the forward pass itself; backends that can differentiate also have
``loss_gradients(model, loss_fn, x, y)`` (for Taylor importance), and a backend whose Keras
trainer caps ``steps_per_execution`` says so in ``MAX_STEPS_PER_EXECUTION``. The update
recomputes the masks on the host, with the same numpy code as everywhere else, but only when
the schedule says so at ``step``; because it runs inside the compiled step, a model compiled
with ``steps_per_execution`` gets the masks of a plain ``fit``.
With one step per batch, ``UpdatePruningStep`` updates from the host between steps instead,
which keeps host calls out of the compiled step.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import keras


def current() -> ModuleType:
    """The module for the active Keras backend (TensorFlow, JAX, PyTorch, or eager for the others)."""
    name = keras.backend.backend()
    return importlib.import_module(f"keras_prune._backend.{name if name in ('tensorflow', 'jax', 'torch') else 'eager'}")


def is_update_step(schedule, step):
    """The schedule's update rule as a tensor predicate of the int32 step tensor ``step``."""
    return schedule.update_condition(step)
