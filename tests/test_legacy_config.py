"""Keras 2 configs, written by hand as standalone Keras 2.2 and tf.keras wrote them, translated
and built in Keras 3: every translation listed, refusals with the fix, weights from Keras 2's
HDF5 layout."""

import json

import h5py
import keras
import numpy as np
import pytest

from keras_prune.io import ModelFileError, load_model
from keras_prune.legacy import Conversion, Translation, build, conversion_of, keras2_hard_sigmoid, translate_config
from keras_prune.legacy.savedmodel import _saved_objects

from helpers import run_cli

pytestmark = pytest.mark.core


def glorot(distribution="uniform", **extra):
    """Keras 2.2's glorot initializers: VarianceScaling, sometimes with a dtype."""
    return {"class_name": "VarianceScaling",
            "config": {"scale": 1.0, "mode": "fan_avg", "distribution": distribution, "seed": None, **extra}}


ZEROS = {"class_name": "Zeros", "config": {}}


def keras22_cnn():
    """A Sequential config as standalone Keras 2.2 saved it: a bare list of layers."""
    return {"class_name": "Sequential", "keras_version": "2.2.4", "backend": "tensorflow", "config": [
        {"class_name": "Conv2D", "config": {
            "name": "conv2d_1", "trainable": True, "batch_input_shape": [None, 8, 8, 1], "dtype": "float32",
            "filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid",
            "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "linear", "use_bias": True,
            "kernel_initializer": glorot("normal", dtype="float32"), "bias_initializer": ZEROS,
            "kernel_regularizer": {"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.0010000000474974513}},
            "bias_regularizer": None, "activity_regularizer": None,
            "kernel_constraint": {"class_name": "MaxNorm", "config": {"max_value": 2, "axis": [0, 1, 2]}},
            "bias_constraint": None}},
        {"class_name": "BatchNormalization", "config": {
            "name": "batch_normalization_1", "trainable": True, "axis": -1, "momentum": 0.99, "epsilon": 0.001,
            "center": True, "scale": True, "beta_initializer": ZEROS, "gamma_initializer": {"class_name": "Ones",
                                                                                              "config": {}},
            "moving_mean_initializer": ZEROS, "moving_variance_initializer": {"class_name": "Ones", "config": {}},
            "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None}},
        {"class_name": "LeakyReLU", "config": {"name": "leaky_re_lu_1", "trainable": True, "alpha": 0.30000001192092896}},
        {"class_name": "Flatten", "config": {"name": "flatten_1", "trainable": True, "data_format": "channels_last"}},
        {"class_name": "Dense", "config": {
            "name": "dense_1", "trainable": True, "units": 3, "activation": "hard_sigmoid", "use_bias": True,
            "kernel_initializer": glorot(), "bias_initializer": ZEROS, "kernel_regularizer": "l2",
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}},
    ]}


def keras22_rnn():
    """An Embedding, LSTM and GRU classifier as Keras 2.2 saved it (hard_sigmoid, reset_after=False)."""
    def rnn(class_name, name, **extra):
        return {"class_name": class_name, "config": {
            "name": name, "trainable": True, "return_sequences": class_name == "LSTM", "return_state": False,
            "go_backwards": False, "stateful": False, "unroll": False, "units": 5, "activation": "tanh",
            "recurrent_activation": "hard_sigmoid", "use_bias": True, "kernel_initializer": glorot(),
            "recurrent_initializer": {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}},
            "bias_initializer": ZEROS, "kernel_regularizer": None, "recurrent_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "recurrent_constraint": None, "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0,
            "implementation": 1, **extra}}

    return {"class_name": "Sequential", "keras_version": "2.2.4", "config": {"name": "sequential_1", "layers": [
        {"class_name": "Embedding", "config": {
            "name": "embedding_1", "trainable": True, "batch_input_shape": [None, 7], "dtype": "float32",
            "input_dim": 20, "output_dim": 4, "embeddings_initializer": {"class_name": "RandomUniform", "config": {
                "minval": -0.05, "maxval": 0.05, "seed": None}}, "embeddings_regularizer": None,
            "activity_regularizer": None, "embeddings_constraint": None, "mask_zero": False, "input_length": 7}},
        rnn("LSTM", "lstm_1", unit_forget_bias=True),
        rnn("GRU", "gru_1", reset_after=False),
        {"class_name": "Dense", "config": {"name": "dense_1", "trainable": True, "units": 3, "activation": "softmax",
                                           "use_bias": True, "kernel_initializer": glorot(), "bias_initializer": ZEROS}},
    ]}}


def changes(notes):
    return [f"{note.layer}: {note.change()}" for note in notes]


def test_keras22_cnn_translates_every_difference_and_lists_it():
    model, notes = build(keras22_cnn(), "cnn.json")
    assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 3)
    assert changes(notes) == [
        "conv2d_1: batch_input_shape=(None, 8, 8, 1) -> InputLayer(batch_shape=(None, 8, 8, 1))",
        "conv2d_1: kernel_initializer.dtype=float32 removed",
        "conv2d_1: kernel_initializer.distribution=normal -> truncated_normal",
        "leaky_re_lu_1: alpha=0.3 -> negative_slope=0.3",
        "dense_1: activation=hard_sigmoid -> keras_prune>keras2_hard_sigmoid",
    ]
    conv = model.get_layer("conv2d_1")
    assert conv.kernel_initializer.distribution == "truncated_normal"
    assert conv.kernel_regularizer.l2 == pytest.approx(0.001) and conv.kernel_constraint.max_value == 2
    assert model.get_layer("leaky_re_lu_1").negative_slope == pytest.approx(0.3)
    assert model.get_layer("dense_1").activation is keras2_hard_sigmoid
    assert model.get_layer("dense_1").kernel_regularizer.l2 == pytest.approx(0.01)  # Keras 2's l2 default


def test_keras22_rnn_keeps_its_recurrent_settings():
    model, notes = build(keras22_rnn(), "rnn.json")
    assert model.input_shape == (None, 7) and model.output_shape == (None, 3)
    assert "embedding_1: input_length=7 removed" in changes(notes)
    assert [n.layer for n in notes if n.setting == "recurrent_activation"] == ["lstm_1", "gru_1"]
    gru = model.get_layer("gru_1")
    assert gru.cell.reset_after is False and gru.cell.bias.shape == (15,)  # Keras 2.2's GRU bias layout
    assert model.get_layer("lstm_1").cell.recurrent_activation is keras2_hard_sigmoid


def write_keras2_weights(model, path, rng):
    """Writes random weights for ``model`` in Keras 2's HDF5 layout; returns them by layer."""
    saved = {}
    with h5py.File(path, "w") as file:
        file.attrs["keras_version"] = b"2.2.4"
        file.attrs["backend"] = b"tensorflow"
        layers = [layer for layer in model.layers if layer.weights]
        file.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        for layer in layers:
            group = file.create_group(layer.name)
            variables = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{layer.name}/{v.name}_{i}:0" for i, v in enumerate(variables)]
            group.attrs["weight_names"] = [name.encode() for name in names]
            saved[layer.name] = [rng.normal(size=v.shape).astype("float32") for v in variables]
            for name, array in zip(names, saved[layer.name]):
                group.create_dataset(name, data=array)
    return saved


def test_json_with_keras2_weights_loads_the_weights_and_computes_keras2s_hard_sigmoid(tmp_path):
    (tmp_path / "cnn.json").write_text(json.dumps(keras22_cnn()))
    model, _ = build(keras22_cnn(), "cnn.json")
    saved = write_keras2_weights(model, tmp_path / "weights.h5", np.random.default_rng(0))
    loaded = load_model(tmp_path / "cnn.json", weights=tmp_path / "weights.h5")
    for layer in loaded.layers:
        for variable, array in zip(layer.trainable_weights + layer.non_trainable_weights, saved.get(layer.name, [])):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), array)
    conversion = conversion_of(loaded)
    assert conversion.keras_version == "2.2.4" and conversion.format == "JSON architecture"
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 1)).astype("float32")
    features = x
    for layer in loaded.layers[:-1]:
        features = layer(features, training=False)
    kernel, bias = saved["dense_1"]
    expected = np.clip(0.2 * (keras.ops.convert_to_numpy(features) @ kernel + bias) + 0.5, 0, 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)


