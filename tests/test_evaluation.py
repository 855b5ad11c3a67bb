"""Evaluator: one metric on a fixed sample of MNIST, as model.evaluate computes it, without recompiling."""

import keras
import numpy as np
import pytest

from keras_prune import demo, magnitude_prune
from keras_prune.evaluation import Evaluator, labelled_batches

pytestmark = pytest.mark.core


def numpy(value):
    return keras.ops.convert_to_numpy(value)


@pytest.fixture(scope="module")
def mnist():
    data = demo.load_demo_data()
    return data["x_train"][:2000], data["y_train"][:2000], data["x_test"][:300], data["y_test"][:300]


@pytest.fixture(scope="module")
def trained(mnist):
    """Weights of a small MLP trained for two epochs on 2,000 MNIST digits."""
    x, y, _, _ = mnist
    keras.utils.set_random_seed(0)  # module fixtures run before the per-test seed
    model = classifier()
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model.get_weights()


def classifier(weights=None, metrics=("accuracy",)):
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu", name="hidden"),
                              keras.layers.Dense(10, name="logits")], name="mnist_mlp")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=list(metrics))
    if weights is not None:
        model.set_weights(weights)
    return model


def test_default_metric_and_loss_match_model_evaluate(mnist, trained):
    _, _, x, y = mnist
    model = classifier(trained)
    expected = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    accuracy = Evaluator(model, (x, y))
    loss = Evaluator(model, (x, y), metric="loss")
    assert (accuracy.name, accuracy.higher_is_better) == ("accuracy", True)
    assert (loss.name, loss.higher_is_better) == ("loss", False)
    assert accuracy() == pytest.approx(expected["accuracy"], abs=1e-7)
    assert loss() == pytest.approx(expected["loss"], rel=1e-5)
    assert accuracy() > 0.7  # it did learn something
    assert accuracy.samples == 300 and accuracy() == accuracy()  # deterministic


def test_a_named_compiled_metric_and_its_direction(mnist, trained):
    _, _, x, y = mnist
    model = classifier(trained, metrics=("sparse_top_k_categorical_accuracy", "accuracy"))
    top = Evaluator(model, (x, y))  # the first compiled metric
    assert top.name == "sparse_top_k_categorical_accuracy" and top.higher_is_better
    assert top() >= Evaluator(model, (x, y), metric="accuracy")()
    probabilities = keras.ops.softmax(model.predict(x, verbose=0))
    ranked = np.argsort(-numpy(probabilities), axis=1)[:, :5]
    assert top() == pytest.approx(np.mean((ranked == y[:, None]).any(axis=1)), abs=1e-7)
    regression = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    regression.compile(loss="mse", metrics=["mae", "mean_squared_error"])
    x3, y3 = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    assert not Evaluator(regression, (x3, y3)).higher_is_better
    assert not Evaluator(regression, (x3, y3), metric="mean_squared_error").higher_is_better
    assert Evaluator(regression, (x3, y3), metric="mae", higher_is_better=True).higher_is_better


def test_callables_and_metric_objects(mnist, trained):
    _, _, x, y = mnist
    model = classifier(trained)

    def error_rate(y_true, y_pred):
        return float(np.mean(np.argmax(y_pred, axis=1) != y_true))

    by_callable = Evaluator(model, (x, y), metric=error_rate, higher_is_better=False)
    expected = float(np.mean(model.predict(x, verbose=0).argmax(axis=1) != y))
    assert by_callable.name == "error_rate" and by_callable() == pytest.approx(expected)
    assert by_callable.drop(0.1, 0.25) == pytest.approx(0.15)
    assert Evaluator(model, (x, y), metric=error_rate).higher_is_better  # callables: True unless told
    metric = keras.metrics.SparseCategoricalAccuracy(name="acc")
    by_object = Evaluator(model, (x, y), metric=metric)
    assert by_object.name == "acc" and by_object() == pytest.approx(1 - expected, abs=1e-6)
    assert by_object() == by_object()  # its state is reset between measurements


def test_datasets_and_batches_are_cut_to_samples(mnist, trained):
    _, _, x, y = mnist
    model = classifier(trained)
    reference = Evaluator(model, (x[:130], y[:130]))
    batches = [(x[i: i + 50], y[i: i + 50]) for i in range(0, 300, 50)]
    from_list = Evaluator(model, batches, samples=130)
    from_generator = Evaluator(model, (batch for batch in batches), samples=130, batch_size=32)
    assert reference.samples == from_list.samples == from_generator.samples == 130
    assert reference() == from_list() == pytest.approx(from_generator(), abs=1e-7)
    assert [len(b[0]) for b in from_generator.batches] == [32, 32, 32, 32, 2]


@pytest.mark.tensorflow_only
def test_a_tf_data_dataset(mnist, trained):
    import tensorflow as tf

    _, _, x, y = mnist
    model = classifier(trained)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(40).repeat()  # endless: samples bounds it
    assert Evaluator(model, dataset, samples=200)() == Evaluator(model, (x[:200], y[:200]))()


