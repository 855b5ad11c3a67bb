"""Importance of each removable unit (channel or head), summed over its coupled group.

A unit's score gathers every weight slice that disappears with it: the producer's output
column, the consumers' input rows, BatchNorm scales, biases. Higher means kept longer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras
import numpy as np
from keras import layers

from keras_prune import _backend
from keras_prune.structured.graph import ChannelGraph

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "wanda")
PER_WEIGHT = ("taylor", "l2", "wanda")  # scored weight by weight (from data, or squared)


def unit_scores(
    graph: ChannelGraph,
    importance: str = "l1",
    calibration_data=None,
    *,
    weight_fn: Callable[[keras.Variable], np.ndarray] | None = None,
) -> np.ndarray:
    """Scores every unit of ``graph``.

    Args:
        graph: the model's channel graph.
        importance: ``"l1"`` (sum of ``|w|``), ``"l2"`` (the L2 norm of all the unit's
            weights), ``"bn_scale"`` (``|gamma|`` of the group's BatchNormalization layers;
            groups without one score 0 everywhere and fall back to L1, see
            :func:`bn_scale_groups`), or ``"taylor"`` (first-order Taylor: ``|w * dL/dw|``
            summed over the unit, gradients from ``calibration_data`` and the model's
            compiled loss), or ``"wanda"`` (``|w|`` times the L2 norm of the input feature it
            multiplies, :class:`keras_prune.criteria.Wanda`, summed over the unit; weights
            that are not linear kernels count ``|w|``).
        calibration_data: for ``"taylor"``: a tuple ``(x, y)`` of arrays, or an iterable of
            ``(x, y)`` batches; for ``"wanda"`` the inputs are enough.
        weight_fn: the result of :func:`weight_importance` for the same arguments, when the
            caller has it already (the Taylor gradients are then not computed again).

    Returns:
        A float64 array with one score per unit.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
        ...                           keras.layers.Dense(1)])
        >>> unit_scores(ChannelGraph(model), "l1").shape  # 2 hidden units + 1 output unit
        (3,)
    """
    if importance in PER_WEIGHT:
        per_weight = weight_fn or weight_importance(graph.model, importance, calibration_data)
        scores = _accumulate(graph, lambda layer, var: per_weight(var))
        return np.sqrt(scores) if importance == "l2" else scores
    if importance == "bn_scale":
        bn = _accumulate(graph, _bn_gamma)
        l1 = _accumulate(graph, lambda layer, var: np.abs(_numpy(var)))
        for group in graph.groups:
            units = list(group.units)
            if not bn[units].any():
                bn[units] = l1[units]
        return bn
    return _accumulate(graph, lambda layer, var: np.abs(_numpy(var)))


def weight_importance(
    model: keras.Model,
    importance: str = "l1",
    calibration_data=None,
) -> Callable[[keras.Variable], np.ndarray]:
    """A function from a variable of ``model`` to the importance of each of its entries.

    ``"l1"`` and ``"bn_scale"`` give ``|w|``, ``"l2"`` gives ``w**2`` (sum, then take the
    square root), ``"taylor"`` gives ``|w * dL/dw|`` with the gradients of the compiled loss
    over ``calibration_data`` (computed once, here), ``"wanda"`` gives ``|w| * ||x||`` with
    the input norms over ``calibration_data`` (collected once, here).

    Example:
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> weight_importance(model, "l1")(model.layers[0].kernel).shape
        (2, 1)
    """
    if importance == "taylor":
        grads = _gradients(model, calibration_data)

        def taylor(variable) -> np.ndarray:
            grad = grads.get(id(variable))
            value = _numpy(variable)
            return np.abs(value if grad is None else value * grad)

        return taylor
    if importance == "wanda":
        return _wanda(model, calibration_data)
    if importance == "l2":
        return lambda variable: np.square(_numpy(variable))
    return lambda variable: np.abs(_numpy(variable))


def _wanda(model: keras.Model, calibration_data) -> Callable[[keras.Variable], np.ndarray]:
    # Imported here: the calibrated one-shot modules import the structured package.
    from keras_prune.calibrated import statistics_by_weight
    from keras_prune.criteria import Wanda

    if calibration_data is None:
        raise ValueError("Argument `calibration_data` is required for importance='wanda': a few hundred "
                         "inputs the model accepts (arrays, (x, y), a tf.data.Dataset or batches).")
    statistics = statistics_by_weight(model, calibration_data, samples=512)

    def wanda(variable) -> np.ndarray:
        value = _numpy(variable)
        if id(variable) not in statistics:
            return np.abs(value)
        _, view, stats = statistics[id(variable)]
        return view.from_matrix(Wanda().scores(view.to_matrix(value), stats))

    return wanda


def bn_scale_groups(graph: ChannelGraph) -> list[int]:
    """Indices of the groups that hold a BatchNormalization layer (``"bn_scale"`` applies)."""
    return [
        g.index for g in graph.groups
        if any(isinstance(graph.model.get_layer(n), layers.BatchNormalization) for n in g.layers)
    ]


def _accumulate(graph: ChannelGraph, per_weight) -> np.ndarray:
    """Sums ``per_weight(layer, variable)`` over every axis position that a unit owns."""
    scores = np.zeros(graph.num_units)
    for name, specs in graph.weight_slots.items():
        layer = graph.model.get_layer(name)
        for spec in specs:
            variable = layer.weights[spec.index]
            if not variable.trainable:
                continue
            values = per_weight(layer, variable)
            if values is None:
                continue
            for axis, slot in enumerate(spec.axes):
                if slot is None:
                    continue
                units = graph.unit_ids(name, slot)
                other = tuple(a for a in range(values.ndim) if a != axis)
                per_position = values.sum(axis=other)
                mask = units >= 0
                np.add.at(scores, units[mask], per_position[mask])
    return scores


def _bn_gamma(layer, variable) -> np.ndarray | None:
    is_scale = isinstance(layer, layers.BatchNormalization) and variable is layer.gamma
    return np.abs(_numpy(variable)) if is_scale else None


def _numpy(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def _batches(calibration_data) -> Iterable:
    if calibration_data is None:
        raise ValueError(
            "Argument `calibration_data` is required for importance='taylor'. Pass a tuple "
            "(x, y) of a few batches of training data."
        )
    if isinstance(calibration_data, tuple) and len(calibration_data) == 2:
        x, y = calibration_data
        n = len(x)
        return [(x[i : i + 64], y[i : i + 64]) for i in range(0, n, 64)]
    return calibration_data


def _gradients(model: keras.Model, calibration_data) -> dict[int, np.ndarray]:
    """Gradients of the compiled loss, summed over the calibration batches, by variable id."""
    if getattr(model, "loss", None) is None or isinstance(model.loss, (dict, list)):
        raise ValueError(
            "importance='taylor' needs a model compiled with a single loss. Call "
            "model.compile(loss=...) first, or use importance='l1'."
        )
    loss_fn = keras.losses.get(model.loss)
    variables = model.trainable_variables
    total = [np.zeros(v.shape) for v in variables]
    loss_gradients = getattr(_backend.current(), "loss_gradients", None)
    if loss_gradients is None:
        raise ValueError(
            f"importance='taylor' supports the tensorflow, jax and torch backends. Received: "
            f"backend={keras.backend.backend()!r}. Use importance='l1' on this backend."
        )
    for x, y in _batches(calibration_data):
        grads = loss_gradients(model, loss_fn, x, y)
        for acc, g in zip(total, grads):
            acc += np.asarray(g, dtype=np.float64)
    return {id(v): g for v, g in zip(variables, total)}

