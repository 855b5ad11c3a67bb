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
