"""Run a stack of transformer layers one layer at a time, on the inputs each layer receives.

Calibrating block ``i`` by a forward pass of the whole model costs a pass up to block ``i``,
so a model's depth squared over a calibration. Holding the hidden states between consecutive
layers of a KerasHub ``transformer_layers`` stack costs one layer per block instead (Keras'
GPTQ works the same way). A stack qualifies when, on the model as it is, layer ``i + 1``
receives exactly the output of layer ``i`` and the same other arguments (masks, positions):
checked on the first batch, otherwise calibration keeps to whole forward passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import keras
import numpy as np

from keras_prune.calibration import StopForward, hooking


class LayerStack:
    """The inputs of one layer of a stack for every calibration batch, moved along the stack.

    Attributes:
        layers: the stack, in call order.
        index: the layer whose inputs are held.
    """

    def __init__(self, layers: Sequence[keras.layers.Layer], index: int, inputs: list, first_output: bool,
                 unpruned=None, dense_inputs: list | None = None):
        self.layers, self.index, self._inputs = list(layers), index, inputs
        self._first_output = first_output  # the next layer takes the first of several outputs
        self._unpruned, self._dense_inputs = unpruned, dense_inputs

    @classmethod
    def capture(cls, model: keras.Model, layers: Sequence[keras.layers.Layer], index: int,
                batches: Sequence, *, unpruned=None) -> LayerStack | None:
        """Runs ``model`` up to ``layers[index]`` on each batch and holds that layer's inputs;
        ``None`` if the stack does not chain its layers output to input.

        With ``unpruned`` (a context manager factory putting the unpruned weights in place),
        also holds the inputs the unpruned model gives the layer, moved along the stack on the
        unpruned weights, for :meth:`run` to pair them up.
        """
        inputs = _inputs_of(model, layers, index, batches)
        if inputs is None:
            return None
        stack_inputs, link = inputs
        dense = None
        if unpruned is not None:
            with unpruned():
                dense = _inputs_of(model, layers[index: index + 1], 0, batches)
            if dense is None:
                return None
            dense = dense[0]
        return cls(layers, index, stack_inputs, link == "first", unpruned, dense)

    def run(self, recorder=None) -> None:
        """Calls the current layer on each held input (for the hooks that record statistics),
        each followed by its unpruned twin (as the ``recorder``'s dense pass) when held."""
        layer = self.layers[self.index]
        for position, (args, kwargs) in enumerate(self._inputs):
            layer(*args, **kwargs)
            if self._dense_inputs is not None and recorder is not None and recorder.paired:
                recorder.dense = True
                try:
                    dense_args, dense_kwargs = self._dense_inputs[position]
                    layer(*dense_args, **dense_kwargs)
                finally:
                    recorder.dense = False

    def advance(self, to: int | None = None) -> None:
        """Moves the held inputs through the current layer (as it is now; the unpruned twins
        through the unpruned layer), up to layer ``to``."""
        to = self.index + 1 if to is None else to
        while self.index < to:
            layer = self.layers[self.index]
            self._inputs = self._through(layer, self._inputs)
            if self._dense_inputs is not None:
                with self._unpruned():
                    self._dense_inputs = self._through(layer, self._dense_inputs)
            self.index += 1

    def _through(self, layer, inputs: list) -> list:
        return [((self._hidden(layer(*args, **kwargs)), *args[1:]), kwargs) for args, kwargs in inputs]

    def _hidden(self, outputs):
        return outputs[0] if self._first_output else outputs


def _inputs_of(model, layers, index: int, batches) -> tuple[list, str] | None:
    """The inputs ``layers[index]`` gets on each batch, and how the next layer's follow from its
    output (see :func:`_link`); ``None`` if it is called other than once per pass, or the
    next layer's inputs do not follow."""
    watched = list(layers[index: index + 2])
    inputs, following = [], []

    def capture(layer, call):
        def captured(*args, **kwargs):
            (inputs if layer is watched[0] else following).append((args, kwargs))
            if layer is watched[-1]:
                raise StopForward()
            return call(*args, **kwargs)

        return captured

    with hooking(watched, capture):
        for position, batch in enumerate(batches):
            with contextlib.suppress(StopForward):
                model(batch, training=False)
            if len(inputs) != position + 1:
                return None  # called more than once per pass, or not at all
            del following[1:]  # the chain check needs the first batch only
    link = _link(watched[0], inputs[0], following) if len(watched) == 2 else "whole"
    return None if link is None else (inputs, link)


def _link(first: keras.layers.Layer, first_call: tuple, second_calls: list) -> str | None:
    """How the second layer's input follows from the first layer's output: ``"whole"``, its
    ``"first"`` element (a cache may follow), or ``None`` if it does not (or the second layer
    got other arguments than the first)."""
    if not second_calls:
        return None
    (args, kwargs), (next_args, next_kwargs) = first_call, second_calls[0]
    if not args or not next_args or not _same((args[1:], kwargs), (next_args[1:], next_kwargs)):
        return None
    output = first(*args, **kwargs)
    if _same(output, next_args[0], close=True):
        return "whole"
    if isinstance(output, (tuple, list)) and output and _same(output[0], next_args[0], close=True):
        return "first"
    return None


def _same(a, b, *, close: bool = False) -> bool:
    """Whether ``a`` and ``b`` have one structure and equal leaves (``close``: within float error)."""
    try:
        keras.tree.assert_same_structure(a, b)
    except (TypeError, ValueError):
        return False
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        if keras.ops.is_tensor(x) or isinstance(x, np.ndarray):
            x, y = keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y)
            if x.shape != y.shape or not (np.allclose(x, y, rtol=1e-4, atol=1e-5) if close else np.array_equal(x, y)):
                return False
        elif x != y:
            return False
    return True
