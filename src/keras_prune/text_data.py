"""Calibration batches for language models from a plain UTF-8 text file.

The text becomes token ids in one of two ways:

* a character vocabulary: a UTF-8 file whose characters, in order, are the token ids
  0..V-1 (every character counts, spaces and newlines included), or a ``.json`` file holding
  a list of one-character strings (as ``json.dump(sorted(set(text)), f)`` writes it);
* a KerasHub tokenizer (or preprocessor) preset folder, loaded with
  ``keras_hub.models.Tokenizer.from_preset``.

The ids are cut into windows of a fixed length, evenly spread over the text, and shaped for
the model: a dict ``{"token_ids": ..., "padding_mask": ...}`` (the mask all ones) for a model
whose inputs are named that way (KerasHub backbones and models built on them), otherwise one
int32 array of shape ``(windows, length)``.

Example:
    >>> ids = encode_characters("abcabcab", read_vocabulary_text("abc"))
    >>> ids
    array([0, 1, 2, 0, 1, 2, 0, 1], dtype=int32)
    >>> windows(ids, length=4, count=3)
    array([[0, 1, 2, 0],
           [2, 0, 1, 2],
           [1, 2, 0, 1]], dtype=int32)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_prune._keras_compat import all_layers

DEFAULT_SEQUENCE_LENGTH = 128
HUB_INPUTS = {"token_ids", "padding_mask"}


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """The characters of a vocabulary file, in token id order.

    A ``.json`` file holds a list of one-character strings; any other file is read as UTF-8
    text whose characters, in order, are the tokens (see :func:`read_vocabulary_text`).

    Raises:
        ValueError: the file is missing or unreadable, or its vocabulary is empty or repeats
            a character.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read vocabulary '{path}' as UTF-8 text ({error}).") from None
    if path.suffix.lower() != ".json":
        return read_vocabulary_text(text, source=str(path))
    try:
        tokens = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"Vocabulary '{path}' is not valid JSON ({error}).") from None
    if not (isinstance(tokens, list) and all(isinstance(t, str) and len(t) == 1 for t in tokens)):
        raise ValueError(f'Vocabulary \'{path}\' must be a JSON list of one-character strings, such as ["a", "b"].')
    return _check_unique(tokens, str(path))


def read_vocabulary_text(text: str, source: str = "vocabulary") -> list[str]:
    """The characters of ``text`` as a vocabulary: the i-th character is token id i.

    Example:
        >>> read_vocabulary_text("ab\\n")
        ['a', 'b', '\\n']
    """
    return _check_unique(list(text), source)


def _check_unique(tokens: list[str], source: str) -> list[str]:
    if not tokens:
        raise ValueError(f"Vocabulary '{source}' is empty.")
    seen: set[str] = set()
    repeated = [t for t in tokens if t in seen or seen.add(t)]
    if repeated:
        raise ValueError(
            f"Vocabulary '{source}' lists {_show(repeated)} more than once; each character must appear once "
            "(mind a trailing newline)."
        )
    return tokens


def encode_characters(text: str, vocabulary: Sequence[str], source: str = "text") -> np.ndarray:
    """``text`` as int32 token ids, one per character.

    Raises:
        ValueError: ``text`` holds characters missing from ``vocabulary`` (a few are named,
            with their count).
    """
    lookup = {token: index for index, token in enumerate(vocabulary)}
    missing = sorted(set(text) - lookup.keys())
    if missing:
        raise ValueError(
            f"{source} holds {len(missing)} distinct character(s) missing from the vocabulary of "
            f"{len(lookup)}: {_show(missing)}; add them to the vocabulary or remove them from the text."
        )
    return np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))


def tokenize_with_preset(text: str, preset: str | os.PathLike) -> np.ndarray:
    """``text`` as int32 token ids by the KerasHub tokenizer saved in the folder ``preset``.

    Raises:
        ValueError: KerasHub is not installed, or ``preset`` holds no loadable tokenizer.
    """
    try:
        import keras_hub
    except ImportError:
        raise ValueError("A tokenizer preset needs KerasHub: pip install keras-hub.") from None
    try:
        tokenizer = keras_hub.models.Tokenizer.from_preset(str(preset))
    except Exception as error:  # noqa: BLE001 (KerasHub raises several types for a bad preset)
        raise ValueError(f"Cannot load a KerasHub tokenizer from '{preset}' ({type(error).__name__}: {error}).") from None
    ids = tokenizer(text)
    ids = ids.numpy() if hasattr(ids, "numpy") else ids
    return np.asarray(ids, dtype=np.int32).reshape(-1)


