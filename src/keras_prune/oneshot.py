"""One-shot magnitude pruning of a trained model: plan every mask, then zero the weights.

A call validates its arguments, selects the layers, checks their weights and computes every
mask before any variable changes, so a bad call leaves the model exactly as it was.

Layers are found at any depth by :mod:`keras_prune.traversal` (inside custom layers,
KerasHub blocks, nested and subclassed models), with no declaration needed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_prune import _host
from keras_prune._validation import check_choice, check_sparsity
from keras_prune.analysis.report import (
    LayerWarning,
    PruningReport,
    WeightFacts,
    prefix_rows,
    summarize,
    unstructured_from_prefix,
)
from keras_prune.core import PruningState, pruning_state_of
from keras_prune.criteria import magnitude
from keras_prune.handlers import input_axes
from keras_prune.masks import (
    STREAM_SAMPLE,
    check_pattern,
    key_dtype,
    key_to_value,
    matrix_shape,
    pattern_mask,
    pattern_misfit,
    prune_count,
    streamed_kth_key,
    zero_pruned,
)
from keras_prune.registry import UnsupportedLayerError
from keras_prune.traversal import Site, walk, weight_sites
from keras_prune.wrapper import PruneLowMagnitude

SCOPES = ("layer", "global")
LayerFilter = str | Sequence[str] | Callable[[keras.layers.Layer], bool] | None
Sparsity = float | Mapping[str, float] | None


def magnitude_prune(
    model: keras.Model,
    *,
    sparsity: Sparsity = None,
    threshold: float | None = None,
    scope: str = "layer",
    layers: LayerFilter = None,
    block_size: tuple[int, int] = (1, 1),
    sparsity_m_by_n: tuple[int, int] | None = None,
    inplace: bool = True,
) -> PruningReport:
    """Zeros the smallest-magnitude weights of every prunable layer, once, without training.

    Give exactly one of ``sparsity`` (prune exactly ``round(sparsity * n)`` weights) or
    ``threshold`` (prune every weight with ``|w| <= threshold``), or neither with
    ``sparsity_m_by_n``, which fixes the sparsity at m/n.

    Args:
        model: a built Keras model.
        sparsity: fraction of prunable weights to zero, in [0, 1); or a mapping from weight
            keys (``"layer path/kernel"``, see :func:`weight_key`) to fractions, such as a
            :func:`keras_prune.allocate` result: only the weights it names are pruned.
        threshold: zero every weight whose magnitude is at most this (>= 0).
        scope: ``"layer"`` prunes each tensor to ``sparsity``; ``"global"`` ranks all
            selected weights together, so layers end with different sparsities.
        layers: which layers to prune, at any depth: a regular expression searched in each
            layer's path and in its name (``"dense|conv"``, ``"block_0/"``), a list of exact
            layer paths or names (``["block/ffn", "logits"]``), a callable ``layer -> bool``,
            or ``None`` for all. A path joins the names of the models and layers around a
            layer (``"transformer_layer_0/self_attention/query"``); ``keras-prune inspect``
            lists them. Weights keras-prune does not know how to prune (a custom layer's,
            or those it keeps outside its sub-layers) stay dense and are named in
            ``report.left_dense``; a selection of only such layers is an error.
        block_size: prune whole ``(rows, cols)`` blocks of each kernel's 2-D view.
        sparsity_m_by_n: ``(m, n)``: prune the m smallest of every n consecutive weights
            along the input axis (tfmot's convention, e.g. ``(2, 4)``).
        inplace: modify ``model``; if ``False``, prune a copy (``report.model``).

    Returns:
        A :class:`PruningReport` of the pruned model; ``report.model`` is that model.
        ``report.warnings`` names each selected weight the pattern does not fit (an N:M
        input axis shorter than N, a block larger than the weight), which it could not
        prune as asked.

    Raises:
        ValueError: bad arguments, a model with nothing to prune, a `layers` selection with
            no prunable layer (:class:`~keras_prune.UnsupportedLayerError` if it selects
            custom layers that declare no prunable weights), a pattern that fits none of the
            selected weights, or non-finite weights.

    Example:
        >>> model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10),
        ...                           keras.layers.Dense(5)])
        >>> report = magnitude_prune(model, sparsity=0.8, scope="global")
        >>> round(report.totals["sparsity"], 2)
        0.8
    """
    settings = check_arguments(sparsity, threshold, scope, layers, block_size, sparsity_m_by_n)
    selected = select_weights(model, layers, settings["sparsity"])
    axes = input_axes(model, [variable for _, variable in selected])
    notes = pattern_warnings(selected, settings["block_size"], settings["sparsity_m_by_n"], axes=axes)
    if not inplace:
        model = copy_model(model)
    plan = _plan(model, **settings)  # every check and every cut, before any weight changes
    known = _apply(plan)
    settings.update(method="magnitude", layers=sorted({entry.path for entry in plan}))
    if callable(layers):
        settings["layer_filter"] = getattr(layers, "__name__", "callable")
    report = summarize(model, settings=settings, known=known)
    report.warnings = notes
    return report


def check_arguments(sparsity, threshold, scope, layers, block_size, sparsity_m_by_n) -> dict:
    """Validates one-shot pruning arguments; returns them as :func:`plan_masks` keywords."""
    block, _, m_by_n = check_pattern(block_size, "AVG", sparsity_m_by_n)
    check_choice("scope", scope, SCOPES)
    given = [name for name, v in (("sparsity", sparsity), ("threshold", threshold)) if v is not None]
    if m_by_n is not None:
        if given or scope != "layer":
            raise ValueError(
                "Argument `sparsity_m_by_n` fixes the sparsity at m/n per group: pass neither "
                "`sparsity` nor `threshold`, and keep scope='layer'. "
                f"Received: sparsity_m_by_n={sparsity_m_by_n!r}, {_show(sparsity, threshold, scope)}"
            )
    elif len(given) != 1:
        raise ValueError(
            "Pass exactly one of the arguments `sparsity` (a fraction in [0, 1)) or "
            f"`threshold` (a magnitude >= 0). Received: {_show(sparsity, threshold, scope)}"
        )
    if isinstance(sparsity, Mapping):
        sparsity = _check_sparsity_map(sparsity, scope)
    elif sparsity is not None:
        sparsity = check_sparsity("sparsity", sparsity)
    if threshold is not None:
        _check_threshold(threshold)
        if block != (1, 1):
            raise ValueError(
                "Argument `threshold` prunes single weights; use `sparsity` with `block_size`. "
                f"Received: threshold={threshold!r}, block_size={block_size!r}"
            )
    if scope == "global" and block != (1, 1):
        raise ValueError(
            "Block pruning ranks blocks within each tensor; use scope='layer' with "
            f"`block_size`. Received: scope='global', block_size={block_size!r}"
        )
    _check_layer_filter(layers)
    return dict(
        sparsity=sparsity,
        threshold=None if threshold is None else float(threshold),
        scope=scope,
        layer_filter=layers,
        block_size=block,
        sparsity_m_by_n=m_by_n,
    )


def _check_sparsity_map(sparsity: Mapping, scope: str) -> dict[str, float]:
    if scope != "layer":
        raise ValueError(
            "A mapping of per-weight sparsities already sets each weight's count; keep scope='layer'. "
            f"Received: scope={scope!r}"
        )
    if not sparsity:
        raise ValueError("Argument `sparsity` is an empty mapping, so nothing would be pruned. Received: sparsity={}")
    for key in sparsity:
        if not isinstance(key, str):
            raise TypeError(f"Keys of a `sparsity` mapping are weight keys such as 'dense/kernel'. Received: {key!r}")
    return {key: check_sparsity(f"sparsity[{key!r}]", value) for key, value in sparsity.items()}


def weight_key(path: str, variable) -> str:
    """``"block/ffn/kernel"``: how per-weight sparsities (and :func:`keras_prune.allocate`) name a weight.

    The layer's path, then the weight's own path below that layer (``"mha/query/kernel"`` for
    a kernel a MultiHeadAttention keeps in its ``query`` sub-layer).

    Example:
        >>> layer = keras.layers.Dense(2, name="fc")
        >>> layer.build((None, 3))
        >>> weight_key("encoder/fc", layer.kernel)
        'encoder/fc/kernel'
    """
    layer_name = path.rsplit("/", 1)[-1].split("#")[0]
    parts = variable.path.split("/")
    below = [i for i, part in enumerate(parts[:-1]) if part == layer_name]
    own = "/".join(parts[below[-1] + 1:]) if below else variable.name
    return f"{path}/{own}"


def weight_keys(selected: list[tuple[str, object]]) -> list[str]:
    """The :func:`weight_key` of each ``(layer path, variable)`` of
    :func:`select_weights`, checked to be distinct.

    Example:
        >>> layer = keras.layers.MultiHeadAttention(2, 4, name="attention")
        >>> _ = layer(np.ones((1, 3, 8)), np.ones((1, 3, 8)))
        >>> weight_keys([("block/attention", w) for w in layer.weights if w.name == "kernel"])[:2]
        ['block/attention/query/kernel', 'block/attention/key/kernel']

    Raises:
        ValueError: two weights would have the same key.
    """
    keys = [weight_key(path, variable) for path, variable in selected]
    if len(set(keys)) < len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"Two selected weights have the key '{twice}'; give one of their layers another name.")
    return keys


def _show(sparsity, threshold, scope) -> str:
    return f"sparsity={sparsity!r}, threshold={threshold!r}, scope={scope!r}"


def _check_threshold(threshold: object) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"Argument `threshold` must be a number >= 0. Received: threshold={threshold!r}")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(
            f"Argument `threshold` must be a finite number >= 0. Received: threshold={threshold!r}"
        )


def _check_layer_filter(layers: object) -> None:
    if layers is None or callable(layers):
        return
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(entry, str) for entry in layers):
        return
    if not isinstance(layers, str):
        raise TypeError(
            "Argument `layers` must be a regular expression (str), a non-empty list of layer "
            f"paths or names, a callable `layer -> bool`, or None. Received: layers={layers!r}"
        )
    try:
        re.compile(layers)
    except re.error as error:
        raise ValueError(
            f"Argument `layers` is not a valid regular expression ({error}). Received: layers={layers!r}"
        ) from None


def select_weights(
    model: keras.Model, layer_filter: LayerFilter = None, sparsity: Sparsity = None, argument: str = "sparsity"
) -> list[tuple[str, object]]:
    """``(layer path, variable)`` for every prunable weight of the layers ``layer_filter`` picks
    (and, when ``sparsity`` is a mapping, that it names by :func:`weight_key`; ``argument`` is
    the mapping's name in the error naming unknown weights).

    Layers are found at any depth (see :func:`keras_prune.traversal.weight_sites`); weights
    keras-prune does not know how to prune are left out.

    Raises:
        ValueError: the model is not built, it has nothing to prune, ``layer_filter`` (or an
            entry of a list) picks no layer with prunable weights, or a picked layer is
            being pruned gradually (wrapped, or held by a ``PrunedModel``).
        UnsupportedLayerError: ``layer_filter`` picks only layers holding weights keras-prune
            does not know how to prune.
    """
    selected = _select(model, layer_filter)
    if not isinstance(sparsity, Mapping):
        return selected
    keys = [weight_key(path, variable) for path, variable in selected]
    unknown = sorted(set(sparsity) - set(keys))
    if unknown:
        raise ValueError(
            f"Argument `{argument}` names weights that are not selected prunable weights of model "
            f"'{model.name}': {list_paths(unknown)}. Selected weights: {list_paths(keys)}."
        )
    return [site for site, key in zip(selected, keys) if key in sparsity]


def _select(model: keras.Model, layer_filter: LayerFilter) -> list[tuple[str, object]]:
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' has no weights yet; build it first (call it on data or "
            "`model.build(input_shape)`)."
        )
    if isinstance(model, PruningState):
        raise ValueError(
            f"Model '{model.name}' is being pruned gradually; get the model with "
            "keras_prune.strip_pruning(model) (CLI: keras-prune strip) first."
        )
    sites = [site for site in weight_sites(model) if site.variables]
    chosen = [site for site in sites if _matches(layer_filter, site)]
    for site in chosen:
        if isinstance(site.layer, PruneLowMagnitude) or any(pruning_state_of(w) for w in site.prunable):
            raise ValueError(
                f"Layer '{site.path}' is being pruned gradually, so its masks would go out of date; "
                "strip the pruned model first with keras_prune.strip_pruning(pruned) (CLI: keras-prune strip)."
            )
    if isinstance(layer_filter, (list, tuple)):
        for entry in layer_filter:
            _check_picked(model, [site for site in sites if entry in (site.path, site.name)], layer_filter, entry)
    _check_picked(model, chosen, layer_filter)
    return [(site.path, variable) for site in chosen for variable in site.prunable]


def _check_picked(model: keras.Model, picked: list[Site], layer_filter: LayerFilter, entry: str | None = None) -> None:
    """Raises unless ``picked`` (the sites a selection, or one entry of a list, picks) has prunable weights."""
    if any(site.prunable for site in picked):
        return
    unknown = [site for site in picked if site.reason]
    if unknown:
        raise UnsupportedLayerError(_only_unknown(model, unknown, layer_filter))
    if entry is not None:
        raise ValueError(
            f"Argument `layers` names '{entry}', which is not the path or name of a layer with prunable "
            f"weights of model '{model.name}' ({list_paths(ensure_prunable(model))}). Received: "
            f"layers={layer_filter!r}; use these paths, or a regular expression (\"{entry}/\" picks "
            "every layer inside it)."
        )
    raise ValueError(_nothing_selected(model, layer_filter))


def _only_unknown(model: keras.Model, unknown: list[Site], layer_filter: LayerFilter) -> str:
    site = unknown[0]
    others = f" (and {len(unknown) - 1} more such layers)" if len(unknown) > 1 else ""
    found = f"layer '{site.path}' ({type(site.layer).__name__}) {site.reason}{others}"
    if layer_filter is None:
        return (
            f"Model '{model.name}' holds no weights keras-prune knows how to prune: {found}."
        )
    return (
        f"Argument `layers` selects only layers whose weights keras-prune does not know how to prune, "
        f"so nothing would be pruned: {found}, or select layers with prunable weights (CLI: "
        f"--layers/--exclude; `keras-prune inspect MODEL` lists them). Received: layers={layer_filter!r}"
    )


def prunable_paths(model: keras.Model) -> list[str]:
    """Paths of the layers of ``model`` that a selection can pick for pruning, at any depth.

    These are the layers holding prunable weights (or, unbuilt, of a type that has them),
    and the layers holding weights keras-prune does not know how to prune (a selection of
    only those is an error naming them, see :class:`keras_prune.PrunableLayer`).

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(),
        ...                           keras.layers.Dense(2, name="out")])
        >>> prunable_paths(model)
        ['out']
    """
    return [site.path for site in weight_sites(model) if site.prunable or site.reason or not site.variables]


def ensure_prunable(model: keras.Model) -> list[str]:
    """:func:`prunable_paths` of ``model``; raises if there are none.

    Raises:
        ValueError: no layer of ``model`` holds prunable weights.
    """
    paths = prunable_paths(model)
    if not paths:
        kinds = sorted({type(layer).__name__ for _, layer in walk(model)})
        raise ValueError(
            f"Model '{model.name}' has nothing to prune: none of its layers ({', '.join(kinds) or 'none'}) "
            "holds prunable weights. keras-prune prunes Dense, Conv, Embedding, RNN and attention "
            "layers, and custom layers that subclass keras_prune.PrunableLayer."
        )
    return paths


def _nothing_selected(model: keras.Model, layer_filter: LayerFilter) -> str:
    candidates = ensure_prunable(model)
    return (
        f"Argument `layers` selects none of the layers with prunable weights of model '{model.name}' "
        f"({list_paths(candidates)}). Received: layers={layer_filter!r}; pass a regular expression "
        "found in these paths, a list of them, a callable returning True for the layers to prune, or None for all "
        "(`keras-prune inspect MODEL` lists the paths)."
    )


def list_paths(paths: list[str], limit: int = 8) -> str:
    """``"a, b, c"``, or the first ``limit`` paths and how many more."""
    shown = ", ".join(paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


def pattern_warnings(
    selected: list[tuple[str, object]],
    block_size: tuple[int, int] = (1, 1),
    sparsity_m_by_n: tuple[int, int] | None = None,
    *,
    require_fit: bool = True,
    axes: list[int] | None = None,
) -> list[LayerWarning]:
    """One warning per selected weight the pattern does not fit; raises if it fits none.

    Args:
        selected: ``(layer path, variable)`` pairs, as :func:`select_weights` returns.
        block_size: a validated block size (see :func:`keras_prune.masks.check_pattern`).
        sparsity_m_by_n: a validated ``(m, n)``, or ``None``.
        require_fit: raise when the pattern fits none of ``selected``; ``False`` when more
            weights, not known yet, will be pruned too.
        axes: the input axis of each selected weight (see :func:`keras_prune.handlers.input_axes`),
            along which N:M groups weights; by default the second-to-last.

    Raises:
        ValueError: the pattern fits none of the selected weights, so it would not prune
            any of them as asked.
    """
    misfits = []
    axes = axes or [None] * len(selected)
    for (path, variable), axis in zip(selected, axes):
        reason = pattern_misfit(tuple(variable.shape), block_size, sparsity_m_by_n, axis)
        if reason is not None:
            misfits.append((path, variable, reason))
    if require_fit and misfits and len(misfits) == len(selected):
        raise ValueError(_no_fit_message(misfits, selected, block_size, sparsity_m_by_n))
    label = _pattern_label(block_size, sparsity_m_by_n)
    return [
        LayerWarning(path, f"{label} does not fit its {weight_name(variable)}: {reason}")
        for path, variable, reason in misfits
    ]


def _pattern_label(block_size, sparsity_m_by_n) -> str:
    if sparsity_m_by_n is not None:
        return f"the {sparsity_m_by_n[0]}:{sparsity_m_by_n[1]} pattern"
    return f"the {block_size[0]}x{block_size[1]} block pattern"


def weight_name(variable) -> str:
    """``"kernel (3, 4)"``: a weight's name and shape, as messages show it."""
    return f"{variable.name} {tuple(variable.shape)}"


