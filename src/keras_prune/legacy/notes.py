"""What a legacy load changed: one :class:`Translation` per setting, gathered in a
:class:`Conversion` that stays attached to the loaded model."""

from __future__ import annotations

import dataclasses

# The attribute of a loaded model that holds its Conversion; set with object.__setattr__ so
# that Keras does not track it as model state.
_ATTRIBUTE = "_keras_prune_conversion"
MAX_NAMES = 4  # layer names shown per summary line before "and N more"


@dataclasses.dataclass(frozen=True)
class Translation:
    """One setting of a Keras 2 file that was written differently for Keras 3.

    ``new`` is ``None`` when the setting was removed (it has no Keras 3 counterpart and its
    value was the only one Keras 2 behaved by, so nothing changes).

    Example:
        >>> note = Translation("dw", "groups", "1", None, "Keras 3's DepthwiseConv2D has no groups")
        >>> str(note)
        "dw: groups=1 removed (Keras 3's DepthwiseConv2D has no groups)"
    """

    layer: str
    setting: str
    old: str
    new: str | None
    reason: str

    def change(self) -> str:
        """The change without the layer: ``"groups=1 removed"``, ``"alpha=0.3 -> negative_slope=0.3"``."""
        if self.new is None:
            return f"{self.setting}={self.old} removed"
        return f"{self.setting}={self.old} -> {self.new}"

    def __str__(self) -> str:
        return f"{self.layer}: {self.change()} ({self.reason})"


@dataclasses.dataclass(frozen=True)
class Conversion:
    """How a model was read from a legacy file: the source, the Keras version that wrote it,
    and every translation made.

    Example:
        >>> conversion = Conversion("m.h5", "HDF5", "2.4.0", (
        ...     Translation("dw1", "groups", "1", None, "no groups in Keras 3"),
        ...     Translation("dw2", "groups", "1", None, "no groups in Keras 3")))
        >>> conversion.summary()
        ['groups=1 removed (no groups in Keras 3): dw1, dw2']
    """

    source: str
    format: str
    keras_version: str
    translations: tuple[Translation, ...]

    def header(self) -> str:
        """One line: what was read, and how many settings were translated."""
        count = len(self.translations)
        changes = f"{count} setting{'s' if count != 1 else ''} translated" if count else "nothing to translate"
        return f"'{self.source}' was saved by Keras {self.keras_version} ({self.format}); read as Keras 3 ({changes})"

    def summary(self) -> list[str]:
        """One line per distinct change, naming the layers it applies to."""
        groups: dict[tuple[str, str], list[str]] = {}
        for note in self.translations:
            groups.setdefault((note.change(), note.reason), []).append(note.layer)
        return [f"{change} ({reason}): {_names(layers)}" for (change, reason), layers in groups.items()]


def _names(layers: list[str]) -> str:
    unique = list(dict.fromkeys(layers))
    if len(unique) <= MAX_NAMES:
        return ", ".join(unique)
    return f"{', '.join(unique[:MAX_NAMES - 1])} and {len(unique) - MAX_NAMES + 1} more"


def shown(value) -> str:
    """A saved value as notes show it: lists (JSON has no tuples) as tuples, float32 values
    without their binary noise.

    Example:
        >>> shown([None, 6, 4]), shown(0.20000000298023224)
        ('(None, 6, 4)', '0.2')
    """
    if isinstance(value, list):
        return str(tuple(value))
    if isinstance(value, dict) and "class_name" in value:  # an initializer, regularizer...
        return str(value["class_name"])
    return f"{value:.7g}" if isinstance(value, float) else str(value)


def attach(model, conversion: Conversion):
    """Records ``conversion`` on ``model`` (read it back with :func:`conversion_of`)."""
    object.__setattr__(model, _ATTRIBUTE, conversion)
    return model


def conversion_of(model) -> Conversion | None:
    """The :class:`Conversion` of a model loaded from a legacy file, else ``None``.

    Example:
        >>> import keras
        >>> conversion_of(keras.Sequential()) is None
        True
    """
    return getattr(model, _ATTRIBUTE, None)
