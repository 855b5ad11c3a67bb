"""Models saved by tf.keras 2 (tf_keras) load through the CLI and compute what tf_keras computed.

A module-scoped fixture runs :func:`make_legacy_files` in a separate Python process, where
tf_keras builds small models with random weights (BatchNorm statistics included), saves each as
``.h5``, as a SavedModel folder (with its traced functions, and for some without:
``save_traces=False``), some as ``.json`` + ``.h5`` weights and in tf.keras's own ``.keras``
format, and records its predictions on fixed inputs. Nothing of tf_keras is imported into the test process: this module
imports Keras only inside the tests, so that the generator process never imports Keras 3.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tensorflow_only

HERE = Path(__file__).resolve().parent
ATOL = 1e-5
CUSTOM_LAYER = '''
import keras


class Scale(keras.layers.Layer):
    """Multiplies by a learned vector and a constant factor (the Keras 3 port of the tf_keras layer)."""

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


# -- the files, made by tf_keras in its own process ----------------------------------------------


def make_legacy_files(folder: str) -> None:
    """Saves the tf_keras models of :func:`_builders` into ``folder``: NAME.h5, NAME_savedmodel/,
    NAME.json + NAME_weights.h5, and NAME.npz with the inputs ``x`` and tf_keras's outputs ``y``."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    import tf_keras as tk

    folder = Path(folder)
    tk.utils.set_random_seed(0)
    for name, (build, formats) in _builders(tk).items():
        model = build()
        _randomize(model, np.random.default_rng(len(name)))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        shape = model.input_shape[1:] if model._is_graph_network else (5,)  # a subclassed model has no input_shape
        x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
        np.savez(folder / f"{name}.npz", x=x, y=model.predict(x, verbose=0))
        if "h5" in formats:
            model.save(folder / f"{name}.h5")
        if "savedmodel" in formats:  # tracing the RNNs' functions takes seconds; the loader reads no function
            model.save(folder / f"{name}_savedmodel", save_format="tf", save_traces=name != "rnn")
        if "untraced" in formats:  # no functions, so no variable lists: weights found through the layers
            model.save(folder / f"{name}_untraced", save_format="tf", save_traces=False)
        if "keras" in formats:  # tf.keras 2.13+'s own .keras format
            model.save(folder / f"{name}_tfkeras.keras")
        if "json" in formats:
            (folder / f"{name}.json").write_text(model.to_json())
            model.save_weights(folder / f"{name}_weights.h5")
    _keras22_style(folder / "lstm_hard_sigmoid.h5", folder / "keras22_lstm.h5")
    shutil.copy(folder / "lstm_hard_sigmoid.npz", folder / "keras22_lstm.npz")
    module = tf.Module()
    module.v = tf.Variable(1.0)
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(folder / "tf_module_savedmodel"))


