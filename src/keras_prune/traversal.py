"""One traversal of a model's layer tree, at any depth: where its weights are, which to prune.

The walk goes through every layer a model tracks, wherever it is kept: layers of Sequential,
functional and subclassed models, nested models, and sub-layers of custom layers (KerasHub
blocks keep theirs in private attributes such as ``_self_attention_layer``), the way Keras'
own ``Model.quantize`` reaches the layers it changes. Each layer is visited once, even when
it is reachable twice (a shared layer, a token embedding reused as the output head,
ALBERT's one block).

A layer the registry knows (Dense, EinsumDense, Conv, Embedding, RNN, MultiHeadAttention,
a :class:`keras_prune.PrunableLayer`, ...) is a leaf: its rule lists its prunable weights,
so the walk does not go inside it (except into sub-layers the rule does not cover, such as
an extra projection of an attention subclass). Any other layer with sub-layers is a
container: the walk goes inside, and the weights the container keeps itself (outside its
sub-layers) are left dense, with the reason, since keras-prune cannot know what they are.

Each layer gets a path that joins the names of the layers and models around it, below the
model passed (``"transformer_layer_0/self_attention/query"``), unlike ``layer.path``, which
some layers lack and some models repeat. Paths are unique in a model (a repeated one gets
``#2``, ``#3``, ... in walk order) and do not change when it is saved and reloaded; the
``layers`` selections of :func:`keras_prune.magnitude_prune` and the CLI's
``--layers``/``--exclude`` match them (a ``layers`` regex or list also matches plain names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import keras

from keras_prune import registry
from keras_prune._keras_compat import child_layers
from keras_prune.core import PruningState
from keras_prune.wrapper import PruneLowMagnitude


@dataclasses.dataclass(frozen=True)
class Site:
    """A place in a model that holds weights: a layer, or the weights a container keeps itself.

    Attributes:
        path: the layer's unique path in the model (``"block/ffn"``).
        layer: the layer (for a pruning wrapper, the wrapper).
        variables: the model's weights this site holds; every weight of the model is held by
            exactly one site. A container's site holds only the weights outside its sub-layers.
        prunable: the weights among ``variables`` that pruning may zero.
        reason: why the site's weights stay dense although they may be prunable (a custom
            layer that does not declare its weights), or ``None``.
    """

    path: str
    layer: keras.layers.Layer
    variables: tuple = ()
    prunable: tuple = ()
    reason: str | None = None

    @property
    def name(self) -> str:
        """The layer's own name (the last part of ``path``, unless made unique)."""
        return self.layer.name


def sub_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers inside ``layer`` that the walk goes into.

    All sub-layers of a layer the registry has no rule for (a container); none of a
    :class:`keras_prune.PrunableLayer` or a pruning wrapper; of a layer with a built-in rule,
    only the sub-layers holding none of the weights the rule lists (an extra projection a
    subclass of MultiHeadAttention adds), so the rule's weights are never counted twice.
    """
    if _is_pruned_model(layer):
        return [layer.layer]  # not its masks: they are pruning state, not the model's weights
    children = child_layers(layer)
    if not children or isinstance(layer, (registry.PrunableLayer, PruneLowMagnitude)):
        return []
    if not registry.has_rule(layer):
        return children
    try:
        listed = {id(w) for w in registry.prunable_weights(layer)} if layer.built else set()
    except registry.UnsupportedLayerError:
        return []
    return [c for c in children if c.weights and not any(id(w) in listed for w in c.weights)]


def walk(model: keras.layers.Layer) -> Iterator[tuple[str, keras.layers.Layer]]:
    """``(path, layer)`` for every layer inside ``model``, at any depth, each layer once.

    A layer comes before the layers inside it (see :func:`sub_layers`). Input layers are left
    out: they hold nothing.

    Example:
        >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")],
        ...                          name="block")
        >>> model = keras.Sequential([keras.Input((4,)), inner])
        >>> [path for path, _ in walk(model)]
        ['block', 'block/d']
    """
    model = unwrap(model)
    seen, used = {id(model)}, set()

    def visit(container, prefix):
        for layer in sub_layers(container):
            if id(layer) in seen or isinstance(layer, keras.layers.InputLayer):
                continue
            seen.add(id(layer))
            path = unique_path(f"{prefix}{layer.name}", used)
            yield path, layer
            yield from visit(layer, f"{path}/")

    yield from visit(model, "")


def unique_path(path: str, used: set[str]) -> str:
    """``path``, or ``path#2``, ``path#3``... if an earlier layer has it already."""
    candidate, n = path, 1
    while candidate in used:
        n += 1
        candidate = f"{path}#{n}"
    used.add(candidate)
    return candidate


def weight_sites(model: keras.layers.Layer) -> list[Site]:
    """Every :class:`Site` of ``model``: where its weights are and which of them to prune.

    A site is a layer holding weights outside the layers the walk goes into (or, not built
    yet, of a type that will hold prunable ones): the layers the registry knows, other
    layers without sub-layers, and containers keeping weights of their own, ``model`` itself
    included (its site's path is its name). Layers without weights are left out.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d"),
        ...                           keras.layers.LayerNormalization(name="norm")])
        >>> [(s.path, [w.name for w in s.prunable]) for s in weight_sites(model)]
        [('d', ['kernel']), ('norm', [])]
    """
    model = unwrap(model)
    nodes = list(walk(model))
    root = unique_path(model.name, {path for path, _ in nodes})
    claimed: set[int] = set()
    sites = []
    for path, layer in [(root, model), *nodes]:
        site = _unclaimed(_site(path, layer), claimed)
        if site.variables or (not layer.built and registry.has_rule(layer)):
            sites.append(site)
    return sites


def unwrap(model: keras.layers.Layer) -> keras.layers.Layer:
    """The model a :class:`keras_prune.PrunedModel` prunes, or ``model`` itself."""
    return model.layer if _is_pruned_model(model) else model


def _is_pruned_model(layer) -> bool:
    return isinstance(layer, PruningState) and isinstance(layer, keras.Model)


def _site(path: str, layer: keras.layers.Layer) -> Site:
    if _is_pruned_model(layer):
        return Site(path, layer)
    # A pruning wrapper holds masks and a step counter besides the layer: count the layer's weights.
    inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
    inside = {id(w) for child in sub_layers(layer) for w in child.weights}
    variables = tuple(w for w in inner.weights if id(w) not in inside)
    if not registry.has_rule(inner) and inside:  # a container: its own weights are unknown
        return Site(path, layer, variables, reason=unknown_weights_reason(variables, own=True) if variables else None)
    try:
        prunable = tuple(registry.prunable_weights(inner)) if inner.built else ()
    except registry.UnsupportedLayerError:
        return Site(path, layer, variables, reason=unknown_weights_reason(variables, own=False))
    return Site(path, layer, variables, prunable)


def _unclaimed(site: Site, claimed: set[int]) -> Site:
    """``site`` without the weights an earlier site holds already (weights shared between layers)."""
    variables = tuple(w for w in site.variables if id(w) not in claimed)
    prunable = tuple(w for w in site.prunable if id(w) not in claimed)
    claimed.update(id(w) for w in variables)
    return dataclasses.replace(site, variables=variables, prunable=prunable)


def unknown_weights_reason(variables, *, own: bool) -> str:
    """Why weights keras-prune knows nothing about stay dense, and how to declare them."""
    names = [f"'{w.name}'" for w in variables]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    whose = "its own weights" if own else "weights"
    return (
        f"holds {whose} {shown} that keras-prune does not know how to prune; subclass "
        "keras_prune.PrunableLayer to declare them"
    )