def test_sample_weights_weigh_weighted_metrics_and_the_loss_as_in_evaluate(mnist, trained):
    _, _, x, y = mnist
    model = classifier(trained)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  weighted_metrics=["accuracy"])
    weights = (np.arange(len(y)) % 3 == 0).astype("float32")
    expected = model.evaluate(x, y, sample_weight=weights, batch_size=64, verbose=0, return_dict=True)
    correct = model.predict(x, verbose=0).argmax(axis=1) == y
    weighted = Evaluator(model, (x, y, weights), metric="weighted_accuracy")
    assert weighted() == pytest.approx(expected["weighted_accuracy"], abs=1e-7)
    assert weighted() == pytest.approx(correct[weights > 0].mean(), abs=1e-6)
    assert Evaluator(model, (x, y, weights))() == pytest.approx(correct.mean(), abs=1e-6)  # `metrics`: unweighted
    assert Evaluator(model, (x, y, weights), metric="loss")() == pytest.approx(expected["loss"], rel=1e-5)


def test_another_model_is_measured_with_the_same_metric_and_sample(mnist, trained):
    _, _, x, y = mnist
    model = classifier(trained)
    evaluator = Evaluator(model, (x, y))
    pruned = magnitude_prune(model, sparsity=0.97, inplace=False).model
    assert evaluator(pruned) == pytest.approx(Evaluator(pruned, (x, y))(), abs=1e-7)
    assert evaluator(pruned) < evaluator() - 0.05


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch runs eagerly: no compiled function to reuse")
def test_repeated_measurements_do_not_recompile(mnist, trained):
    _, _, x, y = mnist
    model = classifier(trained)
    evaluator = Evaluator(model, (x, y), batch_size=64)  # 300 = 4 x 64 + 44: two batch shapes
    evaluator()
    traces = count_calls(model.get_layer("hidden"))
    before = evaluator()
    kernel = model.get_layer("hidden").kernel
    original = numpy(kernel)
    kernel.assign(np.zeros_like(original))
    after = evaluator()
    kernel.assign(original)
    assert evaluator() == before and after < before
    assert traces == []
    fresh = classifier(trained)
    traced = count_calls(fresh.get_layer("hidden"))
    Evaluator(fresh, (x, y))()
    assert traced  # the counter sees the traces a new model needs


def count_calls(layer):
    """Counts the Python calls of ``layer.call``: traces, once a model's predict function is compiled."""
    calls, call = [], layer.call

    def counted(*args, **kwargs):
        calls.append(1)
        return call(*args, **kwargs)

    vars(layer)["call"] = counted
    return calls


def test_bad_data_and_metrics_raise_before_anything(mnist, trained):
    _, _, x, y = mnist
    model = classifier(trained)
    with pytest.raises(ValueError, match=r"does not fit model 'mnist_mlp'.*Received: data with x=\(64, 14, 28\)"):
        Evaluator(model, (x[:, :14], y))
    with pytest.raises(ValueError, match="must be labelled"):
        Evaluator(model, x)
    with pytest.raises(ValueError, match="must be labelled"):
        Evaluator(model, [x[:50], x[50:100]])
    with pytest.raises(ValueError, match="must be labelled"):
        Evaluator(model, (x, None))
    with pytest.raises(ValueError, match="as many labels"):
        Evaluator(model, (x, y[:10]))
    with pytest.raises(ValueError, match="labels of argument `data` do not fit"):
        Evaluator(model, (x, np.zeros((len(x), 3, 2), "int64")))
    with pytest.raises(ValueError, match="holds no examples"):
        Evaluator(model, iter([]))
    with pytest.raises(ValueError, match=r"its compiled metrics \['accuracy'\] or 'loss'.*metric='f1'"):
        Evaluator(model, (x, y), metric="f1")
    with pytest.raises(TypeError, match="metric=5"):
        Evaluator(model, (x, y), metric=5)
    with pytest.raises(ValueError, match="samples=0"):
        Evaluator(model, (x, y), samples=0)
    with pytest.raises(TypeError, match="higher_is_better='yes'"):
        Evaluator(model, (x, y), higher_is_better="yes")
    with pytest.raises(TypeError, match="Received: data=int"):
        Evaluator(model, 3)
    bare = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)])
    bare.compile(metrics=["accuracy"])  # no loss
    with pytest.raises(ValueError, match="compiled without a loss"):
        Evaluator(bare, (x, y), metric="loss")
    uncompiled = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="not compiled"):
        Evaluator(uncompiled, (x, y))
    with pytest.raises(ValueError, match="not compiled"):
        Evaluator(uncompiled, (x, y), metric="accuracy")
    assert Evaluator(uncompiled, (x, y), metric=lambda t, p: 1.0)() == 1.0


def test_labelled_batches_keep_multi_input_structure():
    x = {"a": np.arange(10.0).reshape(5, 2), "b": np.arange(5.0)}
    batches = labelled_batches((x, np.arange(5)), samples=None, batch_size=2)
    assert [sorted(b[0]) for b in batches] == [["a", "b"]] * 3
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert batches[2][0]["a"].tolist() == [[8.0, 9.0]]
