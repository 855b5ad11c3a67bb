"""Calibrated one-shot pruning reaches the kernels inside KerasHub blocks, one block at a time."""

import re

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

from keras_prune import calibration, oneshot_prune  # noqa: E402  (after the importorskip)
from keras_prune.layer_stack import LayerStack  # noqa: E402
from keras_prune.masks import prune_count  # noqa: E402

from hub_backbones import BACKBONES, sample_inputs, zeros  # noqa: E402

pytestmark = pytest.mark.tensorflow_only


BLOCKS = "transformer_layer|decoder_block"  # how the backbones name their transformer layers


def block_kernels(model):
    return [w for block in model.transformer_layers for w in block.weights if w.path.endswith("kernel")]


def output_error(model, inputs, reference) -> float:
    outputs = keras.tree.flatten(model(inputs))
    return float(np.mean([np.mean((keras.ops.convert_to_numpy(o) - r) ** 2) for o, r in zip(outputs, reference)]))


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "mistral"])
def test_sparsegpt_prunes_every_block_kernel_exactly_and_stays_closer_to_dense_than_magnitude(name):
    model = BACKBONES[name]()
    inputs = sample_inputs(model, batch=16, seq=16)
    reference = [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(model(inputs))]
    start = model.get_weights()
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        model.set_weights(start)
        oneshot_prune(model, inputs, method=method, sparsity=0.5, layers=BLOCKS, batch_size=8)
        errors[method] = output_error(model, inputs, reference)
        for kernel in block_kernels(model):
            assert zeros(kernel) == prune_count(0.5, int(np.prod(kernel.shape))), kernel.path
    assert errors["sparsegpt"] < errors["magnitude"]


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "gemma", "phi3", "mixtral", "pali_gemma"])
def test_held_hidden_states_give_the_weights_of_whole_forward_passes(name, monkeypatch):
    model = BACKBONES[name]()
    inputs = sample_inputs(model, batch=6, seq=12)
    start = model.get_weights()
    passes = []
    original = calibration.forward

    def counted(model, batches, *args, **kwargs):
        passes.append(1)
        return original(model, batches, *args, **kwargs)

    monkeypatch.setattr("keras_prune.calibrated.forward", counted)
    report = oneshot_prune(model, inputs, method="sparsegpt", sparsity_m_by_n=(2, 4), layers=BLOCKS,
                           batch_size=4)
    assert not passes  # every block ran from the hidden states held between layers
    assert not [w for w in report.warnings if re.search(BLOCKS, w.layer)]  # all calibrated, none by magnitude
    held = [keras.ops.convert_to_numpy(w) for w in model.weights]
    model.set_weights(start)
    monkeypatch.setattr(LayerStack, "capture", classmethod(lambda cls, *args, **kwargs: None))
    oneshot_prune(model, inputs, method="sparsegpt", sparsity_m_by_n=(2, 4), layers=BLOCKS,
                  batch_size=4)
    assert len(passes) == len(model.transformer_layers)
    for a, b in zip(held, model.weights):
        b = keras.ops.convert_to_numpy(b)
        np.testing.assert_array_equal(a == 0, b == 0)
        np.testing.assert_allclose(a, b, atol=1e-4)
    for kernel in block_kernels(model):
        assert zeros(kernel) == int(np.prod(kernel.shape)) // 2, kernel.path
