"""One metric of a model on a fixed, bounded sample of labelled data, measured again and again.

An :class:`Evaluator` takes the evaluation data once (the first ``samples`` examples, as NumPy
batches), checks on its first batch that the model accepts it and that the metric can be
computed, then measures the model on that same sample each time it is called. Predictions go
through the model's compiled predict function, built once and reused, so measuring a model
whose weights changed compiles nothing new.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable

import keras
import numpy as np

from keras_prune._validation import check_int
from keras_prune.calibration import batch_length

# Metric names for which a smaller value is better.
LOWER_IS_BETTER = re.compile(
    r"loss|error|perplexity|crossentropy|divergence|hinge|logcosh|huber|^(mse|mae|mape|msle|rmse)$"
)
# Predictions are grouped into chunks of at most this many bytes before the metric sees them.
CHUNK_BYTES = 64 * 2**20

MetricSpec = str | Callable | None


class Evaluator:
    """Measures one metric of a model on a fixed sample of labelled data.

    Args:
        model: a built Keras model.
        data: labelled examples: an ``(x, y)`` or ``(x, y, sample_weight)`` tuple of arrays
            (``x`` may be a dict or list of arrays for several inputs), or a
            ``tf.data.Dataset`` or other iterable of such batches.
        metric: ``None`` for the model's first compiled metric; the name of one of its
            compiled metrics, or ``"loss"`` (its compiled loss); a ``keras.metrics.Metric``;
            or a callable ``(y_true, y_pred) -> float``, called once on the whole sample.
        samples: how many examples to keep (``None``: all of ``data``, which must then end).
        batch_size: how many examples to predict at a time.
        higher_is_better: whether a larger metric is better; by default ``False`` for
            loss, error and perplexity-like names, ``True`` otherwise and for callables.

    Attributes:
        name: the metric's name.
        higher_is_better: whether a larger value is better.
        samples: how many examples the sample holds.

    Raises:
        ValueError, TypeError: bad arguments, data without labels, a model without the
            metric asked for (or, for ``metric=None``, without compiled metrics), or data
            that the model or the metric does not accept (checked on its first batch).

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        >>> x, y = np.eye(3, dtype="float32"), np.array([0, 1, 1])
        >>> evaluator = Evaluator(model, (x, y))
        >>> evaluator.name, evaluator.higher_is_better, 0.0 <= evaluator() <= 1.0
        ('accuracy', True, True)
        >>> round(evaluator.drop(0.9, 0.6), 2)  # 0.3 less accuracy: positive means worse
        0.3
    """

    def __init__(self, model: keras.Model, data: object, *, metric: MetricSpec = None,
                 samples: int | None = None, batch_size: int = 64, higher_is_better: bool | None = None):
        if samples is not None:
            check_int("samples", samples, 1)
        check_int("batch_size", batch_size, 1)
        _check_metric_argument(model, metric)
        if higher_is_better is not None and not isinstance(higher_is_better, bool):
            raise TypeError(f"Argument `higher_is_better` must be True, False or None. "
                            f"Received: higher_is_better={higher_is_better!r}")
        self.model = model
        self.batches = labelled_batches(data, samples, batch_size)
        self.samples = sum(batch_length(x) for x, _, _ in self.batches)
        self._metric, self._kind = metric, _kind(metric)
        self._check_first_batch()  # sets `name`
        if higher_is_better is None:
            higher_is_better = self._kind == "callable" or LOWER_IS_BETTER.search(self.name.lower()) is None
        self.higher_is_better = higher_is_better

    @property
    def inputs(self) -> list:
        """The ``x`` of each batch of the sample (calibration data the model accepts)."""
        return [x for x, _, _ in self.batches]

    def __call__(self, model: keras.Model | None = None) -> float:
        """The metric of ``model`` (by default the evaluator's) on the sample.

        The metric is always the evaluator's: ``model`` only makes the predictions.
        """
        return self._measure(self.model if model is None else model, self.batches)

    def drop(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline``, in the metric's units (negative: better)."""
        return float(baseline) - float(value) if self.higher_is_better else float(value) - float(baseline)

    def __repr__(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return f"Evaluator(metric={self.name!r} ({better} is better), samples={self.samples})"

    # -- measuring --------------------------------------------------------------------------

    def _measure(self, model: keras.Model, batches: list) -> float:
        if self._kind == "callable":
            _, y, y_pred, _ = _concatenate([(*batch, model.predict_on_batch(batch[0])) for batch in batches])
            return float(keras.ops.convert_to_numpy(self._metric(y, y_pred)))
        chunks = _predicted_chunks(model, batches)
        if self._kind == "loss":
            return self._mean_loss(chunks)
        return self._accumulated(chunks)

    def _mean_loss(self, chunks: Iterable[tuple]) -> float:
        """The compiled loss over the chunks, weighted by their sizes (as ``evaluate`` reports it)."""
        total, count = 0.0, 0
        for x, y, y_pred, weights in chunks:
            extra = {"training": False} if "training" in inspect.signature(self.model.compute_loss).parameters else {}
            loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=weights, **extra)
            total += float(keras.ops.convert_to_numpy(loss)) * batch_length(x)
            count += batch_length(x)
        return total / count

    def _accumulated(self, chunks: Iterable[tuple]) -> float:
        """A metric object's or a compiled metric's result, its state reset then updated by every chunk."""
        metric = self._metric if self._kind == "object" else None
        if metric is not None:
            metric.reset_state()
        else:
            self.model.reset_metrics()
        for x, y, y_pred, weights in chunks:
            if metric is not None:
                metric.update_state(y, y_pred, sample_weight=weights)
            else:
                results = self.model.compute_metrics(x, y, y_pred, sample_weight=weights)
        value = metric.result() if metric is not None else results[self.name]
        return float(keras.ops.convert_to_numpy(value))

    # -- checks -----------------------------------------------------------------------------

    def _check_first_batch(self) -> None:
        """Predicts and measures the first batch; finds the metric's name on the way."""
        first = self.batches[:1]
        try:
            self.model.predict_on_batch(first[0][0])
        except Exception as error:
            raise ValueError(
                f"Argument `data` does not fit model '{self.model.name}': predicting its first batch "
                f"raised {type(error).__name__}: {_first_line(error)}. Received: data with x={_shapes(first[0][0])}"
            ) from error
        self.name = self._metric_name(first)
        try:
            self._measure(self.model, first)
        except Exception as error:
            raise ValueError(
                f"The labels of argument `data` do not fit metric '{self.name}' of model '{self.model.name}': "
                f"it raised {type(error).__name__}: {_first_line(error)}. "
                f"Received: data with y={_shapes(first[0][1])}"
            ) from error

    def _metric_name(self, first: list) -> str:
        metric = self._metric
        if self._kind == "object":
            return metric.name
        if self._kind == "callable":
            return getattr(metric, "__name__", type(metric).__name__)
        if self._kind == "loss":
            return "loss"
        names = self._compiled_names(first)
        if metric is None and names:
            return names[0]
        if metric in names:
            return metric
        listed = f"its compiled metrics {names} or 'loss'" if names else "'loss' (it has no compiled metrics)"
        raise ValueError(
            f"Argument `metric` must name a metric model '{self.model.name}' computes: {listed}; "
            "or pass a keras.metrics.Metric or a callable (y_true, y_pred) -> float. "
            f"Received: metric={metric!r}"
        )

    def _compiled_names(self, first: list) -> list[str]:
        """The names of the model's compiled metrics (not its losses), from the first batch."""
        if not self.model.compiled:
            return []
        x, y, weights = first[0]
        try:
            self.model.reset_metrics()
            results = self.model.compute_metrics(x, y, self.model.predict_on_batch(x), sample_weight=weights)
        except Exception as error:
            raise ValueError(
                f"The labels of argument `data` do not fit the compiled metrics of model '{self.model.name}': "
                f"they raised {type(error).__name__}: {_first_line(error)}. Received: data with y={_shapes(y)}"
            ) from error
        return [name for name in results if name != "loss" and not name.endswith("_loss")]


def _kind(metric: MetricSpec) -> str:
    """How a metric is computed: ``"object"`` (a ``keras.metrics.Metric``), ``"callable"``,
    ``"loss"`` (the compiled loss) or ``"compiled"`` (a compiled metric)."""
    if isinstance(metric, keras.metrics.Metric):
        return "object"
    if callable(metric):
        return "callable"
    return "loss" if metric == "loss" else "compiled"


def _check_metric_argument(model: keras.Model, metric: object) -> None:
    if metric is not None and not isinstance(metric, str) and not callable(metric):
        raise TypeError(
            "Argument `metric` must be None, the name of a compiled metric or 'loss', a keras.metrics.Metric, "
            f"or a callable (y_true, y_pred) -> float. Received: metric={metric!r}"
        )
    if isinstance(metric, str) and not model.compiled:
        raise ValueError(
            f"Argument `metric` names a compiled metric, but model '{model.name}' is not compiled; compile it "
            f"with that metric, or pass a callable (y_true, y_pred) -> float. Received: metric={metric!r}"
        )
    if metric == "loss" and getattr(model, "loss", None) is None:
        raise ValueError(
            f"Argument `metric` is 'loss', but model '{model.name}' was compiled without a loss. "
            f"Received: metric={metric!r}"
        )
    if metric is None and not model.compiled:
        raise ValueError(
            f"Model '{model.name}' is not compiled, so it has no metric to measure; compile it with "
            "metrics=[...], or pass `metric` (a keras.metrics.Metric or a callable (y_true, y_pred) -> float)."
        )


def _predicted_chunks(model: keras.Model, batches: list) -> Iterable[tuple]:
    """``(x, y, y_pred, sample_weight)`` over ``batches``, consecutive batches joined up to
    :data:`CHUNK_BYTES` of predictions (fewer, larger metric updates)."""
    pending, size = [], 0
    for batch in batches:
        y_pred = model.predict_on_batch(batch[0])
        pending.append((*batch, y_pred))
        size += sum(np.asarray(a).nbytes for a in keras.tree.flatten(y_pred))
        if size >= CHUNK_BYTES:
            yield _concatenate(pending)
            pending, size = [], 0
    if pending:
        yield _concatenate(pending)


def _concatenate(parts: list[tuple]) -> tuple:
    """``(x, y, y_pred, sample_weight)`` of several batches joined along the batch axis."""
    if len(parts) == 1:
        x, y, weights, y_pred = parts[0]
        return x, y, y_pred, weights
    columns = list(zip(*parts))
    x, y, weights, y_pred = (None if column[0] is None else _join(column) for column in columns)
    return x, y, y_pred, weights


def _join(structures) -> object:
    return keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *structures)


