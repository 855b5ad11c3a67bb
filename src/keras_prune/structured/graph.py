"""The channel dependency graph: which channels of which layers must be removed together.

Every channel position a layer owns (a Dense's output units, a Conv's input rows, a
BatchNorm's scales, ...) is an *element*. A tensor carries, for each position of its last
(channel) axis, the element it comes from. Layers that keep channels in place (activations,
pooling, BatchNorm, Add, ...) tie their input positions to their own; Concatenate joins the
arrays; Flatten repeats them once per spatial position. A union-find over elements then gives
*units*: the sets of positions that disappear together when one channel is removed. Units
that share a producer (a layer whose config sets the width: Dense, Conv, heads of
MultiHeadAttention, ...) form one *group*, pruned at one ratio.

What each layer type does to channels comes from its handler (:mod:`keras_prune.handlers`):
a Dense-like producer is described by its weights' channel axes and its width key; layers with
special rules (merges, reshapes, depthwise and separable convolutions, attention heads, ...)
name one of the tracing routines below. A layer the graph does not understand ties its inputs
to a blocked element: any group that reaches it is left untouched and reported, never guessed.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import layers

from keras_prune import handlers
from keras_prune._keras_compat import producing_node

# Activations that mix channels: removing even an all-zero channel changes the result.
_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


@dataclasses.dataclass(frozen=True)
class Group:
    """Channels that are removed together, and whether they may be removed at all.

    Attributes:
        index: the group's position in ``ChannelGraph.groups``.
        producers: the layers whose width this group sets (``"layer"`` or ``"layer:heads"``).
        layers: every layer with a weight or config that changes when a unit is removed.
        units: the group's removable units (indices into the graph's unit arrays).
        blocked: why the group must stay as it is, or ``None`` when it is prunable.
    """

    index: int
    producers: tuple[str, ...]
    layers: tuple[str, ...]
    units: tuple[int, ...]
    blocked: str | None

    @property
    def size(self) -> int:
        """The number of units (channels, or heads) in the group."""
        return len(self.units)


@dataclasses.dataclass(frozen=True)
class WeightSlots:
    """Which slot indexes each axis of one weight of a layer (``None``: axis never sliced)."""

    index: int  # position in layer.weights
    axes: tuple[str | None, ...]


class ChannelGraph:
    """The coupled channel groups of a built Sequential or functional Keras model.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a"),
        ...                           keras.layers.Dense(2, name="b")])
        >>> [(g.producers, g.blocked) for g in ChannelGraph(model).groups]
        [(('a',), None), (('b',), 'model output channels are kept')]
    """

    def __init__(
        self,
        model: keras.Model,
        exclude: tuple[str, ...] = (),
        opaque: dict[str, str] | None = None,
    ):
        if not isinstance(model, keras.Model):
            raise TypeError(f"Argument `model` must be a keras.Model. Received: model={model!r}")
        if not model.built or not getattr(model, "outputs", None):
            raise ValueError(
                "Structured pruning needs a built Sequential or functional model with known "
                "inputs. Build it first, e.g. start a Sequential with keras.Input(shape)."
            )
        self.model = model
        self.unknown: dict[str, str] = {}  # layer name -> why the graph left it alone
        # Layers handled elsewhere (a KerasHub backbone, its shared sub-layers): untouched
        # here, their channels kept, and not reported as unknown.
        self.opaque: dict[str, str] = dict(opaque or {})
        self._parent: list[int] = []
        self._blocked: dict[int, str] = {}  # element -> reason
        self._slots: dict[str, dict[str, np.ndarray]] = {}
        self._producers: list[tuple[str, str]] = []
        self.weight_slots: dict[str, list[WeightSlots]] = {}
        self._trace(set(exclude))
        self._build_groups()

    # -- union-find over elements -------------------------------------------------------

    def _new(self, n: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def _find(self, e: int) -> int:
        parent = self._parent
        root = e
        while parent[root] != root:
            root = parent[root]
        while parent[e] != root:
            parent[e], e = root, parent[e]
        return root

    def _union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self._find(x), self._find(y)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)

    def _block(self, ids: np.ndarray, reason: str) -> None:
        for e in ids.tolist():
            self._blocked.setdefault(e, reason)

    def _slot(self, layer, name: str, size: int, tie: np.ndarray | None = None) -> np.ndarray:
        """The layer's own elements for ``name`` (created once, shared by all its calls)."""
        slots = self._slots.setdefault(layer.name, {})
        if name not in slots:
            slots[name] = self._new(size)
        if tie is not None:
            self._union(slots[name], tie)
        return slots[name]

    def _weights(self, layer, spec: dict[str, tuple[str | None, ...]]) -> None:
        """Records which slot indexes each axis of the weights whose path ends with a key."""
        found = []
        for i, variable in enumerate(layer.weights):
            for suffix, axes in spec.items():
                if variable.path == suffix or variable.path.endswith("/" + suffix):
                    found.append(WeightSlots(i, axes))
        self.weight_slots[layer.name] = found

    # -- tracing --------------------------------------------------------------------------

    def _trace(self, exclude: set[str]) -> None:
        ids: dict[int, np.ndarray] = {}  # id(KerasTensor) -> channel elements
        for tensor in self.model.inputs:
            ids[id(tensor)] = self._new(_channels(tensor))
            self._block(ids[id(tensor)], "model input channels are kept")
        for layer, node in walk_nodes(self.model):
            inputs = node.arguments.keras_tensors
            in_ids = [ids[id(t)] for t in inputs]
            if layer.name in exclude:
                outs = self._opaque(node, in_ids, f"layer '{layer.name}' is excluded")
            elif layer.name in self.opaque:
                outs = self._opaque(node, in_ids, self.opaque[layer.name])
            else:
                try:
                    outs = self._trace_layer(layer, node, inputs, in_ids)
                except _Unknown as why:
                    self.unknown[layer.name] = str(why)
                    outs = self._opaque(node, in_ids, f"layer '{layer.name}': {why}")
            for tensor, out in zip(node.outputs, outs):
                ids[id(tensor)] = out
        for tensor in self.model.outputs:
            self._block(ids[id(tensor)], "model output channels are kept")

    def _opaque(self, node, in_ids, reason: str) -> list[np.ndarray]:
        for i in in_ids:
            self._block(i, reason)
        outs = [self._new(_channels(t)) for t in node.outputs]
        for out in outs:
            self._block(out, reason)
        return outs

    def _trace_layer(self, layer, node, inputs, in_ids) -> list[np.ndarray]:
        handler = handlers.handler_for(layer)
        kind = None if handler is None else handler.trace
        if kind is None and handler is not None and handler.channel_axes is not None:
            kind = "producer"
        if kind == "input":
            return in_ids
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise _Unknown("only channels_last layouts are supported")
        if kind in self._MULTI_INPUT:
            return self._MULTI_INPUT[kind](self, layer, handler, node, inputs, in_ids)
        if len(in_ids) != 1 or len(node.outputs) != 1:
            raise _Unknown(f"{type(layer).__name__} with several inputs or outputs")
        if kind is None:
            raise _Unknown(f"no channel rule for {type(layer).__name__}")
        (x,), tensor = in_ids, inputs[0]
        return [self._SINGLE_INPUT[kind](self, layer, handler, x, tensor)]

    # -- layers with several inputs ---------------------------------------------------------

    def _trace_merge(self, layer, handler, node, inputs, in_ids) -> list[np.ndarray]:
        return [self._merge(in_ids)]

    def _trace_concat(self, layer, handler, node, inputs, in_ids) -> list[np.ndarray]:
        rank = len(inputs[0].shape)
        if layer.axis in (-1, rank - 1):
            return [np.concatenate(in_ids)]
        return [self._merge(in_ids)]

    def _trace_attention(self, layer, handler, node, inputs, in_ids) -> list[np.ndarray]:
        reason = f"layer '{layer.name}' keeps its input and output width"
        outs = self._opaque(node, in_ids, reason)
        self._producer(layer, "heads", layer.num_heads)
        self._weights(layer, handler.weight_axes(layer))
        return outs

    # -- layers with one input: each returns the output's channel elements -------------------

    def _trace_pass(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        return x

    def _trace_activation(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        if _activation_name(layer) in _MIXING_ACTIVATIONS:
            raise _Unknown("its activation mixes channels")
        return x

    def _trace_prelu(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        if tuple(layer.alpha.shape)[-1] == 1:
            return x
        self._slot(layer, "c", len(x), tie=x)
        self._weights(layer, handler.weight_axes(layer))
        return x

    def _trace_norm(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
        if axis not in (-1, (-1,), len(tensor.shape) - 1, (len(tensor.shape) - 1,)):
            raise _Unknown("it normalizes over an axis other than the channel axis")
        self._slot(layer, "c", len(x), tie=x)
        self._weights(layer, handler.weight_axes(layer))
        return x

    def _trace_flatten(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        return np.tile(x, _spatial(tensor))

    def _trace_reshape(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        target = tuple(layer.target_shape)
        if len(target) == 1:  # a flatten
            out = np.tile(x, _spatial(tensor))
        elif target[-1] == len(x) and -1 not in target[:-1]:  # channels stay last
            out = x
        else:
            raise _Unknown("it moves the channel axis")
        self._slots.setdefault(layer.name, {})["out"] = out
        return out

    def _trace_separable(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        inn = self._slot(layer, "in", len(x), tie=x)
        self._slots[layer.name]["mid"] = np.repeat(inn, layer.depth_multiplier)
        out = self._producer(layer, "out", layer.filters)
        self._weights(layer, handler.weight_axes(layer))
        return out

    def _trace_depthwise(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        inn = self._slot(layer, "in", len(x), tie=x)
        out = self._slots[layer.name]["out"] = np.repeat(inn, layer.depth_multiplier)
        self._weights(layer, handler.weight_axes(layer))
        return out

    def _trace_conv(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        if layer.groups != 1:
            raise _Unknown("grouped convolutions are not supported")
        return self._trace_producer(layer, handler, x, tensor)

    def _trace_producer(self, layer, handler, x: np.ndarray, tensor) -> np.ndarray:
        """A Dense-like layer: ``"in"`` axes follow its input, ``width_key`` outputs."""
        axes = handler.weight_axes(layer)
        if any("in" in slots for slots in axes.values()):
            self._slot(layer, "in", len(x), tie=x)
        width = layer.get_config().get(handler.width_key)
        if not isinstance(width, int):
            raise _Unknown(f"its config has no integer '{handler.width_key}' (the output width)")
        out = self._producer(layer, "out", width)
        self._weights(layer, axes)
        return out

    _MULTI_INPUT = {"merge": _trace_merge, "concat": _trace_concat, "attention": _trace_attention}
    _SINGLE_INPUT = {
        "pass": _trace_pass, "activation": _trace_activation, "prelu": _trace_prelu,
        "norm": _trace_norm, "flatten": _trace_flatten, "reshape": _trace_reshape,
        "separable": _trace_separable, "depthwise": _trace_depthwise, "conv": _trace_conv,
        "producer": _trace_producer,
    }

    # -- helpers --------------------------------------------------------------------------

    def _producer(self, layer, slot: str, size: int) -> np.ndarray:
        out = self._slot(layer, slot, size)
        if (layer.name, slot) not in self._producers:
            self._producers.append((layer.name, slot))
        if _activation_name(layer) in _MIXING_ACTIVATIONS:
            self._block(out, f"layer '{layer.name}' has a softmax activation across channels")
        return out

    def _merge(self, in_ids: list[np.ndarray]) -> np.ndarray:
        width = max(len(i) for i in in_ids)
        full = [i for i in in_ids if len(i) == width]
        if any(len(i) not in (1, width) for i in in_ids):
            raise _Unknown("it merges tensors of different channel counts")
        for other in full[1:]:
            self._union(full[0], other)
        return full[0]

    # -- groups ---------------------------------------------------------------------------

    def _build_groups(self) -> None:
        roots = sorted({self._find(e) for slot in self._producers
                        for e in self._slots[slot[0]][slot[1]].tolist()})
        unit_of = {r: i for i, r in enumerate(roots)}
        self._units = {
            name: {s: np.array([unit_of.get(self._find(e), -1) for e in ids.tolist()], np.int64)
                   for s, ids in slots.items()}
            for name, slots in self._slots.items()
        }
        # Units sharing a producer belong to one group: a small union-find over units.
        parent = list(range(len(roots)))

        def find(u: int) -> int:
            while parent[u] != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u

        for name, slot in self._producers:
            units = [unit_of[self._find(e)] for e in self._slots[name][slot].tolist()]
            for u in units[1:]:
                parent[find(u)] = find(units[0])
        members: dict[int, list[int]] = {}
        for u in range(len(roots)):
            members.setdefault(find(u), []).append(u)
        blocked = {unit_of.get(self._find(e)): why for e, why in reversed(self._blocked.items())}
        groups = []
        for units in members.values():
            unit_set = set(units)
            producers = tuple(
                name if slot == "out" else f"{name}:{slot}"
                for name, slot in self._producers
                if self.unit_ids(name, slot)[0] in unit_set
            )
            touched = tuple(
                name for name, slots in self._units.items()
                if any(np.isin(ids, units).any() for ids in slots.values())
            )
            reason = next((blocked[u] for u in units if u in blocked), None)
            groups.append(Group(len(groups), producers, touched, tuple(units), reason))
        self.groups = groups
        self.num_units = len(roots)

    def unit_ids(self, layer_name: str, slot: str) -> np.ndarray:
        """For each position of a layer's slot, the unit it belongs to (-1: not removable)."""
        return self._units[layer_name][slot]

    def producer_slot(self, layer_name: str) -> str | None:
        """The slot whose width the layer sets (``"out"``, ``"heads"``), or ``None``."""
        return next((slot for name, slot in self._producers if name == layer_name), None)

    def slots(self, layer_name: str) -> dict[str, np.ndarray]:
        """All slots of a layer, as unit indices per position."""
        return dict(self._units.get(layer_name, {}))

    def summary(self) -> str:
        """One line per group: producers, size, and why it is blocked if it is."""
        lines = []
        for g in self.groups:
            state = f"blocked: {g.blocked}" if g.blocked else "prunable"
            lines.append(f"group {g.index}: {', '.join(g.producers)} ({g.size} units) {state}")
        lines += [f"left untouched: {name} ({why})" for name, why in self.unknown.items()]
        return "\n".join(lines)


class _Unknown(Exception):
    """Raised while tracing a layer the graph cannot reason about."""


def walk_nodes(model: keras.Model):
    """Yields ``(layer, node)`` for every call in ``model``'s graph, inputs before outputs.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> [layer.name for layer, _ in walk_nodes(model)]
        ['d']
    """
    order, seen = [], set()
    stack = [(t, False) for t in reversed(model.outputs)]
    while stack:
        tensor, expanded = stack.pop()
        produced = producing_node(tensor)
        if produced is None:
            continue
        operation, node = produced
        if expanded:
            order.append((operation, node))
            continue
        # A DAG: a node reached again while its inputs are being walked is already queued.
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((tensor, True))
        stack.extend((t, False) for t in reversed(node.arguments.keras_tensors))
    return [(op, node) for op, node in order if not isinstance(op, layers.InputLayer)]


def _channels(tensor) -> int:
    # An unknown last axis (token ids of any length, ...) has no channels to prune; no
    # layer with weights can consume it, so nothing ever ties to these empty slots.
    size = tensor.shape[-1] if len(tensor.shape) else 1
    return 0 if size is None else int(size)


def _spatial(tensor) -> int:
    dims = tensor.shape[1:-1]
    if any(d is None for d in dims):
        raise _Unknown("it flattens a tensor of unknown spatial size")
    return math.prod(dims)


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation))
