"""Attention heads and FFN units of KerasHub transformer backbones: find, plan, rebuild.

A KerasHub backbone sets the sizes of all its blocks from one config (``num_heads`` or
``num_query_heads``/``num_key_value_heads``, ``head_dim``, ``intermediate_dim``). Removing
heads and FFN units therefore means: remove the same number in every block, rebuild the same
class from its config with the smaller counts, and copy in the kept slice of every weight.
The hidden (residual-stream) width never changes, so embeddings, norms and task heads keep
their shapes.

Backbones whose class derives the head size from ``hidden_dim // num_heads`` (GPT-2, OPT, BART,
Whisper and the BERT family, built from ``keras_hub.layers.TransformerEncoder``/
``TransformerDecoder``; Llama, Llama 3, Qwen and Phi-3 from ``hidden_dim // num_query_heads``)
cannot be the same class with fewer heads of the same size. When they lose heads they are
rebuilt as a functional ``keras.Model`` with the same inputs, outputs and layer names, whose
blocks are keras-prune subclasses of the KerasHub blocks that take the head size as an
argument (:mod:`keras_prune.structured.hub_layers`).

Heads are found in the attention layers of each block from their ``EinsumDense``
projections: the head axis of the query/key/value kernels is the second-to-last output axis
of their equation, and of the output kernel the second-to-last input axis. This covers the
MultiHeadAttention layout (GPT-2, BERT), separate query and key/value heads (Llama, Mistral,
Qwen) and heads-first kernels (Gemma). Fused query/key/value projections and 2-D output
projections (heads folded into one axis) are refused.
"""

from __future__ import annotations

import dataclasses
import re
import sys

import keras
import numpy as np

from keras_prune._keras_compat import child_layers, inner_layers

# Config keys of a backbone's head counts and FFN width, most specific first.
HEAD_KEYS = ("num_query_heads", "num_heads", "num_attention_heads")
KV_KEY = "num_key_value_heads"
FFN_KEY = "intermediate_dim"
# Sub-layer names of the projections inside an attention layer and a block's FFN.
_QUERY = ("query", "query_dense")
_KEY = ("key", "key_dense")
_VALUE = ("value", "value_dense")
_OUTPUT = ("attention_output", "output_dense")
_FUSED = ("query_key_value", "qkv", "attention_qkv", "qkv_proj")
_FFN_IN = (
    "feedforward_intermediate_dense", "feedforward_gate_dense", "ffw_gating", "ffw_gating_2",
    "dense_h_to_4h", "mlp_intermediate_dense",
)
_FFN_OUT = ("feedforward_output_dense", "ffw_linear", "dense_4h_to_h", "mlp_output_dense")
# Backbones whose rebuild with fewer heads or FFN units was checked against the original
# with the removed units zeroed (tests/test_structured_transformers.py). Others are refused.
VERIFIED_HEADS = (
    "GemmaBackbone", "Gemma3Backbone", "MistralBackbone", "Qwen3Backbone",
)
# Backbones that derive head_dim from hidden_dim and lose heads by becoming a functional model
# of keras-prune blocks (checked the same way).
VERIFIED_FUNCTIONAL_HEADS = (
    "GPT2Backbone", "OPTBackbone", "BertBackbone", "RobertaBackbone", "DistilBertBackbone",
    "XLMRobertaBackbone", "ElectraBackbone", "BartBackbone", "WhisperBackbone", "LlamaBackbone",
    "Llama3Backbone", "QwenBackbone", "Phi3Backbone",
)
VERIFIED_FFN = (
    "GPT2Backbone", "OPTBackbone", "BertBackbone", "RobertaBackbone", "DistilBertBackbone",
    "XLMRobertaBackbone", "ElectraBackbone", "LlamaBackbone", "Llama3Backbone",
    "MistralBackbone", "QwenBackbone", "Qwen3Backbone", "Phi3Backbone", "GemmaBackbone",
    "FalconBackbone", "BloomBackbone", "Gemma3Backbone", "GPTNeoXBackbone", "BartBackbone",
    "WhisperBackbone",
)


@dataclasses.dataclass(frozen=True)
class Attention:
    """The heads of one attention layer inside a block.

    Attributes:
        path: the layer's path inside the model (``"transformer_layer_0/self_attention"``).
        num_heads: query heads.
        num_kv_heads: key/value heads (``num_heads`` without grouped-query attention).
        head_dim: the size of each head.
        query: ``(variable, axis)`` for every weight indexed by query head.
        kv: ``(variable, axis)`` for every weight indexed by key/value head.
    """

    path: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    query: tuple
    kv: tuple