def _no_fit_message(misfits, selected, block_size, sparsity_m_by_n) -> str:
    path, variable, reason = misfits[0]
    others = f" (and {len(misfits) - 1} more)" if len(misfits) > 1 else ""
    found = f"layer '{path}' {weight_name(variable)}: {reason}{others}"
    if sparsity_m_by_n is not None:
        m, n = sparsity_m_by_n
        return (
            f"Argument `sparsity_m_by_n` fits none of the selected weights, so none would be "
            f"pruned {m}:{n}: {found}. Select layers with at least {n} weights along the input axis "
            f"(argument `layers`, CLI --layers/--exclude), or prune unstructured. "
            f"Received: sparsity_m_by_n={tuple(sparsity_m_by_n)!r}"
        )
    views = [matrix_shape(v.shape) for _, v in selected]
    fitting = (min(block_size[0], min(r for r, _ in views)), min(block_size[1], min(c for _, c in views)))
    return (
        f"Argument `block_size` fits none of the selected weights: {found}. Use a block that fits "
        f"their 2-D views (leading axes folded into rows), such as block_size={fitting!r} "
        f"(CLI: --pattern block:{fitting[0]}x{fitting[1]}). Received: block_size={tuple(block_size)!r}"
    )


def _matches(layer_filter: LayerFilter, site: Site) -> bool:
    """Whether ``layer_filter`` picks ``site``: a regex found in its path or name, a list entry
    equal to either, or a callable returning True for its layer."""
    if layer_filter is None:
        return True
    if callable(layer_filter):
        return bool(layer_filter(site.layer))
    if isinstance(layer_filter, str):
        return re.search(layer_filter, site.path) is not None or re.search(layer_filter, site.name) is not None
    return site.path in layer_filter or site.name in layer_filter


