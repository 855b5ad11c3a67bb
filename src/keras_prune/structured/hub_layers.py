"""KerasHub transformer blocks with fewer attention heads of an unchanged size.

Some KerasHub blocks give their attention layers ``hidden_dim // num_heads``-wide heads, so the
same class cannot hold fewer heads of the original size. The subclasses here take that size as
``head_dim`` and, after the KerasHub build, resize what depends on it:

- ``keras_hub.layers.TransformerEncoder``/``TransformerDecoder`` (GPT-2, OPT, BART, the BERT
  family) and Whisper's subclasses of them: each attention layer is replaced by one of the same
  class and config, built with ``num_heads`` heads of ``head_dim``.
- the grouped-query decoder blocks of Llama (and Llama 3), Qwen (Qwen2) and Phi-3: their
  attention layer is built by KerasHub with the kept ``num_query_heads`` and
  ``num_key_value_heads``; its query, key, value and output projections are then replaced by
  ones of the same config whose head axis is ``head_dim`` wide, and its softmax scaling is set
  back to ``1 / sqrt(head_dim)``. Their ``call`` reads the head counts from those attributes
  (``num_key_value_groups`` included), takes the head size from the projections' outputs (the
  rotary embedding too) and the scaling from ``_inv_norm_factor``.

Nothing else in the blocks depends on the head count (their ``call`` only passes tensors of the
hidden width between the attention layer, the norms and the FFN), so outputs match the original
with the removed heads zeroed.

This module imports keras-hub; :mod:`keras_prune.structured.transformer` registers
placeholders under the same names, so ``.keras`` files holding these blocks load with
keras-prune imported, whether or not keras-hub already is.
"""

from __future__ import annotations

import inspect
import math

import keras
from keras_hub.layers import TransformerDecoder, TransformerEncoder
from keras_hub.src.models.llama.llama_decoder import LlamaTransformerDecoder
from keras_hub.src.models.phi3.phi3_decoder import Phi3Decoder
from keras_hub.src.models.qwen.qwen_decoder import QwenTransformerDecoder
from keras_hub.src.models.whisper.whisper_decoder import WhisperDecoder
from keras_hub.src.models.whisper.whisper_encoder import WhisperEncoder

from keras_prune._keras_compat import replace_sublayer

PACKAGE = "keras_prune"


def _check_head_dim(block, head_dim) -> int:
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(
            f"Argument `head_dim` of {type(block).__name__} must be a positive int. Received: head_dim={head_dim!r}"
        )
    return head_dim


class _HeadDim:
    """The ``head_dim`` argument, saved in the config."""

    def __init__(self, *args, head_dim, **kwargs):
        self.head_dim = _check_head_dim(self, head_dim)
        super().__init__(*args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "head_dim": self.head_dim}

    @classmethod
    def refusal(cls, block) -> str | None:
        """Why ``block`` cannot become this class with fewer heads, or ``None``."""
        return None


# -- TransformerEncoder/TransformerDecoder and their subclasses --------------------------------


def _swap_attention(block, attribute: str, query_shape, value_shape) -> None:
    """Replaces ``block.<attribute>`` by the same attention class with ``block.num_heads``
    heads of ``block.head_dim``, at the same place among the block's tracked sub-layers."""
    old = getattr(block, attribute)
    config = old.get_config()
    config.update(num_heads=block.num_heads, key_dim=block.head_dim, value_dim=block.head_dim)
    new = type(old).from_config(config)
    new.build(query_shape=query_shape, value_shape=value_shape)
    replace_sublayer(block, attribute, new)


class _MultiHead(_HeadDim):
    @classmethod
    def pruned_config(cls, block, *, num_heads: int, num_kv_heads: int, head_dim: int) -> dict:
        """The config of this class for ``block`` with ``num_heads`` heads of ``head_dim``."""
        return {**block.get_config(), "num_heads": num_heads, "head_dim": head_dim}


class _EncoderHeads(_MultiHead):
    def build(self, inputs_shape):
        super().build(inputs_shape)
        _swap_attention(self, "_self_attention_layer", inputs_shape, inputs_shape)


class _DecoderHeads(_MultiHead):
    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        super().build(decoder_sequence_shape, encoder_sequence_shape)
        _swap_attention(self, "_self_attention_layer", decoder_sequence_shape, decoder_sequence_shape)
        if getattr(self, "_cross_attention_layer", None) is not None:
            _swap_attention(self, "_cross_attention_layer", decoder_sequence_shape, encoder_sequence_shape)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedTransformerEncoder(_EncoderHeads, TransformerEncoder):
    """A ``keras_hub.layers.TransformerEncoder`` whose ``num_heads`` heads are ``head_dim``
    wide (instead of ``hidden_dim // num_heads``).

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of ``TransformerEncoder``.
    """


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedTransformerDecoder(_DecoderHeads, TransformerDecoder):
    """A ``keras_hub.layers.TransformerDecoder`` whose ``num_heads`` heads (self- and
    cross-attention) are ``head_dim`` wide (instead of ``hidden_dim // num_heads``).

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of ``TransformerDecoder``.
    """


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedWhisperEncoder(_EncoderHeads, WhisperEncoder):
    """Whisper's encoder block with ``num_heads`` heads of ``head_dim``.

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of KerasHub's ``WhisperEncoder``.
    """


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedWhisperDecoder(_DecoderHeads, WhisperDecoder):
    """Whisper's decoder block with ``num_heads`` heads (self- and cross-attention) of
    ``head_dim``.

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of KerasHub's ``WhisperDecoder``.
    """


# -- grouped-query decoder blocks (Llama, Qwen, Phi-3) -----------------------------------------


