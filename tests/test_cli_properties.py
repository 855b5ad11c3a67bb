"""Property-based CLI test: whatever the subcommand, flags and inputs, nothing is lost.

For every drawn command line, run in a scratch folder holding real small models, data and
damaged copies of them: no Python traceback, an exit code in {0, 1, 2, 130}, no file outside
the named output changed or removed (the whole folder is hashed before and after), and on
failure no output file.
"""

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keras_prune.cli import main

pytestmark = pytest.mark.tensorflow_only

MODELS = ["model.keras", "conv.keras", "truncated.keras", "flipped.keras", "data.npz", "notes.txt",
          "missing.keras", ".", "..", "results", "model.h5"]
DATA = ["data.npz", "wrong_shape.npz", "nan.npz", "model.keras", "missing.npz", ".", "results"]
OUTPUTS = ["out.keras", "out.h5", "out.kpsparse", "out.tflite", "out.txt", "model.keras", "notes.txt",
           "results/out.keras", "results", ".", "..", "missing/out.keras", "ck/out.keras", "out"]
NUMBERS = ["0", "0.5", "0.9", "1", "1.5", "-1", "nan", "inf", "abc", "2"]

# Per subcommand: flags it needs (drawn every time, mostly with valid values, so most draws get
# past argument parsing) and optional flags (drawn at random).
EPOCHS = ["1", "1", "0", "-1", "x"]
REQUIRED = {
    "prune": [("--sparsity", ["0.5", "0.5", *NUMBERS])],
    "finetune": [("--data", ["data.npz", "data.npz", *DATA]), ("--sparsity", ["0.5", "0.5", *NUMBERS]),
                 ("--epochs", EPOCHS)],
    "shrink": [("--ratio", ["0.5", "0.5", *NUMBERS])],
    "strip": [],
    "export": [],
    "size": [("--no-litert", None)],
    "inspect": [],
}
OPTIONAL = {
    "prune": [("--scope", ["layer", "global", "x"]), ("--pattern", ["2:4", "block:1x4", "block:1000x1000", "x"]),
              ("--layers", ["hidden", "nothing", "["]), ("--exclude", ["logits", "nothing"]),
              ("--overwrite", None), ("--report", ["report.json", "notes.txt", "results"])],
    "finetune": [("--batch-size", ["16", "0", "100000"]), ("--learning-rate", ["0.01", "-1", "0", "nan"]),
                 ("--checkpoint-dir", [".", "..", "results", "ck", "new_ck"]), ("--restart", None),
                 ("--pattern", ["2:4", "block:1000x1000"]), ("--exclude", ["logits", "nothing"]),
                 ("--loss", ["sparse_categorical_crossentropy", "nonsense"]), ("--overwrite", None),
                 ("--quiet", None)],
    "shrink": [("--round-to", ["1", "8", "0", "-2"]), ("--data", DATA), ("--epochs", EPOCHS),
               ("--checkpoint-dir", [".", "results", "ck"]), ("--overwrite", None), ("--quiet", None)],
    "strip": [("--overwrite", None), ("--keep-optimizer", None)],
    "export": [("--values", ["float32", "float16", "int8", "x"]), ("--format", ["kpsparse", "tflite", "x"]),
               ("--overwrite", None)],
    "size": [("--json", None)],
    "inspect": [("--json", None)],
}
WRITES_OUTPUT = {"prune", "finetune", "shrink", "strip", "export"}


def _mlp():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(3, name="logits")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _conv():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="logits")])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The scratch folder every example starts from (copied fresh for each)."""
    root = tmp_path_factory.mktemp("pristine")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 8)).astype("float32")
    y = rng.integers(0, 3, size=48)
    np.savez(root / "data.npz", x_train=x[:32], y_train=y[:32], x_val=x[32:], y_val=y[32:])
    np.savez(root / "wrong_shape.npz", x_train=x[:, :5], y_train=y)
    bad = x.copy()
    bad[3, 2] = np.nan
    np.savez(root / "nan.npz", x_train=bad, y_train=y)
    _mlp().save(root / "model.keras")
    _mlp().save(root / "model.h5")
    _conv().save(root / "conv.keras")
    payload = (root / "model.keras").read_bytes()
    (root / "truncated.keras").write_bytes(payload[: len(payload) // 2])
    flipped = bytearray(payload)
    for i in range(200, len(flipped), 97):
        flipped[i] ^= 0xFF
    (root / "flipped.keras").write_bytes(bytes(flipped))
    (root / "notes.txt").write_text("the user's own notes\n")
    (root / "results").mkdir()
    (root / "results" / "old_model.keras").write_bytes(payload)
    (root / "ck").mkdir()
    (root / "ck" / "keep.txt").write_text("not keras-prune's\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (its parent's files too, for '..'), by path, with its hash."""
    files = {}
    for path in [*root.rglob("*"), *root.parent.glob("*")]:
        if path.is_file():
            files[str(path.resolve())] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(REQUIRED)))
    argv = [command, draw(st.sampled_from(["model.keras", "model.keras", *MODELS]))]
    if command in WRITES_OUTPUT and draw(st.integers(0, 9)):  # an output, nearly always
        argv += ["-o", draw(st.sampled_from(["out.keras", "out.kpsparse", *OUTPUTS]))]
    optional = draw(st.lists(st.sampled_from(OPTIONAL[command]), max_size=3, unique_by=lambda f: f[0]))
    for flag, values in REQUIRED[command] + optional:
        if flag in argv:
            continue
        argv.append(flag)
        if values is not None:
            argv.append(draw(st.sampled_from(values)))
    return argv


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(argv=command_lines())
def test_no_traceback_no_loss_no_partial_output(pristine, tmp_path_factory, argv):
    root = tmp_path_factory.mktemp("scratch") / "work"
    shutil.copytree(pristine, root)
    before = snapshot(root)
    stderr, stdout = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = main(list(argv))
    finally:
        os.chdir(cwd)
        keras.backend.clear_session()
    err = stderr.getvalue()
    event(f"{argv[0]} exit {code}")
    assert "Traceback (most recent call last)" not in err, (argv, err)
    assert code in (0, 1, 2, 130), (argv, code, err)

    output = None
    if "-o" in argv:
        output = str((root / argv[argv.index("-o") + 1]).resolve())
    after = snapshot(root)
    for path, digest in before.items():
        if path == output and code == 0:
            continue
        assert after.get(path) == digest, (argv, code, err, f"{path} changed or removed")
    added = set(after) - set(before)
    if code == 0:
        assert added <= {output} | {p for p in added if p.endswith(".json")}, (argv, added)
    else:
        assert output not in added, (argv, code, err, "failed run left its output")
        assert all(not Path(p).name.startswith(".") or "checkpoint" in p or ".ckpt" in p
                   for p in added), (argv, added, "temporary file left behind")
