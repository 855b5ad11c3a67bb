"""Weight clustering: centroid initializations, fine-tuning with trainable centroids, sparsity
kept, save/load/resume, strip, bad input, tfmot's names, and layers at any depth."""

import keras
import numpy as np
import pytest

import keras_prune.compat.tfmot as tfmot
from keras_prune.clustering import (
    CentroidInitialization,
    ClusteredModel,
    cluster_weights,
    is_clustered,
    plan_clusters,
    strip_clustering,
)
from keras_prune.clustering.centroids import init_centroids, quantization_error
from keras_prune.oneshot import magnitude_prune

from helpers import compile_classifier, dense_data, mlp

pytestmark = pytest.mark.core
L = keras.layers
INITS = list(CentroidInitialization)


def cnn():
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        L.Conv2D(8, 3, activation="relu", name="conv"),
        L.Flatten(),
        L.Dense(3, name="logits"),
    ], name="cnn")


def image_data(n=64):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 6, 6, 2)).astype("float32")
    return x, (x[:, 0, 0, :].argmax(-1) + (x.mean((1, 2, 3)) > 0)).astype("int64")


def distinct_counts(values, per_channel):
    if not per_channel:
        return [len(np.unique(values))]
    flat = values.reshape(-1, values.shape[-1])
    return [len(np.unique(flat[:, c])) for c in range(flat.shape[1])]


class EveryStep(keras.callbacks.Callback):
    """Runs ``check(clustered)`` after every training step."""

    def __init__(self, clustered, check):
        super().__init__()
        self.clustered, self.check, self.steps = clustered, check, 0

    def on_train_batch_end(self, batch, logs=None):
        _ = self.model  # on JAX, reading the model puts the trained state back in the variables
        self.check(self.clustered)
        self.steps += 1


def optimizer(name):
    return keras.optimizers.SGD(0.1) if name == "sgd" else keras.optimizers.Adam(0.01)


# -- centroids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("init", INITS)
def test_initializations_give_sorted_distinct_centroids_within_range(init):
    values = np.random.default_rng(0).normal(size=500)
    centroids = init_centroids(values, 8, init, np.random.default_rng(1))
    assert centroids.shape == (8,)
    assert np.all(np.diff(centroids) > 0)
    assert values.min() <= centroids.min() and centroids.max() <= values.max()


def test_linear_spans_the_range_and_density_follows_the_weights():
    values = np.random.default_rng(0).normal(size=2000)
    linear = init_centroids(values, 5, "LINEAR")
    assert linear[0] == values.min() and linear[-1] == values.max()
    np.testing.assert_allclose(np.diff(linear), np.diff(linear)[0])
    density = init_centroids(values, 5, "DENSITY_BASED")
    assert abs(density[2]) < 0.1 and np.diff(density)[1] < np.diff(linear)[1]  # denser near the mode


def test_kmeans_plus_plus_quantizes_better_than_linear():
    values = np.random.default_rng(0).normal(size=5000)
    errors = {init: quantization_error(values, init_centroids(values, 8, init)) for init in INITS}
    assert errors[CentroidInitialization.KMEANS_PLUS_PLUS] < 0.5 * errors[CentroidInitialization.LINEAR]
    assert errors[CentroidInitialization.KMEANS_PLUS_PLUS] == min(errors.values())


def test_init_names_follow_tfmot():
    assert [m.value for m in CentroidInitialization] == ["LINEAR", "RANDOM", "DENSITY_BASED", "KMEANS_PLUS_PLUS"]
    model = mlp()
    clustered = cluster_weights(model, 4, cluster_centroids_init="kmeans++")
    assert clustered.cluster_centroids_init is CentroidInitialization.KMEANS_PLUS_PLUS


# -- plan and apply ----------------------------------------------------------------------------


def test_plan_changes_nothing_and_apply_puts_weights_on_the_plans_centroids():
    model = mlp()
    before = [w.numpy() if hasattr(w, "numpy") else keras.ops.convert_to_numpy(w) for w in model.weights]
    plans = plan_clusters(model, 5)
    assert [p.key for p in plans] == ["hidden/kernel", "logits/kernel"]  # biases stay as they are
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    clustered = cluster_weights(model, 5)
    for plan, values, indices, centroids in zip(plans, clustered.weight_values(), clustered.cluster_indices(),
                                                clustered.centroids()):
        np.testing.assert_array_equal(values, plan.values())
        np.testing.assert_array_equal(indices, plan.indices)
        np.testing.assert_allclose(centroids, plan.centroids, rtol=1e-6)
        assert len(np.unique(values)) == 5