def _constructor_config(block, hub_class) -> dict:
    """``block``'s config read from the attributes named after every ``hub_class.__init__``
    argument (the KerasHub ``get_config`` of these blocks misses some arguments or fails)."""
    config = keras.layers.Layer.get_config(block)
    for name, parameter in inspect.signature(hub_class.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        if not hasattr(block, name):
            raise NotImplementedError(
                f"keras-prune cannot rebuild '{block.name}': {hub_class.__name__} keeps no attribute "
                f"for its argument `{name}` (an unsupported keras-hub version?)."
            )
        value = getattr(block, name)
        if name == "activation":
            value = keras.activations.serialize(value)
        elif name.endswith("_initializer"):
            value = keras.initializers.serialize(value)
        elif not _plain(value):
            raise NotImplementedError(
                f"keras-prune cannot rebuild '{block.name}': its argument `{name}` is {value!r}."
            )
        config[name] = value
    return config


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _resize_heads(attention, names: tuple[str, str, str, str], hidden_shape, head_dim: int) -> None:
    """Replaces the query, key, value and output projections of ``attention`` (attribute
    ``names``) by ones of the same config with ``head_dim``-wide heads, and sets the softmax
    scaling to ``1 / sqrt(head_dim)``."""
    if not hasattr(attention, "_inv_norm_factor"):
        raise NotImplementedError(
            f"keras-prune cannot resize the heads of '{attention.name}': it has no `_inv_norm_factor` "
            "(an unsupported keras-hub version?)."
        )
    query, key, value, output = names
    counts = {query: attention.num_query_heads, key: attention.num_key_value_heads,
              value: attention.num_key_value_heads}
    for name, heads in counts.items():
        old = getattr(attention, name)
        config = old.get_config()
        *rest, count, _ = config["output_shape"]
        if count != heads:
            raise NotImplementedError(f"keras-prune cannot resize the heads of '{old.path}': {count} heads, not {heads}.")
        config["output_shape"] = (*rest, heads, head_dim)
        new = type(old).from_config(config)
        new.build(hidden_shape)
        replace_sublayer(attention, name, new)
    old = getattr(attention, output)
    new = type(old).from_config(old.get_config())
    new.build((None, None, attention.num_query_heads, head_dim))
    replace_sublayer(attention, output, new)
    attention._inv_norm_factor = 1.0 / math.sqrt(head_dim)


class _GroupedHeads(_HeadDim):
    """A grouped-query decoder block whose attention has ``head_dim``-wide heads."""

    hub_class: type = None
    attention_attribute: str = ""
    projections: tuple[str, str, str, str] = ()

    def build(self, decoder_sequence_shape):
        super().build(decoder_sequence_shape)
        _resize_heads(getattr(self, self.attention_attribute), self.projections, decoder_sequence_shape,
                      self.head_dim)

    def get_config(self):
        return {**_constructor_config(self, self.hub_class), "head_dim": self.head_dim}

    @classmethod
    def pruned_config(cls, block, *, num_heads: int, num_kv_heads: int, head_dim: int) -> dict:
        """The config of this class for ``block`` with ``num_heads`` query heads over
        ``num_kv_heads`` key/value heads, all ``head_dim`` wide."""
        return {**_constructor_config(block, cls.hub_class), "num_query_heads": num_heads,
                "num_key_value_heads": num_kv_heads, "head_dim": head_dim}


_UNDERSCORED = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedLlamaDecoder(_GroupedHeads, LlamaTransformerDecoder):
    """Llama's decoder block (Llama, Llama 3) with ``num_query_heads`` query heads over
    ``num_key_value_heads`` key/value heads of ``head_dim`` (instead of
    ``hidden_dim // num_query_heads``).

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of KerasHub's ``LlamaTransformerDecoder``.
    """

    hub_class = LlamaTransformerDecoder
    attention_attribute = "_self_attention_layer"
    projections = _UNDERSCORED


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedQwenDecoder(_GroupedHeads, QwenTransformerDecoder):
    """Qwen's (Qwen2's) decoder block with ``num_query_heads`` query heads over
    ``num_key_value_heads`` key/value heads of ``head_dim``.

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of KerasHub's ``QwenTransformerDecoder``.
    """

    hub_class = QwenTransformerDecoder
    attention_attribute = "_self_attention_layer"
    projections = _UNDERSCORED


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedPhi3Decoder(_GroupedHeads, Phi3Decoder):
    """Phi-3's decoder block with ``num_query_heads`` query heads over
    ``num_key_value_heads`` key/value heads of ``head_dim``.

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of KerasHub's ``Phi3Decoder``.
    """

    hub_class = Phi3Decoder
    attention_attribute = "attention"
    projections = ("query_dense", "key_dense", "value_dense", "output_dense")

    @classmethod
    def refusal(cls, block) -> str | None:
        if block.rope_scaling_type is not None:
            return (f"its rope_scaling_type={block.rope_scaling_type!r} rotary embedding is checked against "
                    "hidden_dim // num_query_heads when KerasHub builds the block")
        return None


# The KerasHub block class -> the subclass that rebuilds it with fewer heads.
PRUNED_BLOCKS = {
    TransformerEncoder: PrunedTransformerEncoder,
    TransformerDecoder: PrunedTransformerDecoder,
    WhisperEncoder: PrunedWhisperEncoder,
    WhisperDecoder: PrunedWhisperDecoder,
    LlamaTransformerDecoder: PrunedLlamaDecoder,
    QwenTransformerDecoder: PrunedQwenDecoder,
    Phi3Decoder: PrunedPhi3Decoder,
}
