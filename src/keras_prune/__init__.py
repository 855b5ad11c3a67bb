"""keras-prune: prune trained Keras 3 models, and measure what it buys.

Example:
    >>> import keras, keras_prune
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> pruned = keras_prune.prune_low_magnitude(model, keras_prune.ConstantSparsity(0.5, 0))
    >>> # pruned.compile(...); pruned.fit(x, y, callbacks=[keras_prune.UpdatePruningStep()])
    >>> final = keras_prune.strip_pruning(pruned)
"""

from keras_prune.allocation import Allocation, allocate
from keras_prune.analysis import PruningReport, summarize
from keras_prune.budget import prune_to_budget
from keras_prune.calibrated import oneshot_prune
from keras_prune.callbacks import PruningSummaries, UpdatePruningStep
from keras_prune.export import SparseFormatError, export_litert, export_sparse, load_sparse
from keras_prune.handlers import LayerHandler, register_handler
from keras_prune.iterative import iterative_prune
from keras_prune.oneshot import magnitude_prune
from keras_prune.prune import PruningPolicy, prune_low_magnitude, strip_pruning
from keras_prune.pruned_model import PrunedModel
from keras_prune.registry import PrunableLayer, UnsupportedLayerError
from keras_prune.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_prune.sensitivity import SensitivityResult, sensitivity
from keras_prune.structured import GradualChannelPruning, fold_batchnorm, prune_channels
from keras_prune.wrapper import PruneLowMagnitude

__version__ = "0.1.0"

__all__ = [
    "Allocation",
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
    "export_litert",
    "export_sparse",
    "fold_batchnorm",
    "load_sparse",
    "iterative_prune",
    "magnitude_prune",
    "oneshot_prune",
    "prune_channels",
    "prune_low_magnitude",
    "prune_to_budget",
    "register_handler",
    "sensitivity",
    "strip_pruning",
    "summarize",
]