def test_weights_that_do_not_fit_are_refused_before_any_is_assigned(tmp_path):
    (tmp_path / "rnn.json").write_text(json.dumps(keras22_rnn()))
    other, _ = build(keras22_cnn(), "cnn.json")
    write_keras2_weights(other, tmp_path / "weights.h5", np.random.default_rng(0))
    with pytest.raises(ModelFileError, match="do not match its layers"):
        load_model(tmp_path / "rnn.json", weights=tmp_path / "weights.h5")


def test_nested_keras2_model_calls_are_renumbered():
    """Keras 2 numbered a nested model's first call 1 (node 0 was its own construction)."""
    inner = {"class_name": "Model", "name": "inner", "config": {
        "name": "inner", "layers": [
            {"class_name": "InputLayer", "name": "in_a", "inbound_nodes": [],
             "config": {"batch_input_shape": [None, 3], "dtype": "float32", "sparse": False, "name": "in_a"}},
            {"class_name": "Dense", "name": "d_a", "inbound_nodes": [[["in_a", 0, 0, {}]]],
             "config": {"name": "d_a", "units": 2, "activation": "relu"}}],
        "input_layers": [["in_a", 0, 0]], "output_layers": [["d_a", 0, 0]]},
        "inbound_nodes": [[["in_b", 0, 0, {}]]]}
    outer = {"class_name": "Model", "keras_version": "2.2.4", "config": {
        "name": "outer", "layers": [
            {"class_name": "InputLayer", "name": "in_b", "inbound_nodes": [],
             "config": {"batch_input_shape": [None, 3], "dtype": "float32", "sparse": False, "name": "in_b"}},
            inner,
            {"class_name": "Dense", "name": "head", "inbound_nodes": [[["inner", 1, 0, {}]]],
             "config": {"name": "head", "units": 1}}],
        "input_layers": [["in_b", 0, 0]], "output_layers": [["head", 0, 0]]}}
    model, notes = build(outer, "nested.json")
    assert model.output_shape == (None, 1) and notes == []
    assert model.get_layer("inner").get_layer("d_a").units == 2


