"""CPU inference latency: the median of repeated forward passes, measured side by side."""

from __future__ import annotations

import time
from collections.abc import Sequence

import keras
import numpy as np

from keras_prune._keras_compat import is_functional
from keras_prune._validation import check_choice

RUNTIMES = ("keras", "litert")


def compare_latency(
    models: Sequence[keras.Model],
    batch_size: int = 1,
    *,
    repeats: int = 30,
    warmup: int = 3,
    runtime: str = "keras",
) -> list[float]:
    """Median milliseconds per forward pass of each model, measured interleaved.

    The models run in turn, round after round, so that a noisy neighbour slows them all
    alike and their ratio stays meaningful. With ``runtime="keras"``, on TensorFlow each
    model runs as a compiled ``tf.function`` and on JAX as a ``jax.jit`` function, as in
    serving; elsewhere it is called eagerly. Every model input (a list or dict of them, for
    functional models with several) gets random values of its shape and dtype, and every
    output is computed. With ``runtime="litert"`` each model is converted to LiteRT
    (TensorFlow backend, single-input models) and run by its interpreter, as on a phone or
    an edge device.

    Args:
        models: models with the same kind of input.
        batch_size: examples per forward pass.
        repeats: timed rounds; the median is reported.
        warmup: untimed rounds first (tracing, caches).
        runtime: ``"keras"`` or ``"litert"``.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> [ms] = compare_latency([model], batch_size=32, repeats=5)
    """
    check_choice("runtime", runtime, RUNTIMES)
    inputs = [_example_inputs(m, batch_size) for m in models]
    if runtime == "litert":
        runners = [_litert_runner(m, x) for m, x in zip(models, inputs)]
    else:
        runners = [_runner(m) for m in models]
    times = [[] for _ in models]
    for round_ in range(warmup + repeats):
        for i, (run, x) in enumerate(zip(runners, inputs)):
            start = time.perf_counter()
            run(x)
            if round_ >= warmup:
                times[i].append(time.perf_counter() - start)
    return [float(np.median(t) * 1000.0) for t in times]


def measure_latency(
    model: keras.Model, batch_size: int = 1, *, repeats: int = 30, runtime: str = "keras"
) -> float:
    """Median milliseconds per forward pass of one model (see :func:`compare_latency`)."""
    return compare_latency([model], batch_size, repeats=repeats, runtime=runtime)[0]


def _example_inputs(model: keras.Model, batch_size: int):
    """Random inputs in the structure ``model`` is called with: one array, a list or a dict."""
    rng = np.random.default_rng(0)
    # A functional model's `input` keeps the list or dict it was built with.
    structure = model.input if is_functional(model) else model.inputs
    arrays = keras.tree.map_structure(lambda tensor: _random_input(tensor, batch_size, rng), structure)
    flat = keras.tree.flatten(arrays)
    return flat[0] if len(flat) == 1 else arrays


def _random_input(tensor, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    shape = (batch_size,) + tuple(d or 1 for d in tensor.shape[1:])
    if "int" in str(tensor.dtype):
        return np.zeros(shape, dtype=str(tensor.dtype))
    return rng.standard_normal(shape).astype(str(tensor.dtype))


def _to_numpy(outputs):
    """Every output as a NumPy array (which waits for the computation to finish)."""
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def _runner(model: keras.Model):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        call = tf.function(lambda x: model(x, training=False))
        return lambda x: _to_numpy(call(x))
    if backend == "jax":
        import jax

        state = ([v.value for v in model.trainable_variables],
                 [v.value for v in model.non_trainable_variables])
        call = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
        return lambda x: jax.block_until_ready(call(*state, x))
    return lambda x: _to_numpy(model(x, training=False))


def _litert_runner(model: keras.Model, example):
    from keras_prune.export.litert import convert_litert, litert_function

    inputs = keras.tree.flatten(example)
    if len(inputs) != 1:
        raise ValueError(
            f"LiteRT latency needs a single-input model. Received: model '{model.name}' "
            f"with {len(inputs)} inputs"
        )
    # The dense conversion: latency of the architecture, not of sparse weight storage.
    return litert_function(convert_litert(model, sparse=False), inputs[0].shape)
