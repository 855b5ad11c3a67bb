"""A namespace shaped like ``tensorflow_model_optimization``, backed by keras-prune.

Migrating tfmot code to Keras 3 is a one-line change::

    import keras_prune.compat.tfmot as tfmot

    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=tfmot.sparsity.keras.PolynomialDecay(0.3, 0.7, 0, 1000)
    )
    ...
    final = tfmot.sparsity.keras.strip_pruning(pruned)
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import keras

import keras_prune
from keras_prune import masks
from keras_prune.core import check_schedule, check_scope
from keras_prune.prune import wrap_layers
from keras_prune.schedules import ConstantSparsity


def prune_low_magnitude(
    to_prune,
    pruning_schedule=None,
    block_size=(1, 1),
    block_pooling_type="AVG",
    pruning_policy=None,
    sparsity_m_by_n=None,
    **kwargs,
):
    """tfmot's ``prune_low_magnitude``, with tfmot's positional argument order.

    As in tfmot, each pruned layer of a model is wrapped in a ``PruneLowMagnitude`` found in
    ``model.layers`` (Sequential and functional models are cloned), and ``pruning_policy``
    chooses the layers.
    """
    block, pooling, m_by_n = masks.check_pattern(block_size, block_pooling_type, sparsity_m_by_n)
    scope = check_scope(kwargs.pop("scope", "layer"), block, m_by_n)
    return wrap_layers(
        to_prune,
        check_schedule(pruning_schedule or ConstantSparsity(0.5, 0)),
        pruning_policy=pruning_policy,
        block_size=block,
        block_pooling_type=pooling,
        sparsity_m_by_n=m_by_n,
        scope=scope,
        **kwargs,
    )


@contextlib.contextmanager
def prune_scope():
    """tfmot's deserialization scope. keras-prune classes are registered, so it is optional."""
    objects = {
        "PruneLowMagnitude": keras_prune.PruneLowMagnitude,
        "ConstantSparsity": keras_prune.ConstantSparsity,
        "PolynomialDecay": keras_prune.PolynomialDecay,
    }
    with keras.saving.custom_object_scope(objects):
        yield


sparsity = SimpleNamespace(
    keras=SimpleNamespace(
        prune_low_magnitude=prune_low_magnitude,
        strip_pruning=keras_prune.strip_pruning,
        prune_scope=prune_scope,
        UpdatePruningStep=keras_prune.UpdatePruningStep,
        PruningSummaries=keras_prune.PruningSummaries,
        PruningSchedule=keras_prune.PruningSchedule,
        ConstantSparsity=keras_prune.ConstantSparsity,
        PolynomialDecay=keras_prune.PolynomialDecay,
        PrunableLayer=keras_prune.PrunableLayer,
        PruningPolicy=keras_prune.PruningPolicy,
    )
)

__all__ = ["sparsity"]
