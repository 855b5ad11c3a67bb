"""Entropy coding for the ``codebook`` encoding: few distinct values, coded near their entropy.

A tensor with at most :data:`MAX_CODEBOOK` distinct nonzero values (a clustered kernel, or an
int8 kernel from Keras' ``model.quantize("int8")``) is one symbol per position: ``0`` for a
zero, ``i`` for ``codebook[i - 1]``. The symbols are coded with rANS (``constriction``'s
``AnsCoder``: 32-bit words, 64-bit state) under one categorical model whose frequencies are
stored in the file (``PRECISION``-bit fixed point, each >= 1, summing to ``2**PRECISION``).
Zero positions and cluster indices are thus coded jointly, within a few bytes of the
empirical (order-0) entropy, :func:`entropy_bound_bits`.

The decoder trusts nothing: the frequency table, the symbol count and the stream length are
checked before anything is allocated, decoding proceeds in bounded chunks, and any complaint
of the coder becomes a :class:`~keras_prune.export.format.SparseFormatError`.
"""

from __future__ import annotations

import math

import numpy as np

from keras_prune.export.format import SparseFormatError, require

MAX_CODEBOOK = 256  # distinct nonzero values; every int8 tensor fits (255 nonzero values)
PRECISION = 24  # constriction's default: frequencies sum to 2**24
MAX_SYMBOLS = 2**32 - 1
CHUNK = 1 << 20  # symbols decoded per step, so the scratch memory stays small


def _bits(array: np.ndarray) -> np.ndarray:
    """``array`` viewed as unsigned integers of its itemsize: exact identity of values."""
    array = np.ascontiguousarray(array)
    return array.view(np.dtype(f"u{array.itemsize}")) if array.dtype != bool else array.view(np.uint8)


def codebook_symbols(array: np.ndarray, limit: int = MAX_CODEBOOK) -> tuple[np.ndarray, np.ndarray] | None:
    """``(codebook, symbols)`` of ``array``, or ``None`` if it has more than ``limit`` distinct nonzeros.

    ``codebook`` holds the distinct nonzero values (bit-exact, ``-0.0`` counts as zero) in
    ascending order; ``symbols`` (int32, flat, C order) is 0 for a zero and ``i`` for
    ``codebook[i - 1]``.

    Example:
        >>> codebook, symbols = codebook_symbols(np.array([0.0, 0.5, -1.0, 0.5], "float32"))
        >>> codebook.tolist(), symbols.tolist()
        ([-1.0, 0.5], [0, 2, 1, 2])
    """
    flat = np.asarray(array).ravel()
    nonzero = flat != 0
    keys, inverse = np.unique(_bits(flat[nonzero]), return_inverse=True)
    if keys.size > limit:
        return None
    codebook = keys.view(flat.dtype) if flat.dtype != bool else keys.astype(bool)
    order = np.argsort(codebook, kind="stable")  # ascending values (NaNs last): compresses well
    rank = np.empty(order.size, np.int32)
    rank[order] = np.arange(order.size, dtype=np.int32)
    symbols = np.zeros(flat.size, np.int32)
    symbols[nonzero] = rank[inverse.ravel()] + 1
    return codebook[order], symbols


def entropy_bound_bits(array: np.ndarray) -> float:
    """The empirical (order-0) entropy of ``array``'s zero positions and values, in bits.

    ``sum over positions of -log2 p(symbol)``, where a position's symbol is "zero" or its
    (bit-exact) value and ``p`` is that symbol's frequency in ``array``: no coder that codes
    positions independently with one table can beat it (the table itself not counted). For a
    ``codebook`` tensor this is the bound the stored ``symbols`` stream comes within a few
    bytes of.

    Example:
        >>> entropy_bound_bits(np.array([0, 0, 3, 5], "int8"))  # p = 1/2, 1/4, 1/4
        6.0
    """
    flat = np.asarray(array).ravel()
    if flat.size == 0:
        return 0.0
    nonzero = flat != 0
    _, counts = np.unique(_bits(flat[nonzero]), return_counts=True)
    counts = np.append(counts, flat.size - int(nonzero.sum())).astype(np.float64)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / flat.size)).sum())


def quantize_frequencies(counts: np.ndarray) -> np.ndarray:
    """Symbol counts -> uint32 frequencies, each >= 1, summing to ``2**PRECISION``.

    Each symbol first gets 1, the rest of the total is shared in proportion to the counts
    (largest remainders round up), so the coded size stays within a hair of the entropy.

    Example:
        >>> quantize_frequencies(np.array([3, 1, 0])).tolist()
        [12582911, 4194304, 1]
    """
    counts = np.asarray(counts, np.float64)
    n = counts.size
    if not 2 <= n <= 2**PRECISION or not counts.sum() > 0:
        raise ValueError(f"Cannot model {n} symbols with counts summing to {counts.sum()}.")
    free = 2**PRECISION - n
    share = counts * (free / counts.sum())
    freqs = np.floor(share).astype(np.int64)
    left = free - int(freqs.sum())
    freqs[np.argsort(freqs - share, kind="stable")[:left]] += 1  # largest remainders first
    return (freqs + 1).astype(np.uint32)


