"""The compile settings of a Keras 2 model (its ``training_config``: optimizer, loss, metrics)
for Keras 3, so that a converted model trains on as it did (``keras-prune finetune`` reads
them). What Keras 3 has no counterpart for is left out with a note; when the settings cannot
be read at all the model stays uncompiled, also with a note.
"""

from __future__ import annotations

import inspect

import keras

from keras_prune.io import error_summary
from keras_prune.legacy.notes import Translation

COMPILE = "(compile)"  # the "layer" of compile-setting notes
METRIC_NAMES = {"acc", "accuracy", "crossentropy", "ce"}  # names Keras 3's compile resolves itself


def compile_like_keras2(model: keras.Model, training_config: dict | None, notes: list[Translation]) -> None:
    """Compiles ``model`` with the Keras 3 equivalent of a Keras 2 ``training_config``.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> notes = []
        >>> compile_like_keras2(model, {"loss": "mse", "metrics": ["acc"], "optimizer_config":
        ...     {"class_name": "SGD", "config": {"lr": 0.1, "decay": 0.01, "momentum": 0.9}}}, notes)
        >>> type(model.optimizer).__name__, float(model.optimizer.learning_rate), model.loss
        ('SGD', 0.1..., 'mse')
        >>> print(notes[0].change())
        optimizer.decay=0.01 removed
    """
    if not training_config:
        return
    try:
        settings = {
            "optimizer": _optimizer(training_config.get("optimizer_config"), notes),
            "loss": _losses(training_config.get("loss")),
            "metrics": _metrics(training_config.get("metrics"), notes),
        }
        if training_config.get("loss_weights") is not None:
            settings["loss_weights"] = training_config["loss_weights"]
        model.compile(**settings)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        notes.append(Translation(COMPILE, "training_config", "saved", None,
                                 f"not readable by Keras 3 ({error_summary(error)}); compile the model again"))


def from_compile_config(compile_config: dict | None) -> dict | None:
    """The ``compile_config`` of a tf.keras ``.keras`` file in the ``training_config`` form of
    its ``.h5`` files.

    Example:
        >>> from_compile_config({"optimizer": "adam", "loss": "mse", "metrics": ["mae"]})["optimizer_config"]
        {'class_name': 'adam', 'config': {}}
    """
    if not compile_config:
        return None
    optimizer = compile_config.get("optimizer")
    if isinstance(optimizer, str):
        optimizer = {"class_name": optimizer, "config": {}}
    return {**compile_config, "optimizer_config": optimizer}


def _optimizer(config: dict | None, notes: list[Translation]):
    if not config:
        return "rmsprop"  # Keras 2's compile default too
    name = config["class_name"].rsplit(">", 1)[-1]  # tf.keras 2.11+ wrote "Custom>Adam"
    cls = getattr(keras.optimizers, name, None)
    if cls is None and name.islower():  # a name: "adam"
        cls = type(keras.optimizers.get(name))
    if not (isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)):
        raise ValueError(f"Keras 3 has no optimizer {name}")
    settings = dict(config.get("config") or {})
    if "lr" in settings:  # Keras <= 2.2
        settings.setdefault("learning_rate", settings.pop("lr"))
    if isinstance(settings.get("learning_rate"), dict):
        notes.append(Translation(COMPILE, "optimizer.learning_rate", settings.pop("learning_rate")["class_name"],
                                 None, "a learning-rate schedule is not carried over; the default rate is used"))
    accepted = set(inspect.signature(cls.__init__).parameters)
    for key in sorted(set(settings) - accepted):
        value = settings.pop(key)
        if value not in (None, False, 0, 0.0) and key not in ("is_legacy_optimizer", "jit_compile"):
            notes.append(Translation(COMPILE, f"optimizer.{key}", str(value), None, f"Keras 3's {name} has no {key}"))
    return cls(**settings)


def _losses(loss):
    if isinstance(loss, list):
        return [_losses(item) for item in loss]
    if isinstance(loss, dict) and "class_name" not in loss:  # one loss per output name
        return {key: _losses(item) for key, item in loss.items()}
    if isinstance(loss, dict):
        cls = getattr(keras.losses, loss["class_name"], None)
        if not isinstance(cls, type):
            raise ValueError(f"Keras 3 has no loss {loss['class_name']}")
        config = dict(loss.get("config") or {})
        if config.get("reduction") == "auto":  # tf.keras's "auto" meant the batch mean in fit
            config["reduction"] = "sum_over_batch_size"
        accepted = set(inspect.signature(cls.__init__).parameters)
        return cls(**{key: value for key, value in config.items() if key in accepted})
    keras.losses.get(loss)  # raises ValueError for a name Keras 3 does not know
    return loss


def _metrics(metrics, notes: list[Translation]):
    if isinstance(metrics, dict):
        return {key: _metrics(item, notes) for key, item in metrics.items()}
    if not isinstance(metrics, list):
        return None if metrics is None else _metrics([metrics], notes)
    kept = []
    for metric in metrics:
        if isinstance(metric, list):
            kept.append(_metrics(metric, notes))
            continue
        name = _metric_name(metric)
        if name is None:
            notes.append(Translation(COMPILE, "metrics", str(metric), None, "not a metric Keras 3 knows by name"))
        else:
            kept.append(name)
    return kept


def _metric_name(metric) -> str | None:
    """A Keras 3 name for a saved metric: a name, or tf.keras's ``MeanMetricWrapper`` dict (by
    its name, else its function), or a metric class dict (by class)."""
    if isinstance(metric, dict):
        config = metric.get("config") or {}
        candidates = [config.get("name"), config.get("fn")] if metric.get("class_name") == "MeanMetricWrapper" \
            else [metric.get("class_name")]
    else:
        candidates = [metric]
    return next((c for c in candidates if isinstance(c, str) and (c in METRIC_NAMES or _known_metric(c))), None)


def _known_metric(name: str) -> bool:
    try:
        keras.metrics.get(name)
    except ValueError:
        return False
    return True