def windows(ids: np.ndarray, length: int, count: int) -> np.ndarray:
    """Up to ``count`` windows of ``length`` consecutive ids, evenly spread from the first id to
    the last (fewer when ``ids`` has fewer distinct start positions; always the same ones).

    Raises:
        ValueError: ``ids`` is shorter than one window.
    """
    if length < 1 or count < 1:
        raise ValueError(f"Window length and count must be >= 1. Received: length={length}, count={count}")
    if len(ids) < length:
        raise ValueError(f"{len(ids)} tokens are fewer than one window of {length}.")
    starts = np.unique(np.linspace(0, len(ids) - length, count).round().astype(np.int64))
    return np.stack([ids[s : s + length] for s in starts]).astype(np.int32)


def model_inputs(batch: np.ndarray, model) -> np.ndarray | dict[str, np.ndarray]:
    """``batch`` as ``model`` takes it: with an all-ones ``padding_mask`` for KerasHub-style inputs."""
    names = {getattr(t, "name", None) for t in getattr(model, "inputs", None) or ()}
    if names == HUB_INPUTS:
        return {"token_ids": batch, "padding_mask": np.ones_like(batch)}
    return batch


def sequence_limits(model) -> tuple[int | None, int | None]:
    """``(fixed, longest)``: the model's fixed input length, or None; and the longest sequence it
    takes (the smallest ``max_sequence_length`` of its layers, such as a KerasHub backbone's),
    or None."""
    shapes = [tuple(tensor.shape) for tensor in getattr(model, "inputs", None) or ()]
    fixed = shapes[0][1] if shapes and len(shapes[0]) == 2 else None
    limits = [getattr(layer, "max_sequence_length", None) for layer in all_layers(model)]
    limits = [int(n) for n in limits if isinstance(n, int) and n > 0]
    return fixed, min(limits) if limits else None


def load_text_calibration(
    path: str | os.PathLike,
    model,
    *,
    vocabulary: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    sequence_length: int | None = None,
    samples: int = 128,
) -> np.ndarray | dict[str, np.ndarray]:
    """Calibration inputs for ``model`` from the UTF-8 text file ``path``.

    Args:
        path: the text file.
        model: the language model; its inputs decide the layout (see the module docstring) and
            its input length the default ``sequence_length``.
        vocabulary: a character vocabulary file (see :func:`read_vocabulary`); or
        tokenizer: a KerasHub tokenizer preset folder. Exactly one of the two.
        sequence_length: tokens per window; by default the model's fixed input length, else
            128 (at most the model's ``max_sequence_length``).
        samples: how many windows, evenly spread over the text.

    Raises:
        ValueError: the text is unreadable, holds unknown characters, is shorter than one
            window, or ``sequence_length`` does not fit the model.
    """
    if (vocabulary is None) == (tokenizer is None):
        raise ValueError("Text calibration data needs exactly one of a vocabulary and a tokenizer preset.")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read '{path}' as UTF-8 text ({error}).") from None
    fixed, longest = sequence_limits(model)
    if sequence_length is None:
        sequence_length = fixed or min(DEFAULT_SEQUENCE_LENGTH, longest or DEFAULT_SEQUENCE_LENGTH)
    elif fixed is not None and sequence_length != fixed:
        raise ValueError(f"Model '{model.name}' takes sequences of exactly {fixed} tokens, not {sequence_length}.")
    elif longest is not None and sequence_length > longest:
        raise ValueError(f"Model '{model.name}' takes sequences of at most {longest} tokens, not {sequence_length}.")
    if vocabulary is not None:
        ids = encode_characters(text, read_vocabulary(vocabulary), source=f"Text '{path}'")
    else:
        ids = tokenize_with_preset(text, tokenizer)
    if len(ids) < sequence_length:
        raise ValueError(
            f"Text '{path}' has {len(ids)} tokens, fewer than one window of {sequence_length}; use a longer "
            "text or a shorter sequence length."
        )
    return model_inputs(windows(ids, sequence_length, samples), model)


def _show(chars: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (", ..." if len(chars) > limit else "")
