"""FLOPs per layer, checked against hand counts (a multiply-add is 2 FLOPs)."""

import keras
import pytest
from keras import layers as L

from keras_prune.analysis.flops import count_flops, total_flops
from keras_prune.structured import prune_channels

pytestmark = pytest.mark.core


def test_flops_of_convolutions_and_dense_match_hand_counts():
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, strides=2, padding="same", name="conv")(x)          # out 4x4x4
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(a)  # 4x4x8
    c = L.SeparableConv2D(5, 1, name="sep")(b)                              # 4x4x5
    d = L.MaxPooling2D(name="pool")(c)                                      # 2x2x5
    y = L.Dense(3, name="dense")(L.Flatten(name="flat")(d))
    flops = count_flops(keras.Model(x, y))
    assert flops["conv"] == 2 * 16 * 4 * 9 * 3
    assert flops["dw"] == 2 * 16 * 8 * 9
    assert flops["sep"] == 2 * 16 * 8 * 1 + 2 * 16 * 8 * 5
    assert flops["pool"] == 2 * 2 * 5 * 4
    assert flops["flat"] == 0
    assert flops["dense"] == 2 * 20 * 3


def test_attention_flops_and_shared_layers_count_every_call():
    x = keras.Input((5, 8))
    a = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(x, x)
    shared = L.Dense(8, name="shared")
    model = keras.Model(x, shared(shared(a)))
    flops = count_flops(model)
    projections = 3 * 5 * 8 * 2 * 4 + 5 * 2 * 4 * 8
    assert flops["mha"] == 2 * (projections + 5 * 5 * 2 * (4 + 4))
    assert flops["shared"] == 2 * (2 * 5 * 8 * 8)


def test_halving_channels_quarters_the_inner_convolution():
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(16, 3, padding="same", activation="relu", name="a")(x)
    b = L.Conv2D(16, 3, padding="same", activation="relu", name="b")(a)
    model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(b)))
    small = prune_channels(model, 0.5)
    assert count_flops(small)["b"] * 4 == count_flops(model)["b"]
    assert total_flops(small) < total_flops(model) / 2
