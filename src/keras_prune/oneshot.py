"""One-shot magnitude pruning of a trained model: plan every mask, then zero the weights.

A call validates its arguments, selects the layers, checks their weights and computes every
mask before any variable changes, so a bad call leaves the model exactly as it was.
"""

from __future__ import annotations

import math
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from keras_prune._validation import check_choice, check_sparsity
from keras_prune.analysis.report import (
    LayerWarning,
    PruningReport,
    iter_layers,
    summarize,
)
from keras_prune.criteria import magnitude
from keras_prune.masks import (
    check_pattern,
    global_sparsity_masks,
    matrix_shape,
    pattern_mask,
    pattern_misfit,
    threshold_mask,
)
from keras_prune.registry import UnsupportedLayerError, has_rule, prunable_weights
from keras_prune.wrapper import PruneLowMagnitude

SCOPES = ("layer", "global")
LayerFilter = str | Callable[[keras.layers.Layer], bool] | None


def magnitude_prune(
    model: keras.Model,
    *,
    sparsity: float | None = None,
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
        sparsity: fraction of prunable weights to zero, in [0, 1).
        threshold: zero every weight whose magnitude is at most this (>= 0).
        scope: ``"layer"`` prunes each tensor to ``sparsity``; ``"global"`` ranks all
            selected weights together, so layers end with different sparsities.
        layers: which layers to prune: a regular expression searched in each layer's path
            (``"dense|conv"``), a callable ``layer -> bool``, or ``None`` for all.
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
            no prunable layer, a pattern that fits none of the selected weights, non-finite
            weights, or a custom layer that declares no prunable weights.

    Example:
        >>> model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10),
        ...                           keras.layers.Dense(5)])
        >>> report = magnitude_prune(model, sparsity=0.8, scope="global")
        >>> round(report.totals["sparsity"], 2)
        0.8
    """
    settings = _check_arguments(sparsity, threshold, scope, layers, block_size, sparsity_m_by_n)
    notes = pattern_warnings(select_weights(model, layers), settings["block_size"], settings["sparsity_m_by_n"])
    if not inplace:
        model = copy_model(model)
    plan = plan_masks(model, **settings)
    for variable, keep in plan.values():
        values = keras.ops.convert_to_numpy(variable)
        variable.assign(np.where(keep, values, np.zeros_like(values)))
    settings.update(method="magnitude", layers=sorted({path for path, _ in plan}))
    if callable(layers):
        settings["layer_filter"] = getattr(layers, "__name__", "callable")
    report = summarize(model, settings=settings)
    report.warnings = notes
    return report


def _check_arguments(sparsity, threshold, scope, layers, block_size, sparsity_m_by_n) -> dict:
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
    if sparsity is not None:
        check_sparsity("sparsity", sparsity)
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
        sparsity=None if sparsity is None else float(sparsity),
        threshold=None if threshold is None else float(threshold),
        scope=scope,
        layer_filter=layers,
        block_size=block,
        sparsity_m_by_n=m_by_n,
    )


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
    if not isinstance(layers, str):
        raise TypeError(
            "Argument `layers` must be a regular expression (str), a callable "
            f"`layer -> bool`, or None. Received: layers={layers!r}"
        )
    try:
        re.compile(layers)
    except re.error as error:
        raise ValueError(
            f"Argument `layers` is not a valid regular expression ({error}). Received: layers={layers!r}"
        ) from None


def select_weights(model: keras.Model, layer_filter: LayerFilter = None) -> list[tuple[str, object]]:
    """``(layer path, variable)`` for every prunable weight of the layers ``layer_filter`` picks.

    Raises:
        ValueError: the model is not built, it has nothing to prune, ``layer_filter`` picks
            no layer with prunable weights, or a picked custom layer declares no prunable weights.
    """
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' has no weights yet; build it first (call it on data or "
            "`model.build(input_shape)`)."
        )
    selected = []
    for path, layer in iter_layers(model):
        if not layer.weights or not _matches(layer_filter, layer, path):
            continue
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(
                f"Layer '{path}' is wrapped for gradual pruning; remove the wrappers first with "
                "keras_prune.strip_pruning(model) (CLI: keras-prune strip)."
            )
        try:
            variables = prunable_weights(layer)
        except UnsupportedLayerError as error:
            raise UnsupportedLayerError(
                f"{error} To skip it, leave it out with the `layers` argument (CLI: --exclude)."
            ) from None
        selected.extend((path, variable) for variable in variables)
    if not selected:
        raise ValueError(_nothing_selected(model, layer_filter))
    return selected


def prunable_paths(model: keras.Model) -> list[str]:
    """Paths of the layers of ``model`` that a selection can pick for pruning.

    These are the layers holding prunable weights (or, unbuilt, of a type that has them),
    and custom layers holding weights they do not declare (which a selection must leave
    out, see :class:`keras_prune.PrunableLayer`).

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(),
        ...                           keras.layers.Dense(2, name="out")])
        >>> prunable_paths(model)
        ['out']
    """
    paths = []
    for path, layer in iter_layers(model):
        if isinstance(layer, PruneLowMagnitude):
            layer = layer.layer
        try:
            prunable = prunable_weights(layer) if layer.built else has_rule(layer)
        except UnsupportedLayerError:
            prunable = True
        if prunable:
            paths.append(path)
    return paths


def ensure_prunable(model: keras.Model) -> list[str]:
    """:func:`prunable_paths` of ``model``; raises if there are none.

    Raises:
        ValueError: no layer of ``model`` holds prunable weights.
    """
    paths = prunable_paths(model)
    if not paths:
        kinds = sorted({type(layer).__name__ for _, layer in iter_layers(model)})
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
        "found in these paths, a callable returning True for the layers to prune, or None for all "
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
) -> list[LayerWarning]:
    """One warning per selected weight the pattern does not fit; raises if it fits none.

    Args:
        selected: ``(layer path, variable)`` pairs, as :func:`select_weights` returns.
        block_size: a validated block size (see :func:`keras_prune.masks.check_pattern`).
        sparsity_m_by_n: a validated ``(m, n)``, or ``None``.
        require_fit: raise when the pattern fits none of ``selected``; ``False`` when more
            weights, not known yet, will be pruned too.

    Raises:
        ValueError: the pattern fits none of the selected weights, so it would not prune
            any of them as asked.
    """
    misfits = []
    for path, variable in selected:
        reason = pattern_misfit(tuple(variable.shape), block_size, sparsity_m_by_n)
        if reason is not None:
            misfits.append((path, variable, reason))
    if require_fit and misfits and len(misfits) == len(selected):
        raise ValueError(_no_fit_message(misfits, selected, block_size, sparsity_m_by_n))
    label = _pattern_label(block_size, sparsity_m_by_n)
    return [
        LayerWarning(path, f"{label} does not fit its {_weight_name(variable)}: {reason}")
        for path, variable, reason in misfits
    ]


def _pattern_label(block_size, sparsity_m_by_n) -> str:
    if sparsity_m_by_n is not None:
        return f"the {sparsity_m_by_n[0]}:{sparsity_m_by_n[1]} pattern"
    return f"the {block_size[0]}x{block_size[1]} block pattern"


def _weight_name(variable) -> str:
    return f"{variable.name} {tuple(variable.shape)}"


def _no_fit_message(misfits, selected, block_size, sparsity_m_by_n) -> str:
    path, variable, reason = misfits[0]
    others = f" (and {len(misfits) - 1} more)" if len(misfits) > 1 else ""
    found = f"layer '{path}' {_weight_name(variable)}: {reason}{others}"
    if sparsity_m_by_n is not None:
        m, n = sparsity_m_by_n
        return (
            f"Argument `sparsity_m_by_n` fits none of the selected weights, so none would be "
            f"pruned {m}:{n}: {found}. Select layers with at least {n} weights along the input axis "
            f"(argument `layers`, CLI --include/--exclude), or prune unstructured. "
            f"Received: sparsity_m_by_n={tuple(sparsity_m_by_n)!r}"
        )
    views = [matrix_shape(v.shape) for _, v in selected]
    fitting = (min(block_size[0], min(r for r, _ in views)), min(block_size[1], min(c for _, c in views)))
    return (
        f"Argument `block_size` fits none of the selected weights: {found}. Use a block that fits "
        f"their 2-D views (leading axes folded into rows), such as block_size={fitting!r} "
        f"(CLI: --pattern block:{fitting[0]}x{fitting[1]}). Received: block_size={tuple(block_size)!r}"
    )


def _matches(layer_filter: LayerFilter, layer, path: str) -> bool:
    if layer_filter is None:
        return True
    if callable(layer_filter):
        return bool(layer_filter(layer))
    return re.search(layer_filter, path) is not None


def plan_masks(
    model: keras.Model,
    *,
    sparsity: float | None = None,
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
    selected = select_weights(model, layer_filter)
    pattern_warnings(selected, block_size, sparsity_m_by_n)  # raises if the pattern fits nothing
    values = []
    for path, variable in selected:
        array = np.asarray(keras.ops.convert_to_numpy(variable))
        if not np.all(np.isfinite(array)):
            raise ValueError(
                f"Weight '{variable.path}' of layer '{path}' contains NaN or infinite values; "
                "magnitude pruning cannot rank them. Fix or retrain the model first."
            )
        values.append(array)
    scores = [magnitude(v) for v in values]
    if threshold is not None:
        masks = [threshold_mask(v, threshold) for v in values]
    elif scope == "global" and sparsity_m_by_n is None:
        masks = global_sparsity_masks(scores, sparsity)
    else:
        masks = [
            pattern_mask(s, sparsity or 0.0, block_size, "AVG", sparsity_m_by_n) for s in scores
        ]
    return {
        (path, variable.path): (variable, keep)
        for (path, variable), keep in zip(selected, masks)
    }


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
