"""Per-tensor encodings: each tensor is stored the smallest of several exact ways.

* ``dense``: every value, for tensors with few zeros.
* ``bitmask``: one bit per position (``np.packbits``), then the nonzero values.
* ``gaps``: the distances between nonzero positions as varints, then the nonzero values;
  wins for very sparse tensors, where the bitmask is mostly zero bits.
* ``nm``: N:M metadata: for every group of ``n`` weights along the input axis, the indices of
  its ``k`` kept weights packed in ``ceil(log2 n)`` bits each, then ``k`` values per group.
* ``codebook``: for tensors with few distinct nonzero values (clustered kernels, int8 kernels
  of Keras-quantized layers): the distinct values, then one rANS-coded symbol per position
  (zero or a codebook index) under a stored frequency table (:mod:`keras_prune.export.entropy`).
* ``codebook_rows``: the same codebook, with row contexts: the zero/nonzero flags of each row
  (all axes but the last) coded under its density class's probability, then the indices; wins
  when rows differ in density, as a pruned kernel's do.

Values are stored as the tensor's own dtype (lossless), or, for float kernels (rank >= 2),
as float16 or as int8 with one float32 scale per output channel (the last axis).
"""

from __future__ import annotations

import math

import numpy as np

from keras_prune.export import entropy
from keras_prune.export import format as fmt
from keras_prune.export.format import pack_blob, require

ENCODINGS = ("dense", "bitmask", "gaps", "nm", "codebook", "codebook_rows")
CODEBOOKS = ("codebook", "codebook_rows")  # the entropy-coded encodings
# The container version that introduced an encoding (older ones: version 1).
ENCODING_VERSIONS = {"codebook": 2, "codebook_rows": 3}
# Blobs that hold entropy-coded data: they never compress, so they are stored raw.
RAW_BLOBS = ("symbols",)
ITEMSIZES = {"scales": 4, "positions": 1, "freqs": 4, "symbols": 1}
VALUE_MODES = ("float32", "float16", "int8")
NM_GROUPS = (4, 8, 16)


def _le(dtype) -> np.dtype:
    """The little-endian flavour of ``dtype``: files read the same on every machine."""
    return np.dtype(dtype).newbyteorder("<")


def quantizes(array: np.ndarray, values: str) -> bool:
    """Lossy value modes apply to float kernels only; biases and statistics stay exact."""
    return values != "float32" and array.dtype.kind == "f" and array.ndim >= 2