@dataclasses.dataclass(frozen=True)
class FeedForward:
    """The intermediate units of one block's feed-forward network.

    Attributes:
        path: the block's path.
        width: the number of intermediate units.
        slices: ``(variable, axis)`` for every weight indexed by intermediate unit.
    """

    path: str
    width: int
    slices: tuple


@dataclasses.dataclass(frozen=True)
class Block:
    """One transformer block: its attention layers (self, cross) and its FFN."""

    path: str
    attentions: tuple[Attention, ...]
    ffn: FeedForward | None
    layer: object = None


@dataclasses.dataclass(frozen=True)
class HubBackbone:
    """A KerasHub backbone in the model, with what can be removed from it and what cannot.

    Attributes:
        path: its name in the outer model (``""`` when it is the model itself).
        layer: the backbone.
        blocks: its transformer blocks.
        heads_reason: why its heads must stay, or ``None``.
        ffn_reason: why its FFN units must stay, or ``None``.
        ffn_factor: ``config["intermediate_dim"]`` over the FFN width (Gemma: 2).
        functional: when set, the backbone's class cannot hold fewer heads of the same size,
            so losing heads turns it into a functional model of keras-prune blocks; this says
            why (``None``: it is rebuilt as its own class).
    """

    path: str
    layer: object
    blocks: tuple[Block, ...]
    heads_reason: str | None
    ffn_reason: str | None
    ffn_factor: int = 1
    functional: str | None = None

    @property
    def class_name(self) -> str:
        """The backbone's class name."""
        return type(self.layer).__name__


def hub_backbones(model: keras.Model) -> list[HubBackbone]:
    """The KerasHub backbones of ``model``: itself, its ``backbone``, or its top-level layers.

    Without keras-hub imported there are none (a model holding KerasHub layers imports it).
    """
    hub = sys.modules.get("keras_hub")
    if hub is None:
        return []
    backbone_class = hub.models.Backbone
    if isinstance(model, backbone_class):
        return [describe(model, "")]
    task = type(model).__name__ if is_task(model) else None
    return [
        describe(layer, layer.name, task=task) for layer in model.layers if isinstance(layer, backbone_class)
    ]


def is_task(model) -> bool:
    """Whether ``model`` is a KerasHub task (a backbone with a head and a preprocessor)."""
    hub = sys.modules.get("keras_hub")
    return hub is not None and isinstance(model, hub.models.Task)


def describe(backbone, path: str, task: str | None = None) -> HubBackbone:
    """Finds the blocks, heads and FFN units of one KerasHub backbone (the backbone of the
    KerasHub task class ``task``, if given)."""
    prefix = f"{path}/" if path else ""
    blocks, heads_why, ffn_why = [], [], []
    for child in child_layers(backbone):
        attentions, ffn = [], None
        for grandchild in child_layers(child):
            try:
                found = _attention(grandchild, f"{prefix}{child.name}/{grandchild.name}")
            except _Refused as why:
                heads_why.append(str(why))
                continue
            if found is not None:
                attentions.append(found)
        try:
            ffn = _feedforward(child, f"{prefix}{child.name}")
        except _Refused as why:
            ffn_why.append(str(why))
        if attentions or ffn is not None:
            blocks.append(Block(f"{prefix}{child.name}", tuple(attentions), ffn, child))
    name = type(backbone).__name__
    config = backbone.get_config()
    heads_reason = _heads_reason(name, config, blocks, heads_why)
    functional = None
    if heads_reason is not None and heads_reason.endswith(_NO_HEAD_DIM):
        key = next(k for k in HEAD_KEYS if k in config)
        heads_reason, functional = _functional_route(name, key, blocks, heads_reason, task)
    ffn_reason, factor = _ffn_reason(name, config, blocks, ffn_why)
    return HubBackbone(path, backbone, tuple(blocks), heads_reason, ffn_reason, factor, functional)


