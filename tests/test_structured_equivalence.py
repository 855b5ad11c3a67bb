"""Removing all-zero channels keeps outputs, on more architectures (TensorFlow run only)."""

from test_structured_surgery import check_zero_channels_keep_outputs


def test_removing_zero_channels_keeps_outputs_on_more_architectures():
    check_zero_channels_keep_outputs(
        ["concat", "depthwise_separable", "flatten_dense", "shared_and_reshape"]
    )
