"""The .kpsparse encodings and container: exact round trips, smallest choice, hostile input."""

import functools
import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_prune.export import format as fmt
from keras_prune.export.encodings import decode_tensor, encode_tensor
from keras_prune.export.format import SparseFormatError
from keras_prune.masks import m_by_n_mask, sparsity_mask

pytestmark = pytest.mark.core


def roundtrip(array, values="float32"):
    """Encodes one tensor, lays its blobs out like the writer does, decodes it back."""
    entry, parts = encode_tensor(array, values)
    entry["blobs"], payload, offset = {}, b"", 0
    for name, meta, data in parts:
        entry["blobs"][name] = {**meta, "offset": offset}
        payload += data
        offset += len(data)
    return entry, decode_tensor(json.loads(json.dumps(entry)), memoryview(payload)), len(payload)


def pruned(shape, sparsity, seed=0):
    weights = np.random.default_rng(seed).normal(size=shape).astype("float32")
    return np.where(sparsity_mask(weights**2, sparsity), weights, 0).astype("float32")


@pytest.mark.parametrize(
    "array, encoding",
    [
        (np.random.default_rng(1).normal(size=(64, 32)).astype("float32"), "dense"),
        (pruned((200, 100), 0.5), "bitmask"),
        (pruned((300, 100), 0.97), "gaps"),
        (np.zeros((16,), "float32"), "gaps"),
    ],
)
def test_each_density_picks_its_natural_encoding_and_round_trips_bit_exactly(array, encoding):
    entry, decoded, stored = roundtrip(array)
    assert entry["encoding"] == encoding
    assert decoded.dtype == array.dtype and decoded.tobytes() == array.tobytes()
    assert stored <= array.nbytes


def test_n_by_m_metadata_wins_for_sparse_groups_and_round_trips():
    weights = np.random.default_rng(2).normal(size=(512, 64)).astype("float32")
    # Keep 1 of every 8 inputs: 3 index bits per group beat an 8-bit mask per group.
    array = np.where(m_by_n_mask(weights**2, (7, 8)), weights, 0).astype("float32")
    entry, decoded, _ = roundtrip(array)
    assert entry["encoding"] == "nm" and entry["group"] == [8, 1]
    np.testing.assert_array_equal(decoded, array)


def test_negative_zero_counts_as_zero_and_every_nonzero_stays_bit_exact():
    array = np.array([[-0.0, 1.5e-30], [np.float32(np.nextafter(1, 2)), -0.0]], "float32")
    entry, decoded, _ = roundtrip(array)
    assert entry["nnz"] == 2
    np.testing.assert_array_equal(decoded, array)
    assert decoded[0, 1].tobytes() == array[0, 1].tobytes()


def test_other_dtypes_round_trip_exactly():
    for dtype in ["int32", "int64", "uint8", "float16", "float64"]:
        array = (np.arange(60).reshape(6, 10) % 7 == 0).astype(dtype) * 3
        _, decoded, _ = roundtrip(array)
        assert decoded.dtype == array.dtype
        np.testing.assert_array_equal(decoded, array)
    _, decoded, _ = roundtrip(np.eye(6, 10, dtype=bool))
    np.testing.assert_array_equal(decoded, np.eye(6, 10, dtype=bool))


def test_int8_uses_one_scale_per_output_channel_and_keeps_zeros_and_biases():
    array = pruned((100, 4), 0.8) * np.array([1.0, 10.0, 100.0, 0.01], "float32")
    entry, decoded, _ = roundtrip(array, "int8")
    assert entry["quant"] == "int8" and "scales" in entry["blobs"]
    assert np.all(decoded[array == 0] == 0)
    # Per-channel scale: the error of each column is at most half its own step.
    step = np.abs(array).max(axis=0) / 127
    assert np.all(np.abs(decoded - array) <= step / 2 + 1e-7)
    bias = np.linspace(-1, 1, 7).astype("float32")
    entry, decoded, _ = roundtrip(bias, "int8")
    assert entry["quant"] == "none" and decoded.tobytes() == bias.tobytes()


def test_float16_values_are_float16_rounded():
    array = pruned((40, 30), 0.7)
    entry, decoded, _ = roundtrip(array, "float16")
    assert entry["quant"] == "float16" and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, array.astype(np.float16).astype(np.float32))


@given(st.lists(st.integers(0, 2**40), max_size=50, unique=True))
@settings(max_examples=60, deadline=None)
def test_gap_coding_round_trips_any_sorted_positions(positions):
    positions = np.array(sorted(positions), dtype=np.int64)
    data = fmt.encode_gaps(positions)
    np.testing.assert_array_equal(fmt.decode_gaps(data, positions.size, 2**41), positions)


def test_gap_decoding_refuses_positions_beyond_the_tensor():
    with pytest.raises(SparseFormatError, match="outside"):
        fmt.decode_gaps(fmt.encode_gaps(np.array([3, 9])), 2, 9)


