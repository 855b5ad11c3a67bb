"""Gradual pruning of every tiny KerasHub backbone: fit, exact sparsity at any depth, save/load, strip.

Every backbone of tests/hub_backbones.py (50 of the installed keras-hub's model families, built
small from their constructors) is pruned with ``prune_low_magnitude``, trained for a few
``fit`` steps, saved mid-pruning, loaded back without ``custom_objects`` and stripped.
"""

import json

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

import keras_prune as kp  # noqa: E402  (after the importorskip)
from keras_prune.handlers import input_axis  # noqa: E402
from keras_prune.masks import prune_count  # noqa: E402

from hub_backbones import BACKBONES, KERNEL_LAYERS, kernels, sample_inputs, zeros  # noqa: E402

# A few families, run on every backend; the rest on TensorFlow only, to keep the suite short.
CORE = ("bert", "gpt2", "llama", "gemma", "vit")


def train_a_few_steps(pruned, inputs, steps=3):
    """``steps`` SGD steps of ``fit`` pulling every output towards 0 (batches of 2)."""
    batch = keras.tree.map_structure(lambda x: np.concatenate([x] * steps), inputs)
    targets = keras.tree.map_structure(lambda y: np.zeros_like(keras.ops.convert_to_numpy(y)), pruned(inputs))
    pruned.compile(keras.optimizers.SGD(0.01), loss=keras.tree.map_structure(lambda _: "mse", targets))
    pruned.fit(batch, keras.tree.map_structure(lambda y: np.concatenate([y] * steps), targets), batch_size=2,
               epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)


def as_saved(config):
    """``config`` as a ``.keras`` file stores it (tuples become lists)."""
    return json.loads(json.dumps(config))


def mark(name):
    return pytest.param(name, marks=pytest.mark.core if name in CORE else pytest.mark.tensorflow_only)


@pytest.mark.parametrize("name", [mark(name) for name in BACKBONES])
def test_gradual_pruning_reaches_every_kernel_of_a_hub_backbone(name, tmp_path):
    model = BACKBONES[name]()
    config = model.get_config()
    inputs = sample_inputs(model)
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.5, 0, frequency=1))
    assert any("/" in path for path in pruned.pruned_layers)  # inside the blocks
    train_a_few_steps(pruned, inputs)
    assert int(keras.ops.convert_to_numpy(pruned.pruning_step)) == 3
    for kernel in kernels(model):
        assert zeros(kernel) == prune_count(0.5, int(np.prod(kernel.shape))), kernel.path

    pruned.save(tmp_path / "pruned.keras")  # mid-pruning: masks, step and the model in one file
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    # The same weights pruned, though some families name sub-layers anew when loaded.
    assert type(loaded.layer) is type(model)
    assert [w.shape for w in loaded.prunable_weights()] == [w.shape for w in pruned.prunable_weights()]
    for before, after in zip(pruned.prunable_weights() + pruned.mask_variables,
                             loaded.prunable_weights() + loaded.mask_variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after), keras.ops.convert_to_numpy(before))
    for before, after in zip(pruned.weights, loaded.weights, strict=True):  # DINOv2 resamples its positions
        np.testing.assert_allclose(keras.ops.convert_to_numpy(after), keras.ops.convert_to_numpy(before), atol=1e-4)

    stripped = kp.strip_pruning(loaded)
    assert type(stripped) is type(model) and as_saved(stripped.get_config()) == as_saved(config)
    outputs = keras.tree.flatten(stripped(inputs))
    assert all(np.isfinite(keras.ops.convert_to_numpy(out)).all() for out in outputs)


def two_of_four_along_input_axis(layer):
    """Whether every group of 4 consecutive kernel weights along the axis ``layer`` sums over holds 2 zeros."""
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    moved = np.moveaxis(kernel, input_axis(layer, layer.kernel), -1)
    groups = moved[..., : moved.shape[-1] // 4 * 4].reshape(-1, 4)
    return bool(np.all((groups == 0).sum(axis=1) >= 2))


@pytest.mark.core
@pytest.mark.parametrize("gradual", [True, False], ids=["gradual", "one-shot"])
def test_two_four_groups_run_along_the_axis_each_kernel_sums_over(gradual):
    model = BACKBONES["gpt2"]()
    if gradual:
        pruned = kp.prune_low_magnitude(model, sparsity_m_by_n=(2, 4))
        train_a_few_steps(pruned, sample_inputs(model))
    else:
        kp.magnitude_prune(model, sparsity_m_by_n=(2, 4))
    attention = model.get_layer("transformer_layer_0")._self_attention_layer
    query, output = attention._query_dense, attention._output_dense
    assert input_axis(query, query.kernel) == 0  # (hidden, heads, head size) sums over hidden
    assert input_axis(output, output.kernel) == 1  # (heads, head size, hidden): the last summed axis
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, KERNEL_LAYERS)]
    assert len(layers) == 12 and all(two_of_four_along_input_axis(layer) for layer in layers)
