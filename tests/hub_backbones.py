"""Tiny KerasHub backbones built from their constructors, for pruning tests.

Nothing is downloaded: every entry calls a ``keras_hub.models`` constructor with
fixed small sizes (vocabulary 256, 2 layers, hidden 32, 4 query heads over 2
key/value heads where the model has grouped-query attention, intermediate 64,
head_dim 8, max sequence length 32, 32x32 images), so each has well under 1M
parameters and builds and runs a forward pass in about a second on CPU.

    from hub_backbones import BACKBONES, sample_inputs  # tests/ is on sys.path under pytest

    model = BACKBONES["llama"]()
    outputs = model(sample_inputs(model))
"""

from functools import partial

import keras
import keras_hub
import numpy as np

VOCAB, LAYERS, HIDDEN, FFN, MAX_SEQ = 256, 2, 32, 64, 32
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8
IMAGE = 32  # side of the square images fed to vision backbones
M = keras_hub.models

_MHA = {  # one head count: BERT-style encoders, GPT-style decoders
    "vocabulary_size": VOCAB,
    "num_layers": LAYERS,
    "num_heads": HEADS,
    "hidden_dim": HIDDEN,
    "intermediate_dim": FFN,
}
_GQA = {  # separate query and key/value head counts
    "vocabulary_size": VOCAB,
    "num_layers": LAYERS,
    "num_query_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "hidden_dim": HIDDEN,
    "intermediate_dim": FFN,
}
_SMOLLM = {
    "vocabulary_size": VOCAB,
    "hidden_dim": HIDDEN,
    "intermediate_dim": FFN,
    "num_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "rope_layer_enabled_list": [True] * LAYERS,
    "layer_types": ["attention"] * LAYERS,
    "mlp_bias": False,
    "layer_norm_epsilon": 1e-6,
    "max_position_embeddings": MAX_SEQ,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 1.0,
}
_T5GEMMA_SIDE = {  # the same sizes for the encoder_* and decoder_* arguments
    "hidden_dim": HIDDEN,
    "intermediate_dim": FFN,
    "num_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "layer_types": ["full_attention"] * LAYERS,
}
_T5GEMMA = {
    "vocabulary_size": VOCAB,
    **{f"{side}_{k}": v for side in ("encoder", "decoder") for k, v in _T5GEMMA_SIDE.items()},
}
_LINEAR_ATTENTION = {  # Qwen3.5 gated-delta-net layers
    "linear_num_key_heads": KV_HEADS,
    "linear_num_value_heads": HEADS,
    "linear_key_head_dim": HEAD_DIM,
    "linear_value_head_dim": HEAD_DIM,
}
_VIT = {"num_layers": LAYERS, "num_heads": HEADS, "hidden_dim": HIDDEN, "patch_size": 8}
_IMAGE_SHAPE = (IMAGE, IMAGE, 3)


def _clip():
    return M.CLIPBackbone(
        M.CLIPVisionEncoder(8, HIDDEN, LAYERS, HEADS, FFN, image_shape=_IMAGE_SHAPE),
        M.CLIPTextEncoder(VOCAB, HIDDEN, HIDDEN, LAYERS, HEADS, FFN, max_sequence_length=MAX_SEQ),
        projection_dim=HIDDEN,
    )


def _siglip():
    return M.SigLIPBackbone(
        M.SigLIPVisionEncoder(8, HIDDEN, LAYERS, HEADS, FFN, image_shape=_IMAGE_SHAPE),
        M.SigLIPTextEncoder(VOCAB, HIDDEN, HIDDEN, LAYERS, HEADS, FFN, max_sequence_length=MAX_SEQ),
    )