def _heads_reason(name: str, config: dict, blocks: list[Block], refused: list[str]) -> str | None:
    if refused:
        return refused[0]
    attentions = [a for b in blocks for a in b.attentions]
    if not attentions:
        return f"no attention layer with query/key/value/attention_output projections found in {name}"
    if any(not b.attentions for b in blocks):
        return f"some blocks of {name} have no attention layer keras-prune understands"
    key = next((k for k in HEAD_KEYS if k in config), None)
    first = attentions[0]
    if key is None:
        return f"{name} has none of the config arguments {list(HEAD_KEYS)}"
    if any((a.num_heads, a.num_kv_heads, a.head_dim) != (first.num_heads, first.num_kv_heads, first.head_dim)
           for a in attentions) or config[key] != first.num_heads:
        return f"the attention layers of {name} differ in head counts, or from its config's {key}={config[key]}"
    if first.num_kv_heads != first.num_heads and config.get(KV_KEY) != first.num_kv_heads:
        return f"{name} has grouped-query attention but no {KV_KEY} argument matching it"
    if "head_dim" not in config:
        return f"{name} derives the head size from hidden_dim // {key} and has no head_dim argument, {_NO_HEAD_DIM}"
    if config["head_dim"] not in (None, first.head_dim):
        return f"{name}'s head_dim={config['head_dim']} differs from its layers' head size {first.head_dim}"
    if config.get("query_head_dim_normalize") is False:
        return f"{name} scales queries by hidden_dim // {key} (query_head_dim_normalize=False)"
    if name not in VERIFIED_HEADS:
        return f"head removal is not verified for {name} (verified: {', '.join(VERIFIED_HEADS)})"
    return None


_NO_HEAD_DIM = "so it cannot keep its head size with fewer heads"


def _functional_route(name: str, key: str, blocks: list[Block], reason: str,
                      task: str | None) -> tuple[str | None, str | None]:
    """``(heads_reason, functional)`` for a backbone without a head_dim argument (``key`` names
    its head count): heads go by turning it into a functional model of keras-prune blocks,
    where that is verified."""
    from keras_prune.structured.hub_layers import PRUNED_BLOCKS

    if name not in VERIFIED_FUNCTIONAL_HEADS:
        return reason, None
    kinds = {type(b.layer) for b in blocks}
    if not kinds <= set(PRUNED_BLOCKS):
        return reason, None
    refused = next(((b, why) for b in blocks if (why := PRUNED_BLOCKS[type(b.layer)].refusal(b.layer))), None)
    if refused is not None:
        return f"{reason}, and '{refused[0].path}' cannot take another head size: {refused[1]}", None
    if task is not None:
        return (
            f"{name} derives the head size from hidden_dim // {key}, so with fewer heads it can "
            f"only become a functional keras.Model, which the task {task} cannot hold (prune the "
            "backbone on its own or inside your own functional model to remove heads)"
        ), None
    used = ", ".join(sorted(PRUNED_BLOCKS[k].__name__ for k in kinds))
    return None, (
        f"{name} derives the head size from hidden_dim // {key}, so it cannot hold fewer heads "
        f"of the same size; its blocks become keras-prune's {used}"
    )


def _ffn_reason(name: str, config: dict, blocks: list[Block], refused: list[str]) -> tuple[str | None, int]:
    if refused:
        return refused[0], 1
    ffns = [b.ffn for b in blocks if b.ffn is not None]
    if not ffns or len(ffns) != len(blocks):
        return f"no feed-forward Dense layers keras-prune understands in the blocks of {name}", 1
    width = ffns[0].width
    if FFN_KEY not in config or any(f.width != width for f in ffns):
        return f"the FFN width of {name} is not one {FFN_KEY} argument", 1
    factor, rest = divmod(int(config[FFN_KEY]), width)
    if rest or factor not in (1, 2):
        return f"{name}'s {FFN_KEY}={config[FFN_KEY]} does not match its FFN width {width}", 1
    if name not in VERIFIED_FFN:
        return f"FFN removal is not verified for {name} (verified: {', '.join(VERIFIED_FFN)})", factor
    return None, factor


class _Refused(Exception):
    """An attention layer or FFN whose layout keras-prune does not slice."""


def _children(layer) -> dict:
    return {c.name: c for c in child_layers(layer)}


def _first(children: dict, names: tuple[str, ...]):
    return next((children[n] for n in names if n in children), None)


