"""prune_channels on transformers: whole attention heads and FFN units, same KerasHub class or,
for classes that derive the head size from hidden_dim, a functional model of keras-prune blocks."""

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
    with pytest.raises(ValueError, match=r"heads from 'Phi3Backbone'.*no head_dim argument.*'su'.*Pass heads=0"):
        prune_channels(_phi3_su(), 0.5, heads=0.5)
    with pytest.raises(ValueError, match="scope='layer'"):
        prune_channels(model, 0.5, scope="global")
    with pytest.raises(ValueError, match="nothing it can remove.*mixture|nothing it can remove"):
        prune_channels(BACKBONES["mixtral"](), 0.5)
    with pytest.raises(ValueError, match="fused layer"):
        prune_channels(BACKBONES["gpt_neo_x"](), 0.5, heads=0.5)
    for w, before in zip(model.weights, weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), before)


def test_bert_encoder_without_head_removal_stays_its_own_class():
    model = BACKBONES["bert"]()
    x = sample_inputs(model)
    plan = plan_channels(model, 0.25, heads=0.0)
    assert "transformer_layer_0: heads 4 -> 4, ffn 64 -> 48" in plan.summary()
    assert "functional" not in plan.summary()
    small = _check_zero_units_keep_outputs(model, x, plan)
    assert isinstance(small, keras_hub.models.BertBackbone)
    assert small.count_params() == model.count_params() - 2 * (32 * 16 + 16 + 16 * 32)


# Backbones of keras_hub.layers.TransformerEncoder/TransformerDecoder blocks (or subclasses) that
# derive the head size from hidden_dim: name -> (params before, params after prune 0.5, block
# classes named in the plan, class of the first block).
FUNCTIONAL = {
    "gpt2": (26368, 18016, "PrunedTransformerDecoder", "PrunedTransformerDecoder"),
    "opt": (26368, 18016, "PrunedTransformerDecoder", "PrunedTransformerDecoder"),
    "bert": (27488, 19136, "PrunedTransformerEncoder", "PrunedTransformerEncoder"),
    "roberta": (26368, 18016, "PrunedTransformerEncoder", "PrunedTransformerEncoder"),
    "distil_bert": (26368, 18016, "PrunedTransformerEncoder", "PrunedTransformerEncoder"),
    "xlm_roberta": (26368, 18016, "PrunedTransformerEncoder", "PrunedTransformerEncoder"),
    "electra": (23360, 15008, "PrunedTransformerEncoder", "PrunedTransformerEncoder"),
    "bart": (53120, 32224, "PrunedTransformerDecoder, PrunedTransformerEncoder", "PrunedTransformerEncoder"),
    "whisper": (57600, 36800, "PrunedWhisperDecoder, PrunedWhisperEncoder", "PrunedWhisperEncoder"),
}


def _blocks(model):
    return [layer for layer in model.layers if "transformer" in layer.name and "layer_" in layer.name]


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_backbones_deriving_head_size_lose_heads_as_a_functional_model(name):
    before, after, block_classes, block_class = FUNCTIONAL[name]
    model = BACKBONES[name]()
    x = sample_inputs(model)
    assert model.count_params() == before
    plan = plan_channels(model, 0.5)
    lines = plan.summary().splitlines()
    assert lines[0] in ("transformer_layer_0: heads 4 -> 2, ffn 64 -> 32",
                        "transformer_encoder_layer_0: heads 4 -> 2, ffn 64 -> 32")
    cls = type(model).__name__
    assert lines[len(plan.hub[0].site.blocks)] == (
        f"{cls}: becomes a functional keras.Model with the same inputs, outputs and layer names, not a {cls} "
        f"({cls} derives the head size from hidden_dim // num_heads, so it cannot hold fewer heads of the same "
        f"size; its blocks become keras-prune's {block_classes})"
    )
    small = _check_zero_units_keep_outputs(model, x, plan)
    assert type(small) is keras.Model or type(small).__name__ == "Functional"
    assert not isinstance(small, keras_hub.models.Backbone)
    assert small.name == model.name
    assert [layer.name for layer in small.layers] == [layer.name for layer in model.layers]
    assert keras.tree.map_structure(lambda t: t.name, small.input) == keras.tree.map_structure(
        lambda t: t.name, model.input)
    assert small.count_params() == after
    blocks = _blocks(small)
    assert len(blocks) == len(plan.hub[0].site.blocks) and type(blocks[0]).__name__ == block_class
    for block in blocks:
        assert (block.num_heads, block.head_dim, block.intermediate_dim) == (2, 8, 32)
        for attention in (block._self_attention_layer, getattr(block, "_cross_attention_layer", None)):
            if attention is not None:
                assert attention.query_dense.kernel.shape == (32, 2, 8)
                assert attention.output_dense.kernel.shape == (2, 8, 32)


