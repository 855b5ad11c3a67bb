"""Model files: .keras, legacy .h5, JSON + weights, safe mode, bad files, safe outputs."""

import os
import sys

import keras
import numpy as np
import pytest

from keras_prune.io import ModelFileError, atomic_write, check_output_path, load_model, save_model

pytestmark = pytest.mark.core


def tiny():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")], name="tiny")
    model.get_layer("d").kernel.assign(np.arange(6, dtype="float32").reshape(3, 2))
    return model


def with_lambda():
    return keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)])


def same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_full_model_files_load(tmp_path, suffix):
    model = tiny()
    model.save(tmp_path / f"m{suffix}")
    loaded = load_model(tmp_path / f"m{suffix}")
    assert same_weights(model, loaded) and loaded.get_layer("d").units == 2


def test_json_architecture_with_weights(tmp_path):
    model = tiny()
    (tmp_path / "m.json").write_text(model.to_json())
    model.save_weights(tmp_path / "m.weights.h5")
    assert same_weights(model, load_model(tmp_path / "m.json", weights=tmp_path / "m.weights.h5"))
    with pytest.raises(ModelFileError, match="without weights.*--weights"):
        load_model(tmp_path / "m.json")
    with pytest.raises(ModelFileError, match="holds only weights"):
        load_model(tmp_path / "m.weights.h5")
    with pytest.raises(ModelFileError, match="Weights file .* does not exist"):
        load_model(tmp_path / "m.json", weights=tmp_path / "nope.h5")


def test_json_with_mismatched_weights(tmp_path):
    (tmp_path / "m.json").write_text(tiny().to_json())
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(ModelFileError, match="other.weights.h5"):
        load_model(tmp_path / "m.json", weights=tmp_path / "other.weights.h5")


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".json"])
def test_safe_mode_refuses_code_and_names_the_flag(tmp_path, suffix):
    model = with_lambda()
    path = tmp_path / f"m{suffix}"
    weights = None
    if suffix == ".json":
        path.write_text(model.to_json())
        weights = tmp_path / "m.weights.h5"
        model.save_weights(weights)
    else:
        model.save(path)
    with pytest.raises(ModelFileError, match="--unsafe"):
        load_model(path, weights=weights)
    loaded = load_model(path, weights=weights, safe_mode=False)
    x = np.ones((1, 3), "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.keras")
    with pytest.raises(ModelFileError, match="is a folder"):
        load_model(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFileError, match="unknown extension"):
        load_model(tmp_path / "notes.txt")
    (tmp_path / "text.keras").write_text("not a zip file")
    with pytest.raises(ModelFileError, match="Cannot load .*text.keras"):
        load_model(tmp_path / "text.keras")
    tiny().save(tmp_path / "good.keras")
    data = (tmp_path / "good.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="Cannot load .*cut.keras"):
        load_model(tmp_path / "cut.keras")
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "w.weights.h5").write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a JSON model architecture"):
        load_model(tmp_path / "bad.json", weights=tmp_path / "w.weights.h5")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="no `class_name`"):
        load_model(tmp_path / "list.json", weights=tmp_path / "w.weights.h5")


def test_check_output_path(tmp_path):
    out = tmp_path / "out.keras"
    assert check_output_path(out) == out
    out.write_text("x")
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        check_output_path(out)
    assert check_output_path(out, overwrite=True) == out
    with pytest.raises(ValueError, match="is the input file"):
        check_output_path(out, overwrite=True, inputs=[out])
    with pytest.raises(ValueError, match="does not exist; create it first"):
        check_output_path(tmp_path / "no" / "out.keras")
    with pytest.raises(ValueError, match="does not exist"):
        check_output_path(out / "inside.keras")  # parent is a file
    with pytest.raises(ValueError, match="must end with one of .keras"):
        check_output_path(tmp_path / "out.txt", suffixes=(".keras", ".h5"))
    with pytest.raises(ValueError, match="is a folder"):
        check_output_path(tmp_path, overwrite=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, read-only on Linux")
def test_unwritable_output_folder_is_refused():
    with pytest.raises(ValueError, match="not writable"):
        check_output_path("/proc/out.keras")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_is_refused(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="not writable"):
            check_output_path(tmp_path / "out.keras")
    finally:
        tmp_path.chmod(0o755)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def failing(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.keras", failing)
    assert list(tmp_path.iterdir()) == []


def test_save_model_round_trip_and_no_silent_overwrite(tmp_path):
    model = tiny()
    save_model(model, tmp_path / "m.keras")
    assert same_weights(model, load_model(tmp_path / "m.keras"))
    with pytest.raises(ValueError, match="already exists"):
        save_model(model, tmp_path / "m.keras")
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
