"""Calibrated one-shot pruning reaches the kernels inside KerasHub blocks, one block at a time."""

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

from keras_prune import calibration, oneshot_prune  # noqa: E402  (after the importorskip)
from keras_prune.masks import prune_count  # noqa: E402

from hub_backbones import BACKBONES, sample_inputs, zeros  # noqa: E402

pytestmark = pytest.mark.tensorflow_only


def block_kernels(model):
    return [w for w in model.weights if w.path.endswith("kernel") and "transformer_layer" in w.path]


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
        oneshot_prune(model, inputs, method=method, sparsity=0.5, layers="transformer_layer", batch_size=8)
        errors[method] = output_error(model, inputs, reference)
        for kernel in block_kernels(model):
            assert zeros(kernel) == prune_count(0.5, int(np.prod(kernel.shape))), kernel.path
    assert errors["sparsegpt"] < errors["magnitude"]


def test_each_transformer_layer_is_one_block_and_later_blocks_are_not_run(monkeypatch):
    model = BACKBONES["gpt2"]()
    inputs = sample_inputs(model, batch=4, seq=8)
    passes = []
    original = calibration.forward

    def counted(model, batches, **kwargs):
        passes.append(1)
        return original(model, batches, **kwargs)

    monkeypatch.setattr("keras_prune.calibrated.forward", counted)
    report = oneshot_prune(model, inputs, method="wanda", sparsity_m_by_n=(2, 4), layers="transformer_layer")
    assert len(passes) == len(model.transformer_layers)
    assert report.settings["sparsity_m_by_n"] == (2, 4)
    assert not [w for w in report.warnings if "transformer_layer" in w.layer]  # all calibrated, none by magnitude
    for kernel in block_kernels(model):
        assert zeros(kernel) == int(np.prod(kernel.shape)) // 2, kernel.path
