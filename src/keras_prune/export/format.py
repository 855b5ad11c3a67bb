"""The ``.kpsparse`` container: a versioned header plus compressed per-tensor blobs.

Layout (all integers little-endian; the full specification is in ``docs/export.md``)::

    0   8 bytes  magic b"KPSPARSE"
    8   u32      format version (1; 2 or 3 if a tensor uses an entropy-coded encoding)
    12  u32      stored header length H
    16  u32      raw (uncompressed) header length
    20  u32      CRC-32 of everything after this field (header + payload)
    24  H bytes  header: zlib-compressed UTF-8 JSON
    24+H ...     payload: the blobs the header points into

The reader trusts nothing: every length, offset, shape and count is checked against the
file's size before anything is allocated, and no code is ever executed (no pickle).
"""

from __future__ import annotations

import json
import lzma
import struct
import zlib

import numpy as np

MAGIC = b"KPSPARSE"
VERSION = 3  # the newest version this module reads and writes
# 2 added the entropy-coded ``codebook`` encoding, 3 its row contexts (``codebook_rows``); a file
# takes the oldest version that has every encoding it uses.
VERSIONS = (1, 2, 3)
PREFIX = struct.Struct("<8sIIII")
# A tensor may decode to at most EXPANSION bytes per stored byte (+ ALLOWANCE): deflate
# itself cannot exceed ~1032:1, so honest files fit and bombs are refused up front.
EXPANSION = 1024
ALLOWANCE = 256
MAX_RANK = 8
MAX_VARINT_BYTES = 8
CODECS = ("raw", "zlib", "lzma")
# LZMA2 in raw mode with a fixed, small dictionary: the file cannot ask for more memory.
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 22}]
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


class SparseFormatError(ValueError):
    """A ``.kpsparse`` file is truncated, corrupted, crafted, or of an unknown version."""


def require(condition: bool, message: str) -> None:
    """Raises :class:`SparseFormatError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SparseFormatError(f"Invalid sparse model file: {message}.")


# ---------------------------------------------------------------- blobs (bytes + codec)


def _shuffle(data: bytes, itemsize: int) -> bytes:
    """Groups byte k of every item together: exponents and signs then compress well."""
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


def _compress(data: bytes, codec: str, quick: bool = False) -> bytes:
    if codec == "zlib":
        return zlib.compress(data, 1 if quick else 9)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    return data


def pack_blob(data: bytes, itemsize: int = 1, *, quick: bool = False) -> tuple[dict, bytes]:
    """Stores ``data`` the smallest way: raw or compressed, byte-shuffled or not.

    ``quick`` tries fast zlib only: a cheap size estimate for choosing among encodings.
    """
    best = ({"codec": "raw", "shuffle": 1}, data)
    shuffles = (1, itemsize) if itemsize > 1 and len(data) > itemsize else (1,)
    for shuffle in shuffles:
        source = _shuffle(data, shuffle) if shuffle > 1 else data
        for codec in ("zlib",) if quick else ("zlib", "lzma"):
            stored = _compress(source, codec, quick)
            if len(stored) < len(best[1]):
                best = ({"codec": codec, "shuffle": shuffle}, stored)
    meta, stored = best
    return {**meta, "raw_length": len(data), "length": len(stored)}, stored


def _decompress(stored: bytes, codec: str, raw_length: int) -> bytes:
    """Inflates at most ``raw_length`` bytes and insists on exactly that many."""
    if codec == "raw":
        out = stored
    else:
        engine = (
            zlib.decompressobj()
            if codec == "zlib"
            else lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
        )
        try:
            out = engine.decompress(stored, raw_length + 1)
        except (zlib.error, lzma.LZMAError) as error:
            raise SparseFormatError(f"Invalid sparse model file: corrupt {codec} data ({error}).") from error
    require(len(out) == raw_length, f"a blob holds {len(out)} bytes, header says {raw_length}")
    return out


def read_blob(payload: memoryview, meta: object, raw_length: int) -> bytes:
    """Returns the bytes of one blob after checking its header entry against the file."""
    require(isinstance(meta, dict), "a blob entry is not an object")
    offset, length = meta.get("offset"), meta.get("length")
    codec, shuffle = meta.get("codec"), meta.get("shuffle")
    require(codec in CODECS, f"unknown codec {codec!r}")
    require(shuffle in (1, 2, 4, 8), f"bad shuffle {shuffle!r}")
    require(is_count(offset) and is_count(length), "a blob offset or length is not a count")
    require(offset + length <= len(payload), "a blob points past the end of the file")
    require(meta.get("raw_length") == raw_length, "a blob's raw length does not match its tensor")
    require(raw_length % shuffle == 0, "a shuffled blob is not a whole number of items")
    data = _decompress(bytes(payload[offset : offset + length]), codec, raw_length)
    return _unshuffle(data, shuffle) if shuffle > 1 else data


def is_count(value: object) -> bool:
    """True for a non-negative int that is not a bool (JSON gives ints, floats, bools)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---------------------------------------------------------------- gap coding (varints)