def _llama3_scaled():
    return keras_hub.models.Llama3Backbone(
        vocabulary_size=256, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
        intermediate_dim=64, rope_max_wavelength=500, rope_position_scaling_factor=2.0,
        rope_frequency_adjustment_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        rope_pretraining_sequence_length=8,
    )


def _qwen_sliding():
    return keras_hub.models.QwenBackbone(
        vocabulary_size=256, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
        intermediate_dim=64, use_sliding_window_attention=True, sliding_window_size=4,
    )


def _phi3_su():
    return keras_hub.models.Phi3Backbone(
        vocabulary_size=256, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=64, pretraining_sequence_length=32, rope_scaling_type="su",
        rope_scaling_short_factor=[1.0, 1.1, 1.2, 1.3], rope_scaling_long_factor=[2.0, 2.1, 2.2, 2.3],
    )


def _llama(heads, kv_heads):
    return keras_hub.models.LlamaBackbone(
        vocabulary_size=256, num_layers=2, num_query_heads=heads, num_key_value_heads=kv_heads, hidden_dim=32,
        intermediate_dim=64,
    )


# Grouped-query backbones that derive the head size from hidden_dim // num_query_heads:
# name -> (backbone, params before, after prune 0.5, keras-prune block, attention attribute,
# projection attributes (query, key, output), block constructor arguments that must survive).
GQA_FUNCTIONAL = {
    "llama": (BACKBONES["llama"], 34976, 26784, "PrunedLlamaDecoder", "_self_attention_layer",
              ("_query_dense", "_key_dense", "_output_dense"), {}),
    "llama3": (_llama3_scaled, 34976, 26784, "PrunedLlamaDecoder", "_self_attention_layer",
               ("_query_dense", "_key_dense", "_output_dense"),
               {"rope_max_wavelength": 500, "rope_position_scaling_factor": 2.0,
                "rope_frequency_adjustment_factor": 8.0, "rope_pretraining_sequence_length": 8}),
    "qwen": (BACKBONES["qwen"], 26912, 18688, "PrunedQwenDecoder", "_self_attention_layer",
             ("_query_dense", "_key_dense", "_output_dense"), {}),
    "qwen_sliding": (_qwen_sliding, 26912, 18688, "PrunedQwenDecoder", "_self_attention_layer",
                     ("_query_dense", "_key_dense", "_output_dense"),
                     {"use_sliding_window_attention": True, "sliding_window_size": 4}),
    "phi3": (BACKBONES["phi3"], 34976, 26784, "PrunedPhi3Decoder", "attention",
             ("query_dense", "key_dense", "output_dense"), {}),
}


@pytest.mark.core
@pytest.mark.parametrize("name", list(GQA_FUNCTIONAL))
def test_grouped_query_backbones_deriving_head_size_lose_heads_as_a_functional_model(name, tmp_path):
    build, before, after, block_class, attribute, (query, key, output), kept_args = GQA_FUNCTIONAL[name]
    model = build()
    x = sample_inputs(model)
    assert model.count_params() == before
    plan = plan_channels(model, 0.5)
    keep = plan.hub[0].query_keep["transformer_layer_0/" + ("attention" if name == "phi3" else "self_attention")]
    assert keep.reshape(2, 2).sum(axis=1).tolist() == [1, 1]  # one query head left in each group
    lines = plan.summary().splitlines()
    cls = type(model).__name__
    assert lines == [
        "transformer_layer_0: heads 4 -> 2 (key/value heads 2 -> 2), ffn 64 -> 32",
        "transformer_layer_1: heads 4 -> 2 (key/value heads 2 -> 2), ffn 64 -> 32",
        f"{cls}: becomes a functional keras.Model with the same inputs, outputs and layer names, not a {cls} "
        f"({cls} derives the head size from hidden_dim // num_query_heads, so it cannot hold fewer heads of the "
        f"same size; its blocks become keras-prune's {block_class})",
    ]
    small = _check_zero_units_keep_outputs(model, x, plan)
    assert not isinstance(small, keras_hub.models.Backbone)
    assert small.name == model.name
    assert [layer.name for layer in small.layers] == [layer.name for layer in model.layers]
    assert small.count_params() == after
    blocks = _blocks(small)
    assert len(blocks) == 2
    for block in blocks:
        assert type(block).__name__ == block_class
        assert (block.num_query_heads, block.num_key_value_heads, block.head_dim, block.intermediate_dim) == (
            2, 2, 8, 32)
        assert {k: getattr(block, k) for k in kept_args} == kept_args
        attention = getattr(block, attribute)
        assert (attention.num_query_heads, attention.num_key_value_heads, attention.num_key_value_groups) == (2, 2, 1)
        assert attention._inv_norm_factor == pytest.approx(1 / np.sqrt(8))  # the original head size's scaling
        assert getattr(attention, query).kernel.shape == (32, 2, 8)
        assert getattr(attention, key).kernel.shape == (32, 2, 8)
        assert getattr(attention, output).kernel.shape == (2, 8, 32)
    expected = keras.ops.convert_to_numpy(small(x))
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras")  # no custom_objects
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    assert loaded.count_params() == after
    assert type(_blocks(loaded)[0]).__name__ == block_class
    assert {k: getattr(_blocks(loaded)[0], k) for k in kept_args} == kept_args


