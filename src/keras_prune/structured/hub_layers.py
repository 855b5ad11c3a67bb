"""KerasHub transformer blocks with fewer attention heads of an unchanged size.

``keras_hub.layers.TransformerEncoder`` and ``TransformerDecoder`` give their attention
layers ``hidden_dim // num_heads``-wide heads, so the same class cannot hold fewer heads of
the original size. These subclasses take that size as ``head_dim``: after the KerasHub build
they replace each attention layer with one of the same class and config, built with
``num_heads`` heads of ``head_dim``. Nothing else in the blocks depends on the head count
(their ``call`` only passes tensors of the hidden width between the attention layer, the
norms and the FFN), so outputs match the original with the removed heads zeroed.

This module imports keras-hub; :mod:`keras_prune.structured.transformer` registers
placeholders under the same names, so ``.keras`` files holding these blocks load with
keras-prune imported, whether or not keras-hub already is.
"""

from __future__ import annotations

import keras
from keras_hub.layers import TransformerDecoder, TransformerEncoder

PACKAGE = "keras_prune"


def _swap_attention(block, attribute: str, query_shape, value_shape) -> None:
    """Replaces ``block.<attribute>`` by the same attention class with ``block.num_heads``
    heads of ``block.head_dim``, at the same place among the block's tracked sub-layers (so
    weights keep their order and save under the same attribute)."""
    old = getattr(block, attribute)
    config = old.get_config()
    config.update(num_heads=block.num_heads, key_dim=block.head_dim, value_dim=block.head_dim)
    new = type(old).from_config(config)
    new.build(query_shape=query_shape, value_shape=value_shape)
    index = next(i for i, layer in enumerate(block._layers) if layer is old)
    block._tracker.untrack(old)
    setattr(block, attribute, new)
    block._layers.remove(new)
    block._layers.insert(index, new)


def _check_head_dim(block, head_dim) -> int:
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(
            f"Argument `head_dim` of {type(block).__name__} must be a positive int. Received: head_dim={head_dim!r}"
        )
    return head_dim


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedTransformerEncoder(TransformerEncoder):
    """A ``keras_hub.layers.TransformerEncoder`` whose ``num_heads`` heads are ``head_dim``
    wide (instead of ``hidden_dim // num_heads``).

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of ``TransformerEncoder``.
    """

    def __init__(self, *args, head_dim, **kwargs):
        self.head_dim = _check_head_dim(self, head_dim)
        super().__init__(*args, **kwargs)

    def build(self, inputs_shape):
        super().build(inputs_shape)
        _swap_attention(self, "_self_attention_layer", inputs_shape, inputs_shape)

    def get_config(self):
        return {**super().get_config(), "head_dim": self.head_dim}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedTransformerDecoder(TransformerDecoder):
    """A ``keras_hub.layers.TransformerDecoder`` whose ``num_heads`` heads (self- and
    cross-attention) are ``head_dim`` wide (instead of ``hidden_dim // num_heads``).

    Args:
        head_dim: the size of each attention head.
        **kwargs: the arguments of ``TransformerDecoder``.
    """

    def __init__(self, *args, head_dim, **kwargs):
        self.head_dim = _check_head_dim(self, head_dim)
        super().__init__(*args, **kwargs)

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        super().build(decoder_sequence_shape, encoder_sequence_shape)
        _swap_attention(self, "_self_attention_layer", decoder_sequence_shape, decoder_sequence_shape)
        if self._cross_attention_layer is not None:
            _swap_attention(self, "_cross_attention_layer", decoder_sequence_shape, encoder_sequence_shape)

    def get_config(self):
        return {**super().get_config(), "head_dim": self.head_dim}


# The KerasHub block class -> the subclass that rebuilds it with fewer heads.
PRUNED_BLOCKS = {TransformerEncoder: PrunedTransformerEncoder, TransformerDecoder: PrunedTransformerDecoder}
