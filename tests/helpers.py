"""Tiny deterministic models and data shared by the tests."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest


def dense_data(n=256, features=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (np.abs(x[:, :classes]).argmax(axis=1)).astype("int64")
    return x, y


def mlp(features=16, classes=3):
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(24, activation="relu", name="hidden"),
            keras.layers.Dense(classes, name="logits"),
        ],
        name="mlp",
    )


def compile_classifier(model, optimizer="adam", **kwargs):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def zero_fraction(array):
    return float(np.mean(keras.ops.convert_to_numpy(array) == 0))


def run_cli(capsys, *argv):
    """Runs ``keras-prune ARGV`` in-process; returns ``(exit code, stdout, stderr)``."""
    from keras_prune.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_failure(code, err, *phrases):
    """Exit 1 with one line on stderr, no traceback, holding every phrase."""
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# -- pruning either way: the model-level core (PrunedModel) or tfmot-style wrappers -------------


def prune_functions():
    """``{"core": keras_prune.prune_low_magnitude, "tfmot": the tfmot-compatible one}``.

    Both take the same keyword arguments (``pruning_policy`` only on the tfmot path); the core
    returns a ``PrunedModel`` holding the model, the tfmot path a model of wrappers.
    """
    import keras_prune
    import keras_prune.compat.tfmot as tfmot

    return {"core": keras_prune.prune_low_magnitude, "tfmot": tfmot.sparsity.keras.prune_low_magnitude}


def pruned_variables(pruned):
    """Every pruned weight variable of a model pruned either way, in mask order."""
    from keras_prune.callbacks import collect_pruning

    return [w for state in collect_pruning(pruned) for w in state.prunable_weights()]


def pruned_masks(pruned):
    """The boolean masks (``True`` keeps) of every pruned weight, in the order of ``pruned_variables``."""
    from keras_prune.callbacks import collect_pruning

    return [keep for state in collect_pruning(pruned) for keep in state.masks()]


def pruning_steps(pruned):
    """The pruning step counter of each pruning state (one for a PrunedModel, one per wrapper)."""
    from keras_prune.callbacks import collect_pruning

    return [int(keras.ops.convert_to_numpy(state.pruning_step)) for state in collect_pruning(pruned)]


def pruned_kernel(pruned, layer_name):
    """The pruned kernel of the layer named ``layer_name``, as numpy, in a model pruned either way."""
    found = [w for w in pruned_variables(pruned) if w.path.split("/")[-2:] == [layer_name, "kernel"]]
    assert len(found) == 1, [w.path for w in pruned_variables(pruned)]
    return keras.ops.convert_to_numpy(found[0])


def twin(model):
    """A separate model of the same class and config with the same weights (to prune twice)."""
    copy = model.__class__.from_config(model.get_config())
    if not copy.built:
        copy.build_from_config(model.get_build_config())
    copy.set_weights(model.get_weights())
    return copy


@keras.saving.register_keras_serializable(package="keras_prune_tests")
class GatedBlock(keras.layers.Layer):
    """A custom layer holding an EinsumDense and a Dense, plus a weight of its own (left dense)."""

    def __init__(self, units=12, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.up = keras.layers.EinsumDense("bi,ih->bh", output_shape=(2 * units,), bias_axes="h", name="up")
        self.down = keras.layers.Dense(units, name="down")

    def build(self, input_shape):
        self.up.build(input_shape)
        self.down.build((*input_shape[:-1], self.units))
        self.gain = self.add_weight(name="gain", shape=(self.units,), initializer="ones")

    def call(self, x):
        value, gate = keras.ops.split(self.up(x), 2, axis=-1)
        return self.down(value * keras.ops.sigmoid(gate)) * self.gain

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def block_model(features=16, classes=3):
    """A functional classifier whose middle layer is a ``GatedBlock`` (pruned inside it)."""
    inputs = keras.Input((features,))
    hidden = keras.layers.Dense(24, activation="relu", name="stem")(inputs)
    hidden = GatedBlock(name="block")(hidden)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(hidden), name="blocky")


# -- benchmark scripts, run by the slow tests ---------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
BENCHMARK_DATA = ("tinyshakespeare/input.txt", "mnist", "cifar10-jpg/CIFAR-10-images.tar")


def load_benchmark(name: str, needs: tuple[str, ...] = BENCHMARK_DATA):
    """``benchmarks/<name>.py`` as a module; skips the test when the shared data it ``needs`` is missing."""
    for needed in needs:
        if not (DATA_DIR / needed).exists():
            pytest.skip(f"{needed} is not in {DATA_DIR}")
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
