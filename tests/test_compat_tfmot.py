"""The seed's third example runs on Keras 3 after changing only its import."""

import keras
import numpy as np
import pytest

import keras_prune.compat.tfmot as tfmot

from helpers import dense_data

pytestmark = pytest.mark.core


def test_seed_example_three_runs_with_only_the_import_changed(tmp_path):
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    x, labels = dense_data()
    y = keras.utils.to_categorical(labels, 3)

    # --- the seed's code, unchanged apart from the import above ---
    pruning_params = {
        'pruning_schedule': tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.3,
                                                                 final_sparsity=0.7,
                                                                 begin_step=0,
                                                                 end_step=1000)
    }

    prune_low_magnitude = tfmot.sparsity.keras.prune_low_magnitude
    model_for_pruning = prune_low_magnitude(model, **pruning_params)
    # ... training loop using model_for_pruning ...
    model_for_pruning.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model_for_pruning.fit(x, y, epochs=1, batch_size=32, verbose=0,
                          callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    model = tfmot.sparsity.keras.strip_pruning(model_for_pruning)
    # --- end of the seed's code ---

    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    assert np.mean(kernel == 0) == pytest.approx(0.3, abs=0.002)  # first update: step 0
    assert type(model.layers[0]) is keras.layers.Dense


def test_tfmot_names_and_argument_order():
    k = tfmot.sparsity.keras
    for name in ["prune_low_magnitude", "strip_pruning", "prune_scope", "UpdatePruningStep",
                 "PruningSummaries", "ConstantSparsity", "PolynomialDecay", "PrunableLayer"]:
        assert hasattr(k, name), name
    layer = k.prune_low_magnitude(keras.layers.Dense(2), k.ConstantSparsity(0.5, 0), (1, 1), "MAX",
                                  None, (2, 4))
    assert layer.block_pooling_type == "MAX" and layer.sparsity_m_by_n == (2, 4)


def test_prune_scope_loads_saved_pruning_models(tmp_path):
    k = tfmot.sparsity.keras
    model = k.prune_low_magnitude(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    path = str(tmp_path / "m.keras")
    model.save(path)
    with k.prune_scope():
        loaded = keras.models.load_model(path)
    assert type(loaded.layers[0]).__name__ == "PruneLowMagnitude"
