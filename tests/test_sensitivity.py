"""Sensitivity analysis on MNIST: each weight pruned alone, measured, put back bit for bit."""

import json
import struct

import keras
import numpy as np
import pytest
from rich.console import Console

from keras_prune import demo, magnitude_prune, oneshot_prune
from keras_prune.evaluation import Evaluator
from keras_prune.sensitivity import SensitivityResult, sensitivity

from helpers import twin

pytestmark = pytest.mark.core

KEYS = ["conv/kernel", "hidden/kernel", "logits/kernel"]


def numpy(value):
    return keras.ops.convert_to_numpy(value)


@pytest.fixture(scope="module")
def mnist():
    """2,000 training and 256 test digits of the shipped MNIST subset, shrunk to 14x14 (2x2 means)."""
    data = demo.load_demo_data()

    def shrink(images):
        return images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))[..., None]

    return shrink(data["x_train"][:2000]), data["y_train"][:2000], shrink(data["x_test"][:256]), data["y_test"][:256]


@pytest.fixture(scope="module")
def trained(mnist):
    """Weights of a small CNN trained for two epochs on 2,000 MNIST digits."""
    x, y, _, _ = mnist
    keras.utils.set_random_seed(0)  # module fixtures run before the per-test seed
    model = cnn()
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model.get_weights()


