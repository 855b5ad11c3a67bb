"""The inspect, prune and strip commands, and their one-line errors for bad input."""

import json
import sys

import keras
import numpy as np
import pytest

from keras_prune import ConstantSparsity, prune_low_magnitude

from helpers import assert_one_line_failure, run_cli

pytestmark = pytest.mark.core


@keras.saving.register_keras_serializable(package="keras_prune_tests")
class Scale(keras.layers.Layer):
    """A custom layer with a weight and no pruning declaration."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


def cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ]
    )


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.keras"
    cnn().save(path)
    return path


def kernel(path, name):
    return keras.ops.convert_to_numpy(keras.saving.load_model(path).get_layer(name).kernel)


def test_prune_writes_pruned_model_and_prints_table(capsys, tmp_path, model_file):
    out = tmp_path / "pruned.keras"
    code, stdout, _ = run_cli(capsys, "prune", model_file, "-o", out, "--sparsity", "0.75", "--exclude", "logits")
    assert code == 0
    assert np.mean(kernel(out, "hidden") == 0) == 0.75 and np.mean(kernel(out, "conv") == 0) == 0.75
    assert np.count_nonzero(kernel(out, "logits") == 0) == 0
    assert "hidden" in stdout and "75.0%" in stdout and "total" in stdout
    assert np.count_nonzero(kernel(model_file, "hidden") == 0) == 0  # input untouched


def test_prune_global_threshold_pattern_and_report(capsys, tmp_path, model_file):
    out, report = tmp_path / "g.keras", tmp_path / "g.json"
    assert run_cli(capsys, "prune", model_file, "-o", out, "--sparsity", "0.5", "--scope", "global",
               "--report", report)[0] == 0
    data = json.loads(report.read_text())
    assert data["settings"]["scope"] == "global" and data["totals"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    out = tmp_path / "t.keras"
    assert run_cli(capsys, "prune", model_file, "-o", out, "--threshold", "0.1", "--layers", "hidden")[0] == 0
    hidden = kernel(out, "hidden")
    assert np.abs(hidden[hidden != 0]).min() > 0.1 and np.count_nonzero(kernel(out, "conv") == 0) == 0
    out = tmp_path / "nm.keras"
    code, stdout, _ = run_cli(capsys, "prune", model_file, "-o", out, "--pattern", "2:4", "--layers", "hidden")
    assert code == 0 and "2:4" in stdout
    groups = (kernel(out, "hidden") == 0).T.reshape(-1, 4)
    assert (groups.sum(axis=1) == 2).all()
    out = tmp_path / "b.keras"
    code, stdout, _ = run_cli(capsys, "prune", model_file, "-o", out, "--sparsity", "0.5", "--pattern", "block:4x4",
                          "--layers", "hidden")
    assert code == 0 and "block 4x4" in stdout


def test_inspect_table_and_json(capsys, tmp_path, model_file):
    code, stdout, _ = run_cli(capsys, "inspect", model_file)
    assert code == 0 and "conv" in stdout and "Conv2D" in stdout and "dense" in stdout
    code, stdout, _ = run_cli(capsys, "inspect", model_file, "--json")
    data = json.loads(stdout)
    assert code == 0 and [row["path"] for row in data["layers"]] == ["conv", "hidden", "logits"]
    assert data["totals"]["params"] == 40 + 144 * 16 + 16 + 51


def test_strip_removes_wrappers(capsys, tmp_path):
    pruned = prune_low_magnitude(cnn(), ConstantSparsity(0.5, 0))
    pruned.save(tmp_path / "wrapped.keras")
    out = tmp_path / "stripped.keras"
    code, stdout, _ = run_cli(capsys, "strip", tmp_path / "wrapped.keras", "-o", out)
    assert code == 0 and "hidden" in stdout
    names = [layer.name for layer in keras.saving.load_model(out).layers]
    assert names == ["conv", "flatten", "hidden", "logits"]
    code, _, err = run_cli(capsys, "strip", out, "-o", tmp_path / "again.keras")  # nothing to strip
    assert code == 0 and "holds no pruning state; writing it as it is" in err and len(err.strip().splitlines()) == 1
    assert [layer.name for layer in keras.saving.load_model(tmp_path / "again.keras").layers] == names


BAD_PRUNE_ARGUMENTS = [
    (["--sparsity", "1.5"], ["--sparsity must be in [0, 1)", "1.5"]),
    (["--sparsity", "-0.1"], ["--sparsity must be in [0, 1)", "-0.1"]),
    (["--sparsity", "abc"], ["--sparsity must be a number", "abc"]),
    (["--threshold", "-1"], ["--threshold must be a finite number >= 0"]),
    ([], ["Give --sparsity S or --threshold T"]),
    (["--pattern", "4:2"], ["0 < M < N"]),
    (["--pattern", "zigzag"], ["--pattern must be unstructured"]),
    (["--pattern", "2:4", "--sparsity", "0.5"], ["drop --sparsity"]),
    (["--sparsity", "0.5", "--layers", "("], ["--layers is not a valid regular expression"]),
    (["--sparsity", "0.5", "--include", "nothing"], ["--layers matches no layer", "nothing"]),  # the earlier name of --layers
    (["--sparsity", "0.5", "--scope", "global", "--pattern", "block:2x2"], ["scope='layer'"]),
]


def test_prune_bad_arguments(capsys, tmp_path, model_file):
    out = tmp_path / "out.keras"
    for args, phrases in BAD_PRUNE_ARGUMENTS:
        code, _, err = run_cli(capsys, "prune", model_file, "-o", out, *args)
        assert_one_line_failure(code, err, *phrases)
    assert not out.exists()


def test_bad_files_and_outputs(capsys, tmp_path, model_file):
    out = tmp_path / "out.keras"
    cases = [
        ([tmp_path / "missing.keras", "-o", out], ["does not exist"]),
        ([model_file, "-o", model_file], ["is the input file"]),
        ([model_file, "-o", tmp_path / "no_dir" / "o.keras"], ["does not exist; create it first"]),
        ([model_file, "-o", tmp_path / "out.txt"], ["must end with one of .keras, .h5"]),
    ]
    (tmp_path / "text.keras").write_text("just text")
    cases.append(([tmp_path / "text.keras", "-o", out], ["Cannot load", "text.keras"]))
    data = model_file.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 3])
    cases.append(([tmp_path / "cut.keras", "-o", out], ["Cannot load", "cut.keras"]))
    for argv, phrases in cases:
        code, _, err = run_cli(capsys, "prune", *argv, "--sparsity", "0.5")
        assert_one_line_failure(code, err, *phrases)
    assert not out.exists() and not (tmp_path / "out.txt").exists()
    out.write_bytes(b"keep me")
    code, _, err = run_cli(capsys, "prune", model_file, "-o", out, "--sparsity", "0.5")
    assert_one_line_failure(code, err, "already exists; pass --overwrite")
    assert out.read_bytes() == b"keep me"
    assert run_cli(capsys, "prune", model_file, "-o", out, "--sparsity", "0.5", "--overwrite")[0] == 0
    assert np.mean(kernel(out, "hidden") == 0) == 0.5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, read-only on Linux")
def test_unwritable_output_folder(capsys, model_file):
    code, _, err = run_cli(capsys, "prune", model_file, "-o", "/proc/pruned.keras", "--sparsity", "0.5")
    assert_one_line_failure(code, err, "not writable")


def test_unsupported_layer_is_left_dense_and_named_and_refused_when_included_alone(capsys, tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d"), Scale(name="scale")])
    model.save(tmp_path / "custom.keras")
    out = tmp_path / "out.keras"
    code, _, err = run_cli(capsys, "prune", tmp_path / "custom.keras", "-o", out, "--sparsity", "0.5", "--layers", "scale")
    assert_one_line_failure(code, err, "'scale'", "PrunableLayer", "--exclude")
    assert not out.exists()
    code, stdout, _ = run_cli(capsys, "prune", tmp_path / "custom.keras", "-o", out, "--sparsity", "0.5")
    assert code == 0 and "unsupported" in stdout and "left dense: scale: holds weights" in stdout
    assert np.all(keras.saving.load_model(out).get_layer("scale").get_weights()[0] == 1.0)
    assert np.mean(kernel(out, "d") == 0) == 0.5


def test_lambda_model_needs_unsafe(capsys, tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x + 1), keras.layers.Dense(4)])
    model.save(tmp_path / "lambda.keras")
    out = tmp_path / "out.keras"
    code, _, err = run_cli(capsys, "prune", tmp_path / "lambda.keras", "-o", out, "--sparsity", "0.5")
    assert_one_line_failure(code, err, "--unsafe")
    assert not out.exists()
    assert run_cli(capsys, "inspect", tmp_path / "lambda.keras", "--unsafe")[0] == 0


def test_nan_weights_are_refused(capsys, tmp_path):
    model = cnn()
    bad = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
    bad[3, 1] = np.inf
    model.get_layer("hidden").kernel.assign(bad)
    model.save(tmp_path / "nan.keras")
    out = tmp_path / "out.keras"
    code, _, err = run_cli(capsys, "prune", tmp_path / "nan.keras", "-o", out, "--sparsity", "0.5")
    assert_one_line_failure(code, err, "hidden", "NaN or infinite")
    assert not out.exists()


def test_json_architecture_input(capsys, tmp_path):
    model = cnn()
    (tmp_path / "arch.json").write_text(model.to_json())
    model.save_weights(tmp_path / "w.weights.h5")
    out = tmp_path / "out.h5"
    code, _, _ = run_cli(capsys, "prune", tmp_path / "arch.json", "--weights", tmp_path / "w.weights.h5",
                     "-o", out, "--sparsity", "0.5")
    assert code == 0 and np.mean(kernel(out, "hidden") == 0) == 0.5


@pytest.mark.parametrize("command", ["inspect", "prune", "strip"])
def test_help_and_usage_errors(capsys, command):
    assert run_cli(capsys, command, "--help")[0] == 0
    assert run_cli(capsys, command)[0] == 2  # MODEL missing
