"""prune_channels on transformers: whole attention heads and FFN units, same KerasHub class."""

import keras
import numpy as np
import pytest
from keras import layers as L

pytest.importorskip("keras_hub")

import keras_hub  # noqa: E402  (after the importorskip)

from keras_prune.structured import apply_plan, plan_channels, prune_channels, zero_removed  # noqa: E402

from hub_backbones import BACKBONES, sample_inputs  # noqa: E402


def _outputs(model, x):
    return np.concatenate([keras.ops.convert_to_numpy(o).ravel() for o in keras.tree.flatten(model(x))])


def _check_zero_units_keep_outputs(model, x, plan):
    """Zero the planned units: outputs change; the shrunk model then computes the same."""
    before = _outputs(model, x)
    zero_removed(plan)
    zeroed = _outputs(model, x)
    assert not np.allclose(before, zeroed, atol=1e-4)  # the removed units mattered
    small = apply_plan(plan)
    np.testing.assert_allclose(_outputs(small, x), zeroed, atol=1e-4, rtol=1e-4)
    return small


def _head_config(config):
    keys = ("num_query_heads", "num_heads", "num_attention_heads", "num_key_value_heads", "head_dim")
    return {k: config[k] for k in keys if k in config}


# name -> (params before, params after, head config after, intermediate_dim after)
DECODERS = {
    "gemma": (20640, 15520, {"num_query_heads": 2, "num_key_value_heads": 2, "head_dim": 8}, 32),
    "gemma3": (26816, 18624, {"num_query_heads": 2, "num_key_value_heads": 2, "head_dim": 8}, 32),
    "mistral": (34976, 26784, {"num_query_heads": 2, "num_key_value_heads": 2, "head_dim": 8}, 32),
    "qwen3": (26816, 18624, {"num_query_heads": 2, "num_key_value_heads": 2, "head_dim": 8}, 32),
    # These derive head_dim from hidden_dim // heads: heads stay, FFN units go.
    "gpt2": (26368, 22208, {"num_heads": 4}, 32),
    "llama": (34976, 28832, {"num_query_heads": 4, "num_key_value_heads": 2}, 32),
    "qwen": (26912, 20768, {"num_query_heads": 4, "num_key_value_heads": 2}, 32),
    "opt": (26368, 22208, {"num_heads": 4}, 32),
}


@pytest.mark.parametrize("name", list(DECODERS))
def test_prune_channels_removes_heads_and_ffn_units_in_decoder_style_backbones(name):
    before, after, heads, intermediate = DECODERS[name]
    model = BACKBONES[name]()
    x = sample_inputs(model)
    assert model.count_params() == before
    plan = plan_channels(model, 0.5)
    small = _check_zero_units_keep_outputs(model, x, plan)
    assert type(small) is type(model)
    config = small.get_config()
    assert _head_config(config) == {**_head_config(model.get_config()), **heads}
    assert config["intermediate_dim"] == intermediate
    assert small.count_params() == after
    summary = plan.summary()
    first = summary.splitlines()[0]
    assert first.startswith(("transformer_layer_0: heads", "decoder_block_0: heads")), summary
    if "head_dim" not in heads:
        assert "cannot keep its head size with fewer heads" in summary


@pytest.mark.core
def test_gemma_summary_and_ffn_factor_of_two():
    model = BACKBONES["gemma"]()  # intermediate_dim=64 means 32 units in each gated FFN
    summary = plan_channels(model, 0.5).summary()
    assert summary.splitlines() == [
        "decoder_block_0: heads 4 -> 2 (key/value heads 2 -> 2), ffn 32 -> 16",
        "decoder_block_1: heads 4 -> 2 (key/value heads 2 -> 2), ffn 32 -> 16",
    ]
    small = prune_channels(model, 0.1, heads=0.5, ffn=0.75)
    assert small.get_config()["intermediate_dim"] == 16  # 8 units kept, times 2
    assert small.get_layer("decoder_block_0").attention.query_dense.kernel.shape == (2, 32, 8)


def test_gqa_removes_query_heads_evenly_per_group_or_whole_groups():
    model = BACKBONES["mistral"]()  # 4 query heads over 2 key/value heads
    plan = plan_channels(model, 0.5)
    keep = plan.hub[0].query_keep["transformer_layer_0/self_attention"]
    assert keep.reshape(2, 2).sum(axis=1).tolist() == [1, 1]  # one query head left in each group
    mha_like = keras_hub.models.MistralBackbone(
        vocabulary_size=256, num_layers=1, num_query_heads=4, num_key_value_heads=4, hidden_dim=32,
        intermediate_dim=64, head_dim=8,
    )
    x = sample_inputs(mha_like)
    plan = plan_channels(mha_like, 0.5, ffn=0.0)
    small = _check_zero_units_keep_outputs(mha_like, x, plan)
    assert _head_config(small.get_config()) == {"num_query_heads": 2, "num_key_value_heads": 2, "head_dim": 8}
    assert small.get_config()["intermediate_dim"] == 64