def cnn(weights=None):
    model = keras.Sequential([
        keras.Input((14, 14, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ], name="mnist_cnn")
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    if weights is not None:
        model.set_weights(weights)
    return model


def weights_of(model):
    return [numpy(w).copy() for w in model.weights]


def assert_bit_identical(before, model):
    after = weights_of(model)
    assert len(before) == len(after)
    for old, new in zip(before, after):
        assert old.dtype == new.dtype and old.tobytes() == new.tobytes()


# -- what it measures ---------------------------------------------------------------------------


def test_each_value_is_the_metric_with_that_one_layer_pruned(mnist, trained):
    _, _, x, y = mnist
    model = cnn(trained)
    before = weights_of(model)
    result = sensitivity(model, (x, y), sparsities=(0.9,), progress=False)
    assert_bit_identical(before, model)
    evaluator = Evaluator(model, (x, y))
    assert result.keys == KEYS and result.sizes == {"conv/kernel": 72, "hidden/kernel": 288 * 32,
                                                    "logits/kernel": 320}
    assert (result.metric, result.higher_is_better, result.method) == ("accuracy", True, "magnitude")
    assert result.baseline == evaluator() > 0.6
    for key in KEYS:
        alone = twin(model)
        magnitude_prune(alone, sparsity=0.9, layers=[key.split("/")[0]])
        assert result.curves[key] == [evaluator(alone)], key
    assert max(result.drop(key, 0.9) for key in KEYS) > 0.05  # some layer of a trained CNN minds 90%


def test_several_sparsities_on_a_real_model_and_a_callable_metric(mnist, trained):
    _, _, x, y = mnist
    model = cnn(trained)
    pruned_kernels = []

    def error_rate(y_true, y_pred):
        pruned_kernels.append(float(np.mean(numpy(model.get_layer("logits").kernel) == 0)))
        return float(np.mean(np.argmax(y_pred, axis=1) != y_true))

    result = sensitivity(model, (x, y), metric=error_rate, sparsities=(0.25, 0.5, 0.95), layers="logits",
                         samples=200, batch_size=50, progress=True)
    assert result.keys == ["logits/kernel"] and result.higher_is_better  # a callable's default
    # The first two calls check and measure the unpruned model; then 25%, 50% and 95% of 320 weights.
    assert pruned_kernels == [0.0, 0.0, 80 / 320, 160 / 320, 304 / 320]
    assert result.metric == "error_rate" and len(result.curves["logits/kernel"]) == 3
    assert numpy(model.get_layer("logits").kernel).min() != 0


def test_weights_are_restored_after_an_error_or_an_interrupt_mid_run(mnist, trained):
    _, _, x, y = mnist
    for failure in (RuntimeError("metric failed"), KeyboardInterrupt()):
        model = cnn(trained)
        before = weights_of(model)
        calls = []

        def flaky(y_true, y_pred, calls=calls, failure=failure, model=model):
            calls.append(float(np.mean(numpy(model.get_layer("hidden").kernel) == 0)))
            if len(calls) == 5:  # check, baseline, conv at 50% and 90%, then hidden at 50%
                raise failure
            return 0.0

        with pytest.raises(type(failure)):
            sensitivity(model, (x, y), metric=flaky, sparsities=(0.5, 0.9), samples=64, progress=False)
        assert calls[-1] == 0.5  # it failed with the hidden kernel half pruned
        assert_bit_identical(before, model)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch runs eagerly: no compiled function to reuse")
def test_no_evaluation_recompiles_the_model(mnist, trained):
    _, _, x, y = mnist
    model = cnn(trained)
    Evaluator(model, (x, y), samples=200, batch_size=64)()  # compiles for batches of 64 and of 8
    traces = []
    layer = model.get_layer("hidden")
    call = layer.call
    vars(layer)["call"] = lambda *args, **kwargs: traces.append(1) or call(*args, **kwargs)
    result = sensitivity(model, (x, y), sparsities=(0.5, 0.9), samples=200, batch_size=64, progress=False)
    assert traces == [] and len(result.keys) * len(result.sparsities) == 6


# -- calibrated methods -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_methods_prune_as_oneshot_prune_does(mnist, trained, method):
    _, _, x, y = mnist
    model = cnn(trained)
    seen = {}

    def record(y_true, y_pred):
        for key in KEYS:
            kernel = numpy(model.get_layer(key.split("/")[0]).kernel)
            if np.any(kernel == 0):
                seen[key] = kernel.copy()
        return float(np.mean(np.argmax(y_pred, axis=1) == y_true))

    result = sensitivity(model, (x, y), method=method, metric=record, sparsities=(0.6,), samples=192,
                         calibration_samples=128, batch_size=64, progress=False)
    # 128 rows for the 288 inputs of `hidden` (after pooling): SparseGPT's Hessian is rank-deficient.
    rank_deficient = {"hidden"} if method == "sparsegpt" else set()
    assert result.method == method and {key.split("/")[0] for key in result.notes} == rank_deficient
    for key in KEYS:
        layer = key.split("/")[0]
        alone = twin(model)
        report = oneshot_prune(alone, x[:192], method=method, sparsity=0.6, layers=[layer], samples=128,
                               batch_size=64)
        np.testing.assert_array_equal(seen[key], numpy(alone.get_layer(layer).kernel), err_msg=key)
        assert result.curves[key] == [Evaluator(alone, (x[:192], y[:192]), metric=record)()]
        warned = {w.layer for w in report.warnings if "rank-deficient" in w.message}
        assert warned == rank_deficient & {layer} and ("rank-deficient" in result.notes.get(key, "")) == bool(warned)
    by_magnitude = twin(model)
    magnitude_prune(by_magnitude, sparsity=0.6, layers=["hidden"])
    assert not np.array_equal(seen["hidden/kernel"], numpy(by_magnitude.get_layer("hidden").kernel))


def test_weights_without_a_linear_view_fall_back_to_magnitude_with_a_note():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, size=(64, 6))
    labels = tokens[:, 0] % 2
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(20, 8, name="embed"),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2, name="head")])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wanda = sensitivity(model, (tokens, labels), method="wanda", metric="loss", sparsities=(0.5, 0.9),
                        progress=False)
    magnitude = sensitivity(model, (tokens, labels), metric="loss", sparsities=(0.5, 0.9), progress=False)
    assert list(wanda.notes) == ["embed/embeddings"] and "pruned by magnitude" in wanda.notes["embed/embeddings"]
    assert wanda.curves["embed/embeddings"] == magnitude.curves["embed/embeddings"]
    assert wanda.curves["head/kernel"] != magnitude.curves["head/kernel"]