def plan_masks(
    model: keras.Model,
    *,
    sparsity: Sparsity = None,
    threshold: float | None = None,
    scope: str = "layer",
    layer_filter: LayerFilter = None,
    block_size: tuple[int, int] = (1, 1),
    sparsity_m_by_n: tuple[int, int] | None = None,
) -> dict[tuple[str, str], tuple[object, np.ndarray]]:
    """Computes (without applying) the keep-mask of every selected weight.

    Returns:
        ``{(layer path, variable path): (variable, keep mask)}`` in model order.

    Raises:
        ValueError: see :func:`select_weights` and :func:`pattern_warnings`, or a selected
            weight is NaN or infinite.
    """
    plan = _plan(model, sparsity=sparsity, threshold=threshold, scope=scope, layer_filter=layer_filter,
                 block_size=block_size, sparsity_m_by_n=sparsity_m_by_n)
    cuts: dict[int, _Cut] = {}
    masks = {}
    for entry in plan:
        if entry.cut is None:
            keep = np.unpackbits(entry.packed, count=entry.size).view(bool)
        else:
            cut = cuts.setdefault(id(entry.cut), copy.copy(entry.cut))
            keep = cut.keep(_magnitudes(_host.view(entry.variable).reshape(-1), entry.dtype))
        masks[(entry.path, entry.variable.path)] = (entry.variable, keep.reshape(tuple(entry.variable.shape)))
    return masks