def _attention(layer, path: str) -> Attention | None:
    """The heads of ``layer`` if it is an attention layer; ``None`` if it is not one."""
    kids = _children(layer)
    if any(n in kids for n in _FUSED):
        raise _Refused(f"'{path}' projects queries, keys and values with one fused layer")
    q, k, v, o = (_first(kids, names) for names in (_QUERY, _KEY, _VALUE, _OUTPUT))
    if q is None or k is None or v is None:
        return None
    if o is None:
        raise _Refused(f"'{path}' has no attention_output projection")
    einsum = keras.layers.EinsumDense
    if not all(isinstance(p, einsum) for p in (q, k, v, o)):
        raise _Refused(f"'{path}' uses 2-D Dense projections (heads folded into one axis)")
    q_slices, num_heads, head_dim = _projection(q, path, into_heads=True)
    k_slices, num_kv, k_dim = _projection(k, path, into_heads=True)
    v_slices, num_v, v_dim = _projection(v, path, into_heads=True)
    o_slices, num_o, o_dim = _projection(o, path, into_heads=False)
    if not (num_kv == num_v and num_o == num_heads and k_dim == head_dim and o_dim == v_dim):
        raise _Refused(f"'{path}' has projections with inconsistent head counts or sizes")
    if num_heads % num_kv:
        raise _Refused(f"'{path}' has {num_heads} query heads over {num_kv} key/value heads")
    known = {id(w) for p in (q, k, v, o) for w in p.weights}
    for w in layer.weights:
        # Query/key norms (Qwen3, Gemma3) act on each head's vector: they do not change.
        if id(w) not in known and tuple(w.shape) != (head_dim,):
            raise _Refused(f"'{path}' has a weight keras-prune does not know how to slice: {w.path}")
    return Attention(path, num_heads, num_kv, head_dim, tuple(q_slices + o_slices), tuple(k_slices + v_slices))


def _equation(layer) -> tuple[str, str, str]:
    match = re.fullmatch(r"(\w+),(\w+)->(\w+)", layer.equation.replace(" ", ""))
    if match is None:
        raise _Refused(f"'{layer.path}' has an einsum equation keras-prune cannot read: {layer.equation}")
    return match.groups()


def _plain_weights(layer) -> list:
    names = [w.path.rsplit("/", 1)[-1] for w in layer.weights]
    if names not in (["kernel"], ["kernel", "bias"]) or getattr(layer, "quantization_mode", None):
        raise _Refused(f"'{layer.path}' holds weights other than a float kernel and bias: {names}")
    return list(layer.weights)


def _projection(layer, path: str, *, into_heads: bool) -> tuple[list, int, int]:
    """``(variable, head axis)`` slices, head count and head size of one projection."""
    inputs, kernel_spec, outputs = _equation(layer)
    spec = outputs if into_heads else inputs
    if len(spec) != 4:
        raise _Refused(f"'{path}': the projection '{layer.name}' ({layer.equation}) has no head axis")
    heads, size = spec[-2], spec[-1]
    if heads not in kernel_spec or size not in kernel_spec:
        raise _Refused(f"'{path}': the projection '{layer.name}' ({layer.equation}) has no head axis")
    weights = _plain_weights(layer)
    kernel = weights[0]
    slices = [(kernel, kernel_spec.index(heads))]
    if len(weights) == 2 and into_heads:
        bias_spec = _bias_spec(layer, outputs)
        if heads in bias_spec:
            slices.append((weights[1], bias_spec.index(heads)))
    shape = tuple(kernel.shape)
    return slices, int(shape[kernel_spec.index(heads)]), int(shape[kernel_spec.index(size)])


def _bias_spec(layer, outputs: str) -> str:
    axes = layer.bias_axes or ""
    first = min(outputs.find(c) for c in axes)
    return outputs[first:]


def _feedforward(block, path: str) -> FeedForward | None:
    kids = _children(block)
    ins = [kids[n] for n in _FFN_IN if n in kids]
    outs = [kids[n] for n in _FFN_OUT if n in kids]
    if not ins and not outs:
        return None
    if len(ins) not in (1, 2) or len(outs) != 1:
        raise _Refused(f"'{path}' has a feed-forward network keras-prune does not recognize")
    slices, widths = [], set()
    for layer, produces in [(layer, True) for layer in ins] + [(outs[0], False)]:
        weights = _plain_weights(layer)
        kernel = weights[0]
        if len(kernel.shape) != 2:
            raise _Refused(f"'{path}/{layer.name}' has a kernel of rank {len(kernel.shape)}")
        axis = 1 if produces else 0
        if isinstance(layer, keras.layers.EinsumDense):
            inputs, kernel_spec, outputs = _equation(layer)
            unit = outputs[-1] if produces else inputs[-1]
            axis = kernel_spec.index(unit)
        widths.add(int(kernel.shape[axis]))
        slices.append((kernel, axis))
        if produces and len(weights) == 2:
            if tuple(weights[1].shape) != (kernel.shape[axis],):
                raise _Refused(f"'{path}/{layer.name}' has a bias keras-prune cannot slice")
            slices.append((weights[1], 0))
    if len(widths) != 1:
        raise _Refused(f"'{path}': the FFN layers disagree on the intermediate width ({sorted(widths)})")
    return FeedForward(path, widths.pop(), tuple(slices))