def test_every_kernel_of_a_kerashub_language_model_has_its_own_key():
    keras_hub = pytest.importorskip("keras_hub")
    from hub_backbones import BACKBONES

    lm = keras_hub.models.GPT2CausalLM(backbone=BACKBONES["gpt2"](), preprocessor=None)
    tokens = np.random.default_rng(0).integers(0, 256, size=(32, 17))
    data = ({"token_ids": tokens[:, :-1], "padding_mask": np.ones((32, 16), bool)}, tokens[:, 1:])
    before = weights_of(lm)
    result = sensitivity(lm, data, metric="loss", sparsities=(0.9,), samples=32, batch_size=16, progress=False)
    assert_bit_identical(before, lm)
    attention = [f"gpt2_backbone/transformer_layer_{i}/self_attention/{name}/kernel"
                 for i in (0, 1) for name in ("query", "key", "value", "attention_output")]
    assert set(attention) < set(result.keys) and len(result.keys) == 13  # + 2 x 2 FFN kernels + embeddings
    query = next(w for w in lm.weights if w.path.endswith("transformer_layer_1/self_attention/query/kernel"))
    values = numpy(query)
    query.assign(np.where(np.abs(values) > np.sort(np.abs(values).ravel())[round(0.9 * values.size) - 1], values, 0))
    by_hand = Evaluator(lm, data, metric="loss", batch_size=16)()
    query.assign(values)
    assert result.curves[attention[4]] == [by_hand] and result.drop(attention[4], 0.9) != 0


# -- the result ---------------------------------------------------------------------------------


def example_result(higher_is_better=True):
    curves = {"a/kernel": [0.9, 0.8, 0.5], "b/kernel": [0.95, 0.94, 0.9]}
    if not higher_is_better:
        curves = {"a/kernel": [1.0, 1.5, 3.0], "b/kernel": [0.9, 1.0, 1.1]}
    return SensitivityResult("accuracy" if higher_is_better else "loss", higher_is_better, "magnitude",
                             0.95 if higher_is_better else 1.0, (0.5, 0.8, 0.9), curves,
                             {"a/kernel": 100, "b/kernel": 10})


def test_drop_interpolates_and_score_is_the_area_under_the_drops():
    result = example_result()
    assert result.drop("a/kernel", 0) == 0.0
    assert result.drop("a/kernel", 0.25) == pytest.approx(0.025)  # half way to 0.05 at 50%
    assert result.drop("a/kernel", 0.5) == pytest.approx(0.05)
    assert result.drop("a/kernel", 0.85) == pytest.approx(0.3)
    assert result.drop("b/kernel", 0.5) == pytest.approx(0.0) and result.drop("b/kernel", 0.9) == pytest.approx(0.05)
    # a: 0.5 * 0.05 / 2 + 0.3 * (0.05 + 0.15) / 2 + 0.1 * (0.15 + 0.45) / 2
    assert result.score("a/kernel") == pytest.approx(0.0125 + 0.03 + 0.03)
    assert result.score("a/kernel") > result.score("b/kernel")
    loss = example_result(higher_is_better=False)
    assert loss.drop("a/kernel", 0.9) == pytest.approx(2.0) and loss.drop("b/kernel", 0.5) == pytest.approx(-0.1)
    assert loss.score("a/kernel") > 0 > loss.drop("b/kernel", 0.5)
    with pytest.raises(ValueError, match=r"in \[0, 0.9\].*sparsity=0.95"):
        result.drop("a/kernel", 0.95)
    with pytest.raises(ValueError, match="sparsity=-0.1"):
        result.drop("a/kernel", -0.1)
    with pytest.raises(ValueError, match=r"a/kernel, b/kernel.*key='c/kernel'"):
        result.score("c/kernel")


def test_json_round_trip_through_text_and_an_atomically_written_file(tmp_path):
    result = example_result()
    result.notes = {"a/kernel": "pruned by magnitude"}
    path = tmp_path / "sensitivity.json"
    text = result.to_json(path)
    assert path.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["sensitivity.json"]
    assert json.loads(text)["format"] == "keras-prune-sensitivity"
    for source in (text, path, str(path)):
        again = SensitivityResult.from_json(source)
        assert again == result and again.keys == result.keys
    with pytest.raises(ValueError, match="Not a sensitivity result"):
        SensitivityResult.from_json('{"format": "other"}')
    with pytest.raises(ValueError, match="Not a sensitivity result"):
        SensitivityResult.from_json("{not json")
    with pytest.raises(ValueError, match="one value per sparsity"):
        SensitivityResult("accuracy", True, "magnitude", 0.9, (0.5,), {"a": [0.9, 0.8]}, {"a": 3})