class _Cut:
    """Prunes every magnitude below ``value`` and, of those equal to it, the first ``ties`` met
    (all when ``ties`` is ``None``), chunk after chunk: one cut serves a global ranking across
    tensors in model order, exactly as one concatenated ranking breaks ties."""

    def __init__(self, value, ties: int | None = None):
        self.value, self.ties = value, ties

    def keep(self, magnitudes: np.ndarray, out: np.ndarray | None = None,
             scratch: np.ndarray | None = None) -> np.ndarray:
        """The keep mask of the next chunk of magnitudes (in order), using up the ties; into
        ``out`` (and ``scratch`` for the ties), boolean buffers of the chunk's size, if given."""
        if self.ties is None:
            return np.greater(magnitudes, self.value, out=out)
        if self.ties == 0:
            return np.greater_equal(magnitudes, self.value, out=out)
        keep = np.greater(magnitudes, self.value, out=out)
        tied = np.equal(magnitudes, self.value, out=scratch)
        if not tied.any():
            return keep
        tied = np.flatnonzero(tied)
        if tied.size > self.ties:
            keep[tied[self.ties:]] = True  # the first ties are pruned, the later kept
            self.ties = 0
        else:
            self.ties -= tied.size
        return keep


@dataclasses.dataclass
class _Entry:
    """One selected weight's plan: a cut on magnitudes, or a packed keep mask (block, N:M)."""

    path: str
    variable: object
    dtype: np.dtype
    size: int
    cut: _Cut | None = None
    packed: np.ndarray | None = None


