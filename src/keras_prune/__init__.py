"""keras-prune: prune trained Keras 3 models, and measure what it buys.

Example:
    >>> import keras, keras_prune
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> pruned = keras_prune.prune_low_magnitude(model, keras_prune.ConstantSparsity(0.5, 0))
    >>> # pruned.compile(...); pruned.fit(x, y, callbacks=[keras_prune.UpdatePruningStep()])
    >>> final = keras_prune.strip_pruning(pruned)
"""

import importlib as _importlib
import os as _os
import sys as _sys

# Each public name and the module that defines it.
_EXPORTS = {
    "keras_prune.allocation": ("Allocation", "allocate"),
    "keras_prune.analysis": ("PruningReport", "summarize"),
    "keras_prune.budget": ("prune_to_budget",),
    "keras_prune.calibrated": ("oneshot_prune",),
    "keras_prune.callbacks": ("PruningSummaries", "UpdatePruningStep"),
    "keras_prune.clustering": ("CentroidInitialization", "ClusteredModel", "cluster_weights", "is_clustered",
                               "plan_clusters", "strip_clustering"),
    "keras_prune.export": ("SparseFormatError", "export_litert", "export_sparse", "load_sparse"),
    "keras_prune.handlers": ("LayerHandler", "register_handler"),
    "keras_prune.iterative": ("iterative_prune",),
    "keras_prune.legacy": ("conversion_of",),  # also registers Keras 2's hard_sigmoid for loading
    "keras_prune.oneshot": ("magnitude_prune",),
    "keras_prune.prune": ("PruningPolicy", "prune_low_magnitude", "strip_pruning"),
    "keras_prune.pruned_model": ("PrunedModel",),
    "keras_prune.registry": ("PrunableLayer", "UnsupportedLayerError"),
    "keras_prune.schedules": ("ConstantSparsity", "PolynomialDecay", "PruningSchedule"),
    "keras_prune.sensitivity": ("SensitivityResult", "sensitivity"),
    "keras_prune.structured": ("GradualChannelPruning", "fold_batchnorm", "prune_channels"),
    "keras_prune.wrapper": ("PruneLowMagnitude",),
}


def _load_api() -> None:
    """Imports the API (Keras with it), which also registers keras-prune's serializable classes."""
    for module, names in _EXPORTS.items():
        loaded = _importlib.import_module(module)
        globals().update({name: getattr(loaded, name) for name in names})


def __getattr__(name: str):
    if any(name in names for names in _EXPORTS.values()):
        _load_api()
        return globals()[name]
    raise AttributeError(f"module 'keras_prune' has no attribute {name!r}")


# The `keras-prune` command imports Keras only when a subcommand needs it, after quieting
# TensorFlow's logs (and `--help` never does); everyone else gets the whole API at import.
if _os.path.basename(_sys.argv[0] if _sys.argv else "") not in ("keras-prune", "keras-prune.exe"):
    _load_api()

__version__ = "0.1.0"

__all__ = [
    "Allocation",
    "CentroidInitialization",
    "ClusteredModel",
    "ConstantSparsity",
    "GradualChannelPruning",
    "LayerHandler",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneLowMagnitude",
    "PrunedModel",
    "PruningPolicy",
    "PruningReport",
    "PruningSchedule",
    "PruningSummaries",
    "SensitivityResult",
    "SparseFormatError",
    "UnsupportedLayerError",
    "UpdatePruningStep",
    "allocate",
    "cluster_weights",
    "conversion_of",
    "export_litert",
    "export_sparse",
    "fold_batchnorm",
    "load_sparse",
    "is_clustered",
    "iterative_prune",
    "magnitude_prune",
    "oneshot_prune",
    "plan_clusters",
    "prune_channels",
    "prune_low_magnitude",
    "prune_to_budget",
    "register_handler",
    "sensitivity",
    "strip_clustering",
    "strip_pruning",
    "summarize",
]
