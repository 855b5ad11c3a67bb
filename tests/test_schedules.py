import keras
import pytest

from keras_prune import ConstantSparsity, PolynomialDecay

pytestmark = pytest.mark.core


def test_polynomial_decay_matches_tfmot_values():
    schedule = PolynomialDecay(0.2, 0.8, begin_step=100, end_step=110, power=3, frequency=2)
    values = [schedule.sparsity_at(s) for s in (100, 102, 105, 110)]
    assert values == pytest.approx([0.2, 0.4928, 0.725, 0.8])
    assert schedule.sparsity_at(10_000) == pytest.approx(0.8)
    assert schedule.sparsity_at(0) == pytest.approx(0.2)


def test_update_steps_follow_begin_end_and_frequency():
    schedule = PolynomialDecay(0.2, 0.8, begin_step=100, end_step=110, frequency=2)
    updating = [s for s in range(90, 120) if schedule(s)[0]]
    assert updating == [100, 102, 104, 106, 108, 110]


def test_constant_sparsity_forever_when_end_is_minus_one():
    schedule = ConstantSparsity(0.5, begin_step=3, frequency=4)
    assert [s for s in range(0, 20) if schedule.should_update(s)] == [3, 7, 11, 15, 19]
    assert schedule(1_000_003) == (True, 0.5)


def test_constant_sparsity_stops_at_end_step():
    schedule = ConstantSparsity(0.5, begin_step=0, end_step=10, frequency=5)
    assert [s for s in range(30) if schedule.should_update(s)] == [0, 5, 10]


@pytest.mark.parametrize("schedule", [
    ConstantSparsity(0.3, 5, 50, 7),
    PolynomialDecay(0.1, 0.9, 0, 1000, power=2, frequency=10),
])
def test_schedules_round_trip_through_keras_serialization(schedule):
    config = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(config)
    assert restored == schedule
    assert type(restored).from_config(schedule.get_config()) == schedule


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(target_sparsity=1.5, begin_step=0), ValueError, "target_sparsity=1.5"),
    (dict(target_sparsity=-0.1, begin_step=0), ValueError, "must be in [0, 1)"),
    (dict(target_sparsity=1.0, begin_step=0), ValueError, "target_sparsity=1.0"),
    (dict(target_sparsity="0.5", begin_step=0), TypeError, "target_sparsity='0.5'"),
    (dict(target_sparsity=0.5, begin_step=-1), ValueError, "begin_step=-1"),
    (dict(target_sparsity=0.5, begin_step=10, end_step=5), ValueError, "end_step=5"),
    (dict(target_sparsity=0.5, begin_step=0, frequency=0), ValueError, "frequency=0"),
    (dict(target_sparsity=0.5, begin_step=0.5), TypeError, "begin_step=0.5"),
])
def test_constant_sparsity_rejects_bad_arguments(kwargs, error, fragment):
    with pytest.raises(error, match="Argument `") as info:
        ConstantSparsity(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(initial_sparsity=0.2, final_sparsity=0.8, begin_step=0, end_step=-1), "end_step=-1"),
    (dict(initial_sparsity=0.2, final_sparsity=0.8, begin_step=5, end_step=5), "end_step=5"),
    (dict(initial_sparsity=0.2, final_sparsity=1.2, begin_step=0, end_step=5), "final_sparsity=1.2"),
    (dict(initial_sparsity=0.2, final_sparsity=0.8, begin_step=0, end_step=5, power=float("nan")), "power"),
])
def test_polynomial_decay_rejects_bad_arguments(kwargs, fragment):
    with pytest.raises((ValueError, TypeError)) as info:
        PolynomialDecay(**kwargs)
    assert fragment in str(info.value)