def _plan(
    model: keras.Model,
    *,
    sparsity: Sparsity = None,
    threshold: float | None = None,
    scope: str = "layer",
    layer_filter: LayerFilter = None,
    block_size: tuple[int, int] = (1, 1),
    sparsity_m_by_n: tuple[int, int] | None = None,
) -> list[_Entry]:
    """Checks every selected weight and decides what to prune, holding no more than one weight.

    Unstructured pruning needs only each tensor's cut (the global ranking one shared cut),
    found by streamed selection without concatenating the weights; block and N:M patterns keep
    each tensor's mask, packed to a bit per weight.
    """
    selected = select_weights(model, layer_filter, sparsity)
    axes = input_axes(model, [variable for _, variable in selected])
    pattern_warnings(selected, block_size, sparsity_m_by_n, axes=axes)  # raises if the pattern fits nothing
    dtype = _common_dtype([variable for _, variable in selected])
    entries = [
        _Entry(path, variable, dtype, math.prod(tuple(variable.shape))) for path, variable in selected
    ]
    if threshold is not None:
        cut = _Cut(threshold)
        _check_finite(entries)
        for entry in entries:
            entry.cut = cut
    elif sparsity_m_by_n is None and scope == "global":
        cut = _select_cut(entries, sparsity)
        for entry in entries:
            entry.cut = cut
    elif sparsity_m_by_n is None and tuple(block_size) == (1, 1):
        for entry in entries:
            entry.cut = _select_cut([entry], _amount(sparsity, entry.path, entry.variable))
    else:
        for entry, axis in zip(entries, axes):
            values = _host.view(entry.variable)
            if not np.all(np.isfinite(values)):
                raise _non_finite(entry)
            keep = pattern_mask(magnitude(values), _amount(sparsity, entry.path, entry.variable),
                                block_size, "AVG", sparsity_m_by_n, axis)
            entry.packed = np.packbits(keep, axis=None)
    return entries