@pytest.mark.core
def test_grouped_query_functional_route_removes_heads_per_group_or_whole_groups():
    wide = _llama(8, 2)  # 4 query heads of 4 per key/value head
    x = sample_inputs(wide)
    plan = plan_channels(wide, 0.0, heads=0.5)
    keep = plan.hub[0].query_keep["transformer_layer_0/self_attention"]
    assert keep.reshape(2, 4).sum(axis=1).tolist() == [2, 2]
    small = _check_zero_units_keep_outputs(wide, x, plan)
    attention = small.get_layer("transformer_layer_0")._self_attention_layer
    assert attention._query_dense.kernel.shape == (32, 4, 4) and attention._key_dense.kernel.shape == (32, 2, 4)
    assert attention._inv_norm_factor == pytest.approx(0.5)
    assert small.count_params() == wide.count_params() - 2 * 2 * (32 * 4 * 4)

    mha_like = _llama(4, 4)  # one query head per group: whole groups go
    plan = plan_channels(mha_like, 0.0, heads=0.5)
    assert plan.summary().splitlines()[0] == "transformer_layer_0: heads 4 -> 2, ffn 64 -> 64"
    small = _check_zero_units_keep_outputs(mha_like, sample_inputs(mha_like), plan)
    block = small.get_layer("transformer_layer_1")
    assert (block.num_query_heads, block.num_key_value_heads, block.head_dim) == (2, 2, 8)
    assert block._self_attention_layer._value_dense.kernel.shape == (32, 2, 8)
    with pytest.raises(ValueError, match=r"key/value group of 'transformer_layer_0/self_attention'.*below 0\.75"):
        plan_channels(_llama(4, 2), 0.5, heads=0.8)


def test_phi3_with_su_scaled_rotary_embedding_keeps_its_heads_and_says_why():
    model = _phi3_su()
    x = sample_inputs(model)
    plan = plan_channels(model, 0.5)
    summary = plan.summary()
    assert "transformer_layer_0: heads 4 -> 4 (key/value heads 2 -> 2), ffn 64 -> 32" in summary
    assert ("Phi3Backbone: heads kept (Phi3Backbone derives the head size from hidden_dim // num_query_heads and "
            "has no head_dim argument") in summary
    assert "rope_scaling_type='su' rotary embedding is checked against hidden_dim // num_query_heads" in summary
    small = _check_zero_units_keep_outputs(model, x, plan)
    assert type(small) is keras_hub.models.Phi3Backbone
    assert small.get_config()["intermediate_dim"] == 32
    task = keras_hub.models.LlamaCausalLM(backbone=BACKBONES["llama"](), preprocessor=None)
    assert "hidden_dim // num_query_heads, so with fewer heads it can only become a functional keras.Model, which " \
        "the task LlamaCausalLM cannot hold" in plan_channels(task, 0.5).summary()


def _fixed_lm(backbone, seq, head):
    """A functional LM around ``backbone`` with fixed-length inputs."""
    inputs = _token_inputs(backbone, seq)
    hidden = backbone(inputs)
    if head == "tied":
        logits = backbone.token_embedding(hidden, reverse=True)
    else:
        logits = L.Dense(backbone.vocabulary_size, name="logits")(hidden)
    return keras.Model(inputs, logits)


def _char_gpt2():
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=65, num_layers=4, num_heads=4, hidden_dim=192, intermediate_dim=768,
        max_sequence_length=128,
    )