def _model(freqs: np.ndarray):
    """constriction's categorical model with exactly ``freqs / 2**PRECISION``.

    Its (fast, documented) quantizer gives symbol ``i`` the left cumulative
    ``floor(F_i * scale) + i`` with ``F_i`` the float prefix sum of the inputs and
    ``scale = (2**PRECISION - n) / sum``; feeding it ``freqs - 1`` (which sum to
    ``2**PRECISION - n``, so ``scale`` is 1 and every prefix sum is exact) yields ``freqs``.
    """
    import constriction

    return constriction.stream.model.Categorical((freqs.astype(np.float64) - 1.0), perfect=False)


def encode_symbols(symbols: np.ndarray, freqs: np.ndarray) -> bytes:
    """The rANS stream (little-endian uint32 words) of ``symbols`` under ``freqs``.

    Example:
        >>> freqs = quantize_frequencies(np.array([6, 2]))
        >>> data = encode_symbols(np.array([0, 1, 0, 0, 0, 0, 1, 0]), freqs)
        >>> decode_symbols(data, freqs, 8).tolist()
        [0, 1, 0, 0, 0, 0, 1, 0]
    """
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.ascontiguousarray(symbols, np.int32), _model(freqs))
    return coder.get_compressed().astype("<u4").tobytes()


def max_stream_bytes(count: int) -> int:
    """The longest stream ``count`` symbols can make: ``PRECISION`` bits each + 2 words of state."""
    return 4 * (math.ceil(count * PRECISION / 32) + 2)


def check_frequencies(data: bytes, alphabet: int) -> np.ndarray:
    """The frequency table from its blob, after checking it is one the coder accepts."""
    require(len(data) == 4 * alphabet, f"the frequency table has {len(data) // 4} entries, expected {alphabet}")
    freqs = np.frombuffer(data, "<u4")
    require(bool((freqs >= 1).all()), "a symbol frequency is 0")
    require(int(freqs.astype(np.uint64).sum()) == 2**PRECISION, f"symbol frequencies do not sum to 2**{PRECISION}")
    return freqs


def decode_symbols(data: bytes, freqs: np.ndarray, count: int, table: np.ndarray | None = None) -> np.ndarray:
    """Decodes ``count`` symbols (mapped through ``table`` if given) from a stream.

    ``freqs`` must have passed :func:`check_frequencies`. The stream must hold whole words,
    be no longer than ``count`` symbols can make, and be used up exactly; otherwise (or if
    the coder objects) :class:`SparseFormatError` is raised.
    """
    import constriction

    require(0 <= count <= MAX_SYMBOLS, f"bad symbol count {count}")
    require(len(data) % 4 == 0 and len(data) <= max_stream_bytes(count), "the symbol stream has a bad length")
    words = np.frombuffer(data, "<u4").astype(np.uint32)
    out = np.empty(count, np.int32 if table is None else table.dtype)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        model = _model(freqs)
        for start in range(0, count, CHUNK):
            chunk = coder.decode(model, min(CHUNK, count - start))
            require(chunk.size == min(CHUNK, count - start), "the symbol stream ended early")
            out[start : start + chunk.size] = chunk if table is None else table[chunk]
        empty = coder.is_empty()
    except SparseFormatError:
        raise
    except BaseException as error:  # constriction's ValueError, or a Rust panic (BaseException)
        if isinstance(error, (KeyboardInterrupt, SystemExit, MemoryError)):
            raise
        raise SparseFormatError(f"Invalid sparse model file: the symbol stream does not decode ({error}).") from error
    require(empty, "the symbol stream has data left over")
    return out


def entropy_report(path) -> list[dict]:
    """Per tensor of a ``.kpsparse`` file: its encoding, stored bits, and the entropy bound.

    Each row holds ``path``, ``shape``, ``encoding``, ``stored_bits`` (all its blobs),
    ``blob_bits`` (per blob: for ``codebook``, ``symbols`` is the coded positions and indices,
    ``values`` the codebook, ``freqs`` the table) and ``bound_bits``: the
    :func:`entropy_bound_bits` of the tensor as stored (int8 values for ``values="int8"``),
    i.e. the order-0 information in its zero positions and values.

    Example:
        >>> rows = entropy_report("model.kpsparse")  # doctest: +SKIP
        >>> rows[0]["blob_bits"]["symbols"] / rows[0]["bound_bits"]  # doctest: +SKIP
        1.0005
    """
    from pathlib import Path

    from keras_prune.export import format as fmt
    from keras_prune.export.encodings import decode_stored

    header, payload = fmt.read_container(Path(path).read_bytes())
    tensors = header.get("tensors")
    require(isinstance(tensors, list), "the header lacks the tensor table")
    rows = []
    for entry in tensors:
        stored, _ = decode_stored(entry, payload)
        bits = {name: 8 * meta["length"] for name, meta in entry["blobs"].items()}
        rows.append({
            "path": entry.get("path"), "shape": list(stored.shape), "encoding": entry["encoding"],
            "stored_bits": sum(bits.values()), "blob_bits": bits, "bound_bits": entropy_bound_bits(stored),
        })
    return rows
