"""allocate: per-weight sparsities that meet an overall target exactly, by five rules."""

import pickle

import keras
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keras_prune import magnitude_prune
from keras_prune.allocation import Allocation, allocate, fill, max_count, round_counts, weight_macs
from keras_prune.masks import prune_count
from keras_prune.oneshot import select_weights, weight_keys

pytestmark = pytest.mark.core

RULES = ["uniform", "global", "erk", "owl", "sensitivity"]


def cnn():
    return keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            keras.layers.Conv2D(4, 3, name="conv1"),
            keras.layers.Conv2D(8, 3, name="conv2"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="fc2"),
        ],
        name="cnn",
    )


def mlp():
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(24, name="a"),
            keras.layers.Dense(24, name="b"),
            keras.layers.Dense(24, name="c"),
        ],
        name="mlp",
    )


def images(n=16):
    return np.random.default_rng(1).normal(size=(n, 10, 10, 3)).astype("float32")


def sizes_of(model):
    selected = select_weights(model)
    return {key: int(np.prod(v.shape)) for key, (_, v) in zip(weight_keys(selected), selected)}


class Curves:
    """A stand-in sensitivity result: drop = slope * sparsity ** 2, read by linear interpolation."""

    def __init__(self, sizes, slopes, measured=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)):
        self.keys, self.sizes, self.sparsities = list(sizes), dict(sizes), list(measured)
        self.slopes = slopes

    def drop(self, key, sparsity):
        points = [0.0, *self.sparsities]
        drops = [self.slopes.get(key, 1.0) * s**2 for s in points]
        return float(np.interp(sparsity, points, drops))


def options(rule, model, data=None):
    if rule == "owl":
        return {"calibration_data": images() if data is None else data}
    if rule == "sensitivity":
        return {"sensitivity": Curves(sizes_of(model), {})}
    return {}


def snapshot(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def assert_unchanged(model, before):
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


def assert_exact(plan, target):
    total = sum(plan.sizes.values())
    assert sum(plan.counts.values()) == prune_count(target, total)
    for key, sparsity in plan.items():
        assert prune_count(sparsity, plan.sizes[key]) == plan.counts[key]
        assert plan.counts[key] <= max_count(0.99, plan.sizes[key])


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_meets_the_target_exactly_and_leaves_the_model_alone(rule):
    model = cnn()
    before = snapshot(model)
    for target in (0.0, 0.37, 0.8) if rule == "sensitivity" else (0.0, 0.37, 0.8, 0.98):
        plan = allocate(model, target, rule=rule, **options(rule, model))
        assert_exact(plan, target)
        assert list(plan) == list(sizes_of(model))
        assert plan.rule == rule and plan.target == target and plan.by == "weights"
    assert_unchanged(model, before)


def gpt2():
    import keras_hub

    return keras_hub.models.GPT2Backbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
                                         intermediate_dim=32, max_sequence_length=8)


def test_every_rule_is_exact_on_a_kerashub_backbone():
    model = gpt2()
    tokens = np.random.default_rng(0).integers(1, 50, size=(8, 8)).astype("int32")
    data = {"token_ids": tokens, "padding_mask": np.ones((8, 8), "int32")}
    before = snapshot(model)
    for rule in RULES:
        plan = allocate(model, 0.6, rule=rule, **options(rule, model, data))
        assert_exact(plan, 0.6)
    assert plan.flops["token_embedding/embeddings"] == 0  # a lookup
    assert plan.sizes["transformer_layer_0/self_attention/query/kernel"] == 16 * 2 * 8
    assert_unchanged(model, before)


def test_erk_keeps_small_layers_denser_and_scale_zero_is_uniform():
    model = cnn()
    plan = allocate(model, 0.8, rule="erk")
    selected = select_weights(model)
    ratios = {key: sum(v.shape) / np.prod(v.shape) for key, (_, v) in zip(weight_keys(selected), selected)}
    order = sorted(plan, key=ratios.get)  # largest layers (smallest ratio) first
    assert [plan[key] for key in order] == sorted(plan.values(), reverse=True)
    assert plan["conv1/kernel"] < 0.8 < plan["fc1/kernel"]
    assert allocate(model, 0.8, rule="erk", erk_scale=0.0) == allocate(model, 0.8, rule="uniform")


