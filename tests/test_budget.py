"""prune_to_budget: bisection on the overall sparsity within a metric drop; nothing lost on errors."""

import keras
import numpy as np
import pytest

from keras_prune import prune_to_budget, sensitivity
from keras_prune.evaluation import Evaluator

from helpers import compile_classifier, dense_data, mlp

pytestmark = pytest.mark.core


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y = dense_data(n=512)
    model = compile_classifier(mlp())
    model.fit(x, y, epochs=30, batch_size=64, verbose=0)
    return model, (x, y)


def fresh(trained):
    model, data = trained
    copy = compile_classifier(mlp())
    copy.set_weights(model.get_weights())
    return copy, data


def weights(model):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


def zero_share(model):
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]
    return sum(int(k.size - np.count_nonzero(k)) for k in kernels) / sum(k.size for k in kernels)


@pytest.mark.parametrize("rule", ["global", "uniform", "erk"])
def test_the_model_ends_at_the_best_probe_within_the_budget(trained, rule):
    model, data = fresh(trained)
    evaluator = Evaluator(model, data)
    dense = evaluator()
    report = prune_to_budget(model, data, max_drop=0.02, rule=rule, tolerance=0.02)
    within = [probe for probe in report.history if probe["within"]]
    over = [probe for probe in report.history if not probe["within"]]
    assert within and all(p["drop"] <= 0.02 for p in within) and all(p["drop"] > 0.02 for p in over)
    best = max(p["sparsity"] for p in within)
    assert zero_share(model) == pytest.approx(best, abs=1e-9)
    assert report.settings["reached_sparsity"] == pytest.approx(best, abs=0.01)
    assert dense - evaluator() <= 0.02 + 1e-9
    # the bracket closed: a probe over the budget lies within `tolerance` above the best one
    assert not over or min(p["sparsity"] for p in over if p["sparsity"] > best) - best <= 0.02 + 0.01


def test_a_looser_budget_never_reaches_less(trained):
    reached = []
    for max_drop in (0.005, 0.05, 0.3):
        model, data = fresh(trained)
        reached.append(prune_to_budget(model, data, max_drop=max_drop, tolerance=0.01).settings["reached_sparsity"])
    assert reached == sorted(reached) and reached[-1] > reached[0]


def test_a_rule_that_cannot_reach_high_searches_below_its_limit(trained):
    model, data = fresh(trained)
    result = sensitivity(model, data, sparsities=(0.3, 0.6), progress=False)
    report = prune_to_budget(model, data, max_drop=1.0, rule="sensitivity", sensitivity=result)
    assert report.history[0]["within"]
    assert report.settings["reached_sparsity"] == pytest.approx(0.6, abs=0.01)  # whole weights under the caps


def test_inplace_false_leaves_the_model_alone(trained):
    model, data = fresh(trained)
    before = weights(model)
    report = prune_to_budget(model, data, max_drop=0.05, inplace=False)
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)
    assert report.model is not model


def test_an_interrupted_search_restores_the_dense_weights(trained):
    model, data = fresh(trained)
    before = weights(model)
    calls = []

    def metric(y_true, y_pred):
        calls.append(1)
        if len(calls) == 3:  # the dense model, then a probe, then stop mid-search
            raise KeyboardInterrupt
        return float(np.mean(np.argmax(y_pred, -1) == y_true))

    with pytest.raises(KeyboardInterrupt):
        prune_to_budget(model, data, max_drop=0.05, metric=metric)
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"max_drop": -0.1}, ValueError, "must be >= 0"),
        ({"max_drop": 0.1, "low": 0.5, "high": 0.4}, ValueError, "0 <= low < high < 1"),
        ({"max_drop": 0.1, "tolerance": 0.0}, ValueError, "tolerance"),
        ({"max_drop": 0.1, "rule": "best"}, ValueError, "rule"),
        ({"max_drop": 0.1, "metric": "auc"}, ValueError, "auc"),
    ],
)
def test_bad_arguments_fail_before_any_weight_changes(trained, kwargs, error, phrase):
    model, data = fresh(trained)
    before = weights(model)
    with pytest.raises(error, match=phrase):
        prune_to_budget(model, data, **kwargs)
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)