# -- planning ---------------------------------------------------------------------------------


@dataclasses.dataclass
class HubPlan:
    """The heads and FFN units removed from one KerasHub backbone.

    Attributes:
        site: the backbone and its blocks.
        query_keep: attention path -> True for each query head that stays.
        kv_keep: attention path -> True for each key/value head that stays.
        ffn_keep: block path -> True for each FFN unit that stays.
    """

    site: HubBackbone
    query_keep: dict[str, np.ndarray]
    kv_keep: dict[str, np.ndarray]
    ffn_keep: dict[str, np.ndarray]

    def masks(self) -> list[tuple]:
        """``(variable, axis, keep)`` for every weight that loses slices."""
        found = []
        for block in self.site.blocks:
            for a in block.attentions:
                found += [(v, axis, self.query_keep[a.path]) for v, axis in a.query]
                found += [(v, axis, self.kv_keep[a.path]) for v, axis in a.kv]
            if block.ffn is not None:
                found += [(v, axis, self.ffn_keep[block.path]) for v, axis in block.ffn.slices]
        return [(v, axis, keep) for v, axis, keep in found if not keep.all()]

    def removes_anything(self) -> bool:
        """Whether any head or FFN unit goes."""
        return bool(self.masks())

    def removes_heads(self) -> bool:
        """Whether any attention head goes."""
        return not all(keep.all() for keep in self.query_keep.values())

    def becomes_functional(self) -> bool:
        """Whether the rebuilt backbone is a functional ``keras.Model`` instead of its class."""
        return self.site.functional is not None and self.removes_heads()

    def config(self) -> dict:
        """The backbone's config with the smaller head counts and FFN width."""
        config = self.site.layer.get_config()
        blocks = self.site.blocks
        attention = next((a for b in blocks for a in b.attentions), None)
        if attention is not None and not self.query_keep[attention.path].all():
            key = next(k for k in HEAD_KEYS if k in config)
            config[key] = int(self.query_keep[attention.path].sum())
            if KV_KEY in config:
                config[KV_KEY] = int(self.kv_keep[attention.path].sum())
            config["head_dim"] = attention.head_dim
        ffn = next((b.ffn for b in blocks if b.ffn is not None), None)
        if ffn is not None:
            config[FFN_KEY] = int(self.ffn_keep[ffn.path].sum()) * self.site.ffn_factor
        return config

    def summary_lines(self) -> list[str]:
        """One line per block ("transformer_layer_0: heads 4 -> 2, ffn 64 -> 32"), then notes."""
        lines = []
        for block in self.site.blocks:
            parts = []
            for a in block.attentions:
                label = "heads" if len(block.attentions) == 1 else f"{a.path.rsplit('/', 1)[-1]} heads"
                q, kv = self.query_keep[a.path], self.kv_keep[a.path]
                text = f"{label} {q.size} -> {int(q.sum())}"
                if a.num_kv_heads != a.num_heads:
                    text += f" (key/value heads {kv.size} -> {int(kv.sum())})"
                parts.append(text)
            if block.ffn is not None:
                keep = self.ffn_keep[block.path]
                parts.append(f"ffn {keep.size} -> {int(keep.sum())}")
            lines.append(f"{block.path}: {', '.join(parts)}")
        name = self.site.path or self.site.class_name
        if self.becomes_functional():
            lines.append(f"{name}: becomes a functional keras.Model with the same inputs, outputs and "
                         f"layer names, not a {self.site.class_name} ({self.site.functional})")
        if self.site.heads_reason:
            lines.append(f"{name}: heads kept ({self.site.heads_reason})")
        if self.site.ffn_reason:
            lines.append(f"{name}: FFN units kept ({self.site.ffn_reason})")
        return lines


