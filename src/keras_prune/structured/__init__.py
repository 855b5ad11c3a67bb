"""Structured pruning: remove whole channels, filters and heads to get a smaller dense model.

``prune_channels`` = trace the channel graph, score the units, plan the removal, rebuild.
KerasHub backbones lose attention heads and FFN units and are rebuilt from their config, or as
a functional model when their class cannot hold fewer heads of the same size
(:mod:`keras_prune.structured.transformer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras

from keras_prune._keras_compat import all_layers
from keras_prune._validation import check_choice, check_int, check_sparsity
from keras_prune.structured.fold import fold_batchnorm, foldable_batchnorms
from keras_prune.structured.gradual import GradualChannelPruning
from keras_prune.structured.graph import ChannelGraph, Group, walk_nodes
from keras_prune.structured.importance import IMPORTANCES, PER_WEIGHT, unit_scores, weight_importance
from keras_prune.structured.plan import SCOPES, ChannelPlan, plan_removal
from keras_prune.structured.surgery import apply_plan, zero_removed
from keras_prune.structured.transformer import hub_backbones, is_task, plan_hub

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
    ratio: float | Mapping[str, float],
    *,
    importance: str = "l1",
    scope: str = "layer",
    round_to: int = 1,
    exclude: Sequence[str] = (),
    calibration_data=None,
    heads: float | None = None,
    ffn: float | None = None,
) -> ChannelPlan:
    """Decides which channels, heads and FFN units :func:`prune_channels` would remove.

    Arguments are those of :func:`prune_channels`; nothing is changed. ``plan.summary()``
    explains the result: one line per transformer block, then one per channel group.

    Raises:
        ValueError: an argument is invalid, a head ratio would empty an attention layer or a
            key/value group, ``heads``/``ffn`` ask for units a backbone cannot lose, or
            ``scope="global"`` is used on a KerasHub backbone (its blocks share one config).

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="a"),
        ...                           keras.layers.Dense(2, name="b")])
        >>> print(plan_channels(model, 0.5).summary())
        a: kept 4/8
        b: kept 2/2 (model output channels are kept)
    """
    layer_ratios = None
    if isinstance(ratio, Mapping):
        layer_ratios, ratio = _layer_ratios(model, ratio, scope), 0.0
    ratio = check_sparsity("ratio", ratio)
    heads_ratio = ratio if heads is None else check_sparsity("heads", heads)
    ffn_ratio = ratio if ffn is None else check_sparsity("ffn", ffn)
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
    sites = hub_backbones(model) if isinstance(model, keras.Model) else []
    opaque = _hub_layers(model, sites)
    graph = ChannelGraph(model, tuple(exclude), opaque)
    weight_fn = None
    if importance in PER_WEIGHT or sites:
        weight_fn = weight_importance(model, importance, calibration_data)
    scores = unit_scores(graph, importance, calibration_data, weight_fn=weight_fn)
    hub = []
    for site in sites:
        skip = site.path in exclude
        if scope == "global" and not skip and (heads_ratio or ffn_ratio):
            raise ValueError(
                f"scope='global' would give the blocks of the KerasHub backbone "
                f"'{site.path or site.class_name}' different widths, which its single config cannot "
                "express. Use scope='layer' (every block loses the same number of heads and FFN units)."
            )
        hub.append(plan_hub(
            site, weight_fn, 0.0 if skip else heads_ratio, 0.0 if skip else ffn_ratio,
            heads_explicit=heads is not None and not skip, ffn_explicit=ffn is not None and not skip,
            round_to=round_to,
        ))
    if layer_ratios is not None and sites:
        raise ValueError("Per-layer ratios are for Sequential and functional models; a KerasHub backbone loses "
                         "the same heads and FFN units in every block (heads=, ffn=).")
    plan = plan_removal(graph, scores, ratio, scope=scope, round_to=round_to, heads=heads, layer_ratios=layer_ratios)
    plan.hub = hub
    return plan


def _layer_ratios(model: keras.Model, ratios: Mapping, scope: str) -> dict[str, float]:
    """Validated ``{layer name: ratio}``; an allocation's per-layer sparsities (``for_layers()``) fit."""
    if scope != "layer":
        raise ValueError(f"Per-layer ratios already set each layer's share; keep scope='layer'. Received: scope={scope!r}")
    names = {layer.name for layer in model.layers}
    unknown = sorted(str(name) for name in ratios if name not in names)
    if unknown:
        raise ValueError(f"Argument `ratio` names layers the model does not have: {unknown}. Use names from "
                         "model.layers (such as allocate(...).for_layers()).")
    return {name: check_sparsity(f"ratio[{name!r}]", value) for name, value in ratios.items()}


