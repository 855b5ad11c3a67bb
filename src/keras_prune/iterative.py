"""Iterative pruning: prune by magnitude, fine-tune with the masks held, repeat.

Each round prunes the model a step further with :func:`magnitude_prune`, holds the zeros of
the pruned layers (at any depth, see :class:`keras_prune.PrunedModel`) while ``fit``
fine-tunes the survivors, strips the pruning state and evaluates. The sparsity at the end is
the sparsity asked for, not less.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from keras_prune._validation import check_int, check_sparsity
from keras_prune.analysis.report import PruningReport, summarize
from keras_prune.callbacks import UpdatePruningStep
from keras_prune.oneshot import (
    LayerFilter,
    Sparsity,
    _matches,
    check_arguments,
    copy_model,
    magnitude_prune,
    pattern_warnings,
    select_weights,
    weight_key,
)
from keras_prune.prune import strip_pruning
from keras_prune.pruned_model import PrunedModel
from keras_prune.schedules import ConstantSparsity
from keras_prune.traversal import weight_sites

# The pruned model only holds the masks this module assigns; its own schedule never fires.
_NEVER = 2**62


def round_sparsities(target_sparsity: float, steps: int) -> list[float]:
    """Per-round sparsities that prune the same fraction of the surviving weights each round.

    Example:
        >>> [round(s, 3) for s in round_sparsities(0.875, 3)]
        [0.5, 0.75, 0.875]
    """
    return [1.0 - (1.0 - target_sparsity) ** (k / steps) for k in range(1, steps + 1)]


def iterative_prune(
    model: keras.Model,
    train_data,
    *,
    validation_data,
    sparsity: Sparsity = None,
    steps: int,
    epochs_per_step: int = 1,
    scope: str = "layer",
    layers: LayerFilter = None,
    block_size: tuple[int, int] = (1, 1),
    metric: str = "accuracy",
    max_drop: float | None = None,
    batch_size: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    target_sparsity: float | None = None,
) -> PruningReport:
    """Prunes ``model`` to ``sparsity`` in ``steps`` rounds of prune + fine-tune.

    Round ``k`` prunes to ``1 - (1 - sparsity) ** (k / steps)``, so every round
    removes the same fraction of the weights that survived the last one, then fine-tunes for
    ``epochs_per_step`` epochs with the pruned weights held at exactly 0.

    Args:
        model: a built, compiled model (its loss, optimizer and metrics are reused). It is
            not modified.
        train_data: ``(x, y)`` arrays or a dataset ``fit`` accepts.
        validation_data: ``(x, y)`` arrays or a dataset, evaluated after every round.
        sparsity: the final sparsity, in [0, 1) (the name it has in :func:`magnitude_prune`
            and the CLI; ``target_sparsity`` is accepted too, as earlier versions named it);
            or per-weight final sparsities (a :func:`keras_prune.allocate` result), each
            weight reaching its own on the same geometric ramp.
        steps: number of prune + fine-tune rounds (>= 1).
        epochs_per_step: fine-tuning epochs per round (>= 0).
        scope: ``"layer"`` or ``"global"`` ranking, as in :func:`magnitude_prune`.
        layers: which layers to prune (regex on layer paths, or a callable), as in
            :func:`magnitude_prune`.
        block_size: prune whole blocks, as in :func:`magnitude_prune`.
        metric: the validation metric to track; must be one of the model's compiled metrics
            (or ``"loss"``). Metrics named ``*loss``/``*error`` count lower as better.
        max_drop: if given, stop when ``metric`` falls more than this below the dense
            model's, and return the last model that was within the budget.
        batch_size: ``fit``/``evaluate`` batch size for array data.
        callbacks: extra callbacks for each round's ``fit``.
        verbose: ``fit``/``evaluate`` verbosity.

    Returns:
        A :class:`PruningReport` of the final model (``report.model``), with one
        ``report.history`` entry per round: target and measured sparsity, and the
        validation metrics; ``report.settings`` records the dense model's metrics and
        whether the budget stopped the run; ``report.warnings`` names the selected weights
        ``block_size`` does not fit.

    Raises:
        ValueError: bad arguments, an uncompiled model, a model with nothing to prune, a
            ``layers`` selection with no prunable layer, or a ``block_size`` that fits none of
            the selected weights; raised before any training.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
        >>> y = (x[:, 0] > 0).astype("int64")
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
        ...                           keras.layers.Dense(2)])
        >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...               metrics=["accuracy"])
        >>> report = iterative_prune(model, (x, y), validation_data=(x, y), verbose=0,
        ...                          sparsity=0.9, steps=3, epochs_per_step=1)
        >>> [round(entry["sparsity"], 2) for entry in report.history]
        [0.54, 0.78, 0.9]
    """
    target_sparsity = _final_sparsity(sparsity, target_sparsity)
    settings = check_arguments(target_sparsity, None, scope, layers, block_size, None)
    check_int("steps", steps, minimum=1)
    check_int("epochs_per_step", epochs_per_step, minimum=0)
    if max_drop is not None and not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and max_drop >= 0):
        raise ValueError(f"Argument `max_drop` must be a number >= 0 or None. Received: max_drop={max_drop!r}")
    compile_config = _compile_config(model)
    # Raises now for bad selections and blocks that fit nothing, before any training.
    notes = pattern_warnings(select_weights(model, layers, settings["sparsity"]), settings["block_size"])

    dense = _evaluate(model, validation_data, batch_size, verbose)
    _check_metric(metric, dense)
    lower_is_better = metric.endswith(("loss", "error"))
    current, best, history, stopped = model, model, [], False
    for k, sparsity in enumerate(_rounds(settings["sparsity"], steps), start=1):
        pruned = magnitude_prune(current, inplace=False, **_prune_args(settings, sparsity))  # keep `best`
        selected = _selected_layers(pruned.model, layers)
        current = _fine_tune(
            pruned.model, selected, compile_config, train_data, epochs_per_step, batch_size, callbacks, verbose
        )
        scores = _evaluate(current, validation_data, batch_size, verbose)
        drop = (scores[metric] - dense[metric]) if lower_is_better else (dense[metric] - scores[metric])
        history.append(
            {"round": k, "target_sparsity": _overall(current, layers, sparsity),
             "sparsity": summarize(current).totals["sparsity"], **scores}
        )
        if max_drop is not None and drop > max_drop:
            stopped = True
            break
        best = current
    if best is model:  # even the first round broke the budget: hand back an untouched copy
        best = copy_model(model)
    report = summarize(best, settings={})
    report.settings = {
        "method": "iterative",
        "target_sparsity": _overall(model, layers, settings["sparsity"]),
        "steps": steps,
        "epochs_per_step": epochs_per_step,
        "scope": scope,
        "block_size": settings["block_size"],
        "metric": metric,
        "max_drop": max_drop,
        "stopped_by_budget": stopped,
        **{f"dense_{name}": value for name, value in dense.items()},
    }
    report.history = history
    report.warnings = notes
    return report


def _rounds(sparsity: float | dict[str, float], steps: int) -> list:
    """Each round's sparsity, or each round's per-weight sparsities."""
    if not isinstance(sparsity, dict):
        return round_sparsities(sparsity, steps)
    ramps = {key: round_sparsities(value, steps) for key, value in sparsity.items()}
    return [{key: ramp[k] for key, ramp in ramps.items()} for k in range(steps)]


def _overall(model: keras.Model, layers: LayerFilter, sparsity: float | dict[str, float]) -> float:
    """The overall target: ``sparsity`` itself, or the per-weight targets weighted by size."""
    if not isinstance(sparsity, dict):
        return float(sparsity)
    sizes = {weight_key(path, v): int(np.prod(v.shape)) for path, v in select_weights(model, layers, sparsity)}
    return sum(sparsity[key] * size for key, size in sizes.items()) / sum(sizes.values())


def _final_sparsity(sparsity, target_sparsity):
    if sparsity is not None and target_sparsity is not None:
        raise TypeError(
            "Pass the final sparsity once, as `sparsity`. "
            f"Received: sparsity={sparsity!r}, target_sparsity={target_sparsity!r}"
        )
    if sparsity is None and target_sparsity is None:
        raise TypeError("iterative_prune() needs the final sparsity, e.g. sparsity=0.9.")
    final = target_sparsity if sparsity is None else sparsity
    return final if isinstance(final, Mapping) else check_sparsity("sparsity", final)


def _prune_args(settings: dict, sparsity: float) -> dict:
    return {
        "sparsity": sparsity,
        "scope": settings["scope"],
        "layers": settings["layer_filter"],
        "block_size": settings["block_size"],
    }


def _compile_config(model: keras.Model) -> dict:
    config = model.get_compile_config() if model.compiled else None
    if not config or config.get("loss") is None:
        raise ValueError(
            f"Model '{model.name}' must be compiled with a loss (and the metric to track) "
            "before iterative pruning, e.g. model.compile('adam', "
            "'sparse_categorical_crossentropy', metrics=['accuracy'])."
        )
    return config


def _check_metric(metric: str, scores: dict) -> None:
    if metric not in scores:
        raise ValueError(
            f"Argument `metric` must be one of the model's evaluated metrics {sorted(scores)}. "
            f"Received: metric={metric!r}; compile the model with it or choose another."
        )


def _evaluate(model: keras.Model, data, batch_size, verbose) -> dict:
    if isinstance(data, (tuple, list)):
        scores = model.evaluate(*data, batch_size=batch_size, verbose=verbose, return_dict=True)
    else:
        scores = model.evaluate(data, verbose=verbose, return_dict=True)
    return {name: float(value) for name, value in scores.items()}


def _selected_layers(model: keras.Model, layer_filter: LayerFilter):
    """A ``layer -> bool`` filter picking exactly the layers ``layer_filter`` picks in ``model``."""
    chosen = {id(site.layer) for site in weight_sites(model) if site.prunable and _matches(layer_filter, site)}
    return lambda layer: id(layer) in chosen


def _fine_tune(model, layers, compile_config, data, epochs, batch_size, callbacks, verbose) -> keras.Model:
    """Fine-tunes ``model`` with the zeros of the ``layers`` it picks held; returns it compiled."""
    wrapped = PrunedModel(model, ConstantSparsity(0.0, begin_step=_NEVER), layers=layers)
    wrapped.assign_masks([keras.ops.convert_to_numpy(w) != 0 for w in wrapped.prunable_weights()])
    wrapped.compile_from_config(compile_config)
    if epochs:
        fit_args = {"epochs": epochs, "verbose": verbose, "callbacks": [UpdatePruningStep(), *callbacks]}
        if isinstance(data, (tuple, list)):
            wrapped.fit(*data, batch_size=batch_size, **fit_args)
        else:
            wrapped.fit(data, **fit_args)
    stripped = strip_pruning(wrapped)
    stripped.compile_from_config(compile_config)
    return stripped
