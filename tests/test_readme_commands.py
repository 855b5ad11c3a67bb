"""The README's `keras-prune` command lines run as written, on a small real model.

Each ```bash block of README.md runs in its own folder holding the files its commands read
(model.keras, and every .npz named after --data); the commands of a block run in order, so a
later one reads what an earlier one wrote. Optional parts written as [--flag value] run
included (`--litert` only on the TensorFlow backend). `demo` runs with tiny settings appended
(one epoch each), since the last value of a flag wins. A README edit that breaks a command
breaks this test.
"""

import itertools
import re
import shlex
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_prune.cli import main

pytestmark = pytest.mark.core

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_DEMO = ["--epochs", "1", "--prune-epochs", "1", "--batch-size", "256", "--no-progress"]
DOCUMENTED = {"inspect", "prune", "strip", "finetune", "shrink", "export", "size", "demo", "analyze", "convert",
              "cluster"}
TENSORFLOW_FLAGS = {"--litert"}  # LiteRT measurements; dropped on the other backends


def bash_blocks(text: str) -> list[list[str]]:
    """The `keras-prune ...` lines of every ```bash block that has some."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        lines = [line.strip() for line in body.splitlines() if line.strip().startswith("keras-prune ")]
        if lines:
            blocks.append(lines)
    return blocks


def arguments(line: str) -> list[str]:
    """The arguments of a README command line: comments dropped, [optional parts] included."""
    return shlex.split(line.replace("[", " ").replace("]", " "), comments=True)[1:]


def model():
    """A small CNN with BatchNorm, trained one epoch with Adam: what a user brings."""
    net = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", name="conv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(16, 3, name="conv2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = data()
    net.fit(x, y, epochs=1, verbose=0)
    return net


def data(n=64):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1)).astype("float32"), rng.integers(0, 3, n).astype("int64")


def prepare(folder: Path, commands: list[list[str]]) -> None:
    """Writes the input files the commands name: model.keras and every --data/--calibration .npz."""
    model().save(folder / "model.keras")
    model().save(folder / "model.h5")  # what `convert` reads
    for argv in commands:
        for flag, value in itertools.pairwise(argv):
            if flag in ("--data", "--calibration") and value.endswith(".npz"):
                x, y = data()
                np.savez(folder / value, x_train=x, y_train=y)


def outputs(argv: list[str]) -> list[str]:
    return [value for flag, value in itertools.pairwise(argv) if flag in ("-o", "--output", "--output-dir")]


def test_readme_has_the_commands_this_test_runs():
    blocks = bash_blocks(README.read_text())
    commands = {arguments(line)[0] for block in blocks for line in block}
    assert DOCUMENTED <= commands, f"README no longer shows {sorted(DOCUMENTED - commands)}"


@pytest.mark.parametrize("index", range(len(bash_blocks(README.read_text()))))
def test_readme_command_block_runs(index, tmp_path, monkeypatch, capsys):
    lines = bash_blocks(README.read_text())[index]
    commands = [arguments(line) for line in lines]
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path, commands)
    for line, argv in zip(lines, commands):
        if argv[0] == "demo":
            argv = [*argv, *TINY_DEMO]
        if keras.backend.backend() != "tensorflow":
            argv = [arg for arg in argv if arg not in TENSORFLOW_FLAGS]
        code = main(argv)
        _, err = capsys.readouterr()
        assert code == 0, f"`{line}` exited {code}: {err}"
        assert "Traceback" not in err, err
        for path in outputs(argv):
            assert (tmp_path / path).exists(), f"`{line}` did not write {path}"