def test_the_table_lists_every_weight_with_its_score_and_values():
    table = example_result().table()
    assert [column.header for column in table.columns] == ["weight", "weights", "score", "50%", "80%", "90%"]
    assert table.row_count == 2
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    assert "a/kernel" in text and "0.0725" in text and "0.5" in text and "unpruned: 0.95" in text


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_curves_for_few_weights_and_a_heat_map_for_many(tmp_path):
    example_result().plot(tmp_path / "few.png")
    few = png_size(tmp_path / "few.png")
    keys = [f"transformer_layer_{i // 4}/{name}/kernel" for i, name in
            zip(range(100), ["query", "key", "value", "ffn"] * 25)]
    rng = np.random.default_rng(0)
    many = SensitivityResult("loss", False, "sparsegpt", 2.0, (0.5, 0.7, 0.9),
                             {key: list(2.0 + np.sort(rng.uniform(-0.05, 1.0, 3))) for key in keys},
                             dict.fromkeys(keys, 768 * 768))
    assert many.plot(tmp_path / "many.png") == str(tmp_path / "many.png")
    width, height = png_size(tmp_path / "many.png")
    assert height / 100 > 10 > few[1] / 100  # about 0.17 inch per weight: 100 labels stay readable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.png", "many.png"]


def test_a_real_deep_model_takes_the_heat_map_path(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    stack = [keras.layers.Dense(8, activation="tanh", name=f"dense_{i}") for i in range(14)]
    model = keras.Sequential([keras.Input((8,)), *stack, keras.layers.Dense(1, name="out")])
    model.compile(loss="mse")
    y = model.predict(x, verbose=0)
    result = sensitivity(model, (x, y), metric="loss", sparsities=(0.5,), progress=False)
    assert len(result.keys) == 15 and all(result.drop(key, 0.5) >= 0 for key in result.keys)
    result.plot(tmp_path / "deep.png")
    assert png_size(tmp_path / "deep.png")[1] > 350  # the heat map grows with the weights


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sparsities", "error", "message"), [
    ((), TypeError, "non-empty"),
    (0.5, TypeError, "non-empty"),
    ("0.5", TypeError, "non-empty"),
    ((0.0, 0.5), ValueError, r"in \(0, 1\)"),
    ((0.5, 1.0), ValueError, r"in \(0, 1\)"),
    ((0.5, float("nan")), ValueError, r"in \(0, 1\)"),
    ((True,), ValueError, r"in \(0, 1\)"),
    ((0.5, 0.5), ValueError, "increasing"),
    ((0.9, 0.5), ValueError, "increasing"),
])
def test_bad_sparsities(sparsities, error, message):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(error, match=message):
        sensitivity(model, (np.ones((4, 3)), np.zeros(4)), sparsities=sparsities, metric=lambda t, p: 0.0)


def test_bad_arguments_and_data_raise_before_any_weight_changes(mnist, trained):
    _, _, x, y = mnist
    model = cnn(trained)
    before = weights_of(model)
    zeros = []

    def spy(y_true, y_pred):  # how many weights are zero whenever the metric is measured
        zeros.append(sum(int(np.sum(numpy(w) == 0)) for w in model.weights))
        return 0.0

    with pytest.raises(ValueError, match="method"):
        sensitivity(model, (x, y), method="obd", metric=spy)
    with pytest.raises(ValueError, match="does not fit model 'mnist_cnn'"):
        sensitivity(model, (x[:, :10], y), metric=spy, progress=False)
    with pytest.raises(ValueError, match="must be labelled"):
        sensitivity(model, x, progress=False)
    with pytest.raises(ValueError, match="selects none"):
        sensitivity(model, (x, y), layers="nothing", metric=spy)
    with pytest.raises(ValueError, match="calibration_data"):
        sensitivity(model, (x, y), method="wanda", metric=spy, calibration_data=x[:, :10], progress=False)
    uncompiled = keras.Sequential([keras.Input((14, 14, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="not compiled"):
        sensitivity(uncompiled, (x, y), progress=False)
    with pytest.raises(ValueError, match="`calibration_data` is for method='wanda' or 'sparsegpt'"):
        sensitivity(model, (x, y), metric=spy, calibration_data=x)
    with pytest.raises(ValueError, match="calibration_samples=0"):
        sensitivity(model, (x, y), metric=spy, calibration_samples=0)
    assert zeros == [zeros[0]] * len(zeros)  # measured only unpruned, while checking the data
    nan = cnn(trained)
    nan.get_layer("logits").kernel.assign(np.full((32, 10), np.nan, "float32"))
    with pytest.raises(ValueError, match="'logits/kernel' contains NaN"):
        sensitivity(nan, (x, y), metric=spy, progress=False)
    assert_bit_identical(before, model)
