"""One-shot pruning and the report reach layers at any depth: custom blocks, nested models."""

import doctest

import keras
import numpy as np
import pytest

import keras_prune.traversal
from keras_prune import UnsupportedLayerError, iterative_prune, magnitude_prune, summarize
from keras_prune.masks import prune_count
from keras_prune.traversal import walk, weight_sites

pytestmark = pytest.mark.core

WIDTH = 8


@keras.saving.register_keras_serializable(package="keras_prune_tests")
class Block(keras.layers.Layer):
    """A transformer-like block: sub-layers in private attributes, plus a weight of its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._attention = keras.layers.EinsumDense("btd,de->bte", output_shape=(None, WIDTH), name="attention")
        self._ffn = keras.layers.Dense(WIDTH, name="ffn")

    def build(self, input_shape):
        self._attention.build(input_shape)
        self._ffn.build((*input_shape[:-1], WIDTH))
        self.gate = self.add_weight(shape=(WIDTH,), initializer="ones", name="gate")

    def call(self, x):
        return self._ffn(self._attention(x)) * self.gate


def block_model():
    inputs = keras.Input((3, 4))
    hidden = Block(name="block")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden), name="net")


def numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def zeros(variable):
    array = numpy(variable)
    return int(array.size - np.count_nonzero(array))


def block_parts(model):
    block = model.get_layer("block")
    return block, block._attention.kernel, block._ffn.kernel


def test_sublayer_kernels_are_pruned_exactly_and_own_weights_left_dense_with_a_reason():
    model = block_model()
    block, attention, ffn = block_parts(model)
    report = magnitude_prune(model, sparsity=0.5)
    for kernel in (attention, ffn, model.get_layer("head").kernel):
        assert zeros(kernel) == prune_count(0.5, numpy(kernel).size)
    np.testing.assert_array_equal(numpy(block.gate), np.ones(WIDTH))
    assert report.settings["layers"] == ["block/attention", "block/ffn", "head"]
    assert [row.path for row in report.layers] == ["block", "block/attention", "block/ffn", "head"]
    assert (report.layer("block").params, report.layer("block").pattern) == (WIDTH, "unsupported")
    assert report.totals["params"] == model.count_params()
    [note] = report.left_dense
    assert note.layer == "block" and "own weights 'gate'" in note.message and "PrunableLayer" in note.message
    assert "left dense: block: holds its own weights 'gate'" in str(report)
    assert report.to_dict()["left_dense"] == [{"layer": "block", "message": note.message}]


def test_summarize_lists_every_site_and_the_layers_left_dense():
    report = summarize(block_model())
    assert [row.path for row in report.layers] == ["block", "block/attention", "block/ffn", "head"]
    assert [note.layer for note in report.left_dense] == ["block"]


@pytest.mark.parametrize("layers", ["ffn", "^ffn$", "block/ffn", ["block/ffn"], ["ffn"]])
def test_regex_or_list_selects_a_sublayer_by_path_or_name(layers):
    model = block_model()
    _, attention, ffn = block_parts(model)
    report = magnitude_prune(model, sparsity=0.5, layers=layers)
    assert report.settings["layers"] == ["block/ffn"]
    assert zeros(ffn) == WIDTH * WIDTH // 2 and zeros(attention) == 0


def test_a_regex_on_the_block_prunes_inside_it_and_leaves_its_own_weights():
    model = block_model()
    report = magnitude_prune(model, sparsity=0.5, layers="block")
    assert report.settings["layers"] == ["block/attention", "block/ffn"]


@pytest.mark.parametrize("layers", ["^block$", ["block"], lambda layer: isinstance(layer, Block)])
def test_selecting_only_the_blocks_own_weights_is_an_error_naming_path_and_fix(layers):
    model = block_model()
    before = [numpy(w).copy() for w in model.weights]
    with pytest.raises(UnsupportedLayerError, match=r"layer 'block' \(Block\) holds its own weights 'gate'.*PrunableLayer"):
        magnitude_prune(model, sparsity=0.5, layers=layers)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(numpy(new), old)


def test_a_list_entry_naming_nothing_prunable_is_an_error():
    with pytest.raises(ValueError, match=r"names 'nope'.*block/attention.*Received: layers=\['ffn', 'nope'\]"):
        magnitude_prune(block_model(), sparsity=0.5, layers=["ffn", "nope"])


def test_predictions_equal_a_manually_masked_model():
    model = block_model()
    x = np.random.default_rng(0).normal(size=(5, 3, 4)).astype("float32")
    reference = block_model()
    reference.set_weights(model.get_weights())
    magnitude_prune(model, sparsity=0.6)
    for layer_kernel in block_parts(reference)[1:] + (reference.get_layer("head").kernel,):
        w = numpy(layer_kernel)
        w[np.abs(w) <= np.sort(np.abs(w).ravel())[prune_count(0.6, w.size) - 1]] = 0
        layer_kernel.assign(w)
    np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-6)


class Inner(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._block = Block(name="block")
        self.proj = keras.layers.Dense(WIDTH, name="proj")

    def call(self, x):
        return self.proj(self._block(x))


class Outer(keras.Model):
    def __init__(self):
        super().__init__(name="outer")
        self.inner = Inner(name="inner")
        self.head = keras.layers.Dense(2, use_bias=False, name="head")
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return self.head(self.inner(x)) * self.scale


def test_nested_subclassed_models_are_pruned_at_every_depth():
    model = Outer()
    model(np.zeros((1, 3, 4), "float32"))
    report = magnitude_prune(model, sparsity=0.5)
    assert report.settings["layers"] == ["head", "inner/block/attention", "inner/block/ffn", "inner/proj"]
    for kernel in (model.inner._block._attention.kernel, model.inner._block._ffn.kernel, model.inner.proj.kernel,
                   model.head.kernel):
        assert zeros(kernel) == numpy(kernel).size // 2
    assert {note.layer for note in report.left_dense} == {"outer", "inner/block"}  # the model's own weight too
    assert report.totals["params"] == model.count_params()


class SharesOneDense(keras.layers.Layer):
    """Reaches one Dense twice (as a tied weight would), and uses another layer's Dense too."""

    def __init__(self, shared, **kwargs):
        super().__init__(**kwargs)
        self.first = shared
        self.again = shared

    def call(self, x):
        return self.again(self.first(x))