def test_per_channel_clusters_each_output_channel():
    model = cnn()
    clustered = cluster_weights(model, 3, cluster_per_channel=True)
    conv = clustered.weight_values()[0]
    assert distinct_counts(conv, True) == [3] * 8
    assert len(np.unique(conv)) > 3
    assert clustered.centroids()[0].shape == (8, 3)


# -- fine-tuning -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fit_keeps_k_values_per_tensor_and_moves_the_centroids(name, per_channel):
    model, (x, y) = cnn(), image_data()
    clustered = cluster_weights(model, 4, cluster_per_channel=per_channel)
    indices = clustered.cluster_indices()
    start = clustered.centroids()
    compile_classifier(clustered, optimizer(name))

    def check(c):
        for values in c.weight_values():
            assert max(distinct_counts(values, per_channel)) <= 4

    callback = EveryStep(clustered, check)
    clustered.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    assert callback.steps == 8
    for before, after in zip(start, clustered.centroids()):
        assert not np.allclose(before, after)  # the centroids train
    for before, after in zip(indices, clustered.cluster_indices()):
        np.testing.assert_array_equal(before, after)  # the assignments are fixed


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_each_centroid_moves_by_the_mean_update_of_its_weights(name):
    x, y = dense_data(n=64)
    model = mlp()
    clustered = cluster_weights(model, 4)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())  # the same start: every weight on its centroid
    start = clustered.centroids()
    for m in (clustered, twin):
        compile_classifier(m, optimizer(name))
        m.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)  # one step on the same batch
    free = [keras.ops.convert_to_numpy(twin.get_layer(name).kernel) for name in ("hidden", "logits")]
    for updated, indices, centroids, first in zip(free, clustered.cluster_indices(), clustered.centroids(), start):
        expected = np.array([updated[indices == c].mean() for c in range(4)])
        np.testing.assert_allclose(centroids, expected, atol=1e-6)
        assert not np.allclose(centroids, first)
    bias = keras.ops.convert_to_numpy(clustered.get_layer("hidden").bias)
    np.testing.assert_allclose(bias, keras.ops.convert_to_numpy(twin.get_layer("hidden").bias), atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_preserve_sparsity_keeps_pruned_zeros_exactly_zero_and_out_of_the_clusters(name):
    x, y = dense_data(n=64)
    model = mlp()
    magnitude_prune(model, sparsity=0.5)
    zeros = [keras.ops.convert_to_numpy(model.get_layer(n).kernel) == 0 for n in ("hidden", "logits")]
    clustered = cluster_weights(model, 3, preserve_sparsity=True)
    for values, zero, indices in zip(clustered.weight_values(), zeros, clustered.cluster_indices()):
        assert np.array_equal(values == 0, zero) and np.all(indices[zero] == -1)
        assert len(np.unique(values[~zero])) == 3
    compile_classifier(clustered, optimizer(name))

    def check(c):
        for values, zero in zip(c.weight_values(), zeros):
            assert np.all(values[zero] == 0) and not np.any(np.signbit(values[zero]))  # +0.0
            assert np.all(values[~zero] != 0) and len(np.unique(values[~zero])) <= 3

    callback = EveryStep(clustered, check)
    clustered.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    assert callback.steps == 8
    stripped = strip_clustering(clustered)
    kernel = keras.ops.convert_to_numpy(stripped.get_layer("hidden").kernel)
    assert np.array_equal(kernel == 0, zeros[0]) and len(np.unique(kernel)) <= 4


def test_save_mid_fine_tuning_loads_back_and_continues(tmp_path):
    x, y = dense_data(n=64)
    clustered = cluster_weights(mlp(), 4, cluster_per_channel=True, preserve_sparsity=True)
    compile_classifier(clustered, "adam")
    clustered.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert isinstance(loaded, ClusteredModel) and loaded.cluster_per_channel and loaded.preserve_sparsity
    assert loaded.weight_names() == ["hidden/kernel", "logits/kernel"]
    for a, b in zip(clustered.cluster_indices(), loaded.cluster_indices()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(clustered.weight_values(), loaded.weight_values()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-6)
    start = loaded.centroids()
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)  # resumes with the saved optimizer state
    for a, b in zip(clustered.cluster_indices(), loaded.cluster_indices()):
        np.testing.assert_array_equal(a, b)
    for values, before, after in zip(loaded.weight_values(), start, loaded.centroids()):
        assert max(distinct_counts(values, True)) <= 4
        assert not np.allclose(before, after)


def test_strip_returns_the_model_without_clustering_state():
    model = mlp()
    config = model.get_config()
    clustered = cluster_weights(model, 3)
    stripped = strip_clustering(clustered)
    assert stripped is model and stripped.get_config() == config
    assert model.get_layer("hidden").kernel.constraint is None and not is_clustered(stripped)
    assert len(np.unique(keras.ops.convert_to_numpy(model.get_layer("hidden").kernel))) == 3
    cluster_weights(model, 2)  # stripped: it can be clustered again
    assert strip_clustering(keras.Sequential([keras.Input((2,)), L.Dense(1)])) is not None


def test_a_custom_layer_holding_a_dense_is_clustered_at_depth():
    @keras.saving.register_keras_serializable(package="test_clustering")
    class Block(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._ffn = L.Dense(8, name="ffn")
            self.scale = None

        def build(self, input_shape):
            self._ffn.build(input_shape)
            self.scale = self.add_weight(shape=(8,), initializer="ones", name="scale")

        def call(self, x):
            return self._ffn(x) * self.scale

    inputs = keras.Input((6,))
    outputs = L.Dense(2, name="head")(Block(name="block")(inputs))
    model = keras.Model(inputs, outputs)
    clustered = cluster_weights(model, 3)
    assert clustered.weight_names() == ["block/ffn/kernel", "head/kernel"]
    x, y = dense_data(n=32, features=6, classes=2)
    compile_classifier(clustered, "adam")
    clustered.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert [len(np.unique(v)) for v in clustered.weight_values()] == [3, 3]
    assert len(np.unique(keras.ops.convert_to_numpy(model.layers[1].scale))) > 3  # trained, not clustered


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_count_per_weight_clusters_each_named_weight_to_its_own_count(tmp_path, per_channel):
    x, y = dense_data(n=64)
    model = mlp()
    clustered = cluster_weights(model, {"hidden/kernel": 5, "logits/kernel": 2}, cluster_per_channel=per_channel)
    assert clustered.cluster_counts() == [5, 2]
    assert [c.shape[-1] for c in clustered.centroids()] == [5, 2]
    compile_classifier(clustered, "adam")
    clustered.fit(x, y, batch_size=16, epochs=1, verbose=0)
    hidden, logits = clustered.weight_values()
    assert max(distinct_counts(hidden, per_channel)) == 5 and max(distinct_counts(logits, per_channel)) == 2
    assert [int(i.max()) for i in clustered.cluster_indices()] == [4, 1]
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.number_of_clusters == {"hidden/kernel": 5, "logits/kernel": 2} and loaded.cluster_counts() == [5, 2]
    for a, b in zip(clustered.centroids(), loaded.centroids()):
        np.testing.assert_array_equal(a, b)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert max(distinct_counts(loaded.weight_values()[0], per_channel)) == 5


def test_a_count_per_weight_leaves_the_weights_it_does_not_name_alone():
    model = mlp()
    logits = keras.ops.convert_to_numpy(model.get_layer("logits").kernel).copy()
    clustered = cluster_weights(model, {"hidden/kernel": 3})
    assert clustered.weight_names() == ["hidden/kernel"]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("logits").kernel), logits)