def plan_hub(site: HubBackbone, scores, heads: float, ffn: float, *, heads_explicit: bool,
             ffn_explicit: bool, round_to: int = 1) -> HubPlan:
    """Chooses the heads and FFN units to remove: the same count in every block.

    ``scores(variable)`` gives a non-negative importance per weight entry. Query heads go
    evenly from every key/value group; when each group has one query head, whole groups go.
    A head ratio that would empty an attention layer or a group raises ``ValueError``, and so
    does an explicit ratio (``heads_explicit``/``ffn_explicit``) on a backbone that cannot lose
    those units; nothing has changed when it raises.
    """
    from keras_prune.structured.plan import _round_keep

    _check_possible(site, heads, heads_explicit, site.heads_reason, "heads")
    _check_possible(site, ffn, ffn_explicit, site.ffn_reason, "ffn")
    query_keep, kv_keep, ffn_keep = {}, {}, {}
    for block in site.blocks:
        for a in block.attentions:
            q, kv = np.ones(a.num_heads, bool), np.ones(a.num_kv_heads, bool)
            if heads > 0 and site.heads_reason is None:
                q, kv = _choose_heads(a, scores, heads)
            query_keep[a.path], kv_keep[a.path] = q, kv
        if block.ffn is not None:
            keep = np.ones(block.ffn.width, bool)
            if ffn > 0 and site.ffn_reason is None:
                width = block.ffn.width
                kept = _round_keep(width, width - int(round(ffn * width)), round_to)
                unit = _per_position(block.ffn.slices, scores, width)
                keep[np.argsort(unit, kind="stable")[: width - kept]] = False
            ffn_keep[block.path] = keep
    return HubPlan(site, query_keep, kv_keep, ffn_keep)


def _check_possible(site: HubBackbone, ratio: float, explicit: bool, reason: str | None, knob: str) -> None:
    if explicit and ratio > 0 and reason is not None:
        where = site.path or site.class_name
        raise ValueError(
            f"Cannot remove {'attention heads' if knob == 'heads' else 'FFN units'} from '{where}': "
            f"{reason}. Pass {knob}=0 to leave them, or exclude this backbone."
        )


def _per_position(slices, scores, size: int) -> np.ndarray:
    total = np.zeros(size)
    for variable, axis in slices:
        values = scores(variable)
        total += values.sum(axis=tuple(a for a in range(values.ndim) if a != axis))
    return total