def test_a_shared_layer_is_counted_and_pruned_once():
    shared = keras.layers.Dense(4, name="shared")
    inputs = keras.Input((4,))
    outputs = SharesOneDense(shared, name="twice")(shared(inputs))
    model = keras.Model(inputs, outputs)
    report = magnitude_prune(model, sparsity=0.5)
    assert [row.path for row in report.layers] == ["shared"]
    assert zeros(shared.kernel) == 8 and report.totals["params"] == model.count_params()


def test_one_block_applied_twice_is_one_site():
    block = Block(name="block")
    inputs = keras.Input((3, WIDTH))
    model = keras.Model(inputs, block(block(inputs)))
    assert [site.path for site in weight_sites(model)] == ["block", "block/attention", "block/ffn"]


def test_paths_are_unique_when_names_repeat():
    class TwoSameName(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.a = keras.layers.Dense(2, name="proj")
            self.b = keras.layers.Dense(2, name="proj")

        def call(self, x):
            return self.b(self.a(x))

    inputs = keras.Input((2,))
    model = keras.Model(inputs, TwoSameName(name="pair")(inputs))
    paths = [path for path, _ in walk(model) if "pair" in path]
    assert paths == ["pair", "pair/proj", "pair/proj#2"]
    report = magnitude_prune(model, sparsity=0.5, layers=["pair/proj#2"])
    assert report.settings["layers"] == ["pair/proj#2"]


def test_untied_reversible_embedding_prunes_its_output_projection_too():
    inputs = keras.Input((5,), dtype="int32")
    embedding = keras.layers.ReversibleEmbedding(16, 4, tie_weights=False, name="tokens")
    model = keras.Model(inputs, embedding(embedding(inputs), reverse=True))
    report = magnitude_prune(model, sparsity=0.5)
    assert zeros(embedding.embeddings) == 32 and zeros(embedding.reverse_embeddings) == 32
    assert report.layer("tokens").prunable == 128


def test_iterative_pruning_holds_the_zeros_of_sublayers_while_fine_tuning():
    model = block_model()
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 3, 4)).astype("float32"), rng.normal(size=(32, 3, 2)).astype("float32")
    report = iterative_prune(model, (x, y), validation_data=(x, y), sparsity=0.75, steps=2, metric="loss")
    _, attention, ffn = block_parts(report.model)
    for kernel in (attention, ffn, report.model.get_layer("head").kernel):
        assert zeros(kernel) == prune_count(0.75, numpy(kernel).size)


def test_traversal_docstring_examples():
    result = doctest.testmod(keras_prune.traversal, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