BACKBONES = {
    # Encoders.
    "bert": partial(M.BertBackbone, **_MHA, max_sequence_length=MAX_SEQ),
    "distil_bert": partial(M.DistilBertBackbone, **_MHA, max_sequence_length=MAX_SEQ),
    "roberta": partial(M.RobertaBackbone, **_MHA, max_sequence_length=MAX_SEQ),
    "xlm_roberta": partial(M.XLMRobertaBackbone, **_MHA, max_sequence_length=MAX_SEQ),
    "albert": partial(M.AlbertBackbone, **_MHA, embedding_dim=16, max_sequence_length=MAX_SEQ),
    "electra": partial(
        M.ElectraBackbone,
        vocab_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        embedding_dim=16,
        intermediate_dim=FFN,
        max_sequence_length=MAX_SEQ,
    ),
    "deberta_v3": partial(M.DebertaV3Backbone, **_MHA, max_sequence_length=MAX_SEQ, bucket_size=8),
    "f_net": partial(
        M.FNetBackbone,
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        hidden_dim=HIDDEN,
        intermediate_dim=FFN,
        max_sequence_length=MAX_SEQ,
    ),
    "roformer_v2": partial(M.RoformerV2Backbone, **_MHA, head_size=HEAD_DIM),
    "esm": partial(M.ESMBackbone, **_MHA, max_sequence_length=MAX_SEQ),
    "xlnet": partial(M.XLNetBackbone, **_MHA),
    # Decoders with one head count.
    "gpt2": partial(M.GPT2Backbone, **_MHA, max_sequence_length=MAX_SEQ),
    "gpt_neo_x": partial(M.GPTNeoXBackbone, **_MHA, max_sequence_length=MAX_SEQ),
    "opt": partial(M.OPTBackbone, **_MHA, max_sequence_length=MAX_SEQ),
    "bloom": partial(M.BloomBackbone, **_MHA),
    "falcon": partial(
        M.FalconBackbone,
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_attention_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=FFN,
    ),
    "rwkv7": partial(
        M.RWKV7Backbone,
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        head_size=HEAD_DIM,
        intermediate_dim=FFN,
        gate_lora=8,
        mv_lora=8,
        aaa_lora=8,
        decay_lora=8,
    ),
    # Decoders with grouped-query attention.
    "gemma": partial(M.GemmaBackbone, **_GQA, head_dim=HEAD_DIM),
    "gemma3": partial(M.Gemma3Backbone, **_GQA, head_dim=HEAD_DIM, image_size=IMAGE),
    "gemma3n": partial(
        M.Gemma3nBackbone,
        text_vocab_size=VOCAB,
        text_hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        pad_token_id=0,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        intermediate_size=[FFN] * LAYERS,
        hidden_activation="gelu_approximate",
        layer_types=["full_attention"] * LAYERS,
        sliding_window=8,
        rope_theta=10000.0,
        max_position_embeddings=MAX_SEQ,
        vocab_size_per_layer_input=VOCAB,
        hidden_size_per_layer_input=4,
        altup_num_inputs=2,
        laurel_rank=4,
    ),
    "gemma4": partial(
        M.Gemma4Backbone,
        **_GQA,
        head_dim=HEAD_DIM,
        image_size=IMAGE,
        sliding_window_size=8,
        sliding_window_pattern=2,
    ),
    "llama": partial(M.LlamaBackbone, **_GQA),
    "llama3": partial(M.Llama3Backbone, **_GQA),
    "mistral": partial(M.MistralBackbone, **_GQA),
    "qwen": partial(M.QwenBackbone, **_GQA),  # M.Qwen2Backbone is the same class
    "qwen3": partial(M.Qwen3Backbone, **_GQA, head_dim=HEAD_DIM),
    "qwen3_5": partial(M.Qwen3_5Backbone, **_GQA, head_dim=HEAD_DIM, **_LINEAR_ATTENTION),
    "phi3": partial(M.Phi3Backbone, **_GQA, max_sequence_length=MAX_SEQ),
    "smollm3": partial(M.SmolLM3Backbone, **_SMOLLM),
    # Mixture-of-experts decoders.
    "mixtral": partial(M.MixtralBackbone, **_GQA, num_experts=4, top_k=2),
    "qwen_moe": partial(
        M.QwenMoeBackbone,
        **_GQA,
        moe_intermediate_dim=FFN // 2,
        shared_expert_intermediate_dim=FFN,
        num_experts=4,
        top_k=2,
    ),
    "qwen3_moe": partial(
        M.Qwen3MoeBackbone,
        **_GQA,
        head_dim=HEAD_DIM,
        moe_intermediate_dim=FFN // 2,
        num_experts=4,
        top_k=2,
    ),
    "qwen3_5_moe": partial(
        M.Qwen3_5MoeBackbone,
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_query_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        hidden_dim=HIDDEN,
        moe_intermediate_dim=FFN // 2,
        shared_expert_intermediate_size=FFN,
        num_experts=4,
        top_k=2,
        **_LINEAR_ATTENTION,
    ),
    "gpt_oss": partial(M.GptOssBackbone, **_GQA, head_dim=HEAD_DIM, num_experts=4, top_k=2),
    # Encoder-decoders.
    "t5": partial(M.T5Backbone, **_MHA, key_value_dim=HEAD_DIM),
    "bart": partial(M.BartBackbone, **_MHA, max_sequence_length=MAX_SEQ),
    "t5gemma": partial(M.T5GemmaBackbone, **_T5GEMMA),
    "t5gemma2": partial(M.T5Gemma2Backbone, **_T5GEMMA),
    "edrec": partial(
        M.EdRecBackbone,
        vocab_size=VOCAB,
        num_layers_enc=LAYERS,
        num_layers_dec=LAYERS,
        hidden_dim=HIDDEN,
        intermediate_dim=FFN,
        num_heads=HEADS,
    ),
    "whisper": partial(
        M.WhisperBackbone,
        **_MHA,
        num_mels=16,
        max_encoder_sequence_length=2 * MAX_SEQ,
        max_decoder_sequence_length=MAX_SEQ,
    ),
    "moonshine": partial(
        M.MoonshineBackbone,
        vocabulary_size=VOCAB,
        filter_dim=HIDDEN,
        encoder_num_layers=LAYERS,
        decoder_num_layers=LAYERS,
        hidden_dim=HIDDEN,
        intermediate_dim=FFN,
        encoder_num_heads=HEADS,
        decoder_num_heads=HEADS,
        max_position_embeddings=4 * MAX_SEQ,
    ),
    # Vision transformers and vision-language models.
    "vit": partial(M.ViTBackbone, **_VIT, image_shape=_IMAGE_SHAPE, mlp_dim=FFN),
    "deit": partial(M.DeiTBackbone, **_VIT, image_shape=_IMAGE_SHAPE, intermediate_dim=FFN),
    "dinov2": partial(
        M.DINOV2Backbone,
        **_VIT,
        intermediate_dim=FFN,
        image_shape=_IMAGE_SHAPE,
        position_embedding_shape=_IMAGE_SHAPE,
    ),
    "dinov3": partial(M.DINOV3Backbone, **_VIT, intermediate_dim=FFN, image_shape=_IMAGE_SHAPE),
    "swin": partial(
        M.SwinTransformerBackbone,
        image_shape=_IMAGE_SHAPE,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        patch_size=4,
    ),
    "vit_det": partial(
        M.ViTDetBackbone,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        intermediate_dim=FFN,
        num_heads=HEADS,
        global_attention_layer_indices=[1],
        image_shape=_IMAGE_SHAPE,
        patch_size=8,
        num_output_channels=HIDDEN,
        window_size=2,
    ),
    "clip": _clip,
    "siglip": _siglip,
    "pali_gemma": partial(
        M.PaliGemmaBackbone,
        **_GQA,
        head_dim=HEAD_DIM,
        image_size=IMAGE,
        vit_patch_size=8,
        vit_num_heads=HEADS,
        vit_hidden_dim=HIDDEN,
        vit_num_layers=LAYERS,
        vit_intermediate_dim=FFN,
    ),
}