def labelled_batches(data: object, samples: int | None, batch_size: int) -> list[tuple]:
    """The first ``samples`` examples of labelled ``data`` as ``(x, y, sample_weight)`` NumPy
    batches of ``batch_size`` (``sample_weight`` is ``None`` when not given).

    Raises:
        ValueError, TypeError: ``data`` is not labelled arrays or batches, or holds no examples.

    Example:
        >>> batches = labelled_batches((np.zeros((5, 2)), np.arange(5)), samples=4, batch_size=3)
        >>> [(x.shape, y.tolist(), w) for x, y, w in batches]
        [((3, 2), [0, 1, 2], None), ((1, 2), [3], None)]
    """
    if isinstance(data, tuple):
        parts = [_labelled(data)]
    elif isinstance(data, (np.ndarray, dict, list)) or keras.ops.is_tensor(data):
        if isinstance(data, list) and data and all(isinstance(batch, tuple) for batch in data):
            parts = _take(data, samples)
        else:
            raise ValueError(_unlabelled(data))
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        parts = _take(data, samples)
    else:
        raise TypeError(
            "Argument `data` must be labelled examples: an (x, y) tuple of arrays, or a tf.data.Dataset "
            f"or iterable of (x, y) batches. Received: data={_shapes(data)}"
        )
    if not parts:
        raise ValueError(f"Argument `data` holds no examples. Received: data={_shapes(data)}")
    x, y, weights = (None if column[0] is None else _join(column) for column in zip(*parts))
    total = min(batch_length(x), samples or batch_length(x))
    return [
        tuple(None if part is None else _slice(part, start, min(start + batch_size, total)) for part in (x, y, weights))
        for start in range(0, total, batch_size)
    ]