# -- bad input: clear errors before anything changes -------------------------------------------


def _values(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


@pytest.mark.parametrize(("kwargs", "error", "phrase"), [
    ({"number_of_clusters": 1}, ValueError, "must be >= 2"),
    ({"number_of_clusters": 2.5}, TypeError, "must be an integer"),
    ({"number_of_clusters": 73}, ValueError, "larger than the 72 weights of 'logits/kernel'"),
    ({"number_of_clusters": 17, "cluster_per_channel": True}, ValueError, "16 weights per channel of .hidden"),
    ({"number_of_clusters": 4, "cluster_centroids_init": "median"}, ValueError, "cluster_centroids_init"),
    ({"number_of_clusters": 4, "layers": "nothing_here"}, ValueError, "nothing_here"),
    ({"number_of_clusters": {}}, ValueError, "empty mapping"),
    ({"number_of_clusters": {"hidden/kernel": 1}}, ValueError, r"number_of_clusters\['hidden/kernel'\]` must be >= 2"),
    ({"number_of_clusters": {"hidden/bias": 4}}, ValueError, "`number_of_clusters` names weights .*hidden/bias"),
    ({"number_of_clusters": {"logits/kernel": 73}}, ValueError, "larger than the 72 weights of 'logits/kernel'"),
    ({"number_of_clusters": {"hidden/kernel": 4}, "layers": "logits"}, ValueError, "names weights"),
])
def test_bad_arguments_raise_before_anything_changes(kwargs, error, phrase):
    model = mlp()
    before = _values(model)
    with pytest.raises(error, match=phrase):
        cluster_weights(model, **kwargs)
    for old, new in zip(before, _values(model)):
        np.testing.assert_array_equal(old, new)
    assert not is_clustered(model)


def test_a_tensor_with_fewer_nonzero_weights_than_clusters_keeps_each_as_its_own():
    model = mlp()
    magnitude_prune(model, sparsity=0.9)
    kernel = keras.ops.convert_to_numpy(model.get_layer("logits").kernel)
    nonzero = kernel[kernel != 0]
    assert nonzero.size < 8
    clustered = cluster_weights(model, 8, preserve_sparsity=True)
    after = keras.ops.convert_to_numpy(model.get_layer("logits").kernel)
    np.testing.assert_array_equal(after == 0, kernel == 0)
    np.testing.assert_allclose(np.sort(after[after != 0]), np.sort(nonzero), rtol=1e-6)
    assert is_clustered(clustered)


def test_nothing_to_cluster_and_not_a_model():
    model = keras.Sequential([keras.Input((4,)), L.LayerNormalization(name="norm")])
    with pytest.raises(ValueError, match="norm|prune|cluster"):
        cluster_weights(model, 2)
    with pytest.raises(ValueError, match="norm"):
        cluster_weights(mlp(), 2, layers=["hidden", "norm"])
    with pytest.raises(TypeError, match="Keras model"):
        cluster_weights(L.Dense(2), 2)
    with pytest.raises(ValueError, match="build it first"):
        cluster_weights(keras.Sequential([L.Dense(2)]), 2)


def test_clustering_twice_is_refused():
    model = mlp()
    clustered = cluster_weights(model, 3)
    before = _values(model)
    with pytest.raises(ValueError, match="already clustered"):
        cluster_weights(clustered, 2)
    with pytest.raises(ValueError, match="already being clustered"):
        cluster_weights(model, 2)
    for old, new in zip(before, _values(model)):
        np.testing.assert_array_equal(old, new)
    outer = keras.Sequential([keras.Input((16,)), clustered])
    with pytest.raises(ValueError, match="holds the clustered model"):
        strip_clustering(outer)


# -- tfmot's names -----------------------------------------------------------------------------


def test_compat_namespace_has_tfmots_clustering_api(tmp_path):
    cluster = tfmot.clustering.keras
    x, y = dense_data(n=32)
    model = mlp()
    clustered = cluster.cluster_weights(
        model, number_of_clusters=4, cluster_centroids_init=cluster.CentroidInitialization.LINEAR,
        preserve_sparsity=False, cluster_per_channel=False,
    )
    compile_classifier(clustered, "adam")
    clustered.fit(x, y, batch_size=16, epochs=1, verbose=0)
    clustered.save(tmp_path / "c.keras")
    with cluster.cluster_scope():
        keras.models.load_model(tmp_path / "c.keras")
    final = cluster.strip_clustering(clustered)
    assert final is model
    assert len(np.unique(keras.ops.convert_to_numpy(model.get_layer("logits").kernel))) <= 4
    with pytest.raises(ValueError, match="number_of_clusters"):
        cluster.cluster_weights(mlp(), number_of_clusters=1)
    with pytest.raises(ValueError, match="model"):
        cluster.cluster_weights(L.Dense(2), number_of_clusters=2)
