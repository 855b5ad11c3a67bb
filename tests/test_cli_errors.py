"""Nothing lost, nothing silently wrong: one error path for every command, outputs that appear
only when complete, model files without optimizer state, mixed precision, strip as a no-op."""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_prune
from keras_prune import io
from keras_prune.cli import CLIError, main
from keras_prune.export import litert
from keras_prune.export.sizes import file_sizes

from helpers import run_cli

pytestmark = pytest.mark.core


class Doubler(keras.layers.Layer):
    """A custom layer that is deliberately not registered: its files cannot be loaded."""

    def call(self, x):
        return x * 2


def mlp(units=64):
    return keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(units, activation="relu", name="hidden"),
         keras.layers.Dense(3, name="logits")]
    )


def two_outputs():
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, [keras.layers.Dense(2, name="a")(hidden), keras.layers.Dense(3, name="b")(hidden)])


def trained(model):
    """``model`` compiled with Adam and trained one epoch: it carries optimizer state."""
    rng = np.random.default_rng(0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(rng.normal(size=(32, 16)).astype("float32"), rng.integers(0, 3, 32), epochs=1, verbose=0)
    return model


def assert_failure(code, err, *phrases, lines=1):
    assert code == 1, err
    assert "Traceback" not in err and 'File "' not in err, err
    assert 1 <= len(err.strip().splitlines()) <= lines, err
    for phrase in phrases:
        assert phrase in err, err


def leftovers(folder: Path, *keep: str) -> list[str]:
    """Files in ``folder`` other than ``keep`` (half-written outputs, temporary files)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.keras"
    trained(mlp(512)).save(path)  # large enough for the optimizer's state to show in file sizes
    return path


# -- one error path ----------------------------------------------------------------------------


def test_the_hidden_reason_of_a_load_failure_is_shown(capsys, tmp_path):
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Doubler()]).save(tmp_path / "custom.keras")
    code, _, err = run_cli(capsys, "inspect", tmp_path / "custom.keras")
    assert_failure(code, err, "Could not locate class 'Doubler'", "custom.keras")
    assert "Full object config" not in err

    (tmp_path / "arch.json").write_text(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")]).to_json())
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="d")]).save_weights(tmp_path / "wrong.weights.h5")
    code, _, err = run_cli(capsys, "inspect", tmp_path / "arch.json", "--weights", tmp_path / "wrong.weights.h5")
    assert_failure(code, err, "wrong.weights.h5", "variable.shape=(4, 3)", "value.shape=")
    assert re.search(r"value\.shape=(\(4, 5\)|torch\.Size\(\[4, 5\]\))", err), err  # Keras' words per backend


def failing_fit(*args, **kwargs):
    """Raises the real TensorFlow error of a label out of range, from inside ``fit``."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.zeros((4, 4), "float32"), np.array([0, 1, 2, 7]), verbose=0)


@pytest.mark.tensorflow_only
def test_any_exception_is_one_line_without_traceback(capsys, monkeypatch, model_file):
    monkeypatch.setattr(keras_prune.analysis, "summarize", failing_fit)
    code, _, err = run_cli(capsys, "inspect", model_file)
    assert_failure(code, err, "keras-prune inspect: error:", "Received a label value of 7")


def test_a_wrapped_error_shows_its_innermost_cause(capsys, monkeypatch, model_file):
    def fail(*args, **kwargs):
        try:
            {}["shape"]
        except KeyError as error:
            raise RuntimeError("Something generic failed:\n\n  details follow") from error

    monkeypatch.setattr(keras_prune.analysis, "summarize", fail)
    code, _, err = run_cli(capsys, "inspect", model_file)
    assert_failure(code, err, "Something generic failed: details follow", "caused by KeyError: 'shape'", lines=2)


def test_a_long_message_keeps_its_start_and_its_fix(capsys, monkeypatch, model_file):
    def fail(*args, **kwargs):
        raise CLIError("Cannot do it (" + "a long detail " * 100 + "); pass --the-fix.")

    monkeypatch.setattr(keras_prune.analysis, "summarize", fail)
    code, _, err = run_cli(capsys, "inspect", model_file)
    assert_failure(code, err, "keras-prune inspect: error: Cannot do it (a long", " ... ", "pass --the-fix.")
    assert len(err.strip()) <= 500 and "CLIError" not in err


def test_interrupt_exits_130_and_debug_mode_reraises(capsys, monkeypatch, model_file):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(keras_prune.analysis, "summarize", interrupt)
    code, _, err = run_cli(capsys, "inspect", model_file)
    assert code == 130 and "interrupted" in err and "Traceback" not in err

    monkeypatch.setattr(keras_prune.analysis, "summarize", lambda *a, **k: 1 / 0)
    monkeypatch.setenv("KERAS_PRUNE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["inspect", str(model_file)])
    monkeypatch.setenv("KERAS_PRUNE_DEBUG", "0")
    assert run_cli(capsys, "inspect", model_file)[0] == 1


@pytest.mark.parametrize(
    "argv",
    [[], ["inspect"], ["prune", "m.keras"], ["inspect", "m.keras", "--bogus"], ["nonsense"],
     ["export", "m.keras", "-o", "x.kpsparse", "--values", "int4"], ["demo", "--epochs", "many"]],
)
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "usage:" in err and "Traceback" not in err


def test_help_exits_0_and_documents_exit_codes_and_debugging(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "KERAS_PRUNE_DEBUG=1" in out and "2 usage error" in out
    assert "--keep-optimizer" in run_cli(capsys, "prune", "--help")[1]


def test_subprocess_failures_have_no_traceback(tmp_path):
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Doubler()]).save(tmp_path / "custom.keras")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_PRUNE_DEBUG", None)
    command = [sys.executable, "-m", "keras_prune.cli"]
    done = subprocess.run([*command, "export", "custom.keras", "-o", "c.kpsparse"], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("keras-prune export: error: Cannot load")
    assert "Doubler" in done.stderr and not (tmp_path / "c.kpsparse").exists()
    done = subprocess.run([*command, "prune", "--sparsity"], check=False, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr


# -- outputs appear only when complete ----------------------------------------------------------


def predict(model, x):
    return [keras.ops.convert_to_numpy(o) for o in model(x, training=False)]


def test_multi_output_models_export_and_load(capsys, tmp_path):
    model = two_outputs()
    model.save(tmp_path / "multi.keras")
    code, out, err = run_cli(capsys, "export", tmp_path / "multi.keras", "-o", tmp_path / "o.kpsparse")
    assert code == 0 and "max |output difference| on 8 random inputs: 0" in out, err
    x = np.random.default_rng(0).random((5, 16)).astype("float32")
    loaded = keras_prune.load_sparse(tmp_path / "o.kpsparse")
    for expected, actual in zip(predict(model, x), predict(loaded, x)):
        np.testing.assert_array_equal(expected, actual)
    if keras.backend.backend() == "tensorflow":
        code, out, err = run_cli(capsys, "export", tmp_path / "multi.keras", "-o", tmp_path / "o.tflite")
        assert code == 0 and (tmp_path / "o.tflite").exists(), err
        content = (tmp_path / "o.tflite").read_bytes()
        assert [o.shape for o in litert.litert_outputs(model, content, x)] == [(5, 2), (5, 3)]
        assert litert.litert_max_abs_diff(model, content, x) < 1e-5


@pytest.mark.parametrize("fmt", ["kpsparse", "tflite"])
def test_a_failed_export_check_leaves_no_file(capsys, monkeypatch, tmp_path, model_file, fmt):
    if fmt == "tflite" and keras.backend.backend() != "tensorflow":
        pytest.skip("LiteRT needs the TensorFlow backend")
    monkeypatch.setattr(keras_prune, "load_sparse", lambda *a, **k: np.asarray([[1, 2], [3]]))
    monkeypatch.setattr(litert, "litert_max_abs_diff", lambda *a, **k: np.asarray([[1, 2], [3]]))
    code, _, err = run_cli(capsys, "export", model_file, "-o", tmp_path / f"m.{fmt}")
    assert_failure(code, err, "inhomogeneous")
    assert leftovers(tmp_path, "model.keras") == []


def test_a_failed_save_leaves_no_file(capsys, monkeypatch, tmp_path, model_file):
    def half_then_fail(model, path, include_optimizer=False):
        Path(path).write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "write_model", half_then_fail)
    for argv in (["prune", "--sparsity", "0.5"], ["strip"]):
        code, _, err = run_cli(capsys, argv[0], model_file, "-o", tmp_path / "out.keras", *argv[1:])
        assert_failure(code, err, "No space left on device", lines=2)  # strip adds its note
        assert leftovers(tmp_path, "model.keras") == []
    with pytest.raises(OSError):
        io.save_model(mlp(), tmp_path / "api.keras")
    assert leftovers(tmp_path, "model.keras") == []


# -- no optimizer state unless asked -------------------------------------------------------------


def test_saved_models_have_compile_settings_but_no_optimizer_state(capsys, tmp_path, model_file):
    plain = tmp_path / "plain.keras"
    mlp(512).save(plain)
    pruned, kept, final = tmp_path / "pruned.keras", tmp_path / "kept.keras", tmp_path / "final.keras"
    assert run_cli(capsys, "prune", model_file, "-o", pruned, "--sparsity", "0.5")[0] == 0
    assert run_cli(capsys, "prune", model_file, "-o", kept, "--sparsity", "0.5", "--keep-optimizer")[0] == 0
    assert run_cli(capsys, "strip", pruned, "-o", final)[0] == 0
    size = plain.stat().st_size
    assert pruned.stat().st_size < 1.1 * size and final.stat().st_size < 1.1 * size
    assert kept.stat().st_size > 2 * size  # Adam's two moments per weight
    for path in (pruned, final):
        loaded = io.load_model(path)
        assert loaded.compiled and isinstance(loaded.optimizer, keras.optimizers.Adam)
        assert loaded.get_compile_config()["loss"]["class_name"] == "SparseCategoricalCrossentropy"
        x = np.zeros((4, 16), "float32")
        loaded.fit(x, np.zeros(4, "int64"), verbose=0)  # it trains as it was compiled


def test_export_and_size_measure_the_same_bytes(capsys, tmp_path, model_file):
    pruned = tmp_path / "pruned.keras"
    assert run_cli(capsys, "prune", model_file, "-o", pruned, "--sparsity", "0.8")[0] == 0
    sizes = file_sizes(io.load_model(pruned), litert=False)
    assert sizes["keras"] == pytest.approx(pruned.stat().st_size, rel=0.1)  # + the compile settings


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_model_detaches_the_optimizer_state_only_while_saving(tmp_path, suffix):
    model = trained(mlp(512))
    optimizer, state = model.optimizer, [v.numpy().copy() for v in model.optimizer.variables]
    io.save_model(model, tmp_path / f"small{suffix}")
    io.save_model(model, tmp_path / f"full{suffix}", include_optimizer=True)
    assert model.optimizer is optimizer
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(state, optimizer.variables))
    small, full = (tmp_path / f"small{suffix}").stat().st_size, (tmp_path / f"full{suffix}").stat().st_size
    assert small < 0.5 * full
    loaded = io.load_model(tmp_path / f"small{suffix}")
    assert loaded.compiled and type(loaded.optimizer).__name__ == "Adam"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), loaded.get_weights()))


