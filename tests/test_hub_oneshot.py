"""One-shot magnitude pruning of tiny KerasHub backbones reaches every layer of their blocks."""

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

from keras_prune import magnitude_prune  # noqa: E402  (after the importorskip)
from keras_prune.masks import prune_count  # noqa: E402

from hub_backbones import BACKBONES, kernels, sample_inputs, zeros  # noqa: E402

pytestmark = pytest.mark.tensorflow_only

NAMES = [
    "bert", "distil_bert", "roberta", "albert", "deberta_v3", "xlnet",  # encoders
    "gpt2", "gpt_neo_x", "opt", "bloom", "falcon",  # decoders
    "gemma", "llama", "mistral", "qwen", "phi3", "smollm3", "mixtral",  # grouped-query attention, MoE
    "whisper", "vit", "clip",  # speech, vision, vision-language
]


@pytest.mark.parametrize("name", NAMES)
def test_every_kernel_of_a_hub_backbone_is_pruned_exactly_and_survives_a_round_trip(name, tmp_path):
    model = BACKBONES[name]()
    report = magnitude_prune(model, sparsity=0.5)
    assert any("/" in path for path in report.settings["layers"])  # inside the blocks
    assert report.totals["params"] == model.count_params()  # every weight in exactly one row
    for kernel in kernels(model):
        size = int(np.prod(kernel.shape))
        assert zeros(kernel) == prune_count(0.5, size), kernel.path
    outputs = keras.tree.flatten(model(sample_inputs(model)))
    assert all(np.isfinite(keras.ops.convert_to_numpy(out)).all() for out in outputs)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for before, after in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after) == 0, keras.ops.convert_to_numpy(before) == 0)


def test_untied_output_head_is_pruned_and_position_embedding_left_dense():
    llama = BACKBONES["llama"]()
    report = magnitude_prune(llama, sparsity=0.5)
    head = llama.token_embedding.reverse_embeddings
    assert zeros(head) == prune_count(0.5, int(np.prod(head.shape)))
    gpt2 = BACKBONES["gpt2"]()
    report = magnitude_prune(gpt2, sparsity=0.5)
    assert "position_embedding" in {note.layer for note in report.left_dense}
    assert zeros(gpt2.get_layer("position_embedding").position_embeddings) == 0