def _builders(tk) -> dict:
    layers = tk.layers

    class Scale(layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, input_shape):
            self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.w * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    class Subclassed(tk.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    def seq_cnn():
        return tk.Sequential([
            layers.Conv2D(6, 3, input_shape=(8, 8, 3), name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.ReLU(6.0),
            layers.DepthwiseConv2D(3, padding="same", name="dw"),
            layers.BatchNormalization(name="dw_bn"),
            layers.LeakyReLU(0.2),
            layers.GlobalAveragePooling2D(),
            layers.Dense(3, activation="softmax", name="logits"),
        ])

    def func_cnn():
        inputs = tk.Input((8, 8, 3))
        x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
        x = layers.BatchNormalization()(x)
        shortcut = layers.ReLU(6.0)(x)
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(shortcut)
        x = layers.BatchNormalization()(x)
        x = layers.Add()([x, shortcut])
        x = layers.SeparableConv2D(8, 3, padding="same")(x)
        base = tk.Model(inputs, x, name="base")
        base.trainable = False  # transfer learning: a frozen base inside the classifier
        outer = tk.Input((8, 8, 3))
        y = layers.GlobalAveragePooling2D()(base(outer, training=False))
        y = layers.Dropout(0.2)(y)
        return tk.Model(outer, layers.Dense(3, activation="softmax")(y))

    def rnn():
        return tk.Sequential([
            layers.LSTM(8, input_shape=(7, 5), return_sequences=True),
            layers.Bidirectional(layers.GRU(4, return_sequences=True)),
            layers.GRU(6),
            layers.Dense(3, activation="softmax"),
        ])

    def lstm_hard_sigmoid():
        return tk.Sequential([
            layers.LSTM(5, input_shape=(6, 4), recurrent_activation="hard_sigmoid", name="lstm"),
            layers.Dense(3, activation="softmax", name="dense"),
        ])

    def custom():
        return tk.Sequential([layers.Dense(4, input_shape=(5,)), Scale(3.0, name="scale"), layers.Dense(3)])

    def with_lambda():
        return tk.Sequential([layers.Dense(4, input_shape=(5,)), layers.Lambda(lambda t: t * 2), layers.Dense(3)])

    def tf_op():
        inputs = tk.Input((5,))
        return tk.Model(inputs, layers.Dense(3)(inputs * 2.0))

    def subclassed():
        model = Subclassed()
        model(np.zeros((1, 5), "float32"))
        return model

    everything = ("h5", "savedmodel", "json", "keras")
    return {
        "seq_cnn": (seq_cnn, everything),
        "func_cnn": (func_cnn, ("h5", "savedmodel", "untraced", "keras")),
        "rnn": (rnn, everything),
        "lstm_hard_sigmoid": (lstm_hard_sigmoid, ("h5", "savedmodel")),
        "custom": (custom, ("h5", "savedmodel")),
        "lambda": (with_lambda, ("h5",)),
        "tf_op": (tf_op, ("h5",)),
        "subclassed": (subclassed, ("savedmodel",)),
    }


def _randomize(model, rng) -> None:
    for weight in model.weights:
        value = rng.normal(size=weight.shape) * 0.3
        if "moving_variance" in weight.name:
            value = np.abs(value) + 0.5
        weight.assign(value.astype("float32"))


def _keras22_style(source: Path, target: Path) -> None:
    """A copy of the hard_sigmoid LSTM file as standalone Keras 2.2.4 wrote it: the layers as
    a bare list, the input shape on the LSTM, VarianceScaling initializers, SGD with ``lr``."""
    import h5py

    shutil.copy(source, target)
    config = json.loads(h5py.File(source, "r").attrs["model_config"])
    lstm, dense = (layer["config"] for layer in config["config"]["layers"][1:])
    glorot = {"class_name": "VarianceScaling",
              "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}}
    for layer in (lstm, dense):
        layer["kernel_initializer"] = glorot
        layer.pop("time_major", None)
    lstm.update(batch_input_shape=[None, 6, 4], implementation=1,
                recurrent_initializer={"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}})
    keras22 = {"class_name": "Sequential", "config": [{"class_name": "LSTM", "config": lstm},
                                                     {"class_name": "Dense", "config": dense}]}
    training = {"optimizer_config": {"class_name": "SGD", "config": {"lr": 0.01, "momentum": 0.0, "decay": 0.0,
                                                                     "nesterov": False}},
                "loss": "sparse_categorical_crossentropy", "metrics": ["acc"], "sample_weight_mode": None,
                "loss_weights": None}
    with h5py.File(target, "r+") as file:
        file.attrs["keras_version"] = b"2.2.4"
        file.attrs["model_config"] = json.dumps(keras22).encode()
        file.attrs["training_config"] = json.dumps(training).encode()
        file["model_weights"].attrs["keras_version"] = b"2.2.4"


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("needs tf_keras (pip install tf_keras), the Keras 2 that writes the files")
    folder = tmp_path_factory.mktemp("legacy")
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_legacy_models as t; t.make_legacy_files(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


# -- helpers --------------------------------------------------------------------------------------


def cli(capsys, *argv):
    from helpers import run_cli

    return run_cli(capsys, *argv)


def model_path(legacy: Path, name: str, fmt: str) -> list[str]:
    """The CLI arguments naming model ``name`` saved as ``fmt``."""
    if fmt == "h5":
        return [str(legacy / f"{name}.h5")]
    if fmt in ("savedmodel", "untraced"):
        return [str(legacy / f"{name}_{fmt}")]
    if fmt == "keras":
        return [str(legacy / f"{name}_tfkeras.keras")]
    return [str(legacy / f"{name}.json"), "--weights", str(legacy / f"{name}_weights.h5")]


def predictions(model, x) -> np.ndarray:
    import keras

    outputs = model(x, training=False)
    assert not isinstance(outputs, (list, tuple)), "one output, as in tf_keras"
    return keras.ops.convert_to_numpy(outputs)


def assert_same_outputs(model, legacy: Path, name: str) -> None:
    data = np.load(legacy / f"{name}.npz")
    np.testing.assert_allclose(predictions(model, data["x"]), data["y"], atol=ATOL, rtol=0)


# -- what loads, loads exactly ----------------------------------------------------------------------

CONVERTED = [("seq_cnn", "h5"), ("seq_cnn", "savedmodel"), ("seq_cnn", "json"), ("seq_cnn", "keras"),
             ("func_cnn", "h5"), ("func_cnn", "savedmodel"), ("func_cnn", "untraced"), ("func_cnn", "keras"),
             ("rnn", "h5"), ("rnn", "savedmodel"), ("rnn", "json"), ("rnn", "keras"),
             ("lstm_hard_sigmoid", "h5"), ("lstm_hard_sigmoid", "savedmodel"), ("keras22_lstm", "h5")]
EXPECTED_NOTES = {"seq_cnn": ["groups=1 removed", "alpha=0.2 -> negative_slope=0.2"],
                  "func_cnn": ["groups=1 removed"],
                  "rnn": ["time_major=False removed", "batch_input_shape=(None, 7, 5)"],
                  "lstm_hard_sigmoid": ["recurrent_activation=hard_sigmoid -> keras_prune>keras2_hard_sigmoid"],
                  "keras22_lstm": ["batch_input_shape=(None, 6, 4) -> InputLayer(batch_shape=(None, 6, 4))",
                                   "recurrent_activation=hard_sigmoid -> keras_prune>keras2_hard_sigmoid",
                                   "Keras 2.2.4"]}


@pytest.mark.parametrize(("name", "fmt"), CONVERTED)
def test_convert_writes_a_keras3_file_that_computes_what_tf_keras_computed(capsys, legacy, tmp_path, name, fmt):
    from keras_prune.io import load_model

    out = tmp_path / f"{name}.keras"
    code, stdout, err = cli(capsys, "convert", *model_path(legacy, name, fmt), "-o", out)
    assert code == 0, err
    for phrase in EXPECTED_NOTES[name]:
        assert phrase in stdout, stdout
    converted = load_model(out)
    assert_same_outputs(converted, legacy, name)
    if fmt != "json":  # to_json() has no compile settings; model files do
        assert converted.compiled and type(converted.optimizer).__name__ == ("SGD" if "22" in name else "Adam")


def test_inspect_and_prune_list_the_translations(capsys, legacy, tmp_path):
    code, out, err = cli(capsys, "inspect", legacy / "seq_cnn.h5")
    assert code == 0 and "dw" in out, err
    assert err.startswith("note: '") and "groups=1 removed" in err, err
    code, out, err = cli(capsys, "inspect", legacy / "seq_cnn_savedmodel", "--json")
    settings = json.loads(out)["settings"]
    assert code == 0 and settings["converted_from"].endswith("(SavedModel)")
    assert any("groups=1 removed" in line for line in settings["translations"])
    code, out, err = cli(capsys, "prune", legacy / "rnn.h5", "-o", tmp_path / "pruned.keras", "--sparsity", "0.5")
    assert code == 0 and "time_major=False removed" in err, err


def test_api_records_every_translation(legacy):
    from keras_prune.io import load_model
    from keras_prune.legacy import Translation, conversion_of

    model = load_model(legacy / "func_cnn_savedmodel")
    conversion = conversion_of(model)
    assert conversion.format == "SavedModel" and conversion.keras_version.startswith("2.")
    assert all(isinstance(note, Translation) for note in conversion.translations)
    assert {note.layer for note in conversion.translations if note.setting == "groups"} == {
        "depthwise_conv2d", "separable_conv2d"}
    assert_same_outputs(model, legacy, "func_cnn")


def test_keras2_hard_sigmoid_keeps_the_outputs_keras3_would_change(legacy):
    import keras

    from keras_prune.io import load_model

    model = load_model(legacy / "lstm_hard_sigmoid.h5")
    assert_same_outputs(model, legacy, "lstm_hard_sigmoid")
    model.get_layer("lstm").cell.recurrent_activation = keras.activations.hard_sigmoid  # what a plain load gives
    data = np.load(legacy / "lstm_hard_sigmoid.npz")
    assert np.abs(predictions(model, data["x"]) - data["y"]).max() > 1e-3


def test_savedmodel_of_tf_2_4_keeps_its_metadata_in_the_graph(legacy, tmp_path):
    """TF 2.2-2.4 wrote no keras_metadata.pb; the same documents sat in saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    from keras_prune.io import load_model
    from keras_prune.legacy.savedmodel import _saved_objects

    folder = tmp_path / "old_savedmodel"
    shutil.copytree(legacy / "rnn_savedmodel", folder)
    metadata = dict(_saved_objects((folder / "keras_metadata.pb").read_bytes()))
    graph = saved_model_pb2.SavedModel()
    graph.ParseFromString((folder / "saved_model.pb").read_bytes())
    for node_id, text in metadata.items():
        graph.meta_graphs[0].object_graph_def.nodes[node_id].user_object.metadata = text
    (folder / "saved_model.pb").write_bytes(graph.SerializeToString())
    (folder / "keras_metadata.pb").unlink()
    assert_same_outputs(load_model(folder), legacy, "rnn")


# -- custom classes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["h5", "savedmodel"])
def test_custom_layers_come_with_custom_objects(capsys, legacy, tmp_path, fmt):
    from keras_prune.cli._common import read_custom_objects
    from keras_prune.io import load_model

    out = tmp_path / "custom.keras"
    code, _, err = cli(capsys, "convert", *model_path(legacy, "custom", fmt), "-o", out)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "custom layer 'Scale'" in err and "--custom-objects module.py" in err and not out.exists()
    (tmp_path / "my_layers.py").write_text(CUSTOM_LAYER)
    code, _, err = cli(capsys, "convert", *model_path(legacy, "custom", fmt), "-o", out,
                       "--custom-objects", tmp_path / "my_layers.py")
    assert code == 0, err
    objects = read_custom_objects(str(tmp_path / "my_layers.py"))
    assert_same_outputs(load_model(out, custom_objects=objects), legacy, "custom")


# -- what cannot load says why, and writes nothing -----------------------------------------------------

REFUSED = [
    (["lambda.h5"], "Lambda layer"),
    (["tf_op.h5"], "TFOpLambda"),
    (["tf_module_savedmodel"], "without Keras metadata"),
    (["subclassed_savedmodel"], "subclassed tf.keras model"),
]


@pytest.mark.parametrize(("argv", "phrase"), REFUSED)
def test_files_keras3_cannot_rebuild_are_refused_in_one_line(capsys, legacy, tmp_path, argv, phrase):
    out = tmp_path / "out.keras"
    code, _, err = cli(capsys, "convert", *[legacy / arg for arg in argv], "-o", out)
    assert code == 1 and phrase in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists(), err


def test_keras1_files_name_the_keras_that_reads_them(capsys, tmp_path):
    import h5py

    with h5py.File(tmp_path / "old.h5", "w") as file:
        file.attrs["keras_version"] = b"1.2.2"
        file.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": [
            {"class_name": "Dense", "config": {"output_dim": 2, "input_dim": 3, "init": "glorot_uniform"}}]}).encode()
    code, _, err = cli(capsys, "convert", tmp_path / "old.h5", "-o", tmp_path / "new.keras")
    assert code == 1 and "Keras 1.2.2" in err and "keras==2.2.5" in err, err
    assert not (tmp_path / "new.keras").exists()


def test_convert_never_overwrites_without_asking(capsys, legacy, tmp_path):
    out = tmp_path / "model.keras"
    out.write_text("keep me")
    code, _, err = cli(capsys, "convert", legacy / "seq_cnn.h5", "-o", out)
    assert code == 1 and "--overwrite" in err and out.read_text() == "keep me", err
    code, _, err = cli(capsys, "convert", legacy / "seq_cnn.h5", "-o", out, "--overwrite")
    assert code == 0 and out.stat().st_size > 1000, err
    code, _, err = cli(capsys, "convert", legacy / "seq_cnn.h5", "-o", tmp_path / "model.h5")
    assert code == 1 and ".keras" in err, err