def test_erk_respects_max_sparsity():
    plan = allocate(cnn(), 0.8, rule="erk", max_sparsity=0.85)
    assert max(plan.values()) <= 0.85
    assert_exact(plan, 0.8)


def count_zeros(model):
    selected = select_weights(model)
    return {key: int(np.sum(keras.ops.convert_to_numpy(v) == 0)) for key, (_, v) in zip(weight_keys(selected), selected)}


@pytest.mark.parametrize("rounded", [False, True])
def test_global_gives_the_counts_of_global_magnitude_pruning(rounded):
    model = cnn()
    if rounded:  # many equal magnitudes: ties are broken as the global ranking breaks them
        model.set_weights([np.round(w, 1) + 0.05 for w in model.get_weights()])
    plan = allocate(model, 0.7, rule="global")
    report = magnitude_prune(model, sparsity=0.7, scope="global", inplace=False)
    assert plan.counts == count_zeros(report.model)


def test_global_holds_a_weight_at_max_sparsity_and_ranks_the_rest():
    model = cnn()
    small = model.get_layer("conv2")
    small.kernel.assign(keras.ops.convert_to_numpy(small.kernel) * 1e-3)  # all of conv2 ranks first
    plan = allocate(model, 0.8, rule="global", max_sparsity=0.9)
    assert plan.counts["conv2/kernel"] == max_count(0.9, 288)
    assert_exact(plan, 0.8)


def test_owl_gives_lower_sparsity_to_the_layer_with_an_outlier_input_feature():
    model = mlp()
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    x[:, 3] *= 60.0  # one outlier feature reaches only layer "a"
    plan = allocate(model, 0.5, rule="owl", calibration_data=x, owl_range=0.1)
    assert plan["a/kernel"] == min(plan.values())
    assert plan["a/kernel"] < 0.45 < 0.5 < plan["b/kernel"]
    assert_exact(plan, 0.5)


def test_sensitivity_prunes_the_steep_layer_least_and_never_extrapolates():
    model = mlp()
    curves = Curves(sizes_of(model), {"b/kernel": 20.0}, measured=(0.2, 0.4, 0.6, 0.8))
    plan = allocate(model, 0.5, rule="sensitivity", sensitivity=curves)
    assert plan["b/kernel"] < 0.4 < 0.6 < plan["a/kernel"] <= 0.8
    assert_exact(plan, 0.5)
    capped = Curves(sizes_of(model), {}, measured=(0.1, 0.3))
    with pytest.raises(ValueError, match=r"highest reachable target by weights is 0\.29"):
        allocate(model, 0.5, rule="sensitivity", sensitivity=capped)


def test_sensitivity_reads_a_real_sensitivity_result():
    from keras_prune.sensitivity import SensitivityResult

    model = mlp()
    sizes = sizes_of(model)
    accuracy = {"a/kernel": [0.9, 0.9, 0.85], "b/kernel": [0.7, 0.4, 0.2], "c/kernel": [0.88, 0.8, 0.7]}
    result = SensitivityResult("accuracy", True, "magnitude", 0.9, (0.3, 0.6, 0.9), accuracy, sizes)
    plan = allocate(model, 0.5, rule="sensitivity", sensitivity=result)
    assert plan["b/kernel"] == min(plan.values()) and plan["a/kernel"] == max(plan.values())
    assert_exact(plan, 0.5)


def test_data_and_curves_for_other_rules_pass_through_unused():
    model = cnn()
    unused = {"calibration_data": images(), "sensitivity": Curves(sizes_of(model), {}), "samples": 8}
    assert allocate(model, 0.5, rule="erk", **unused) == allocate(model, 0.5, rule="erk")


