"""GradualChannelPruning: channel masks follow the schedule and hold through training."""

import keras
import numpy as np
import pytest
from keras import layers as L

import keras_prune
from keras_prune.structured import GradualChannelPruning

pytestmark = pytest.mark.core


def _model():
    return keras.Sequential([
        keras.Input((6,)),
        L.Dense(16, activation="relu", name="a"),
        L.BatchNormalization(name="bn"),
        L.Dense(8, activation="relu", name="b"),
        L.Dense(2, name="head"),
    ])


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6)).astype("float32")
    return x, (x[:, :2].sum(axis=1) > 0).astype("int64")


def _pruned_columns(model, name):
    kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
    return np.flatnonzero(~kernel.any(axis=0))


def test_masks_grow_with_the_schedule_and_hold_through_training():
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    schedule = keras_prune.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=8, frequency=2)
    callback = GradualChannelPruning(schedule)
    x, y = _data()
    model.fit(x, y, batch_size=32, epochs=1, callbacks=[callback], verbose=0)  # steps 0..3
    halfway = set(_pruned_columns(model, "a").tolist())
    assert 0 < len(halfway) < 8
    model.fit(x, y, batch_size=32, epochs=3, callbacks=[callback], verbose=0)  # steps 4..15
    final = set(_pruned_columns(model, "a").tolist())
    assert len(final) == 8 and halfway <= final  # Adam never regrows a pruned channel
    gamma = keras.ops.convert_to_numpy(model.get_layer("bn").gamma)
    assert not gamma[sorted(final)].any() and gamma[sorted(set(range(16)) - final)].all()
    assert len(_pruned_columns(model, "b")) == 4

    small = callback.shrink()
    assert (small.get_layer("a").units, small.get_layer("b").units) == (8, 4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(small(x[:8])),
                               keras.ops.convert_to_numpy(model(x[:8])), atol=1e-5)


def test_shrink_before_any_update_and_bad_schedule_raise():
    callback = GradualChannelPruning(keras_prune.ConstantSparsity(0.5, begin_step=100))
    with pytest.raises(ValueError, match="has not pruned anything yet"):
        callback.shrink()
    with pytest.raises(TypeError, match="must be a keras_prune.PruningSchedule"):
        GradualChannelPruning(0.5)
    with pytest.raises(ValueError, match="Argument `importance` must be one of"):
        GradualChannelPruning(keras_prune.ConstantSparsity(0.5, 0), importance="taylor")
