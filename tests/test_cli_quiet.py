"""A quiet command line: no TensorFlow C++ log lines before a command's output, warnings once on
one line, ``--verbose`` to see everything, and ``--help`` without importing Keras."""

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import pytest

from keras_prune.cli import quiet

from helpers import run_cli

# A TensorFlow C++ (absl) log line, as it appears before absl is set up or after.
CPP_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|^WARNING: All log messages before absl::")


def keras_prune_command() -> list[str]:
    """The installed ``keras-prune`` script, or the same entry point through Python."""
    script = Path(sys.executable).with_name("keras-prune")
    if script.is_file():
        return [sys.executable, str(script)]
    wrapper = "import sys; sys.argv[0] = 'keras-prune'; from keras_prune.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", wrapper]


def clean_environment() -> dict:
    """This process's environment without the settings that would hide logs on their own."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("TF_CPP_", "KERAS_PRUNE_DEBUG", "PYTHONWARNINGS"))}


@pytest.mark.core
def test_help_imports_neither_keras_nor_tensorflow():
    probe = (
        "import sys; sys.argv[0] = 'keras-prune'\n"  # as the installed script starts
        "from keras_prune.cli import main\n"
        "code = main(['--help'])\n"
        "print(code, 'keras' in sys.modules, 'tensorflow' in sys.modules, 'jax' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env=clean_environment(), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 False False False", done.stdout[-500:]
    assert done.stderr == "", done.stderr


@pytest.mark.tensorflow_only
def test_a_command_prints_no_tensorflow_log_lines(tmp_path):
    keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="hidden")]).save(tmp_path / "m.keras")
    done = subprocess.run([*keras_prune_command(), "inspect", "m.keras"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=clean_environment(), check=False)
    assert done.returncode == 0 and "hidden" in done.stdout, done.stderr
    assert [line for line in done.stderr.splitlines() if CPP_LOG.match(line)] == [], done.stderr
    assert done.stderr == "", done.stderr


@pytest.mark.core
def test_verbose_goes_before_or_after_the_command(capsys, tmp_path):
    keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]).save(tmp_path / "m.keras")
    assert run_cli(capsys, "--verbose", "inspect", tmp_path / "m.keras")[0] == 0
    assert run_cli(capsys, "inspect", tmp_path / "m.keras", "--verbose")[0] == 0
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "--verbose" in out and "convert" in out


@pytest.mark.core
def test_warnings_are_shown_once_on_one_line(capsys):
    absl = logging.getLogger("absl")
    handlers = absl.handlers[:]
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("always")
        for _ in range(3):
            warnings.warn("The model has no loss.\nSee the documentation for details.", stacklevel=1)
        absl.warning("Layer 'x' was not built.\nIt will be built on its first call.")
        absl.warning("Layer 'x' was not built.\nIt will be built on its first call.")
        logging.getLogger("tensorflow").warning("5 out of the last 5 calls to f triggered tf.function retracing.")
    assert capsys.readouterr().err.splitlines() == ["warning: The model has no loss.",
                                                    "warning: Layer 'x' was not built."]
    assert absl.handlers == handlers  # restored after the command


@pytest.mark.core
def test_verbose_leaves_warnings_and_loggers_as_they_are():
    show, handlers = warnings.showwarning, logging.getLogger("tensorflow").handlers[:]
    with quiet(enabled=False):
        assert warnings.showwarning is show and logging.getLogger("tensorflow").handlers == handlers
    with quiet():
        assert warnings.showwarning is not show
    assert warnings.showwarning is show and logging.getLogger("tensorflow").handlers == handlers


@pytest.mark.core
def test_convert_has_a_complete_help(capsys):
    code, out, _ = run_cli(capsys, "convert", "--help")
    assert code == 0
    for phrase in ("SavedModel", "--overwrite", "--custom-objects", "hard_sigmoid", "examples:", "keras-prune convert"):
        assert phrase in out, phrase