def _choose_heads(a: Attention, scores, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    group = a.num_heads // a.num_kv_heads  # query heads per key/value head
    q_scores = _per_position(a.query, scores, a.num_heads)
    q_keep, kv_keep = np.ones(a.num_heads, bool), np.ones(a.num_kv_heads, bool)
    if group > 1:
        count = int(round(ratio * group))
        if count >= group:
            limit = (group - 0.5) / group
            raise ValueError(
                f"heads={ratio:g} would remove {count} of the {group} query heads of every key/value "
                f"group of '{a.path}' ({a.num_heads} query heads over {a.num_kv_heads} key/value heads). "
                f"Use a head ratio below {limit:.3g}."
            )
        for g in range(a.num_kv_heads):
            members = np.arange(g * group, (g + 1) * group)
            q_keep[members[np.argsort(q_scores[members], kind="stable")[:count]]] = False
        return q_keep, kv_keep
    count = int(round(ratio * a.num_kv_heads))
    if count >= a.num_kv_heads:
        limit = (a.num_heads - 0.5) / a.num_heads
        raise ValueError(
            f"heads={ratio:g} would remove all {a.num_heads} heads of '{a.path}'. Use a head ratio "
            f"below {limit:.3g}."
        )
    group_scores = _per_position(a.kv, scores, a.num_kv_heads) + q_scores
    removed = np.argsort(group_scores, kind="stable")[:count]
    kv_keep[removed] = False
    q_keep[removed] = False
    return q_keep, kv_keep


# -- rebuilding -------------------------------------------------------------------------------


def rebuild(plan: HubPlan):
    """The same KerasHub class built from the smaller config, with the kept weights copied in;
    or, for a class that cannot hold fewer heads of the same size, a functional model."""
    if plan.becomes_functional():
        return _rebuild_functional(plan)
    old = plan.site.layer
    new = type(old).from_config(plan.config())
    copy_weights(old, new, plan.masks())
    return new


def _rebuild_functional(plan: HubPlan) -> keras.Model:
    """The backbone's graph as a functional ``keras.Model`` (same inputs, outputs and layer
    names) whose blocks are keras-prune blocks with fewer heads of the same size and fewer FFN
    units; every other layer is rebuilt from its config. The kept weights are copied in."""
    from keras_prune.structured.hub_layers import PRUNED_BLOCKS

    old = plan.site.layer
    blocks = {id(b.layer): b for b in plan.site.blocks}
    pairs = []

    def clone(operation):
        if not isinstance(operation, keras.layers.Layer):
            return operation  # a stateless operation (keras.ops on symbolic tensors)
        block = blocks.get(id(operation))
        if block is None:
            new = type(operation).from_config(operation.get_config())
        else:
            attention = block.attentions[0]
            pruned = PRUNED_BLOCKS[type(operation)]
            config = pruned.pruned_config(
                operation, num_heads=int(plan.query_keep[attention.path].sum()),
                num_kv_heads=int(plan.kv_keep[attention.path].sum()), head_dim=attention.head_dim,
            )
            if block.ffn is not None:
                config[FFN_KEY] = int(plan.ffn_keep[block.path].sum()) * plan.site.ffn_factor
            new = pruned.from_config(config)
        pairs.append((operation, new))
        return new

    new_model = keras.models.clone_model(old, clone_function=clone)
    masks = plan.masks()
    for layer, new in pairs:
        copy_weights(layer, new, masks)
    copied = sum(len(layer.weights) for layer, _ in pairs)
    if copied != len(old.weights) or len(new_model.weights) != copied:
        raise RuntimeError(
            f"Internal error rebuilding '{old.name}' as a functional model: {copied} weights copied "
            f"of {len(old.weights)}."
        )
    return new_model


def copy_weights(old, new, masks: list[tuple]) -> None:
    """Assigns ``old``'s weights to ``new``'s (same order), sliced where ``masks`` say."""
    cuts: dict[int, list] = {}
    for variable, axis, keep in masks:
        cuts.setdefault(id(variable), []).append((axis, keep))
    old_weights, new_weights = old.weights, new.weights
    if len(old_weights) != len(new_weights):
        raise RuntimeError(
            f"Internal error rebuilding '{old.name}': {len(new_weights)} weights instead of {len(old_weights)}."
        )
    for source, target in zip(old_weights, new_weights):
        value = keras.ops.convert_to_numpy(source)
        for axis, keep in cuts.get(id(source), []):
            value = np.compress(keep, value, axis=axis)
        if tuple(value.shape) != tuple(target.shape):
            raise RuntimeError(
                f"Internal error rebuilding '{old.name}': the kept slices of {source.path} have shape "
                f"{value.shape}, the rebuilt layer's {target.path} has {tuple(target.shape)}."
            )
        target.assign(value)


def matching_layers(old, new) -> dict[int, object]:
    """``id(layer inside old)`` -> the layer of the same name inside ``new`` (its sub-layers:
    the ones at the same place, of the same class)."""
    news = {layer.name: layer for layer in new.layers}
    found = {}
    for layer in old.layers:
        twin = news.get(layer.name)
        if twin is None:
            continue
        found[id(layer)] = twin
        inner = zip(inner_layers(layer), inner_layers(twin))
        found.update({id(a): b for a, b in inner if type(a) is type(b)})
    return found


# -- loading without keras-hub imported -------------------------------------------------------

_HUB_LAYERS = (
    "PrunedTransformerEncoder", "PrunedTransformerDecoder", "PrunedWhisperEncoder", "PrunedWhisperDecoder",
    "PrunedLlamaDecoder", "PrunedQwenDecoder", "PrunedPhi3Decoder",
)


class _Placeholder:
    """Registered under the name of a keras-prune KerasHub block until the real class is:
    deserializing one imports :mod:`keras_prune.structured.hub_layers` (and keras-hub), whose
    classes then replace the placeholders."""

    block = ""

    @classmethod
    def from_config(cls, config):
        from keras_prune.structured import hub_layers

        return getattr(hub_layers, cls.block).from_config(config)

    def get_config(self):  # pragma: no cover - never instantiated
        raise NotImplementedError


def _register_placeholders() -> None:
    registered = keras.saving.get_custom_objects()
    for name in _HUB_LAYERS:
        registered.setdefault(f"keras_prune>{name}", type(name, (_Placeholder,), {"block": name}))


_register_placeholders()
