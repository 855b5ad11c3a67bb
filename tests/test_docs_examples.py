"""The runnable examples of docs/distributed.md run as written and print what the page says.

Each example sets up its devices before its backend starts, so it runs in a fresh process.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"


def example(name: str) -> str:
    match = re.search(rf"<!-- example:{name} -->\n```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert match, f"no example:{name} block in {DOC.name}"
    return match.group(1)


def run(code: str, folder: Path, backend: str) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.tensorflow_only
def test_mirrored_strategy_example_prints_the_exact_sparsity(tmp_path):
    assert run(example("mirrored"), tmp_path, "tensorflow") == "[0.8, 0.8]"
    assert (tmp_path / "pruned.keras").is_file()


def test_model_parallel_example_prints_the_mask_layout(tmp_path):
    pytest.importorskip("jax")
    assert run(example("jax"), tmp_path, "jax") == "P(None, 'model')"