def sample_inputs(name_or_model, batch=2, seq=16):
    """Random inputs for one forward pass of a backbone, given its name or instance.

    Returns a dict keyed by input name, or a bare array for single-input image models.
    Token ids are in ``[1, VOCAB)``, padding masks all ones, images standard normal.
    """
    model = BACKBONES[name_or_model]() if isinstance(name_or_model, str) else name_or_model
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in model.inputs:
        name = tensor.name
        shape = [batch] + [seq if dim is None else dim for dim in tensor.shape[1:]]
        if isinstance(model, M.MoonshineBackbone) and name.startswith("encoder_"):
            shape[1] = 384 * seq  # raw audio and its mask; the conv stem downsamples ~384x
        if name == "token_ids" and isinstance(model, M.SigLIPBackbone):  # fixed length
            shape[1] = model.text_encoder.max_sequence_length
        if "token_ids" in name:
            inputs[name] = rng.integers(1, VOCAB, shape).astype("int32")
        elif "mask" in name:
            inputs[name] = np.ones(shape, dtype=tensor.dtype)
        elif name.endswith("segment_ids"):
            inputs[name] = np.zeros(shape, "int32")
        elif name == "position_ids":
            inputs[name] = np.broadcast_to(np.arange(seq, dtype="int32"), shape).copy()
        else:
            inputs[name] = rng.normal(size=shape).astype(tensor.dtype)
    if len(inputs) == 1 and not isinstance(model.input, dict):
        return next(iter(inputs.values()))
    return inputs


KERNEL_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense)


def kernels(model):
    """Every Dense and EinsumDense kernel at any depth, found by Keras itself, once each."""
    found = {id(layer.kernel): layer.kernel for layer in model._flatten_layers() if isinstance(layer, KERNEL_LAYERS)}
    return list(found.values())


def zeros(variable):
    """How many entries of ``variable`` are exactly zero."""
    array = keras.ops.convert_to_numpy(variable)
    return int(array.size - np.count_nonzero(array))