def _take(batches: Iterable, samples: int | None) -> list[tuple]:
    parts, taken = [], 0
    for batch in batches:
        if samples is not None and taken >= samples:
            break
        part = _labelled(batch)
        parts.append(part)
        taken += batch_length(part[0])
    return parts


def _labelled(batch: object) -> tuple:
    """``(x, y, sample_weight)`` of one batch as NumPy, checked to agree on the number of examples."""
    if not isinstance(batch, tuple) or len(batch) not in (2, 3):
        raise ValueError(_unlabelled(batch))
    x, y, weights = (*batch, None)[:3]
    if y is None:
        raise ValueError(_unlabelled(batch))
    x, y = keras.tree.map_structure(np.asarray, x), keras.tree.map_structure(np.asarray, y)
    weights = None if weights is None else np.asarray(weights)
    lengths = {batch_length(part) for part in (x, y, weights) if part is not None}
    if len(lengths) != 1:
        raise ValueError(
            f"Argument `data` must hold as many labels (and sample weights) as examples. "
            f"Received: data with x={_shapes(x)}, y={_shapes(y)}"
            + ("" if weights is None else f", sample_weight={_shapes(weights)}")
        )
    return x, y, weights


def _slice(structure: object, start: int, end: int) -> object:
    return keras.tree.map_structure(lambda array: array[start:end], structure)


def _unlabelled(data: object) -> str:
    return (
        "Argument `data` must be labelled: an (x, y) or (x, y, sample_weight) tuple, or batches of them; "
        f"the metric compares predictions with y. Received: data={_shapes(data)}"
    )


def _shapes(data: object) -> object:
    """``data`` described by the shapes of its arrays, for messages."""
    if isinstance(data, (np.ndarray, dict, tuple, list)) or keras.ops.is_tensor(data):
        try:
            return keras.tree.map_structure(lambda a: tuple(np.shape(a)) if hasattr(a, "shape") else a, data)
        except (TypeError, ValueError):
            pass
    return type(data).__name__


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"