def test_sensitivity_names_the_weights_it_has_no_curve_for():
    model = mlp()
    partial = Curves({k: n for k, n in sizes_of(model).items() if k != "c/kernel"}, {})
    with pytest.raises(ValueError, match="no curve for 1 selected weights: c/kernel"):
        allocate(model, 0.5, rule="sensitivity", sensitivity=partial)
    other = Curves({**sizes_of(model), "c/kernel": 7}, {})
    with pytest.raises(ValueError, match="measured on another model"):
        allocate(model, 0.5, rule="sensitivity", sensitivity=other)
    plan = allocate(model, 0.5, rule="sensitivity", sensitivity=partial, layers=["a", "b"])
    assert sorted(plan) == ["a/kernel", "b/kernel"]


def test_flops_of_each_weight_count_every_output_position():
    plan = allocate(cnn(), 0.5, rule="uniform", by="flops")
    assert plan.flops == {"conv1/kernel": 108 * 64, "conv2/kernel": 288 * 36, "fc1/kernel": 288 * 32,
                          "fc2/kernel": 320}


def test_by_flops_every_rule_meets_the_target_within_half_an_element():
    model = cnn()
    for rule in RULES:
        plan = allocate(model, 0.6, rule=rule, by="flops", **options(rule, model))
        total = sum(plan.flops.values())
        worst = max(plan.flops[k] / plan.sizes[k] for k in plan)
        assert abs(plan.flops_sparsity - 0.6) <= worst / (2 * total) + 1e-12, rule
        assert all(prune_count(s, plan.sizes[k]) == plan.counts[k] for k, s in plan.items())
        assert plan.by == "flops"


def test_uniform_by_flops_keeps_every_weight_near_the_target():
    plan = allocate(cnn(), 0.6, rule="uniform", by="flops")
    for key, sparsity in plan.items():
        assert abs(sparsity - 0.6) < 0.02, key


def test_weight_macs_of_other_layer_types():
    def built(layer, shape):
        layer.build(shape)
        return layer

    zeros = {"kernel_initializer": "zeros"}  # no random initializer to compile per shape
    einsum = built(keras.layers.EinsumDense("abc,cde->abde", (None, 2, 4), **zeros), (None, 5, 3))
    transposed = built(keras.layers.Conv2DTranspose(2, 3, strides=2, **zeros), (None, 4, 4, 3))
    embedding = built(keras.layers.Embedding(10, 4, embeddings_initializer="zeros"), (None, 7))
    tokens = built(keras.layers.Dense(6, **zeros), (None, None, 3))
    assert weight_macs(einsum, einsum.kernel) == 3 * 2 * 4 * 5
    assert weight_macs(transposed, transposed.kernel) == 3 * 3 * 3 * 2 * 16
    assert weight_macs(embedding, embedding.embeddings) == 0
    assert weight_macs(tokens, tokens.kernel) == 18  # per token: an unknown length counts 1


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 10**9), data=st.data())
def test_a_sparsity_re_applied_gives_back_its_count(size, data):
    count = data.draw(st.integers(0, size))
    plan = Allocation({"w/kernel": count}, {"w/kernel": size})
    assert prune_count(plan["w/kernel"], size) == count
    assert round(plan["w/kernel"] * size) == count


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
    shares=st.data(),
    target=st.floats(0.0, 0.95),
)
def test_rounding_is_exact_for_counts_and_within_half_an_element_for_costs(sizes, shares, target):
    sizes = np.array(sizes)
    caps = np.array([max_count(0.99, int(n)) for n in sizes])
    fractions = np.array(shares.draw(st.lists(st.floats(0, 1), min_size=sizes.size, max_size=sizes.size)))
    goal = prune_count(target, int(sizes.sum()))
    assume(goal <= caps.sum())
    ideal = fill(fractions, np.ones(sizes.size), caps / sizes, sizes.astype(float), goal) * sizes
    counts = round_counts(ideal, caps, np.ones(sizes.size), goal)
    assert counts.sum() == goal and (counts >= 0).all() and (counts <= caps).all()
    costs = np.array(shares.draw(st.lists(st.integers(0, 50), min_size=sizes.size, max_size=sizes.size)), float)
    if costs.any():
        flops_goal = target * float(np.dot(costs, sizes))
        if flops_goal <= np.dot(costs, caps):
            ideal = fill(fractions, np.ones(sizes.size), caps / sizes, costs * sizes, flops_goal) * sizes
            counts = round_counts(ideal, caps, costs, flops_goal)
            assert abs(np.dot(costs, counts) - flops_goal) <= costs.max() / 2 + 1e-6
            assert (counts >= 0).all() and (counts <= caps).all()


