"""Calibration: run a few batches through a model and collect what its linear layers see.

:func:`calibration_batches` turns arrays, a ``tf.data.Dataset`` or any iterable of batches
into a bounded list of NumPy batches. :func:`recording` hooks the ``call`` of chosen layers
(at any depth) so each forward pass adds its inputs to one :class:`InputStatistics` per
kernel: the sum of squares per input feature (Wanda) and, when asked, the Gram matrix
``X^T X`` (SparseGPT's Hessian, up to a factor of 2). Only the statistics are kept, never the
activations, so memory grows with the layers being calibrated, not with the data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import keras
import numpy as np

from keras_prune._validation import check_int
from keras_prune.linear_views import LinearView


class InputStatistics:
    """Running statistics of the feature rows one kernel multiplies.

    Attributes:
        rows: how many rows (tokens, pixels, examples) were added.
        squares: ``(K,)`` sum of each feature's squares.
        gram: ``(K, K)`` sum of ``x^T x`` over rows, or ``None`` when not collected.
        cross: ``(K, K)`` sum of ``x^T d`` over pairs of rows, ``x`` as the layer sees it and
            ``d`` as it would in the model before pruning; ``None`` until a pair is added.

    Example:
        >>> stats = InputStatistics(2, gram=True)
        >>> stats.add(np.array([[1.0, 2.0], [3.0, 0.0]]))
        >>> stats.rows, stats.squares.tolist(), stats.gram.tolist()
        (2, [10.0, 4.0], [[10.0, 2.0], [2.0, 4.0]])
    """

    def __init__(self, features: int, *, gram: bool = False):
        self.rows = 0
        self.squares = np.zeros(features)
        self.gram = np.zeros((features, features)) if gram else None
        self.cross = None

    def add(self, rows: np.ndarray) -> None:
        """Adds ``(n, K)`` rows; raises :class:`NonFiniteInputs` if any value is NaN or infinite."""
        rows = np.asarray(rows, dtype=np.float64)
        if not np.isfinite(rows).all():
            raise NonFiniteInputs("NaN or infinite values")
        self.rows += rows.shape[0]
        self.squares += np.einsum("ij,ij->j", rows, rows)
        if self.gram is not None:
            self.gram += rows.T @ rows

    def add_dense(self, rows: np.ndarray, dense_rows: np.ndarray) -> None:
        """Adds to ``cross`` the rows already added (``rows``) paired with the same rows as the
        unpruned model gives them (``dense_rows``)."""
        dense_rows = np.asarray(dense_rows, dtype=np.float64)
        if not np.isfinite(dense_rows).all():
            raise NonFiniteInputs("NaN or infinite values")
        if self.cross is None:
            self.cross = np.zeros((rows.shape[1], rows.shape[1]))
        self.cross += np.asarray(rows, dtype=np.float64).T @ dense_rows

    @property
    def norms(self) -> np.ndarray:
        """The L2 norm of each feature over all rows (Wanda's activation norm)."""
        return np.sqrt(self.squares)


class NonFiniteInputs(ValueError):
    """A calibrated layer received NaN or infinite inputs."""


class StopForward(Exception):
    """Raised by a hook to stop a forward pass once it has seen what it needs."""


def calibration_batches(data: object, samples: int, batch_size: int = 32) -> list:
    """The first ``samples`` examples of ``data`` as a list of NumPy batches.

    Args:
        data: a NumPy array or a dict of arrays (one per model input), optionally as an
            ``(x, y)`` or ``(x, y, sample_weight)`` tuple (``y`` is not used), split into
            batches of ``batch_size``; or a ``tf.data.Dataset`` or any other iterable of
            batches in those forms (a list is a sequence of batches).
        samples: how many examples to take (fewer if ``data`` holds fewer).
        batch_size: the batch size for arrays.

    Raises:
        ValueError: ``data`` is empty or a batch has no leading batch axis.

    Example:
        >>> batches = calibration_batches((np.zeros((10, 3)), np.zeros(10)), samples=7, batch_size=4)
        >>> [b.shape for b in batches]
        [(4, 3), (3, 3)]
    """
    check_int("samples", samples, 1)
    check_int("batch_size", batch_size, 1)
    if data is None:
        raise ValueError("Argument `calibration_data` is required for calibrated pruning; pass a few "
                         "hundred examples the model accepts (arrays, a tf.data.Dataset or batches).")
    batches, taken = [], 0
    for batch in _raw_batches(data, batch_size):
        batch = keras.tree.map_structure(np.asarray, _inputs_only(batch))
        size = batch_length(batch)
        if taken + size > samples:
            size = samples - taken
            batch = keras.tree.map_structure(lambda a, size=size: a[:size], batch)
        batches.append(batch)
        taken += size
        if taken >= samples:
            break
    if not taken:
        raise ValueError(f"Argument `calibration_data` holds no examples. Received: {_describe(data)}")
    return batches


def _raw_batches(data: object, batch_size: int) -> Iterator:
    arrays = _inputs_only(data) if isinstance(data, tuple) else data
    if isinstance(arrays, (np.ndarray, dict)) or keras.ops.is_tensor(arrays):
        length = batch_length(arrays)
        for start in range(0, length, batch_size):
            yield keras.tree.map_structure(lambda a, s=start: a[s: s + batch_size], arrays)
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            "Argument `calibration_data` must be arrays the model accepts (a NumPy array, a dict of "
            "arrays, or an (x, y) tuple of them), a tf.data.Dataset, or an iterable of such batches. "
            f"Received: {_describe(data)}"
        )
    yield from data