# -- mixed precision -------------------------------------------------------------------------------


@pytest.fixture
def mixed_file(tmp_path):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = trained(mlp())
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    path = tmp_path / "mixed.keras"
    model.save(path)
    return path


@pytest.mark.tensorflow_only
def test_mixed_precision_models_export_to_litert_and_size(capsys, tmp_path, mixed_file):
    code, out, err = run_cli(capsys, "export", mixed_file, "-o", tmp_path / "m.tflite")
    assert code == 0 and (tmp_path / "m.tflite").exists(), err
    assert float(out.rsplit(":", 1)[1]) < 0.05  # float16 Keras vs its float32 LiteRT copy
    code, out, err = run_cli(capsys, "size", mixed_file)
    assert code == 0 and "LiteRT" in out and ".kpsparse, int8" in out, err


@pytest.mark.tensorflow_only
def test_a_failed_litert_conversion_is_one_line(capfd, monkeypatch, tmp_path, mixed_file):
    monkeypatch.setattr(litert, "float32_copy", lambda model: model)  # convert the float16 graph as is
    code = main(["export", str(mixed_file), "-o", str(tmp_path / "m.tflite")])
    out, err = capfd.readouterr()
    assert code == 1 and not (tmp_path / "m.tflite").exists()
    lines = [line for line in err.strip().splitlines() if "keras-prune" in line or "loc(" in line]
    assert lines == [lines[0]] and "LiteRT conversion failed" in lines[0] and "tf.MatMul" in lines[0], err
    code = main(["size", str(mixed_file)])
    out, err = capfd.readouterr()
    assert code == 0 and ".kpsparse, int8" in out and "LiteRT .tflite" not in out
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no LiteRT row: LiteRT conversion failed" in notes[0] and "loc(" not in err


# -- strip on a model without wrappers ---------------------------------------------------------------


def test_strip_writes_a_model_without_wrappers_as_it_is(capsys, tmp_path, model_file):
    code, _, err = run_cli(capsys, "strip", model_file, "-o", tmp_path / "final.keras")
    assert code == 0 and err.strip() == f"note: '{model_file}' holds no pruning state; writing it as it is."
    original, final = keras.saving.load_model(model_file), io.load_model(tmp_path / "final.keras")
    assert all(np.array_equal(a, b) for a, b in zip(original.get_weights(), final.get_weights()))
    assert (tmp_path / "final.keras").stat().st_size < 0.5 * model_file.stat().st_size