def encode_gaps(positions: np.ndarray) -> bytes:
    """Sorted flat positions -> LEB128 varints of the gaps (gap - 1, so dense runs are 0s)."""
    gaps = np.diff(positions.astype(np.uint64), prepend=np.uint64(0))
    if gaps.size:
        gaps[1:] -= np.uint64(1)
    # 7 bits per byte, least significant first, high bit set while more bytes follow.
    sizes = np.ones(gaps.shape, np.int64)
    rest = gaps >> np.uint64(7)
    while rest.any():
        sizes += rest > 0
        rest >>= np.uint64(7)
    starts = np.cumsum(sizes) - sizes
    index = (np.arange(int(sizes.sum())) - np.repeat(starts, sizes)).astype(np.uint64)
    chunks = (np.repeat(gaps, sizes) >> (np.uint64(7) * index)) & np.uint64(0x7F)
    more = index < (np.repeat(sizes, sizes) - 1).astype(np.uint64)
    return (chunks | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8).tobytes()


def decode_gaps(data: bytes, count: int, size: int) -> np.ndarray:
    """Inverse of :func:`encode_gaps`; checks the positions are increasing and < ``size``."""
    raw = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    require(ends.size == count, f"gap data holds {ends.size} positions, header says {count}")
    require(count == 0 or ends[-1] == raw.size - 1, "gap data has trailing bytes")
    if count == 0:
        return np.zeros(0, np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    require(int(lengths.max()) <= MAX_VARINT_BYTES, "a gap is implausibly long")
    index = np.arange(raw.size) - np.repeat(starts, lengths)
    parts = (raw & 0x7F).astype(np.uint64) << (np.uint64(7) * index.astype(np.uint64))
    gaps = np.add.reduceat(parts, starts).astype(np.float64)
    # Float sum first: an overflowing crafted gap must fail the range check, not wrap.
    positions_f = np.cumsum(gaps + 1) - 1
    require(positions_f[-1] < size, "a position lies outside its tensor")
    return positions_f.astype(np.int64)


# ---------------------------------------------------------------- header


def write_container(header: dict, payload: bytes, version: int = 1) -> bytes:
    """Serializes ``header`` (JSON, compressed) and ``payload`` into the container bytes.

    ``version`` is the lowest version whose readers understand every encoding used.
    """
    if version not in VERSIONS:
        raise ValueError(f"Argument `version` must be one of {VERSIONS}. Received: version={version}")
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    stored = zlib.compress(raw, 9)
    body = stored + payload
    return PREFIX.pack(MAGIC, version, len(stored), len(raw), zlib.crc32(body)) + body


def read_container(data: bytes) -> tuple[dict, memoryview]:
    """Checks the prefix and checksum, parses the header; returns it and the payload."""
    require(len(data) >= PREFIX.size, f"only {len(data)} bytes, too short for the prefix")
    magic, version, stored_length, raw_length, crc = PREFIX.unpack_from(data)
    require(magic == MAGIC, "wrong magic bytes (not a keras-prune sparse model)")
    if version not in VERSIONS:
        raise SparseFormatError(
            f"Unsupported sparse model file version {version}; this keras-prune reads versions "
            f"{', '.join(map(str, VERSIONS))}. Upgrade keras-prune to read newer files."
        )
    require(stored_length <= len(data) - PREFIX.size, "the header length runs past the end")
    body = memoryview(data)[PREFIX.size :]
    require(zlib.crc32(body) == crc, "checksum mismatch (the file is truncated or corrupted)")
    require(raw_length <= EXPANSION * stored_length + ALLOWANCE, "the header claims too much")
    text = _decompress(bytes(body[:stored_length]), "zlib", raw_length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise SparseFormatError(f"Invalid sparse model file: bad header JSON ({error}).") from error
    require(isinstance(header, dict), "the header is not a JSON object")
    return header, body[stored_length:]