def test_gpt2_language_model_at_benchmark_size_shrinks_saves_and_exports(tmp_path):
    lm = _fixed_lm(_char_gpt2(), 32, "dense")
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 65, (2, 32)).astype("int32"), "padding_mask": np.ones((2, 32), "int32")}
    plan = plan_channels(lm, 0.5)
    assert plan.summary().splitlines()[0] == "gpt2_backbone/transformer_layer_0: heads 4 -> 2, ffn 768 -> 384"
    assert "gpt2_backbone: becomes a functional keras.Model" in plan.summary()
    small = _check_zero_units_keep_outputs(lm, x, plan)
    backbone = small.get_layer("gpt2_backbone")
    for block in _blocks(backbone):
        attention = block._self_attention_layer
        assert (attention.num_heads, attention.key_dim, block.intermediate_dim) == (2, 48, 384)
    assert (lm.count_params(), small.count_params()) == (1829441, 942017)

    arrays = [x[name] for name in small.input]
    list_model = keras.Model(list(small.input.values()), small.output)  # LiteRT wants a list of inputs
    expected = keras.ops.convert_to_numpy(small(x))
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: keras_prune registers its blocks
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), expected)
    assert loaded.count_params() == small.count_params()
    assert type(_blocks(loaded.get_layer("gpt2_backbone"))[0]).__name__ == "PrunedTransformerDecoder"
    if keras.backend.backend() == "tensorflow":
        from keras_prune.export.litert import convert_litert, litert_max_abs_diff

        content = convert_litert(list_model, sparse=False)
        assert litert_max_abs_diff(list_model, content, arrays) < 1e-4


@pytest.mark.core
def test_tied_gpt2_lm_keeps_its_tied_embedding_and_loads_back(tmp_path):
    backbone = BACKBONES["gpt2"]()
    lm = _fixed_lm(backbone, None, "tied")
    x = sample_inputs(backbone)
    plan = plan_channels(lm, 0.5)
    small = _check_zero_units_keep_outputs(lm, x, plan)
    new_backbone = small.get_layer("gpt2_backbone")
    assert small.layers[-1] is new_backbone.get_layer("token_embedding")  # still tied
    assert small.count_params() == 18016
    assert _blocks(new_backbone)[0]._self_attention_layer.query_dense.kernel.shape == (32, 2, 8)
    only = prune_channels(lm, 0.0, heads=0.5)  # heads only, asked explicitly
    assert only.get_layer("gpt2_backbone").get_layer("transformer_layer_1").intermediate_dim == 64
    backbone_only = prune_channels(backbone, 0.5)
    expected = keras.ops.convert_to_numpy(backbone_only(x))
    backbone_only.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), expected)


def test_tasks_keep_heads_of_classes_deriving_head_size_and_say_why():
    backbone = BACKBONES["gpt2"]()
    task = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    weights = [keras.ops.convert_to_numpy(w).copy() for w in task.weights]
    summary = plan_channels(task, 0.5).summary()
    assert "gpt2_backbone: heads kept (GPT2Backbone derives the head size" in summary
    assert "the task GPT2CausalLM cannot hold" in summary
    small = prune_channels(task, 0.5)
    assert type(small) is keras_hub.models.GPT2CausalLM
    assert small.backbone.get_config()["num_heads"] == 4
    assert small.backbone.get_config()["intermediate_dim"] == 32
    with pytest.raises(ValueError, match=r"heads from 'gpt2_backbone'.*task GPT2CausalLM.*Pass heads=0"):
        prune_channels(task, 0.5, heads=0.5)
    with pytest.raises(ValueError, match=r"all 4 heads of 'transformer_layer_0/self_attention'.*below 0\.875"):
        prune_channels(backbone, 0.5, heads=0.9)
    for w, before in zip(task.weights, weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), before)


@pytest.mark.core
def test_pruned_blocks_check_their_head_dim():
    from keras_prune.structured.hub_layers import PrunedTransformerEncoder

    with pytest.raises(ValueError, match="head_dim.*positive int"):
        PrunedTransformerEncoder(intermediate_dim=8, num_heads=2, head_dim=0)
    block = PrunedTransformerEncoder(intermediate_dim=8, num_heads=3, head_dim=4)
    out = block(np.zeros((1, 5, 16), "float32"))
    assert out.shape == (1, 5, 16)
    assert block._self_attention_layer.query_dense.kernel.shape == (16, 3, 4)
    assert [layer.name for layer in block._layers][0] == "self_attention_layer"
    assert block.count_params() == 3 * (16 * 12 + 12) + 12 * 16 + 16 + 4 * 16 + (16 * 8 + 8 + 8 * 16 + 16)


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
