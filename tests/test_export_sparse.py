"""export_sparse / load_sparse on whole models: exact round trips, sizes, safe loading."""

import json
import os

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_prune
from keras_prune.core import pruning_state_of
from keras_prune.export import format as fmt
from keras_prune.export.sparse import read_header
from keras_prune.io import ModelFileError, load_model
from keras_prune.masks import sparsity_mask

pytestmark = pytest.mark.core


def cnn(sparsity=0.9):
    """A small CNN with BatchNorm and no-bias layers, its kernels pruned to ``sparsity``."""
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", use_bias=False),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(5),
        ]
    )
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            layer.kernel.assign(np.where(sparsity_mask(kernel**2, sparsity), kernel, 0))
    return model


@pytest.fixture
def inputs():
    return np.random.default_rng(0).random((6, 12, 12, 1)).astype("float32")


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_float32_round_trip_is_bit_exact_and_smaller(tmp_path, inputs):
    model = cnn()
    path = keras_prune.export_sparse(model, tmp_path / "m.kpsparse")
    loaded = keras_prune.load_sparse(path)
    assert len(loaded.weights) == len(model.weights) == 9
    for expected, actual in zip(model.get_weights(), loaded.get_weights()):
        assert actual.dtype == expected.dtype and actual.tobytes() == expected.tobytes()
    np.testing.assert_array_equal(predict(loaded, inputs), predict(model, inputs))
    model.save(tmp_path / "m.keras")
    assert os.path.getsize(path) < 0.3 * os.path.getsize(tmp_path / "m.keras")


def test_lossy_value_modes_shrink_the_file_and_stay_close(tmp_path, inputs):
    model = cnn()
    sizes, errors = {}, {}
    for values in ("float32", "float16", "int8"):
        path = keras_prune.export_sparse(model, tmp_path / f"{values}.kpsparse", values=values)
        sizes[values] = os.path.getsize(path)
        errors[values] = np.abs(predict(keras_prune.load_sparse(path), inputs) - predict(model, inputs)).max()
        assert {t["quant"] for t in read_header(path)["tensors"] if len(t["shape"]) == 1} == {"none"}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    assert errors["float32"] == 0 and 0 < errors["float16"] < errors["int8"] < 0.05


def test_pruning_wrappers_are_stripped_before_export(tmp_path, inputs):
    base = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Flatten(), keras.layers.Dense(16)])
    pruned = keras_prune.prune_low_magnitude(base, keras_prune.ConstantSparsity(0.75, 0))
    pruned.compile(optimizer="sgd", loss="mse")
    pruned.fit(inputs, np.zeros((6, 16)), epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    path = keras_prune.export_sparse(pruned, tmp_path / "m.kpsparse")
    loaded = keras_prune.load_sparse(path)
    assert type(loaded) is keras.Sequential
    assert pruning_state_of(base.layers[-1].kernel) is pruned  # exporting leaves it being pruned
    kernel = loaded.layers[-1].kernel
    assert np.count_nonzero(keras.ops.convert_to_numpy(kernel)) == 144 * 16 // 4
    np.testing.assert_array_equal(predict(loaded, inputs), predict(pruned, inputs))


def test_load_model_and_so_every_command_accepts_the_sparse_format(tmp_path, inputs):
    model = cnn()
    path = keras_prune.export_sparse(model, tmp_path / "m.kpsparse")
    np.testing.assert_array_equal(predict(load_model(path), inputs), predict(model, inputs))
    (tmp_path / "bad.kpsparse").write_bytes(b"KPSPARSE" + bytes(30))
    with pytest.raises(ModelFileError, match="bad.kpsparse"):
        load_model(tmp_path / "bad.kpsparse")


def test_export_validates_before_writing(tmp_path):
    model = cnn()
    with pytest.raises(ValueError, match="Argument `values` must be one of"):
        keras_prune.export_sparse(model, tmp_path / "m.kpsparse", values="int4")
    with pytest.raises(TypeError, match="must be a Keras model"):
        keras_prune.export_sparse("model.keras", tmp_path / "m.kpsparse")
    (tmp_path / "exists.kpsparse").write_bytes(b"keep")
    with pytest.raises(ValueError, match="--overwrite"):
        keras_prune.export_sparse(model, tmp_path / "exists.kpsparse")
    assert (tmp_path / "exists.kpsparse").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.kpsparse"]


def rewrite(path, change):
    """Applies ``change`` to the header and writes a file with a valid checksum."""
    header, payload = fmt.read_container(path.read_bytes())
    change(header)
    path.write_bytes(fmt.write_container(header, bytes(payload)))
    return path


def dense_model(units=4):
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(units)])


def test_a_crafted_architecture_claiming_a_huge_layer_is_refused_without_allocating(tmp_path):
    path = keras_prune.export_sparse(dense_model(), tmp_path / "m.kpsparse")

    def huge(header):
        text = json.dumps(header["architecture"]).replace('"units": 4', '"units": 1000000000000')
        header["architecture"] = json.loads(text)

    # 3 * 10**12 float32 weights would need 12 TB: only the deferred build makes this pass.
    with pytest.raises(keras_prune.SparseFormatError, match="weight .*kernel"):
        keras_prune.load_sparse(rewrite(path, huge))
    # Nothing of the refused model is left waiting to be initialized later.
    with keras.StatelessScope():
        pass
    assert keras_prune.load_sparse(keras_prune.export_sparse(dense_model(), tmp_path / "ok.kpsparse"))


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    path = keras_prune.export_sparse(dense_model(), tmp_path / "m.kpsparse")
    with pytest.raises(keras_prune.SparseFormatError, match="2 weights, the file 1"):
        keras_prune.load_sparse(rewrite(path, lambda h: h["tensors"].pop()))
    with pytest.raises(keras_prune.SparseFormatError, match="architecture"):
        keras_prune.load_sparse(rewrite(path, lambda h: h.update(architecture={"class_name": "Nope"})))


def test_safe_mode_refuses_lambda_layers_and_names_the_fix(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)])
    path = keras_prune.export_sparse(model, tmp_path / "m.kpsparse")
    with pytest.raises(keras_prune.SparseFormatError, match="safe_mode=False"):
        keras_prune.load_sparse(path)
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(predict(keras_prune.load_sparse(path, safe_mode=False), x), predict(model, x))


@given(cut=st.integers(0, 10**5), flip=st.integers(0, 8 * 10**5))
@settings(max_examples=25, deadline=None)
def test_fuzz_damaged_model_files_raise_sparse_format_error(tmp_path_factory, cut, flip):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "m.kpsparse"
    if not path.exists():
        keras_prune.export_sparse(dense_model(), path)
    data = bytearray(path.read_bytes())
    data[(flip // 8) % len(data)] ^= 1 << (flip % 8)
    damaged = folder / "damaged.kpsparse"
    damaged.write_bytes(bytes(data[: cut % len(data)]))
    with pytest.raises(keras_prune.SparseFormatError):
        keras_prune.load_sparse(damaged)