def test_json_pickle_table_and_layers():
    model = cnn()
    plan = allocate(model, 0.75, rule="erk", by="flops")
    again = Allocation.from_json(plan.to_json())
    assert again == plan and again.counts == plan.counts and again.flops == plan.flops
    assert (again.rule, again.target, again.by) == ("erk", 0.75, "flops")
    assert pickle.loads(pickle.dumps(plan)).counts == plan.counts
    assert repr(plan).startswith("Allocation(rule='erk', by='flops', target=0.75, weights=4,")
    assert plan.table().row_count == 4
    assert plan.for_layers() == {key.split("/")[0]: value for key, value in plan.items()}
    with pytest.raises(TypeError, match="read-only"):
        plan["fc1/kernel"] = 0.5
    report = magnitude_prune(model, sparsity=plan, inplace=False)
    assert count_zeros(report.model) == plan.counts


def test_from_json_rejects_what_to_json_would_not_write():
    head = '{"rule": "x", "target": 0.5, "by": "weights", "sizes": {"a": 4}, '
    for text, phrase in [
        ("[1, 2]", "Not an allocation"),
        (head + '"counts": {"a": 5}}', "between 0"),
        (head + '"counts": {"a": 1}, "sparsity": {"a": 0.5}}', "not its counts"),
    ]:
        with pytest.raises(ValueError, match=phrase):
            Allocation.from_json(text)


BAD = [  # (arguments, error, phrase of its message)
    ({"target_sparsity": 1.0}, ValueError, "target_sparsity=1.0"),
    ({"target_sparsity": "0.5"}, TypeError, "target_sparsity='0.5'"),
    ({"rule": "random"}, ValueError, "rule='random'"),
    ({"by": "params"}, ValueError, "by='params'"),
    ({"rule": "owl"}, ValueError, "needs `calibration_data`"),
    ({"rule": "sensitivity"}, ValueError, "needs `sensitivity`"),
    ({"rule": "sensitivity", "sensitivity": object()}, TypeError, "has no `keys`"),
    ({"owl_range": 0.2}, ValueError, "only used by rule='owl'"),
    ({"rule": "uniform", "erk_scale": 2.0}, ValueError, "only used by rule='erk'"),
    ({"max_sparsity": 1.0}, ValueError, "max_sparsity=1.0"),
    ({"erk_scale": -1.0, "rule": "erk"}, ValueError, "erk_scale=-1.0"),
    ({"layers": 3}, TypeError, "layers=3"),
    ({"layers": "nothing"}, ValueError, "selects none"),
    ({"max_sparsity": 0.5}, ValueError, "highest reachable target by weights is 0.5"),
    ({"layers": ["conv1", "fc2"], "target_sparsity": 0.9, "max_sparsity": 0.8}, ValueError,
     "highest reachable target by weights is 0.7"),
]


def test_bad_arguments_fail_clearly_and_change_nothing():
    model = cnn()
    before = snapshot(model)
    for kwargs, error, phrase in BAD:
        with pytest.raises(error) as raised:
            allocate(model, **{"target_sparsity": 0.6, **kwargs})
        message = str(raised.value)
        assert phrase in message, (kwargs, message)
        assert "Received" in message or "selects none" in phrase, message
    assert_unchanged(model, before)


def test_a_model_is_required():
    with pytest.raises(TypeError, match="Received: model='model.keras'"):
        allocate("model.keras", 0.5)


def test_owl_rejects_data_the_model_does_not_accept():
    model = cnn()
    before = snapshot(model)
    with pytest.raises(ValueError):
        allocate(model, 0.5, rule="owl", calibration_data=np.zeros((4, 7), "float32"))
    assert_unchanged(model, before)