# ---------------------------------------------------------------- hostile containers

HEADER = {"architecture": {}, "tensors": []}


def container(tensors, payload=b""):
    return fmt.write_container({**HEADER, "tensors": tensors}, payload)


def valid_file():
    """A fresh copy of one valid tensor entry and its payload."""
    entry, payload = _valid_file()
    return json.loads(json.dumps(entry)), payload


@functools.lru_cache(maxsize=1)
def _valid_file():
    entry, parts = encode_tensor(pruned((40, 20), 0.8))
    entry["blobs"], offset = {}, 0
    for name, meta, data in parts:
        entry["blobs"][name] = {**meta, "offset": offset}
        offset += len(data)
    return entry, b"".join(data for _, _, data in parts)


def decode_all(data):
    header, payload = fmt.read_container(data)
    return [decode_tensor(entry, payload) for entry in header["tensors"]]


def test_valid_container_decodes():
    entry, payload = valid_file()
    (array,) = decode_all(container([entry], payload))
    assert array.shape == (40, 20) and np.count_nonzero(array) == 160


def test_unknown_version_names_the_fix():
    data = bytearray(container([]))
    data[8:12] = (4).to_bytes(4, "little")
    with pytest.raises(SparseFormatError, match="version 4.*reads versions 1, 2, 3.*Upgrade"):
        fmt.read_container(bytes(data))


CRAFTED = [
    (lambda e: e.update(shape=[2**40, 2**40]), "far larger"),
    (lambda e: e.update(shape=[10**6, 10**6], encoding="gaps"), "far larger"),
    (lambda e: e.update(shape=[-1, 20]), "shape"),
    (lambda e: e.update(shape=[1] * 9), "shape"),
    (lambda e: e.update(nnz=10**9), "value count"),
    (lambda e: e.update(nnz=e["nnz"] - 1), "raw length|holds"),
    (lambda e: e.update(dtype="object"), "dtype"),
    (lambda e: e.update(encoding="pickle"), "encoding"),
    (lambda e: e.update(quant="int4"), "value mode"),
    (lambda e: e["blobs"]["values"].update(offset=10**12), "past the end"),
    (lambda e: e["blobs"]["values"].update(length=-5), "count"),
    (lambda e: e["blobs"]["values"].update(codec="exec"), "codec"),
    (lambda e: e["blobs"]["values"].update(raw_length=10**15), "raw length"),
    (lambda e: e["blobs"].pop("positions"), "blobs"),
    (lambda e: e.update(encoding="nm", group=[8, 2]), "N:M|raw length"),
]


def test_crafted_tensor_entries_raise_one_error_type():
    for change, message in CRAFTED:
        entry, payload = valid_file()
        change(entry)
        with pytest.raises(SparseFormatError, match=message):
            decode_all(container([entry], payload))


def test_a_decompression_bomb_is_refused_before_inflating():
    bomb = zlib.compress(bytes(10**7), 9)
    entry = {
        "dtype": "uint8", "shape": [10**7], "encoding": "dense", "nnz": 10**7, "quant": "none",
        "blobs": {"values": {"offset": 0, "length": len(bomb), "raw_length": 10**7, "codec": "zlib", "shuffle": 1}},
    }
    with pytest.raises(SparseFormatError, match="far larger"):
        decode_all(container([entry], bomb))


@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=4))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_truncated_or_bit_flipped_files_raise_sparse_format_error(cut, flips):
    entry, payload = valid_file()
    data = bytearray(container([entry], payload))
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    data = bytes(data[: cut % (len(data) + 1)])
    if data == container([entry], payload):
        return
    with pytest.raises(SparseFormatError):
        decode_all(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8,
)


@given(key=st.sampled_from(["dtype", "shape", "encoding", "nnz", "quant", "group", "blobs", "values", "positions"]), value=json_values)
@settings(max_examples=150, deadline=None)
def test_fuzz_crafted_fields_with_valid_checksums_raise_sparse_format_error(key, value):
    entry, payload = valid_file()
    if key in ("values", "positions"):
        entry["blobs"][key] = value
    else:
        entry[key] = value
    try:
        (array,) = decode_all(container([entry], payload))
    except SparseFormatError:
        return
    # A harmless change (e.g. an unused field) must still decode to the right tensor.
    assert array.shape == (40, 20) and np.count_nonzero(array) == 160


def test_files_the_writer_makes_always_fit_the_readers_expansion_limit():
    # 4 MB of zeros compress ~1000:1 or better; the writer must fall back to a form we accept.
    for array, values in ((np.zeros((1000, 1000), "float32"), "float32"), (np.zeros((500, 300), "float32"), "int8")):
        entry, decoded, stored = roundtrip(array, values)
        assert array.nbytes <= fmt.EXPANSION * stored + fmt.ALLOWANCE
        np.testing.assert_array_equal(decoded, array)