def _common_dtype(variables) -> np.dtype:
    """The float type all selected magnitudes are compared in (upcasting is exact)."""
    dtypes = {np.dtype(keras.backend.standardize_dtype(v.dtype)) for v in variables}
    try:
        dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float32)
    except TypeError:
        return np.dtype(np.float64)
    return dtype if dtype.kind == "f" and dtype.itemsize in (2, 4, 8) else np.dtype(np.float64)


def _magnitudes(chunk: np.ndarray, dtype: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """``|chunk|`` in ``dtype``, into ``out`` when it fits."""
    if chunk.dtype == dtype and out is not None and out.size >= chunk.size:
        return np.abs(chunk, out=out[: chunk.size])
    return np.abs(chunk).astype(dtype, copy=False)


def _non_finite(entry: _Entry) -> ValueError:
    return ValueError(
        f"Weight '{entry.variable.path}' of layer '{entry.path}' contains NaN or infinite values; "
        "magnitude pruning cannot rank them. Fix or retrain the model first."
    )


def _magnitude_keys(entries: list[_Entry]):
    """A function giving, at each call, one pass over the magnitudes' bits as unsigned keys,
    chunk by chunk (one reused buffer), raising on NaN or infinite weights."""
    dtype = entries[0].dtype
    unsigned = key_dtype(dtype)
    infinite = np.array(np.inf, dtype=dtype).view(unsigned)[()]
    buffer = np.empty(_host.CHUNK, dtype=dtype)

    def passes():
        nonlocal buffer
        for entry in entries:
            for chunk in _host.read_chunks(entry.variable):
                if chunk.size > buffer.size:
                    buffer = np.empty(chunk.size, dtype=dtype)
                keys = _magnitudes(chunk, dtype, buffer).view(unsigned)
                if keys.size and keys.max() >= infinite:  # |NaN| sorts above |inf|
                    raise _non_finite(entry)
                yield keys

    return passes


def _check_finite(entries: list[_Entry]) -> None:
    if entries:
        for _ in _magnitude_keys(entries)():
            pass


def _select_cut(entries: list[_Entry], sparsity: float | None) -> _Cut:
    """The cut pruning exactly ``round(sparsity * n)`` of the smallest magnitudes of ``entries``
    (ties: the earlier weight, then the earlier index), selected without concatenating them."""
    total = sum(entry.size for entry in entries)
    k = prune_count(sparsity or 0.0, total)
    if k <= 0 or k >= total:
        _check_finite(entries)
        return _Cut(-np.inf, 0) if k <= 0 else _Cut(np.inf)
    dtype = entries[0].dtype
    unsigned = key_dtype(dtype)
    sample = np.concatenate([
        _magnitudes(_host.sample(entry.variable, max(1, STREAM_SAMPLE * entry.size // total)), dtype).view(unsigned)
        for entry in entries
    ])
    # The keys gathered between the sample's bounds (~1.6% of them) are held at most twice (while
    # joined): up to a layer's size in all, else the radix passes take over.
    limit = max(1 << 16, min(total // 16, max(entry.size for entry in entries) // 2))
    kth, below = streamed_kth_key(_magnitude_keys(entries), k, total, sample=sample, limit=limit)
    return _Cut(key_to_value(kth, dtype, signed=False), k - below)


def _apply(plan: list[_Entry]) -> list[tuple[object, WeightFacts]]:
    """Zeros the pruned weights of each planned variable, chunk by chunk, and counts them.

    Each variable is read without a copy (:func:`keras_prune._host.view`) and written once;
    its new value, the only buffer of its size, is filled chunk by chunk from the old values and
    the keep mask, and the magnitudes and masks of a chunk go to buffers reused throughout.
    """
    cuts: dict[int, _Cut] = {}
    known = []
    buffers = _Buffers(plan[0].dtype if plan else np.dtype(np.float32))
    for entry in plan:
        cut = cuts.setdefault(id(entry.cut), copy.copy(entry.cut)) if entry.cut is not None else None
        keep = None if cut is not None else np.unpackbits(entry.packed, count=entry.size).view(bool)
        shape = tuple(entry.variable.shape)
        tally = {"zeros": 0, "offset": 0, "pattern": None, "itemsize": 0}

        def change(old, new, cut=cut, keep=keep, shape=shape, tally=tally, dtype=entry.dtype):
            size, offset = old.size, tally["offset"]
            if cut is not None:
                magnitudes, flags, scratch = buffers.get(size, dtype)
                kept = cut.keep(_magnitudes(old, dtype, magnitudes), out=flags, scratch=scratch)
            else:
                kept = keep[offset: offset + size]
            _zero_pruned(old, kept, new)
            if cut is not None and cut.value > 0:  # what is kept is above a positive cut: nonzero
                zeros = size - int(np.count_nonzero(kept))
            else:
                zeros = size - int(np.count_nonzero(new))
            tally["zeros"] += zeros
            if offset == 0:
                tally["itemsize"] = new.itemsize
                head = prefix_rows(shape) * math.prod(shape[1:])  # the leading rows detection looks at
                zero = np.logical_not(kept[:head]) if cut is not None and cut.value > 0 else new[:head] == 0
                if unstructured_from_prefix(zero, shape):
                    tally["pattern"] = "unstructured"
            tally["offset"] = offset + size

        _host.rewrite(entry.variable, change)
        known.append((entry.variable, WeightFacts(entry.size, tally["itemsize"] or entry.dtype.itemsize,
                                                  entry.size - tally["zeros"], tally["pattern"])))
    return known


class _Buffers:
    """Chunk-sized buffers reused from chunk to chunk: magnitudes, keep flags, tie flags."""

    def __init__(self, dtype: np.dtype, size: int = _host.CHUNK):
        self.magnitudes = np.empty(size, dtype=dtype)
        self.flags = np.empty(size, dtype=bool)
        self.scratch = np.empty(size, dtype=bool)

    def get(self, size: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if size > self.flags.size:
            self.flags, self.scratch = np.empty(size, dtype=bool), np.empty(size, dtype=bool)
        if size > self.magnitudes.size or self.magnitudes.dtype != dtype:
            self.magnitudes = np.empty(max(size, self.magnitudes.size), dtype=dtype)
        return self.magnitudes, self.flags[:size], self.scratch[:size]


def _zero_pruned(old: np.ndarray, keep: np.ndarray, new: np.ndarray) -> None:
    """``new = old`` where ``keep``, else +0.0, in one pass: the bits times 1 or 0 (so a pruned
    -0.0, infinity or NaN becomes +0.0 too)."""
    if old.dtype.kind in "biu":
        np.multiply(old, keep, out=new)
    elif old.itemsize in (1, 2, 4, 8):
        bits = np.dtype(f"u{old.itemsize}")
        np.multiply(old.view(bits), keep, out=new.view(bits))
    else:
        new[...] = zero_pruned(old, keep)


def _amount(sparsity: Sparsity, path: str, variable) -> float:
    if isinstance(sparsity, Mapping):
        return sparsity[weight_key(path, variable)]
    return sparsity or 0.0


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy of ``model`` (architecture, weights, compile state).

    The copy goes through the ``.keras`` format; the model is already in memory, so
    reloading it runs no code that was not running already.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "copy.keras"
        try:
            model.save(path)
            with warnings.catch_warnings():
                # Optimizer slots are rebuilt at the first step; Keras warns that it skips them.
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                return keras.saving.load_model(path, safe_mode=False)
        except Exception as error:
            raise ValueError(
                f"Cannot copy model '{model.name}' for inplace=False ({error}). Register its "
                "custom classes with `keras.saving.register_keras_serializable`, or prune "
                "in place (inplace=True)."
            ) from error
