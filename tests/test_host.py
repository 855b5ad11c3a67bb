"""Host reads and writes of variables: values, dtype casts, and shape mismatches refused."""

import keras
import numpy as np
import pytest

from keras_prune import _host

pytestmark = pytest.mark.core


def test_write_casts_to_the_variable_dtype_and_read_returns_it():
    variable = keras.Variable(np.zeros((2, 3), "float32"))
    _host.write(variable, np.arange(6, dtype="float64").reshape(2, 3) / 4)
    value = _host.read(variable)
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, np.arange(6).reshape(2, 3) / 4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)


def test_write_of_a_scalar_into_a_scalar_variable():
    variable = keras.Variable(np.float32(0.0))
    _host.write(variable, 0.25)
    assert float(_host.read(variable)) == 0.25


def test_write_of_a_wrong_shape_raises_and_leaves_the_variable_as_it_was():
    variable = keras.Variable(np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"must have shape \(2, 3\).*Received: shape=\(3, 2\)"):
        _host.write(variable, np.zeros((3, 2), "float32"))
    assert tuple(variable.shape) == (2, 3)
    np.testing.assert_array_equal(_host.read(variable), np.ones((2, 3)))


def test_changing_what_read_returns_leaves_the_variable_alone():
    variable = keras.Variable(np.zeros(4, "float32"))
    value = _host.read(variable)
    value[0] = 5.0
    np.testing.assert_array_equal(_host.read(variable), np.zeros(4))
