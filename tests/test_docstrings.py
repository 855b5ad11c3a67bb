"""Docstring examples of the core modules run and give what they show."""

import doctest
import importlib

import pytest

pytestmark = pytest.mark.core

MODULES = ["schedules", "masks", "criteria", "registry", "handlers", "wrapper", "prune", "_host", "structured",
           "structured.fold", "structured.graph", "structured.importance", "structured.plan",
           "structured.gradual", "analysis.flops", "analysis.latency", "export.sparse", "oneshot",
           "iterative", "calibration", "calibrated", "linear_views", "text_data", "compat.schedules",
           "compat.wrapper", "compat.callbacks", "compat.tfmot", "allocation", "evaluation", "sensitivity",
           "budget", "pruned_model", "legacy", "legacy.notes", "legacy.activations", "legacy.objects",
           "legacy.layers", "legacy.config", "legacy.weights", "legacy.loader", "legacy.training", "cli",
           "cli._common", "io", "export.entropy", "export.encodings",
           "clustering", "clustering.centroids", "clustering.plan", "clustering.clustered_model"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"keras_prune.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
