"""Which units to remove: per-group ratio or one global ranking, with hardware rounding."""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_prune.structured.graph import ChannelGraph, Group
from keras_prune.structured.transformer import HubPlan

SCOPES = ("layer", "global")


@dataclasses.dataclass
class ChannelPlan:
    """The units chosen for removal, with the graph and scores that chose them.

    Attributes:
        graph: the model's channel graph.
        scores: one importance score per unit.
        removed: one bool per unit, True when the unit is removed.
        hub: the heads and FFN units removed from each KerasHub backbone of the model
            (see :mod:`keras_prune.structured.transformer`).
    """

    graph: ChannelGraph
    scores: np.ndarray
    removed: np.ndarray
    hub: list[HubPlan] = dataclasses.field(default_factory=list)

    def kept(self, group: Group) -> int:
        """How many units of ``group`` remain."""
        return int((~self.removed[list(group.units)]).sum())

    def keep_mask(self, layer_name: str, slot: str) -> np.ndarray:
        """For each position of a layer's slot, True when it stays."""
        units = self.graph.unit_ids(layer_name, slot)
        if not self.removed.size:  # a model without removable units: everything stays
            return np.ones(units.shape, dtype=bool)
        return ~np.where(units >= 0, self.removed[np.maximum(units, 0)], False)

    def removable_groups(self) -> list[Group]:
        """The groups that may lose units (not blocked); empty when nothing can be removed."""
        return [g for g in self.graph.groups if g.blocked is None]

    def summary(self) -> str:
        """One line per transformer block ("transformer_layer_0: heads 4 -> 2, ffn 128 -> 64"),
        then one per channel group: its producers and the units it keeps, or why it is blocked."""
        lines = [line for hub in self.hub for line in hub.summary_lines()]
        handled = set(self.graph.opaque.values())
        for g in self.graph.groups:
            name = ", ".join(g.producers)
            if g.blocked in handled:
                continue
            if g.blocked:
                lines.append(f"{name}: kept {g.size}/{g.size} ({g.blocked})")
            else:
                lines.append(f"{name}: kept {self.kept(g)}/{g.size}")
        lines += [f"{n}: left untouched ({why})" for n, why in self.graph.unknown.items()]
        return "\n".join(lines)


def plan_removal(
    graph: ChannelGraph,
    scores: np.ndarray,
    ratio: float,
    *,
    scope: str = "layer",
    round_to: int = 1,
    heads: float | None = None,
    layer_ratios: dict[str, float] | None = None,
) -> ChannelPlan:
    """Chooses the lowest-scored units of every prunable group.

    With ``layer_ratios`` (``{layer name: ratio}``, ``scope="layer"``), a group loses the
    smallest ratio among the layers producing it (0 for a layer not named), instead of ``ratio``.

    With ``scope="layer"`` every group loses ``ratio`` of its units; with ``"global"`` the
    units of all groups are ranked together (each group's scores divided by their mean, so
    wide and narrow layers compare fairly). Either way the kept count of a group is rounded
    to a multiple of ``round_to`` (never below ``round_to``, never above the group size),
    and every producing layer keeps at least one channel. Groups of attention heads lose
    ``heads`` of their heads (``ratio`` when ``None``, never rounded to ``round_to``); with
    ``scope="layer"`` a ratio that would remove every head raises ``ValueError``.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
        ...                           keras.layers.Dense(1)])
        >>> graph = ChannelGraph(model)
        >>> plan = plan_removal(graph, np.arange(8.0), 0.5)
        >>> plan.removed.nonzero()[0].tolist()
        [0, 1, 2, 3]
    """
    removed = np.zeros(graph.num_units, dtype=bool)
    groups = [g for g in graph.groups if g.blocked is None]
    if scope == "global":
        counts = _global_counts(groups, scores, ratio)
    else:
        counts = {g.index: int(round(_group_ratio(g, ratio, layer_ratios) * g.size)) for g in groups}
        heads = ratio if heads is None else heads
        for g in groups:
            if _is_heads(g):
                counts[g.index] = int(round(heads * g.size))
                if counts[g.index] >= g.size:
                    raise ValueError(
                        f"A head ratio of {heads:g} would remove all {g.size} heads of "
                        f"'{g.producers[0].partition(':')[0]}'. Use a head ratio below "
                        f"{(g.size - 0.5) / g.size:.3g} (pass heads= to set it apart from ratio)."
                    )
    for g in groups:
        keep = g.size - counts[g.index] if _is_heads(g) else _round_keep(g.size, g.size - counts[g.index], round_to)
        _remove_lowest(graph, g, scores, g.size - keep, removed)
    return ChannelPlan(graph, scores, removed)


def _group_ratio(group: Group, ratio: float, layer_ratios: dict[str, float] | None) -> float:
    if layer_ratios is None:
        return ratio
    return min(layer_ratios.get(p.partition(":")[0], 0.0) for p in group.producers)


def _is_heads(group: Group) -> bool:
    return any(p.endswith(":heads") for p in group.producers)


def _global_counts(groups: list[Group], scores: np.ndarray, ratio: float) -> dict[int, int]:
    pooled = []
    for g in groups:
        s = scores[list(g.units)]
        mean = s.mean() if s.size and s.mean() > 0 else 1.0
        pooled += [(value / mean, g.index) for value in s]
    pooled.sort(key=lambda item: item[0])
    total = int(round(ratio * len(pooled)))
    counts = {g.index: 0 for g in groups}
    for _, index in pooled[:total]:
        counts[index] += 1
    return counts


def _round_keep(size: int, keep: int, round_to: int) -> int:
    if round_to > 1:
        keep = round_to * int(round(keep / round_to))
        keep = max(keep, round_to)
    return int(min(max(keep, 1), size))


def _remove_lowest(graph, group: Group, scores, count: int, removed: np.ndarray) -> None:
    """Marks the ``count`` lowest units, skipping any that would empty a producer."""
    remaining = {}
    for producer in group.producers:
        name, _, slot = producer.partition(":")
        remaining[producer] = set(graph.unit_ids(name, slot or "out").tolist())
    units = np.array(group.units)
    for unit in units[np.argsort(scores[units], kind="stable")].tolist():
        if count == 0:
            break
        if any(rest == {unit} for rest in remaining.values()):
            continue
        for rest in remaining.values():
            rest.discard(unit)
        removed[unit] = True
        count -= 1