def _inputs_only(batch):
    """``x`` of an ``(x, y)`` or ``(x, y, sample_weight)`` tuple, Keras' convention."""
    if isinstance(batch, tuple) and len(batch) in (1, 2, 3):
        return batch[0]
    return batch


def batch_length(batch) -> int:
    """The leading (batch) size of a batch: the first axis of its first array."""
    leaves = keras.tree.flatten(batch)
    if not leaves or np.ndim(leaves[0]) == 0:
        raise ValueError(f"A calibration batch must hold arrays with a batch axis. Received: {_describe(batch)}")
    return int(np.shape(leaves[0])[0])


def _describe(data: object) -> str:
    shapes = keras.tree.map_structure(lambda a: getattr(a, "shape", type(a).__name__), data) \
        if isinstance(data, (np.ndarray, dict, tuple)) else type(data).__name__
    return f"calibration_data={shapes}"


class Recorder:
    """What the hooks of :func:`recording` share: the calls counted in this pass, whether the
    pass runs the unpruned weights (``dense``), and the rows waiting for their dense pair."""

    def __init__(self, paired: bool):
        self.calls: dict[int, int] = {}
        self.dense = False
        self.paired = paired
        self.pending: dict[int, list] = {}


@contextlib.contextmanager
def recording(statistics: dict[int, tuple[LinearView, InputStatistics]],
              stop_after: dict[int, int] | None = None, *, paired: bool = False) -> Iterator[Recorder]:
    """Hooks the layers of ``statistics`` (``{id(layer): (view, stats)}``) to add their inputs.

    With ``stop_after`` (``{id(layer): calls per forward pass}``), the forward pass stops once
    every hooked layer has been called that often: later layers need not run. With ``paired``,
    each pass is followed by one on the unpruned weights (``recorder.dense``), whose inputs
    pair up with the first pass's rows in ``stats.cross``. Hooks are removed on exit, even
    after an error.
    """
    recorder = Recorder(paired)

    def record(layer, call):
        view, stats = statistics[id(layer)]

        def hooked(*args, **kwargs):
            inputs = args[0] if args else kwargs.get("inputs")
            rows = view.features(keras.ops.convert_to_numpy(inputs))
            try:
                if recorder.dense:
                    stats.add_dense(recorder.pending[id(layer)].pop(0), rows)
                else:
                    stats.add(rows)
                    if recorder.paired:
                        recorder.pending.setdefault(id(layer), []).append(rows)
            except NonFiniteInputs:
                raise NonFiniteInputs(
                    f"layer '{layer.name}' received NaN or infinite inputs on the calibration data; "
                    "check the data (scaling, missing values) and the model's earlier layers"
                ) from None
            calls = recorder.calls
            calls[id(layer)] = calls.get(id(layer), 0) + 1
            if stop_after and all(calls.get(k, 0) >= n for k, n in stop_after.items()):
                raise StopForward()
            return call(*args, **kwargs)

        return hooked

    with hooking([view.layer for view, _ in statistics.values()], record):
        yield recorder


@contextlib.contextmanager
def hooking(layers: Sequence[keras.layers.Layer], make_hook) -> Iterator[None]:
    """Replaces each layer's ``call`` by ``make_hook(layer, call)`` until exit."""
    saved = []
    for layer in layers:
        saved.append((layer, vars(layer).get("call")))
        vars(layer)["call"] = make_hook(layer, layer.call)
    try:
        yield
    finally:
        for layer, own in reversed(saved):
            if own is None:
                vars(layer).pop("call", None)
            else:
                vars(layer)["call"] = own


def forward(model: keras.Model, batches: Sequence, recorder: Recorder | None = None,
            dense_weights: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
    """Runs ``model`` on each batch for its side effects (the hooks), in inference mode.

    With ``dense_weights`` (a context manager factory that puts the unpruned weights in
    place), each batch runs again on them as the ``recorder``'s dense pass.
    """
    for batch in batches:
        _run(model, batch, recorder)
        if dense_weights is not None:
            with dense_weights():
                recorder.dense = True
                try:
                    _run(model, batch, recorder)
                finally:
                    recorder.dense = False


def _run(model, batch, recorder: Recorder | None) -> None:
    if recorder is not None:
        recorder.calls.clear()
    with contextlib.suppress(StopForward):
        model(batch, training=False)


def call_order(model: keras.Model, layers: Sequence[keras.layers.Layer], batch) -> list[tuple[int, int]]:
    """``(calls, first)`` per layer of ``layers`` in one forward pass on ``batch``: how many
    times it is called (0: never), and the position of its first call among all of them.

    Raises whatever the model raises on ``batch`` (data that does not fit its inputs).
    """
    seen: dict[int, list[int]] = {id(layer): [] for layer in layers}
    counter = iter(range(1 << 62))

    def count(layer, call):
        def counted(*args, **kwargs):
            seen[id(layer)].append(next(counter))
            return call(*args, **kwargs)

        return counted

    with hooking(layers, count):
        model(batch, training=False)
    return [(len(seen[id(layer)]), seen[id(layer)][0] if seen[id(layer)] else -1) for layer in layers]
