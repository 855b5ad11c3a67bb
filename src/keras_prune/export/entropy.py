"""Entropy coding for the ``codebook`` encoding: few distinct values, coded near their entropy.

A tensor with at most :data:`MAX_CODEBOOK` distinct nonzero values (a clustered kernel, or an
int8 kernel from Keras' ``model.quantize("int8")``) is one symbol per position: ``0`` for a
zero, ``i`` for ``codebook[i - 1]``. The symbols are coded with rANS (``constriction``'s
``AnsCoder``: 32-bit words, 64-bit state) under one categorical model whose frequencies are
stored in the file (``PRECISION``-bit fixed point, each >= 1, summing to ``2**PRECISION``).
Zero positions and cluster indices are thus coded jointly, within a few bytes of the
empirical (order-0) entropy, :func:`entropy_bound_bits`.

Row contexts (:func:`encode_rows`) go below that bound for kernels whose rows (input units:
all axes but the last) differ in density, as a pruned layer's do (dead input pixels, unused
hidden units): each row gets a context, its density class among a few; the zero/nonzero flags
of a row are coded under its class's own probability, then the nonzeros' centroid indices under
one table. One stream holds the row classes, the flags class by class, then the indices.

The decoder trusts nothing: the frequency table, the symbol count and the stream length are
checked before anything is allocated, decoding proceeds in bounded chunks, and any complaint
of the coder becomes a :class:`~keras_prune.export.format.SparseFormatError`.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from keras_prune.export.format import SparseFormatError, require

MAX_CODEBOOK = 256  # distinct nonzero values; every int8 tensor fits (255 nonzero values)
PRECISION = 24  # constriction's default: frequencies sum to 2**24
MAX_SYMBOLS = 2**32 - 1
CHUNK = 1 << 20  # symbols decoded per step, so the scratch memory stays small
MAX_CONTEXTS = 16
CONTEXT_CHOICES = (2, 4, 8)  # row classes tried by the writer


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
    return _encode([(symbols, freqs)])


def _encode(parts: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """One stream holding each ``(symbols, freqs)`` part in turn (decoded in the same order)."""
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    for symbols, freqs in reversed(parts):  # a stack: the part encoded last is decoded first
        coder.encode_reverse(np.ascontiguousarray(symbols, np.int32), _model(freqs))
    return coder.get_compressed().astype("<u4").tobytes()


def max_stream_bytes(count: int) -> int:
    """The longest stream ``count`` symbols can make: ``PRECISION`` bits each + 2 words of state."""
    return 4 * (math.ceil(count * PRECISION / 32) + 2)


def check_frequencies(data: bytes, alphabet: int) -> np.ndarray:
    """The frequency table from its blob, after checking it is one the coder accepts."""
    require(len(data) == 4 * alphabet, f"the frequency table has {len(data) // 4} entries, expected {alphabet}")
    return _checked_table(np.frombuffer(data, "<u4"))


def _checked_table(freqs: np.ndarray) -> np.ndarray:
    require(bool((freqs >= 1).all()), "a symbol frequency is 0")
    require(int(freqs.astype(np.uint64).sum()) == 2**PRECISION, f"symbol frequencies do not sum to 2**{PRECISION}")
    return freqs


@contextlib.contextmanager
def _stream_errors():
    """Any complaint of the coder (a ValueError, or a Rust panic: a BaseException) becomes a
    SparseFormatError."""
    try:
        yield
    except (SparseFormatError, KeyboardInterrupt, SystemExit, MemoryError, GeneratorExit):
        raise
    except BaseException as error:
        raise SparseFormatError(f"Invalid sparse model file: the symbol stream does not decode ({error}).") from error


class _Decoder:
    """Reads a stream part by part, in bounded chunks; :meth:`finish` checks it was used up."""

    def __init__(self, data: bytes, count: int):
        import constriction

        require(0 <= count <= MAX_SYMBOLS, f"bad symbol count {count}")
        require(len(data) % 4 == 0 and len(data) <= max_stream_bytes(count), "the symbol stream has a bad length")
        with _stream_errors():
            self.coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, "<u4").astype(np.uint32))

    def read(self, freqs: np.ndarray, count: int, table: np.ndarray | None = None) -> np.ndarray:
        """``count`` symbols under ``freqs`` (mapped through ``table`` if given)."""
        out = np.empty(count, np.int32 if table is None else table.dtype)
        with _stream_errors():
            model = _model(freqs)
            for start in range(0, count, CHUNK):
                chunk = self.coder.decode(model, min(CHUNK, count - start))
                require(chunk.size == min(CHUNK, count - start), "the symbol stream ended early")
                out[start : start + chunk.size] = chunk if table is None else table[chunk]
        return out

    def finish(self) -> None:
        with _stream_errors():
            empty = self.coder.is_empty()
        require(empty, "the symbol stream has data left over")


def decode_symbols(data: bytes, freqs: np.ndarray, count: int, table: np.ndarray | None = None) -> np.ndarray:
    """Decodes ``count`` symbols (mapped through ``table`` if given) from a stream.

    ``freqs`` must have passed :func:`check_frequencies`. The stream must hold whole words,
    be no longer than ``count`` symbols can make, and be used up exactly; otherwise (or if
    the coder objects) :class:`SparseFormatError` is raised.
    """
    decoder = _Decoder(data, count)
    out = decoder.read(freqs, count, table)
    decoder.finish()
    return out


# ---------------------------------------------------------------- row contexts


def row_classes(nonzero: np.ndarray, contexts: int) -> np.ndarray:
    """Each row's context (``nonzero`` is 2-D: rows x last axis): its density's quantile class.

    Example:
        >>> row_classes(np.array([[0, 0], [1, 1], [1, 0], [0, 0]], bool), 2).tolist()
        [0, 1, 1, 0]
    """
    density = nonzero.mean(axis=1)
    edges = np.quantile(density, np.linspace(0.0, 1.0, contexts + 1)[1:-1])
    return np.searchsorted(edges, density, side="right").astype(np.int32)


def _information(counts) -> float:
    """Order-0 information of symbols with these counts, in bits."""
    counts = np.asarray(counts, np.float64)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / counts.sum())).sum()) if counts.size else 0.0


def best_contexts(nonzero: np.ndarray) -> int:
    """The number of row classes (among :data:`CONTEXT_CHOICES`) that codes ``nonzero`` (2-D) in
    the fewest bits: classes, flags per class, and their tables."""

    def cost(contexts: int) -> float:
        classes = row_classes(nonzero, contexts)
        rows = np.bincount(classes, minlength=contexts)
        ones = np.bincount(classes, weights=nonzero.sum(axis=1), minlength=contexts)
        flags = sum(_information([n - o, o]) for n, o in zip(rows * nonzero.shape[1], ones))
        return _information(rows) + flags + 3 * contexts * 32

    return min(CONTEXT_CHOICES, key=cost)


def rows_tables(contexts: int, codebook: int) -> list[int]:
    """The alphabet of each table of a row-context stream: classes, one flag table per class
    (zero, nonzero), and the indices (none with a one-value codebook)."""
    return [contexts] + [2] * contexts + ([codebook] if codebook > 1 else [])


def encode_rows(symbols: np.ndarray, width: int, contexts: int, codebook: int) -> tuple[np.ndarray, bytes]:
    """``(frequency tables, stream)`` of ``symbols`` (flat, rows of ``width``) with row contexts.

    Example:
        >>> symbols = np.array([0, 0, 0, 0, 1, 2, 0, 1, 0, 0, 0, 0])
        >>> freqs, data = encode_rows(symbols, 3, 2, 2)
        >>> decode_rows(data, freqs, 12, 3, 2, 2).tolist() == symbols.tolist()
        True
    """
    grid = symbols.reshape(-1, width)
    classes = row_classes(grid != 0, contexts)
    parts = [(classes, np.bincount(classes, minlength=contexts))]
    for c in range(contexts):
        flags = (grid[classes == c] != 0).ravel().astype(np.int32)
        parts.append((flags, np.bincount(flags, minlength=2)))
    if codebook > 1:
        indices = symbols[symbols != 0] - 1
        parts.append((indices, np.bincount(indices, minlength=codebook)))
    # A class no row falls in still gets a (never used) table: every frequency must be >= 1.
    parts = [(part, quantize_frequencies(counts if counts.sum() else np.ones_like(counts))) for part, counts in parts]
    return np.concatenate([freqs for _, freqs in parts]), _encode(parts)


def split_tables(data: bytes, contexts: int, codebook: int) -> list[np.ndarray]:
    """The checked frequency tables of a row-context stream, from their blob."""
    sizes = rows_tables(contexts, codebook)
    require(len(data) == 4 * sum(sizes), f"the frequency tables have {len(data) // 4} entries, expected {sum(sizes)}")
    freqs = np.frombuffer(data, "<u4")
    bounds = np.cumsum([0, *sizes])
    return [_checked_table(freqs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def decode_rows(data: bytes, freqs: np.ndarray, size: int, width: int, contexts: int, codebook: int,
                nnz: int | None = None) -> np.ndarray:
    """The symbols (flat int32) of a row-context stream; ``nnz``, if given, must match."""
    tables = split_tables(np.ascontiguousarray(freqs, "<u4").tobytes(), contexts, codebook)
    require(width >= 1 and size % width == 0, "the rows do not fit the tensor")
    rows = size // width
    ones = nnz if nnz is not None else size
    decoder = _Decoder(data, rows + size + ones)
    classes = decoder.read(tables[0], rows)
    flags = np.zeros((rows, width), bool)
    for c in range(contexts):
        picked = classes == c
        flags[picked] = decoder.read(tables[1 + c], int(picked.sum()) * width).reshape(-1, width).astype(bool)
    count = int(flags.sum())
    require(nnz is None or count == nnz, f"the symbols hold a different nonzero count than the header's {nnz}")
    symbols = np.zeros(size, np.int32)
    indices = decoder.read(tables[-1], count) if codebook > 1 else np.zeros(count, np.int32)
    symbols[flags.ravel()] = indices + 1
    decoder.finish()
    return symbols


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