def _hub_layers(model: keras.Model, sites) -> dict[str, str]:
    """Top-level layers the channel graph leaves to the KerasHub rebuild, with the reason."""
    if not sites:
        return {}
    if len(sites) == 1 and (not sites[0].path or is_task(model)):
        reason = f"{type(model).__name__} is rebuilt from its config; its hidden width stays"
        return {op.name: reason for op, _ in walk_nodes(model)}
    opaque = {}
    for site in sites:
        reason = f"part of the KerasHub backbone '{site.path}', whose hidden width stays"
        inside = {id(layer) for layer in all_layers(site.layer)}
        opaque.update({layer.name: reason for layer in model.layers if id(layer) in inside})
    return opaque


def prune_channels(
    model: keras.Model,
    ratio: float | Mapping[str, float],
    *,
    importance: str = "l1",
    scope: str = "layer",
    round_to: int = 1,
    exclude: Sequence[str] = (),
    calibration_data=None,
    heads: float | None = None,
    ffn: float | None = None,
) -> keras.Model:
    """Returns a smaller dense copy of ``model`` with ``ratio`` of its channels removed.

    Channels that must go together (through BatchNorm, residual Add, Concatenate,
    depthwise convolutions, Flatten into Dense, ...) are removed together; the heads of a
    MultiHeadAttention are pruned as units. The model's output layer, layers in
    ``exclude``, and every group that reaches a layer the graph does not understand keep
    all their channels (see ``plan_channels(...).summary()``). When the removed channels
    were already all zero, the new model computes the same outputs.

    KerasHub backbones (the model itself, the backbone of a task such as ``GPT2CausalLM``,
    or a backbone called inside a functional model) lose whole attention heads and FFN
    intermediate units, the same number in every block, and are rebuilt as the same class
    from their config (``num_heads``/``num_query_heads``/``num_key_value_heads``,
    ``head_dim``, ``intermediate_dim``); their hidden width stays. With grouped-query
    attention, query heads go evenly from every key/value group. GPT-2, OPT, BART and the
    BERT family derive ``head_dim`` from ``hidden_dim``: when they lose heads they become a
    functional ``keras.Model`` (same inputs, outputs and layer names) of keras-prune
    subclasses of their KerasHub blocks (:mod:`keras_prune.structured.hub_layers`), as the
    plan's summary says; inside a KerasHub task they keep their heads. Other backbones that
    cannot keep their head size with fewer heads keep their heads and say so in the summary.

    Args:
        model: a built Sequential or functional model (channels_last), a KerasHub backbone,
            or a KerasHub task.
        ratio: the fraction of each group's channels to remove, in [0, 1); or per-layer
            fractions ``{layer name: ratio}`` (such as ``keras_prune.allocate(...).for_layers()``):
            a group loses the smallest ratio among the layers producing it, 0 for layers not named.
        importance: ``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"`` or ``"wanda"``
            (see :func:`keras_prune.structured.unit_scores`).
        scope: ``"layer"`` (every group loses ``ratio``) or ``"global"`` (one ranking;
            not for KerasHub backbones).
        round_to: keep channel and FFN unit counts at multiples of this (8 suits most
            vector units); head counts are not rounded.
        exclude: names of layers (or of a KerasHub backbone inside the model) to leave
            untouched.
        calibration_data: ``(x, y)`` batches for ``importance="taylor"``; inputs (``x`` or
            ``(x, y)``) for ``importance="wanda"``.
        heads: the fraction of attention heads to remove (``ratio`` when ``None``). Given
            explicitly, a backbone whose heads cannot be removed raises ``ValueError``.
        ffn: the fraction of FFN intermediate units of KerasHub blocks to remove (``ratio``
            when ``None``); explicit values are checked the same way.

    Returns:
        A new, uncompiled Keras model; ``model`` itself is not modified.

    Raises:
        ValueError: see :func:`plan_channels`; also when ``model`` holds a KerasHub backbone
            and nothing at all can be removed (the summary says why).

    Example:
        >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(60),
        ...                           keras.layers.Dense(10)])
        >>> prune_channels(model, 0.5, round_to=8).layers[0].units
        32
    """
    plan = plan_channels(
        model, ratio, importance=importance, scope=scope, round_to=round_to,
        exclude=exclude, calibration_data=calibration_data, heads=heads, ffn=ffn,
    )
    asked = (any(ratio.values()) if isinstance(ratio, Mapping) else ratio > 0) or bool(heads) or bool(ffn)
    if plan.hub and asked and not plan.removed.any() and not any(h.removes_anything() for h in plan.hub):
        raise ValueError(
            "prune_channels found nothing it can remove from this KerasHub model:\n"
            + plan.summary()
        )
    return apply_plan(plan)