def test_bad_head_ratios_and_impossible_requests_raise_before_anything_changes():
    model = BACKBONES["mistral"]()
    weights = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match=r"key/value group of 'transformer_layer_0/self_attention'.*below 0\.75"):
        prune_channels(model, 0.8)
    gpt2 = BACKBONES["gpt2"]()
    with pytest.raises(ValueError, match=r"heads from 'GPT2Backbone'.*no head_dim argument.*Pass heads=0"):
        prune_channels(gpt2, 0.5, heads=0.5)
    with pytest.raises(ValueError, match="scope='layer'"):
        prune_channels(model, 0.5, scope="global")
    with pytest.raises(ValueError, match="nothing it can remove.*mixture|nothing it can remove"):
        prune_channels(BACKBONES["mixtral"](), 0.5)
    with pytest.raises(ValueError, match="fused layer"):
        prune_channels(BACKBONES["gpt_neo_x"](), 0.5, heads=0.5)
    for w, before in zip(model.weights, weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), before)


def test_bert_encoder_loses_ffn_units_and_says_why_heads_stay():
    model = BACKBONES["bert"]()
    x = sample_inputs(model)
    plan = plan_channels(model, 0.25)
    assert "transformer_layer_0: heads 4 -> 4, ffn 64 -> 48" in plan.summary()
    small = _check_zero_units_keep_outputs(model, x, plan)
    assert isinstance(small, keras_hub.models.BertBackbone)
    assert small.count_params() == model.count_params() - 2 * (32 * 16 + 16 + 16 * 32)


def _mha_model():
    x = keras.Input((6, 16))
    a = L.MultiHeadAttention(num_heads=4, key_dim=4, name="mha")(x, x)
    h = L.Dense(32, activation="relu", name="ffn_in")(L.Add()([x, a]))
    y = L.Dense(16, name="ffn_out")(h)
    return keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(y)))


@pytest.mark.core
def test_functional_multi_head_attention_loses_heads_at_their_own_ratio():
    model = _mha_model()
    x = np.random.default_rng(0).normal(size=(2, 6, 16)).astype("float32")
    plan = plan_channels(model, 0.5, heads=0.25)
    assert "mha:heads: kept 3/4" in plan.summary()
    small = _check_zero_units_keep_outputs(model, x, plan)
    mha = small.get_layer("mha")
    assert (mha.num_heads, mha.key_dim) == (3, 4)
    assert small.get_layer("ffn_in").units == 16
    with pytest.raises(ValueError, match="all 4 heads of 'mha'"):
        plan_channels(model, 0.5, heads=0.9)


def _token_inputs(backbone, seq=None):
    return {t.name: keras.Input((seq,), dtype=t.dtype, name=t.name) for t in backbone.inputs}


def test_backbone_inside_a_functional_language_model():
    backbone = BACKBONES["gemma"]()
    inputs = _token_inputs(backbone)
    logits = backbone.token_embedding(backbone(inputs), reverse=True)
    lm = keras.Model(inputs, logits)
    x = sample_inputs(backbone)
    plan = plan_channels(lm, 0.5)
    assert plan.summary().splitlines()[0] == "gemma_backbone/decoder_block_0: heads 4 -> 2 (key/value heads 2 -> 2), ffn 32 -> 16"
    small = _check_zero_units_keep_outputs(lm, x, plan)
    new_backbone = next(layer for layer in small.layers if isinstance(layer, keras_hub.models.GemmaBackbone))
    assert new_backbone.get_config()["num_query_heads"] == 2
    assert small.layers[-1] is new_backbone.token_embedding  # still tied to the backbone
    assert small.count_params() == 15520


def test_task_and_dense_head_models_save_load_and_export(tmp_path):
    backbone = BACKBONES["gemma"]()
    x = sample_inputs(backbone)
    causal_lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    small_lm = prune_channels(causal_lm, 0.5)
    assert type(small_lm) is keras_hub.models.GemmaCausalLM
    assert small_lm.backbone.get_config()["num_query_heads"] == 2
    assert small_lm(x).shape == (2, 16, 256)

    inputs = _token_inputs(backbone, seq=16)  # a fixed length, which LiteRT conversion needs
    pooled = L.GlobalAveragePooling1D()(backbone(inputs))
    model = keras.Model(list(inputs.values()), L.Dense(3, name="classes")(pooled))
    small = prune_channels(model, 0.5)
    arrays = [x[name] for name in inputs]
    expected = keras.ops.convert_to_numpy(small(arrays))
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(arrays)), expected, atol=1e-6)
    assert loaded.count_params() == small.count_params() < model.count_params()
    assert isinstance(loaded.layers[2], keras_hub.models.GemmaBackbone)
    assert loaded.layers[2].get_config()["num_query_heads"] == 2
    if keras.backend.backend() == "tensorflow":
        from keras_prune.export.litert import convert_litert, litert_max_abs_diff

        content = convert_litert(small, sparse=False)
        assert litert_max_abs_diff(small, content, arrays) < 1e-4