@pytest.mark.parametrize(
    ("layer", "phrase"),
    [
        ({"class_name": "LSTM", "config": {"name": "l", "units": 2, "time_major": True}}, "time_major=True"),
        ({"class_name": "DepthwiseConv2D", "config": {"name": "dw", "kernel_size": 3, "groups": 2}}, "groups=2"),
        ({"class_name": "Lambda", "config": {"name": "lam", "function": ["4wEA", None, None]}}, "Lambda layer"),
        ({"class_name": "Merge", "config": {"name": "m", "mode": "sum"}}, "Keras 1 Merge"),
        ({"class_name": "Doubler", "config": {"name": "twice"}}, "custom layer 'Doubler' (in layer 'twice')"),
        ({"class_name": "Dense", "config": {"name": "d", "units": 2, "activation": "my_act"}},
         "custom activation function 'my_act'"),
    ],
)
def test_what_keras3_cannot_rebuild_is_refused_with_the_fix(layer, phrase):
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4, 3], "name": "i"}}, layer]}}
    with pytest.raises(ModelFileError) as caught:
        build(config, "m.json")
    message = str(caught.value)
    assert phrase in message and ("tf_keras" in message or "--custom-objects" in message or "2.2.5" in message)


def test_custom_objects_provide_the_missing_classes():
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Doubler", "config": {"name": "twice", "batch_input_shape": [None, 3]}}]}}
    model, _ = build(config, "m.json", custom_objects={"Doubler": Doubler})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(np.ones((1, 3), "float32"))), 2.0)
    config["config"]["layers"][0]["class_name"] = "my_package>Doubler"  # tf.keras's registered name
    assert isinstance(build(config, "m.json", custom_objects={"Doubler": Doubler})[0].layers[0], Doubler)


