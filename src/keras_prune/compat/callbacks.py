"""tfmot's pruning callbacks: keras-prune's, with tfmot's signatures, checks and logs."""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_prune import callbacks


class UpdatePruningStep(callbacks.UpdatePruningStep):
    """:class:`keras_prune.UpdatePruningStep`, with tfmot's ``on_epoch_end(batch, logs)``.

    tfmot's custom-training-loop recipe calls ``on_epoch_end(batch=-1)``.

    Example:
        >>> callback = UpdatePruningStep()
        >>> callback.on_epoch_end(batch=-1)  # before training: nothing to do
    """

    def on_epoch_end(self, batch, logs=None):
        super().on_epoch_end(batch, logs)


class PruningSummaries(keras.callbacks.TensorBoard):
    """tfmot's ``PruningSummaries``: TensorBoard logs plus each mask's sparsity and threshold.

    As in tfmot, they are written at the beginning of each epoch, at the optimizer's
    iteration count, under ``<log_dir>/metrics``, as ``<mask>/sparsity`` and
    ``<threshold>/threshold``; the Keras logs follow ``update_freq``.

    Args:
        log_dir: folder for the event files, a non-empty string.
        update_freq: passed on to ``keras.callbacks.TensorBoard`` (default ``"epoch"``).
        **kwargs: passed on to ``keras.callbacks.TensorBoard``.

    Example:
        >>> PruningSummaries(log_dir="")
        Traceback (most recent call last):
        ...
        ValueError: Argument `log_dir` must be a non-empty string. Received: log_dir=''
    """

    def __init__(self, log_dir: str, update_freq="epoch", **kwargs):
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(f"Argument `log_dir` must be a non-empty string. Received: log_dir={log_dir!r}")
        super().__init__(log_dir=log_dir, update_freq=update_freq, **kwargs)
        self._metrics_writer = None

    def on_epoch_begin(self, epoch, logs=None):
        if logs is not None:  # the custom-loop recipe calls it with no logs: pruning metrics only
            super().on_epoch_begin(epoch, logs)
        if self._metrics_writer is None:
            self._metrics_writer = self.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        with self._metrics_writer.as_default():
            for state in callbacks.collect_pruning(self.model):
                for mask, threshold in zip(state.mask_variables, state.threshold_variables):
                    keep = keras.ops.convert_to_numpy(mask)
                    self.summary.scalar(f"{mask.path}/sparsity", 1.0 - float(np.mean(keep)), step=step)
                    self.summary.scalar(f"{threshold.path}/threshold",
                                        float(keras.ops.convert_to_numpy(threshold)), step=step)
        self._metrics_writer.flush()
