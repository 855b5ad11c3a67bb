"""The seed's third example runs on Keras 3 after changing only its import."""

import keras
import numpy as np
import pytest

import keras_prune as kp
import keras_prune.compat.tfmot as tfmot

from helpers import compile_classifier, dense_data, mlp, pruned_masks, pruning_steps

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
    model_for_pruning.fit(x, y, epochs=1, batch_size=2, verbose=0,
                          callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    model = tfmot.sparsity.keras.strip_pruning(model_for_pruning)
    # --- end of the seed's code ---

    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    # As in tfmot, the first update is at step 100 (the 100th of 128 batches), the only one:
    # 0.7 + (0.3 - 0.7) * (1 - 100 / 1000) ** 3 = 0.4084.
    assert np.mean(kernel == 0) == pytest.approx(0.4084, abs=0.002)
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


def _prune_and_train(prune, model, **kwargs):
    x, labels = dense_data()
    # A keras-prune schedule keeps keras-prune's 0-based steps in the tfmot namespace too.
    pruned = prune(model, kp.PolynomialDecay(0.2, 0.8, begin_step=0, end_step=12, frequency=3), **kwargs)
    compile_classifier(pruned, keras.optimizers.SGD(0.05, momentum=0.9))
    pruned.fit(x, labels, epochs=2, batch_size=32, shuffle=False, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return pruned


@pytest.mark.parametrize("kwargs", [{}, {"scope": "global"}, {"sparsity_m_by_n": (2, 4)}, {"block_size": (4, 1)}],
                         ids=["layer", "global", "2:4", "block"])
def test_tfmot_wrappers_and_the_core_prune_identically(kwargs):
    base = mlp()
    twin = keras.models.clone_model(base)
    twin.set_weights(base.get_weights())
    wrapped = _prune_and_train(tfmot.sparsity.keras.prune_low_magnitude, twin, **kwargs)  # wraps twin's layers
    core = _prune_and_train(kp.prune_low_magnitude, base, **kwargs)  # prunes `base` in place
    assert all(isinstance(layer, kp.PruneLowMagnitude) for layer in wrapped.layers)
    assert isinstance(core, kp.PrunedModel) and core.layer is base
    assert pruning_steps(wrapped) == [16, 16] and pruning_steps(core) == [16]
    for a, b in zip(pruned_masks(wrapped), pruned_masks(core), strict=True):
        np.testing.assert_array_equal(a, b)
    assert 0 < np.mean(~pruned_masks(core)[0]) < 1
    stripped = [tfmot.sparsity.keras.strip_pruning(m) for m in (wrapped, core)]
    for a, b in zip(stripped[0].get_weights(), stripped[1].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_pruning_policy_is_for_the_tfmot_path_only():
    skip_logits = type("SkipLogits", (kp.PruningPolicy,), {"allow_pruning": lambda self, layer: layer.name != "logits"})
    with pytest.raises(TypeError, match="compat.tfmot"):
        kp.prune_low_magnitude(mlp(), pruning_policy=skip_logits())
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(mlp(), pruning_policy=skip_logits())
    assert [type(layer).__name__ for layer in wrapped.layers] == ["PruneLowMagnitude", "Dense"]
    core = kp.prune_low_magnitude(mlp(), layers=skip_logits().allow_pruning)  # the same choice, the core's way
    assert core.pruned_layers == ["hidden"]
