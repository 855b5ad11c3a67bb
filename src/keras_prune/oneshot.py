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
from keras_prune.analysis.report import PruningReport, iter_layers, summarize
from keras_prune.criteria import magnitude
from keras_prune.masks import check_pattern, global_sparsity_masks, pattern_mask, threshold_mask
from keras_prune.registry import UnsupportedLayerError, prunable_weights
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

    Raises:
        ValueError: bad arguments, no prunable layer selected, non-finite weights, or a
            custom layer that declares no prunable weights.

    Example:
        >>> model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10),
        ...                           keras.layers.Dense(5)])
        >>> report = magnitude_prune(model, sparsity=0.8, scope="global")
        >>> round(report.totals["sparsity"], 2)
        0.8
    """
    settings = _check_arguments(sparsity, threshold, scope, layers, block_size, sparsity_m_by_n)
    if not inplace:
        model = copy_model(model)
    plan = plan_masks(model, **settings)
    for variable, keep in plan.values():
        values = keras.ops.convert_to_numpy(variable)
        variable.assign(np.where(keep, values, np.zeros_like(values)))
    settings.update(method="magnitude", layers=sorted({path for path, _ in plan}))
    if callable(layers):
        settings["layer_filter"] = getattr(layers, "__name__", "callable")
    return summarize(model, settings=settings)


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
        ValueError: the model is not built, nothing is selected, or a selected custom layer
            declares no prunable weights.
    """
    if not model.built or not model.weights:
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
        raise ValueError(
            f"No prunable weights in the selected layers of model '{model.name}'. "
            f"Received: layers={layer_filter!r}; check the pattern against the layer paths "
            "(`keras-prune inspect MODEL` lists them)."
        )
    return selected


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
        ValueError: see :func:`select_weights`, or a selected weight is NaN or infinite.
    """
    selected = select_weights(model, layer_filter)
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
