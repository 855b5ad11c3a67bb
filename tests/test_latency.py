"""Latency measurement: both runtimes run the real models; bad arguments are refused."""

import keras
import numpy as np
import pytest

from keras_prune.analysis.latency import compare_latency


def _cnn():
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),
    ])


@pytest.mark.parametrize("runtime", ["keras", pytest.param("litert", marks=pytest.mark.tensorflow_only)])
def test_compare_latency_gives_one_median_per_model(runtime):
    times = compare_latency([_cnn(), _cnn()], batch_size=4, repeats=3, warmup=1, runtime=runtime)
    assert len(times) == 2 and all(t > 0 for t in times)


@pytest.mark.tensorflow_only
def test_litert_function_runs_the_converted_model():
    from keras_prune.export.litert import convert_litert, litert_function

    model = _cnn()
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype("float32")
    run = litert_function(convert_litert(model, sparse=False), x.shape)
    expected = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(run(x), expected, atol=1e-5)
    np.testing.assert_allclose(run(x[::-1]), expected[::-1], atol=1e-5)  # reusable


def test_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="Argument `runtime` must be one of 'keras', 'litert'"):
        compare_latency([_cnn()], runtime="onnx")


@pytest.mark.tensorflow_only
def test_litert_latency_of_a_two_input_model_is_refused():
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])), name="two")
    with pytest.raises(ValueError, match="single-input model.*'two' with 2 inputs"):
        compare_latency([model], runtime="litert")
