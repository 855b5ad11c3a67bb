"""Structured pruning: remove whole channels, filters and heads to get a smaller dense model.

``prune_channels`` = trace the channel graph, score the units, plan the removal, rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_prune._validation import check_choice, check_int, check_sparsity
from keras_prune.structured.fold import fold_batchnorm, foldable_batchnorms
from keras_prune.structured.gradual import GradualChannelPruning
from keras_prune.structured.graph import ChannelGraph, Group
from keras_prune.structured.importance import IMPORTANCES, unit_scores
from keras_prune.structured.plan import SCOPES, ChannelPlan, plan_removal
from keras_prune.structured.surgery import apply_plan, zero_removed

__all__ = [
    "ChannelGraph",
    "ChannelPlan",
    "GradualChannelPruning",
    "Group",
    "apply_plan",
    "fold_batchnorm",
    "foldable_batchnorms",
    "plan_channels",
    "prune_channels",
    "unit_scores",
    "zero_removed",
]


def plan_channels(
    model: keras.Model,
    ratio: float,
    *,
    importance: str = "l1",
    scope: str = "layer",
    round_to: int = 1,
    exclude: Sequence[str] = (),
    calibration_data=None,
) -> ChannelPlan:
    """Decides which channels :func:`prune_channels` would remove, without removing them.

    Arguments are those of :func:`prune_channels`. ``plan.summary()`` explains the result.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="a"),
        ...                           keras.layers.Dense(2, name="b")])
        >>> print(plan_channels(model, 0.5).summary())
        a: kept 4/8
        b: kept 2/2 (model output channels are kept)
    """
    ratio = check_sparsity("ratio", ratio)
    check_choice("importance", importance, IMPORTANCES)
    check_choice("scope", scope, SCOPES)
    check_int("round_to", round_to, 1)
    if isinstance(exclude, str):
        exclude = [exclude]
    names = {layer.name for layer in model.layers} if isinstance(model, keras.Model) else set()
    missing = [name for name in exclude if name not in names]
    if missing:
        raise ValueError(
            f"Argument `exclude` names layers the model does not have: {missing}. "
            f"Use names from model.layers. Received: exclude={list(exclude)!r}"
        )
    graph = ChannelGraph(model, tuple(exclude))
    scores = unit_scores(graph, importance, calibration_data)
    return plan_removal(graph, scores, ratio, scope=scope, round_to=round_to)


def prune_channels(
    model: keras.Model,
    ratio: float,
    *,
    importance: str = "l1",
    scope: str = "layer",
    round_to: int = 1,
    exclude: Sequence[str] = (),
    calibration_data=None,
) -> keras.Model:
    """Returns a smaller dense copy of ``model`` with ``ratio`` of its channels removed.

    Channels that must go together (through BatchNorm, residual Add, Concatenate,
    depthwise convolutions, Flatten into Dense, ...) are removed together; the heads of a
    MultiHeadAttention are pruned as units. The model's output layer, layers in
    ``exclude``, and every group that reaches a layer the graph does not understand keep
    all their channels (see ``plan_channels(...).summary()``). When the removed channels
    were already all zero, the new model computes the same outputs.

    Args:
        model: a built Sequential or functional model (channels_last).
        ratio: the fraction of each group's channels to remove, in [0, 1).
        importance: ``"l1"``, ``"l2"``, ``"bn_scale"`` or ``"taylor"``
            (see :func:`keras_prune.structured.unit_scores`).
        scope: ``"layer"`` (every group loses ``ratio``) or ``"global"`` (one ranking).
        round_to: keep channel counts at multiples of this (8 suits most vector units).
        exclude: names of layers to leave untouched.
        calibration_data: ``(x, y)`` batches for ``importance="taylor"``.

    Returns:
        A new, uncompiled Keras model; ``model`` itself is not modified.

    Example:
        >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(60),
        ...                           keras.layers.Dense(10)])
        >>> prune_channels(model, 0.5, round_to=8).layers[0].units
        32
    """
    plan = plan_channels(
        model, ratio, importance=importance, scope=scope, round_to=round_to,
        exclude=exclude, calibration_data=calibration_data,
    )
    return apply_plan(plan)
