"""Tiny deterministic models and data shared by the tests."""

import keras
import numpy as np


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