def _quantize(array: np.ndarray, values: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored values (and int8 per-channel scales) for ``array`` under ``values``."""
    if not quantizes(array, values):
        return array, None
    if values == "float16":
        return array.astype(np.float16), None
    channels = array.reshape(-1, array.shape[-1])
    scales = (np.abs(channels).max(axis=0) / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)
    quantized = np.clip(np.rint(array / safe), -127, 127).astype(np.int8)
    return quantized, scales


def _nm_groups(shape: tuple[int, ...]) -> tuple[int, int]:
    """(axis, length) of the N:M grouping axis: the input axis, like ``m_by_n_mask``."""
    axis = len(shape) - 2 if len(shape) >= 2 else 0
    return axis, shape[axis]


def _grouped(array: np.ndarray, n: int) -> np.ndarray:
    axis, _ = _nm_groups(array.shape)
    return np.moveaxis(array, axis, -1).reshape(-1, n)


def _index_bits(n: int) -> int:
    return max(1, math.ceil(math.log2(n)))


def _nm_candidates(stored: np.ndarray, nonzero: np.ndarray):
    """Yields (n, k, packed indices, values) for every N:M grouping that fits the tensor."""
    if stored.ndim == 0 or stored.size == 0:
        return
    _, length = _nm_groups(stored.shape)
    for n in NM_GROUPS:
        if length % n:
            continue
        mask = _grouped(nonzero, n)
        k = max(1, int(mask.sum(axis=1).max()))
        if k > n // 2:
            continue
        # Kept = the nonzeros, padded with the first zero positions; indices ascending.
        order = np.sort(np.argsort(~mask, axis=1, kind="stable")[:, :k], axis=1)
        values = np.take_along_axis(_grouped(stored, n), order, axis=1)
        bits = np.unpackbits(order.astype(np.uint8)[..., None], axis=-1)[..., 8 - _index_bits(n) :]
        yield n, k, np.packbits(bits.ravel()).tobytes(), values.ravel()


Blobs = dict  # blob name ("positions", "values", "scales") -> bytes
Parts = list  # [(blob name, blob metadata, stored bytes)]


def _candidates(stored: np.ndarray, encodings: tuple[str, ...] = ENCODINGS) -> list[tuple[str, dict, Blobs]]:
    """Every exact encoding of ``stored`` among ``encodings``: (encoding, extra header fields, raw blobs)."""
    flat = stored.ravel()
    # -0.0 counts as zero (masking negative weights makes it): it comes back as +0.0.
    nonzero = stored != 0
    kept = flat[nonzero.ravel()].tobytes()
    candidates = [
        ("dense", {}, {"values": flat.tobytes()}),
        ("bitmask", {}, {"positions": np.packbits(nonzero.ravel()).tobytes(), "values": kept}),
        ("gaps", {}, {"positions": fmt.encode_gaps(np.flatnonzero(nonzero)), "values": kept}),
    ]
    if "nm" in encodings:
        for n, k, indices, values in _nm_candidates(stored, nonzero):
            candidates.append(("nm", {"group": [n, k]}, {"positions": indices, "values": values.tobytes()}))
    if set(CODEBOOKS) & set(encodings):
        candidates.extend(_codebook_candidates(stored, encodings))
    return candidates


def _codebook_candidates(stored: np.ndarray, encodings: tuple[str, ...]) -> list[tuple[str, dict, Blobs]]:
    """The ``codebook`` (and, for kernels, ``codebook_rows``) encodings of ``stored`` if it has
    few distinct nonzero values (else none)."""
    if stored.size > entropy.MAX_SYMBOLS:
        return []
    found = entropy.codebook_symbols(stored)
    if found is None or found[0].size == 0:  # too many values, or all zeros (others win there)
        return []
    codebook, symbols = found
    extra = {"codebook": int(codebook.size), "nnz": int(np.count_nonzero(symbols))}
    out = []
    if "codebook" in encodings:
        freqs = entropy.quantize_frequencies(np.bincount(symbols, minlength=codebook.size + 1))
        out.append(("codebook", extra, {"values": codebook.tobytes(), "freqs": freqs.astype("<u4").tobytes(),
                                        "symbols": entropy.encode_symbols(symbols, freqs)}))
    rows = stored.size // stored.shape[-1] if stored.ndim >= 2 else 0
    if "codebook_rows" in encodings and rows >= 2 and 2 * stored.size <= entropy.MAX_SYMBOLS:
        width = stored.shape[-1]
        contexts = entropy.best_contexts(symbols.reshape(-1, width) != 0)
        freqs, data = entropy.encode_rows(symbols, width, contexts, codebook.size)
        out.append(("codebook_rows", {**extra, "contexts": contexts},
                    {"values": codebook.tobytes(), "freqs": freqs.astype("<u4").tobytes(), "symbols": data}))
    return out


def _pack(name: str, data: bytes, itemsize: int) -> tuple[str, dict, bytes]:
    if name in RAW_BLOBS:
        return name, {"codec": "raw", "shuffle": 1, "raw_length": len(data), "length": len(data)}, data
    return (name, *pack_blob(data, itemsize))


def encode_tensor(
    array: np.ndarray, values: str = "float32", *, encodings: tuple[str, ...] = ENCODINGS
) -> tuple[dict, Parts]:
    """Picks the smallest encoding of ``array``; returns its header entry and its blobs.

    ``encodings`` limits the choice (``dense``, ``bitmask`` and ``gaps`` are always tried).
    The blob metadata lacks ``offset``: the writer assigns offsets when laying out the file.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> clustered = rng.choice(np.array([0.0, 0.25, -0.5], "float32"), (100, 50), p=[0.8, 0.1, 0.1])
        >>> entry, parts = encode_tensor(clustered)
        >>> entry["encoding"], entry["codebook"], [name for name, _, _ in parts]
        ('codebook', 2, ['values', 'freqs', 'symbols'])
    """
    array = np.asarray(array)
    require_dtype(array.dtype.name)
    stored, scales = _quantize(array, values)
    stored = stored.astype(_le(stored.dtype))
    candidates = _candidates(stored, encodings)
    if scales is not None:
        candidates = [(e, extra, {**blobs, "scales": scales.astype("<f4").tobytes()}) for e, extra, blobs in candidates]
    itemsizes = {**ITEMSIZES, "values": stored.itemsize}
    estimates: dict[bytes, int] = {}

    def estimate(blobs: Blobs) -> int:
        for name, data in blobs.items():
            if data not in estimates:
                quick = len(data) if name in RAW_BLOBS else pack_blob(data, itemsizes[name], quick=True)[0]["length"]
                estimates[data] = quick
        return sum(estimates[data] for data in blobs.values())

    def fits(parts: Parts) -> bool:
        # Honour the reader's expansion limit, so every file we write is one we accept.
        return array.nbytes <= fmt.EXPANSION * sum(meta["length"] for _, meta, _ in parts) + fmt.ALLOWANCE

    # Rank by a fast estimate, then compress thoroughly only until one fits.
    for candidate in sorted(candidates, key=lambda c: estimate(c[2])):
        parts = [_pack(name, data, itemsizes[name]) for name, data in candidate[2].items()]
        if fits(parts):
            break
    else:  # (nearly) all zeros: an uncompressed bitmask always fits the limit
        candidate = candidates[1]
        parts = [(name, {"codec": "raw", "shuffle": 1, "raw_length": len(d), "length": len(d)}, d)
                 for name, d in candidate[2].items()]
    encoding, extra, blobs = candidate
    entry = {
        "encoding": encoding,
        "nnz": len(blobs["values"]) // stored.itemsize,
        **extra,
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "quant": values if scales is not None or stored.dtype != array.dtype else "none",
    }
    return entry, parts


def require_dtype(name: str) -> None:
    if name not in fmt.DTYPES:
        raise ValueError(
            f"Cannot store a tensor of dtype {name} in the sparse format; supported dtypes: "
            f"{', '.join(fmt.DTYPES)}. Cast the model's weights first."
        )


# ---------------------------------------------------------------- decoding


def _check_entry(entry: object) -> tuple[str, tuple[int, ...], int, str, str, int]:
    """Validates the shape-related fields of a tensor entry; returns them."""
    require(isinstance(entry, dict), "a tensor entry is not an object")
    dtype, shape = entry.get("dtype"), entry.get("shape")
    require(dtype in fmt.DTYPES, f"unknown tensor dtype {dtype!r}")
    require(
        isinstance(shape, list) and len(shape) <= fmt.MAX_RANK and all(fmt.is_count(d) for d in shape),
        f"bad tensor shape {shape!r}",
    )
    encoding, quant, nnz = entry.get("encoding"), entry.get("quant"), entry.get("nnz")
    require(encoding in ENCODINGS, f"unknown tensor encoding {encoding!r}")
    require(quant in ("none", "float16", "int8"), f"unknown value mode {quant!r}")
    require(quant == "none" or (np.dtype(dtype).kind == "f" and len(shape) >= 2), "a quantized tensor must be a float kernel")
    size = math.prod(shape)
    require(fmt.is_count(nnz) and nnz <= size, f"bad value count {nnz!r}")
    return dtype, tuple(shape), size, encoding, quant, nnz


def decode_tensor(entry: object, payload: memoryview) -> np.ndarray:
    """Rebuilds one tensor from its header entry; every claim is checked before allocating."""
    array, scales = decode_stored(entry, payload)
    if scales is not None:
        array = array.astype(np.float32) * scales
    return array.astype(entry["dtype"])


def decode_stored(entry: object, payload: memoryview) -> tuple[np.ndarray, np.ndarray | None]:
    """The tensor as stored (int8 or float16 values for a quantized one) and its int8 scales."""
    dtype, shape, size, encoding, quant, nnz = _check_entry(entry)
    blobs = entry.get("blobs")
    require(isinstance(blobs, dict), "a tensor lacks its blob table")
    names = {"values"} | ({"scales"} if quant == "int8" else set())
    names |= {"freqs", "symbols"} if encoding in CODEBOOKS else {"dense": set()}.get(encoding, {"positions"})
    require(set(blobs) == names, f"a {encoding} tensor must have blobs {sorted(names)}")
    lengths = [blobs[name].get("length") if isinstance(blobs[name], dict) else None for name in names]
    require(all(fmt.is_count(n) for n in lengths), "a blob length is not a count")
    out_bytes = size * np.dtype(dtype).itemsize
    require(out_bytes <= fmt.EXPANSION * sum(lengths) + fmt.ALLOWANCE, f"a tensor of shape {list(shape)} is far larger than its data")
    value_dtype = _le({"none": dtype, "float16": "float16", "int8": "int8"}[quant])
    if encoding == "dense":
        require(nnz == size, "a dense tensor must store every value")
    if encoding in CODEBOOKS:
        flat = _decode_codebook(entry, payload, blobs, shape, nnz, value_dtype)
    else:
        values = np.frombuffer(fmt.read_blob(payload, blobs["values"], nnz * value_dtype.itemsize), value_dtype)
        if encoding == "nm":
            flat = _decode_nm(entry, payload, blobs["positions"], shape, nnz, values)
        else:
            flat = np.zeros(size, value_dtype)
            if encoding == "dense":
                flat[:] = values
            else:
                flat[_positions(encoding, payload, blobs["positions"], size, nnz)] = values
    scales = None
    if quant == "int8":
        scales = np.frombuffer(fmt.read_blob(payload, blobs["scales"], shape[-1] * 4), "<f4")
    return flat.reshape(shape), scales


def _decode_codebook(entry: dict, payload: memoryview, blobs: dict, shape: tuple, nnz: int, value_dtype) -> np.ndarray:
    k = entry.get("codebook")
    require(fmt.is_count(k) and 1 <= k <= entropy.MAX_CODEBOOK, f"bad codebook size {k!r}")
    size = math.prod(shape)
    require(size <= entropy.MAX_SYMBOLS, "a codebook tensor has too many positions")
    codebook = np.frombuffer(fmt.read_blob(payload, blobs["values"], k * value_dtype.itemsize), value_dtype)
    require(bool((codebook != 0).all()), "a codebook value is zero")
    table = np.concatenate([np.zeros(1, value_dtype), codebook])
    meta = blobs["symbols"]
    raw_length = meta.get("raw_length") if isinstance(meta, dict) else None
    if entry["encoding"] == "codebook":
        freqs = entropy.check_frequencies(fmt.read_blob(payload, blobs["freqs"], 4 * (k + 1)), k + 1)
        require(fmt.is_count(raw_length) and raw_length <= entropy.max_stream_bytes(size), "the symbol stream is too long")
        flat = entropy.decode_symbols(fmt.read_blob(payload, meta, raw_length), freqs, size, table)
        require(int(np.count_nonzero(flat)) == nnz, f"the symbols hold a different nonzero count than the header's {nnz}")
        return flat
    contexts = entry.get("contexts")
    require(fmt.is_count(contexts) and 2 <= contexts <= entropy.MAX_CONTEXTS, f"bad context count {contexts!r}")
    require(len(shape) >= 2 and shape[-1] >= 1, "row contexts need a tensor of rank 2 or more")
    rows = size // shape[-1]
    freqs = fmt.read_blob(payload, blobs["freqs"], 4 * sum(entropy.rows_tables(contexts, k)))
    require(fmt.is_count(raw_length) and raw_length <= entropy.max_stream_bytes(rows + size + nnz),
            "the symbol stream is too long")
    data = fmt.read_blob(payload, meta, raw_length)
    symbols = entropy.decode_rows(data, np.frombuffer(freqs, "<u4"), size, shape[-1], contexts, k, nnz)
    return table[symbols]


def _positions(encoding: str, payload: memoryview, meta: dict, size: int, nnz: int) -> np.ndarray:
    if encoding == "bitmask":
        bits = np.unpackbits(np.frombuffer(fmt.read_blob(payload, meta, -(-size // 8)), np.uint8))
        require(not bits[size:].any(), "bitmask padding bits are set")
        positions = np.flatnonzero(bits[:size])
        require(positions.size == nnz, f"bitmask holds {positions.size} positions, header says {nnz}")
        return positions
    raw_length = meta.get("raw_length")
    require(fmt.is_count(raw_length) and raw_length <= fmt.MAX_VARINT_BYTES * nnz, "gap data is too long")
    return fmt.decode_gaps(fmt.read_blob(payload, meta, raw_length), nnz, size)


def _decode_nm(entry: dict, payload: memoryview, meta: dict, shape: tuple, nnz: int, values: np.ndarray) -> np.ndarray:
    group = entry.get("group")
    require(isinstance(group, list) and len(group) == 2 and all(fmt.is_count(g) for g in group), "bad N:M group")
    n, k = group
    axis, length = _nm_groups(shape) if shape else (0, 0)
    require(n in NM_GROUPS and 1 <= k <= n and shape and length % n == 0, f"N:M group {group} does not fit shape {list(shape)}")
    groups = math.prod(shape) // n
    require(nnz == groups * k, "N:M value count does not match the groups")
    bits = _index_bits(n)
    raw = fmt.read_blob(payload, meta, -(-groups * k * bits // 8))
    index_bits = np.unpackbits(np.frombuffer(raw, np.uint8))[: groups * k * bits].reshape(-1, bits)
    order = (index_bits.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(axis=1).reshape(groups, k)
    require(bool((order < n).all()) and bool((np.diff(order, axis=1) > 0).all()), "bad N:M indices")
    dense = np.zeros((groups, n), values.dtype)
    np.put_along_axis(dense, order, values.reshape(groups, k), axis=1)
    moved = list(shape)
    moved.append(moved.pop(axis))
    return np.moveaxis(dense.reshape(moved), -1, axis).ravel()
