"""The entropy-coded ``codebook`` encodings (order 0, and with row contexts): chosen by themselves,
near the entropy, hostile-input safe."""

import functools
import json

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_prune
from keras_prune.cli import main
from keras_prune.export import entropy
from keras_prune.export import format as fmt
from keras_prune.export.encodings import ENCODINGS, decode_tensor, encode_tensor
from keras_prune.export.format import SparseFormatError
from keras_prune.export.sparse import encoding_summary, format_version, read_header

pytestmark = pytest.mark.core


def clustered(shape, sparsity=0.9, k=16, seed=0, dtype="float32"):
    """A pruned tensor whose nonzeros are snapped to the nearest of ``k`` centroids."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=shape)
    keep = np.abs(weights) > np.quantile(np.abs(weights), sparsity)
    centroids = np.quantile(weights[keep], (np.arange(k) + 0.5) / k)
    nearest = np.abs(weights[..., None] - centroids).argmin(-1)
    return np.where(keep, centroids[nearest], 0).astype(dtype)


def uneven(shape=(40, 30), k=6, seed=0, dtype="float32"):
    """A clustered kernel whose rows differ in density, as a pruned layer's do: a third of the
    rows empty (dead inputs), a third 5% dense, a third 60% dense."""
    rng = np.random.default_rng(seed)
    rows = shape[0]
    density = np.repeat([0.0, 0.05, 0.6], -(-rows // 3))[:rows]
    keep = rng.random(shape) < density[:, None]
    values = rng.choice(np.linspace(-1.0, 1.0, k), size=shape)
    return np.where(keep, values, 0).astype(dtype)


def layout(entry, parts):
    """The entry with blob offsets, and the payload, laid out like the writer does."""
    entry = json.loads(json.dumps(entry))
    entry["blobs"], offset = {}, 0
    for name, meta, data in parts:
        entry["blobs"][name] = {**meta, "offset": offset}
        offset += len(data)
    return entry, b"".join(data for _, _, data in parts)


def roundtrip(array, values="float32"):
    entry, payload = layout(*encode_tensor(array, values))
    return entry, decode_tensor(entry, memoryview(payload)), len(payload)


# ---------------------------------------------------------------- the encoding


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int8", "int32", "uint8"])
def test_a_clustered_tensor_is_coded_as_a_codebook_by_itself_and_round_trips_bit_exactly(dtype):
    array = clustered((128, 64), k=12, dtype="float32")
    if np.dtype(dtype).kind in "iu":
        array = np.rint(array * 40).astype(dtype)
    array = array.astype(dtype)
    entry, decoded, stored = roundtrip(array)
    assert entry["encoding"] == "codebook" and 1 <= entry["codebook"] <= 12
    assert entry["nnz"] == np.count_nonzero(array)
    assert decoded.dtype == array.dtype and decoded.tobytes() == array.tobytes()
    assert stored < array.nbytes / 4


def test_the_symbol_stream_comes_within_a_few_bytes_of_the_empirical_entropy():
    array = clustered((256, 256), sparsity=0.9, k=16)
    entry, parts = encode_tensor(array)
    blobs = {name: meta["length"] for name, meta, _ in parts}
    bound = entropy.entropy_bound_bits(array) / 8
    assert entry["encoding"] == "codebook"
    assert blobs["symbols"] <= 1.03 * bound + 64
    # Codebook and frequency table included, the whole tensor is still within 3% + 256 B.
    assert sum(blobs.values()) <= 1.03 * bound + 256
    # ... and smaller than every other encoding of the same tensor.
    _, others = encode_tensor(array, encodings=tuple(e for e in ENCODINGS if e != "codebook"))
    assert sum(blobs.values()) < sum(meta["length"] for _, meta, _ in others)


def test_the_stored_frequencies_are_exactly_the_coders_model():
    # The cost of a stream under freqs is sum(-log2(freq / 2**24)) + at most 2 words of state:
    # so constriction uses exactly the stored table, and any rANS decoder with it can read the file.
    rng = np.random.default_rng(3)
    freqs = entropy.quantize_frequencies(np.array([5000, 300, 2000, 1, 40, 0, 7]))
    symbols = rng.choice(freqs.size, size=20000, p=freqs / freqs.sum()).astype(np.int32)
    data = entropy.encode_symbols(symbols, freqs)
    ideal_bits = -np.log2(freqs[symbols] / 2**entropy.PRECISION).sum()
    assert ideal_bits - 1 <= 8 * len(data) <= ideal_bits + 64
    np.testing.assert_array_equal(entropy.decode_symbols(data, freqs, symbols.size), symbols)


@given(st.lists(st.integers(0, 10**9), min_size=2, max_size=257).filter(lambda c: sum(c) > 0))
@settings(max_examples=60, deadline=None)
def test_quantized_frequencies_are_positive_and_sum_to_the_precision(counts):
    freqs = entropy.quantize_frequencies(np.array(counts))
    assert freqs.dtype == np.uint32 and (freqs >= 1).all()
    assert int(freqs.astype(np.int64).sum()) == 2**entropy.PRECISION


def test_entropy_bound_counts_positions_and_values():
    assert entropy.entropy_bound_bits(np.array([0, 0, 3, 5], "int8")) == 6.0
    assert entropy.entropy_bound_bits(np.zeros(10)) == 0.0
    assert entropy.entropy_bound_bits(np.array([], "float32")) == 0.0
    # -0.0 is a zero; distinct bit patterns (here two NaN payloads) are distinct values.
    nans = np.array([0x7FC00000, 0x7FC00001], "uint32").view("float32")
    assert entropy.entropy_bound_bits(np.array([-0.0, 0.0, nans[0], nans[1]], "float32")) == 6.0


def test_nan_payloads_and_bools_round_trip_through_the_codebook():
    nans = np.array([0x7FC00000, 0x7FC00001], "uint32").view("float32")
    pattern = np.tile(np.array([0, 0, 0, 0, 0, 0, nans[0], nans[1], 1.5], "float32"), 200)
    array = np.random.default_rng(0).permutation(pattern).reshape(40, 45)
    entry, decoded, _ = roundtrip(array)
    assert entry["encoding"] == "codebook" and decoded.tobytes() == array.tobytes()
    mask = clustered((50, 40)) != 0
    _, decoded, _ = roundtrip(mask)
    np.testing.assert_array_equal(decoded, mask)


def test_many_distinct_values_all_zeros_and_lossy_modes():
    continuous = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
    assert roundtrip(continuous)[0]["encoding"] != "codebook"
    assert roundtrip(np.zeros((64, 64), "float32"))[0]["encoding"] != "codebook"
    # int8 values of the lossy mode are at most 255 distinct: the codebook applies to them too.
    array = clustered((200, 50), sparsity=0.8, k=200, seed=4)
    entry, decoded, _ = roundtrip(array, "int8")
    assert entry["quant"] == "int8" and "scales" in entry["blobs"]
    assert np.all(decoded[array == 0] == 0)
    assert np.abs(decoded - array).max() <= np.abs(array).max() / 127


def test_near_empty_tensors_fall_back_so_the_expansion_limit_holds():
    array = np.zeros((1000, 1000), "float32")
    array[3, 7], array[900, 1] = 0.5, -0.25
    entry, decoded, stored = roundtrip(array)
    assert array.nbytes <= fmt.EXPANSION * stored + fmt.ALLOWANCE
    np.testing.assert_array_equal(decoded, array)


# ---------------------------------------------------------------- hostile input


def container(entry, payload, version=3):
    return fmt.write_container({"architecture": {}, "tensors": [entry]}, payload, version)


def valid_file(kind="codebook"):
    entry, payload = _valid_file(kind)
    return json.loads(json.dumps(entry)), payload


@functools.lru_cache(maxsize=2)
def _valid_file(kind):
    array = clustered((40, 30), sparsity=0.8, k=6) if kind == "codebook" else uneven()
    entry, payload = layout(*encode_tensor(array))
    assert entry["encoding"] == kind
    return entry, payload


def decode_all(data):
    header, payload = fmt.read_container(data)
    return [decode_tensor(entry, payload) for entry in header["tensors"]]


def with_blob(entry, payload, name, data):
    """Replaces blob ``name`` by raw ``data`` appended to the payload."""
    entry["blobs"][name] = {"offset": len(payload), "length": len(data), "raw_length": len(data), "codec": "raw", "shuffle": 1}
    return entry, payload + data


def freqs_blob(values):
    return np.array(values, "<u4").tobytes()


CRAFTED = [
    (lambda e, p: (e.update(codebook=0) or e, p), "codebook size"),
    (lambda e, p: (e.update(codebook=257) or e, p), "codebook size"),
    (lambda e, p: (e.update(codebook=5) or e, p), "raw length"),
    (lambda e, p: (e.update(codebook=True) or e, p), "codebook size"),
    (lambda e, p: (e.update(nnz=e["nnz"] - 1) or e, p), "nonzero count"),
    (lambda e, p: (e.update(shape=[10**5, 10**5]) or e, p), "far larger"),
    (lambda e, p: (e.update(shape=[40, 29]) or e, p), "left over|ended|does not decode|nonzero count|too long"),
    (lambda e, p: with_blob(e, p, "freqs", freqs_blob([2**24 - 7] + [1] * 6)), "sum"),
    (lambda e, p: with_blob(e, p, "freqs", freqs_blob([2**24 - 5, 0, 1, 1, 1, 1, 1])), "frequency is 0"),
    (lambda e, p: with_blob(e, p, "freqs", freqs_blob([2**32 - 1] * 7)), "sum"),
    (lambda e, p: with_blob(e, p, "freqs", freqs_blob([1] * 6)), "raw length"),
    (lambda e, p: with_blob(e, p, "values", np.zeros(6, "<f4").tobytes()), "codebook value is zero"),
    (lambda e, p: with_blob(e, p, "symbols", b"\x01\x02\x03"), "bad length"),
    (lambda e, p: with_blob(e, p, "symbols", bytes(4 * 2000)), "too long"),
    (lambda e, p: with_blob(e, p, "symbols", b"\x05\x00\x00\x00\x00\x00\x00\x00"), "does not decode"),
    (lambda e, p: with_blob(e, p, "symbols", b""), "nonzero count|left over"),
    (lambda e, p: (e["blobs"].pop("freqs") and e, p), "blobs"),
    (lambda e, p: (e.update(encoding="gaps") or e, p), "blobs"),
]


CRAFTED_ROWS = [
    (lambda e, p: (e.update(contexts=1) or e, p), "context count"),
    (lambda e, p: (e.update(contexts=17) or e, p), "context count"),
    (lambda e, p: (e.update(contexts=True) or e, p), "context count"),
    (lambda e, p: (e.pop("contexts") and e, p), "context count"),
    (lambda e, p: (e.update(contexts=e["contexts"] + 1) or e, p), "raw length|frequenc"),
    (lambda e, p: (e.update(codebook=5) or e, p), "raw length"),
    (lambda e, p: (e.update(nnz=e["nnz"] - 1) or e, p), "nonzero count|too long"),
    (lambda e, p: (e.update(shape=[1200]) or e, p), "rank 2"),
    (lambda e, p: (e.update(shape=[30, 40]) or e, p), "left over|ended|does not decode|nonzero count|too long"),
    (lambda e, p: with_blob(e, p, "freqs", bytes(4 * (3 * e["contexts"] + 6))), "frequency is 0"),
    (lambda e, p: with_blob(e, p, "freqs", freqs_blob([2**23] * (3 * e["contexts"] + 6))), "sum"),
    (lambda e, p: with_blob(e, p, "symbols", b"\x01\x02\x03"), "bad length"),
    (lambda e, p: with_blob(e, p, "symbols", b"\x05\x00\x00\x00\x00\x00\x00\x00"), "does not decode"),
    (lambda e, p: with_blob(e, p, "symbols", b""), "nonzero count|left over|ended"),
    (lambda e, p: (e.update(encoding="codebook") or e, p), "raw length|too long|decode|left over"),
]


@pytest.mark.parametrize(("kind", "crafted"), [("codebook", CRAFTED), ("codebook_rows", CRAFTED_ROWS)])
def test_crafted_codebook_entries_raise_one_error_type(kind, crafted):
    for change, message in crafted:
        entry, payload = change(*valid_file(kind))
        with pytest.raises(SparseFormatError, match=message):
            decode_all(container(entry, payload))


KINDS = pytest.mark.parametrize("kind", ["codebook", "codebook_rows"])


@KINDS
@given(words=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=60))
@settings(max_examples=150, deadline=None)
def test_fuzz_garbage_symbol_streams_raise_sparse_format_error_or_decode_to_the_shape(kind, words):
    entry, payload = with_blob(*valid_file(kind), "symbols", np.array(words, "<u4").tobytes())
    try:
        (array,) = decode_all(container(entry, payload))
    except SparseFormatError:
        return
    assert array.shape == (40, 30) and np.count_nonzero(array) == entry["nnz"]


@KINDS
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=4))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_truncated_or_bit_flipped_codebook_files_raise_sparse_format_error(kind, cut, flips):
    entry, payload = valid_file(kind)
    original = container(entry, payload)
    data = bytearray(original)
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    data = bytes(data[: cut % (len(data) + 1)])
    if data == original:
        return
    with pytest.raises(SparseFormatError):
        decode_all(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8,
)


@KINDS
@given(key=st.sampled_from(["dtype", "shape", "encoding", "nnz", "codebook", "contexts", "quant", "blobs", "values",
                            "freqs", "symbols"]),
       value=json_values)
@settings(max_examples=150, deadline=None)
def test_fuzz_crafted_codebook_fields_with_valid_checksums_raise_sparse_format_error(kind, key, value):
    entry, payload = valid_file(kind)
    nnz = entry["nnz"]
    if key in ("values", "freqs", "symbols"):
        entry["blobs"][key] = value
    else:
        entry[key] = value
    try:
        (array,) = decode_all(container(entry, payload))
    except SparseFormatError:
        return
    assert array.shape == (40, 30) and np.count_nonzero(array) == nnz


# ---------------------------------------------------------------- whole models, CLI


def clustered_model():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(8)])
    for seed, layer in enumerate(model.layers):
        layer.kernel.assign(clustered(tuple(layer.kernel.shape), sparsity=0.85, k=8, seed=seed))
    return model


def test_a_clustered_model_uses_the_codebook_in_a_version_2_file_and_loads_bit_exactly(tmp_path):
    model = clustered_model()
    path = keras_prune.export_sparse(model, tmp_path / "m.kpsparse")
    assert format_version(path) == 2
    assert encoding_summary(path).get("codebook") == 2
    loaded = keras_prune.load_sparse(path)
    for expected, actual in zip(model.get_weights(), loaded.get_weights()):
        assert actual.tobytes() == expected.tobytes()
    rows = entropy.entropy_report(path)
    assert [r["encoding"] for r in rows].count("codebook") == 2
    for row in rows:
        if row["encoding"] == "codebook":
            assert row["blob_bits"]["symbols"] <= 1.03 * row["bound_bits"] + 512
    # A model without clustered tensors stays version 1, readable by older keras-prune.
    plain = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64)])
    assert format_version(keras_prune.export_sparse(plain, tmp_path / "plain.kpsparse")) == 1


def test_a_version_1_file_may_not_use_the_codebook_encoding(tmp_path):
    path = keras_prune.export_sparse(clustered_model(), tmp_path / "m.kpsparse")
    header, payload = fmt.read_container(path.read_bytes())
    path.write_bytes(fmt.write_container(header, bytes(payload), version=1))
    with pytest.raises(SparseFormatError, match="version 1 file uses"):
        keras_prune.load_sparse(path)


def test_cli_export_and_size_show_the_codebook(tmp_path, capsys):
    source = tmp_path / "clustered.keras"
    clustered_model().save(source)
    out = tmp_path / "m.kpsparse"
    assert main(["export", str(source), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "codebook+rANS 2" in printed and "format version 2" in printed
    assert "max |output difference| on 8 random inputs: 0" in printed
    assert main(["size", str(source), "--json", "--no-litert"]) == 0
    sizes = json.loads(capsys.readouterr().out)
    assert sizes["sparse"] < sizes["sparse_no_codebook"] < sizes["keras_gzip"]
    assert sizes["keras_int8"] < sizes["keras"]
    assert main(["size", str(source), "--no-litert"]) == 0
    assert "no codebook" in capsys.readouterr().out
    assert read_header(out)["values"] == "float32"


def test_a_model_being_clustered_exports_as_the_plain_model_with_codebook_kernels(tmp_path):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(8, name="b")])
    keras_prune.magnitude_prune(model, sparsity=0.8)
    clustered = keras_prune.cluster_weights(model, 8, preserve_sparsity=True)
    path = keras_prune.export_sparse(clustered, tmp_path / "clustered.kpsparse")
    assert encoding_summary(path)["codebook"] == 2  # both kernels; no clustering state stored
    loaded = keras_prune.load_sparse(path)
    assert type(loaded) is keras.Sequential
    assert keras_prune.is_clustered(clustered)  # exporting left the model being clustered as it was
    for got, expected in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected))


# ---------------------------------------------------------------- row contexts


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_rows_of_different_densities_are_coded_with_row_contexts_below_the_order_0_bound(dtype):
    array = uneven((300, 100), k=8, dtype="float32")
    array = np.rint(array * 7).astype(dtype) if dtype == "int8" else array
    entry, decoded, stored = roundtrip(array)
    assert entry["encoding"] == "codebook_rows" and entry["contexts"] in entropy.CONTEXT_CHOICES
    assert decoded.tobytes() == array.tobytes()
    _, plain = encode_tensor(array, encodings=tuple(e for e in ENCODINGS if e != "codebook_rows"))
    assert stored < 0.9 * sum(len(data) for _, _, data in plain)  # the plain codebook
    symbols = dict((name, data) for name, _, data in encode_tensor(array)[1])["symbols"]
    assert 8 * len(symbols) < 0.9 * entropy.entropy_bound_bits(array)


def test_row_contexts_with_one_value_and_classes_no_row_falls_in():
    symbols = np.zeros(60, np.int32)
    symbols[[3, 4, 5, 30]] = 1  # one codebook value: no index table
    freqs, data = entropy.encode_rows(symbols, 6, 8, 1)  # 10 rows, mostly empty: empty classes
    assert len(entropy.split_tables(freqs.astype("<u4").tobytes(), 8, 1)) == 9
    assert entropy.decode_rows(data, freqs, 60, 6, 8, 1, nnz=4).tolist() == symbols.tolist()


def test_a_pruned_model_with_dead_inputs_uses_row_contexts_in_a_version_3_file(tmp_path, capsys):
    model = keras.Sequential([keras.Input((90,)), keras.layers.Dense(40, activation="relu"), keras.layers.Dense(8)])
    model.layers[0].kernel.assign(uneven((90, 40)))
    path = keras_prune.export_sparse(model, tmp_path / "m.kpsparse")
    assert format_version(path) == 3 and encoding_summary(path).get("codebook_rows") == 1
    for expected, actual in zip(model.get_weights(), keras_prune.load_sparse(path).get_weights()):
        assert actual.tobytes() == expected.tobytes()
    header, payload = fmt.read_container(path.read_bytes())
    older = tmp_path / "v2.kpsparse"
    older.write_bytes(fmt.write_container(header, bytes(payload), version=2))
    with pytest.raises(SparseFormatError, match="version 2 file uses the version 3 codebook_rows encoding"):
        keras_prune.load_sparse(older)
    source = tmp_path / "m.keras"
    model.save(source)
    assert main(["export", str(source), "-o", str(tmp_path / "cli.kpsparse")]) == 0
    assert "codebook+rANS (row contexts) 1" in capsys.readouterr().out