def test_keras2_hard_sigmoid_is_exact_and_survives_a_keras3_file(tmp_path):
    x = np.linspace(-4, 4, 81).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras2_hard_sigmoid(x)),
                                  np.clip(np.float32(0.2) * x + np.float32(0.5), 0, 1))
    model, _ = build({"class_name": "Sequential", "config": [{"class_name": "Dense", "config": {
        "name": "d", "units": 2, "activation": "hard_sigmoid", "batch_input_shape": [None, 3]}}]}, "m.json")
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").layers[0].activation is keras2_hard_sigmoid


def test_translations_are_summarized_by_change():
    notes = tuple(Translation(f"dw{i}", "groups", "1", None, "no groups") for i in range(6))
    conversion = Conversion("m.h5", "HDF5 file", "2.4.0", notes + (Translation("d", "alpha", "0.3", "x", "renamed"),))
    assert conversion.summary() == ["groups=1 removed (no groups): dw0, dw1, dw2 and 3 more",
                                    "alpha=0.3 -> x (renamed): d"]
    assert "7 settings translated" in conversion.header()


def test_translate_config_leaves_its_argument_alone():
    config = keras22_rnn()
    before = json.dumps(config)
    translate_config(config)
    assert json.dumps(config) == before


def varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def message(*fields) -> bytes:
    out = b""
    for number, value in fields:
        if isinstance(value, int):
            out += varint(number << 3) + varint(value)
        else:
            out += varint(number << 3 | 2) + varint(len(value)) + value
    return out


def test_keras_metadata_is_read_without_protobuf_classes():
    nodes = [message((2, 0), (3, b"root"), (4, b"_tf_keras_sequential"), (5, b'{"name": "s"}')),
             message((2, 300), (3, b"root.layer-0"), (5, json.dumps({"name": "d" * 200}).encode()), (6, b"\x08\x01"))]
    data = b"".join(message((1, node)) for node in nodes)
    assert list(_saved_objects(data)) == [(0, '{"name": "s"}'), (300, json.dumps({"name": "d" * 200}))]


def test_a_folder_that_is_not_a_savedmodel_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="is a folder .*saved_model.pb"):
        load_model(tmp_path)


def test_custom_objects_flag_errors_are_one_line(capsys, tmp_path):
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(tmp_path / "m.keras")
    code, _, err = run_cli(capsys, "inspect", tmp_path / "m.keras", "--custom-objects", tmp_path / "none.py")
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    code, _, err = run_cli(capsys, "inspect", tmp_path / "m.keras", "--custom-objects", tmp_path / "broken.py")
    assert code == 1 and "RuntimeError: no GPU here" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "inspect", tmp_path / "m.keras", "--custom-objects", "no_such_module_here")
    assert code == 1 and "cannot import" in err


def test_a_keras2_weights_file_is_not_taken_for_a_model(tmp_path):
    model, _ = build(keras22_rnn(), "rnn.json")
    write_keras2_weights(model, tmp_path / "weights.h5", np.random.default_rng(0))
    with pytest.raises(ModelFileError, match="holds only weights .*MODEL.json --weights"):
        load_model(tmp_path / "weights.h5")


def test_a_damaged_savedmodel_is_refused_in_one_line(capsys, tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / "keras_metadata.pb").write_bytes(b"\x0a\xff\xff")  # a field longer than the file
    code, _, err = run_cli(capsys, "convert", folder, "-o", tmp_path / "m.keras")
    assert code == 1 and "unreadable keras_metadata.pb" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.keras").exists()


def test_convert_writes_a_keras3_model_as_it_is(capsys, tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    code, out, err = run_cli(capsys, "convert", tmp_path / "m.keras", "-o", tmp_path / "copy.keras")
    assert code == 0 and "nothing to translate" in out and err == "", err
    x = np.ones((1, 3), "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(load_model(tmp_path / "copy.keras")(x)),
                                  keras.ops.convert_to_numpy(model(x)))
