"""Keras internals are used only in ``keras_prune._keras_compat``, so a Keras upgrade touches one file."""

import re
from pathlib import Path

import pytest

import keras_prune

pytestmark = pytest.mark.core

SOURCE = Path(keras_prune.__file__).parent
COMPAT = SOURCE / "_keras_compat.py"
PRIVATE = re.compile(
    r"\bkeras\.src\b|\b_flatten_layers\b|\b_keras_history\b|\b_inbound_nodes\b|\b_tracker\b"
    r"|\b_build_shapes_dict\b|\b_input_shape_arg\b|\b_deferred_initialize\b"
)


def test_keras_internals_only_in_compat_module():
    found = [
        f"{path.relative_to(SOURCE)}:{number}: {line.strip()}"
        for path in sorted(SOURCE.rglob("*.py"))
        if path != COMPAT
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert not found, "Keras internals outside _keras_compat.py:\n" + "\n".join(found)


def test_compat_module_still_has_them():
    # The pattern is live: the one module allowed to use them does.
    assert PRIVATE.search(COMPAT.read_text(encoding="utf-8"))
