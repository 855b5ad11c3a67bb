"""``keras-prune prune --method wanda|sparsegpt``: calibration data from files, and one-line errors."""

import doctest
import json

import keras
import numpy as np
import pytest

import keras_prune.text_data
from keras_prune.masks import prune_count

from helpers import assert_one_line_failure, compile_classifier, dense_data, mlp, run_cli

pytestmark = pytest.mark.core

VOCABULARY = "abcdefgh ,.;!?\nxyz"  # 18 characters: token ids 0..17


def kernel(path, name):
    return keras.ops.convert_to_numpy(keras.saving.load_model(path).get_layer(name).kernel)


@pytest.fixture
def files(tmp_path):
    """A Dense classifier trained for a few steps, and a calibration .npz holding only x_train."""
    x, y = dense_data(n=128)
    model = compile_classifier(mlp())
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "calibration.npz", x_train=x[:64])
    return tmp_path


def listing(folder):
    return sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_calibrated_prune_reaches_the_exact_sparsity(capsys, files, method):
    model_file, out, report = files / "model.keras", files / "pruned.keras", files / "report.json"
    before = model_file.read_bytes()
    code, stdout, err = run_cli(capsys, "prune", model_file, "-o", out, "--method", method, "--sparsity", "0.5",
                                "--calibration", files / "calibration.npz", "--samples", "32", "--quiet",
                                "--report", report)
    assert code == 0, err
    for name in ("hidden", "logits"):
        pruned, dense = kernel(out, name), kernel(model_file, name)
        assert np.count_nonzero(pruned == 0) == prune_count(0.5, pruned.size), name
        if method == "wanda":  # Wanda only chooses; SparseGPT also updates the weights it keeps
            np.testing.assert_array_equal(pruned[pruned != 0], dense[pruned != 0])
    if method == "sparsegpt":
        kept = kernel(out, "hidden") != 0
        assert not np.allclose(kernel(out, "hidden")[kept], kernel(model_file, "hidden")[kept])
    assert "hidden" in stdout and "50.0%" in stdout and "total" in stdout
    assert json.loads(report.read_text())["settings"]["calibration"] == str(files / "calibration.npz")
    assert model_file.read_bytes() == before
    assert listing(files) == ["calibration.npz", "model.keras", "pruned.keras", "report.json"]  # no temporary files


def test_m_by_n_gives_exact_groups_along_the_input_axis(capsys, files):
    out, again = files / "nm.keras", files / "again.keras"
    calibration = ["--method", "sparsegpt", "--calibration", files / "calibration.npz", "--quiet"]
    code, stdout, err = run_cli(capsys, "prune", files / "model.keras", "-o", out, "--m-by-n", "2:4",
                                "--layers", "hidden", *calibration)
    assert code == 0 and "2:4" in stdout, err
    groups = (kernel(out, "hidden") == 0).T.reshape(-1, 4)  # (in, out) kernel: groups of 4 inputs per unit
    assert (groups.sum(axis=1) == 2).all()
    assert np.count_nonzero(kernel(out, "logits") == 0) == 0
    code, _, err = run_cli(capsys, "prune", files / "model.keras", "-o", again, "--m-by-n", "2:4",
                           "--pattern", "2:4", "--layers", "hidden", *calibration)  # the same pattern twice is fine
    assert code == 0, err
    np.testing.assert_array_equal(kernel(again, "hidden") == 0, kernel(out, "hidden") == 0)


def test_a_failed_run_writes_nothing_and_keeps_an_existing_output(capsys, files):
    out = files / "pruned.keras"
    np.savez(files / "wrong.npz", x_train=np.zeros((8, 5), "float32"))
    out.write_bytes(b"keep me")
    before = listing(files)
    code, _, err = run_cli(capsys, "prune", files / "model.keras", "-o", out, "--overwrite", "--method", "sparsegpt",
                           "--sparsity", "0.5", "--calibration", files / "wrong.npz")
    assert_one_line_failure(code, err, "x_train has shape (8, 5)", "(None, 16)")
    assert out.read_bytes() == b"keep me" and listing(files) == before


BAD_ARGUMENTS = [
    (["--method", "sparsegpt", "--sparsity", "0.5"], ["--method sparsegpt needs --calibration DATA"]),
    (["--method", "wanda", "--sparsity", "0.5"], ["--method wanda needs --calibration DATA"]),
    (["--method", "sparsegpt", "--threshold", "0.1", "--calibration", "{npz}"],
     ["--threshold is for --method magnitude only"]),
    (["--method", "sparsegpt", "--sparsity", "0.5", "--pattern", "block:1x4", "--calibration", "{npz}"],
     ["block:RxC is for --method magnitude only"]),
    (["--method", "sparsegpt", "--calibration", "{npz}"], ["Give --sparsity S (or --m-by-n M:N, or --max-drop D)"]),
    (["--method", "sparsegpt", "--m-by-n", "4:2", "--calibration", "{npz}"], ["--m-by-n must be M:N", "4:2"]),
    (["--method", "sparsegpt", "--m-by-n", "2-4", "--calibration", "{npz}"], ["--m-by-n must be M:N", "2-4"]),
    (["--method", "sparsegpt", "--m-by-n", "block:1x4", "--calibration", "{npz}"], ["--m-by-n must be M:N"]),
    (["--method", "sparsegpt", "--m-by-n", "2:4", "--pattern", "1:4", "--calibration", "{npz}"],
     ["another name for --pattern", "--pattern 1:4 --m-by-n 2:4"]),
    (["--method", "sparsegpt", "--m-by-n", "2:4", "--sparsity", "0.5", "--calibration", "{npz}"],
     ["--m-by-n M:N sets the sparsity", "drop --sparsity"]),
    (["--sparsity", "0.5", "--calibration", "{npz}"], ["--calibration would be unused", "--method magnitude"]),
    (["--sparsity", "0.5", "--samples", "8"], ["--samples would be unused"]),
    (["--method", "wanda", "--sparsity", "0.5", "--calibration", "{npz}", "--samples", "0"], ["--samples must be >= 1"]),
    (["--method", "wanda", "--sparsity", "0.5", "--calibration", "missing.npz"], ["does not exist", "missing.npz"]),
    (["--method", "wanda", "--sparsity", "0.5", "--calibration", "{npz}", "--vocabulary", "v.txt"],
     ["--vocabulary only serve a .txt --calibration file"]),
    (["--method", "wanda", "--sparsity", "0.5", "--calibration", "{txt}"], ["needs exactly one of --vocabulary"]),
    (["--method", "wanda", "--sparsity", "0.5", "--calibration", "{txt}", "--vocabulary", "v.txt", "--tokenizer", "t"],
     ["needs exactly one of --vocabulary"]),
    (["--method", "wanda", "--sparsity", "0.5", "--calibration", "{labels}"], ["lacks x_train", "y_train"]),
]


def test_bad_arguments_fail_in_one_line_and_write_nothing(capsys, files):
    out = files / "out.keras"
    np.savez(files / "labels.npz", y_train=np.zeros(4))
    (files / "text.txt").write_text("abc", encoding="utf-8")
    paths = {"npz": files / "calibration.npz", "txt": files / "text.txt", "labels": files / "labels.npz"}
    for args, phrases in BAD_ARGUMENTS:
        args = [a.format(**paths) for a in args]
        code, _, err = run_cli(capsys, "prune", files / "model.keras", "-o", out, *args)
        assert_one_line_failure(code, err, *phrases)
    assert not out.exists()


def test_help_shows_the_calibrated_examples(capsys):
    code, stdout, _ = run_cli(capsys, "prune", "--help")
    assert code == 0 and "--method sparsegpt" in stdout and "--m-by-n 2:4" in stdout and "--vocabulary" in stdout


def test_text_data_docstring_examples():
    result = doctest.testmod(keras_prune.text_data, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_text_windows_are_evenly_spread_and_shaped_for_the_model():
    from keras_prune.text_data import model_inputs, windows

    ids = np.arange(10, dtype="int32")
    assert windows(ids, 4, 100).shape == (7, 4)  # every start position once, no more
    np.testing.assert_array_equal(windows(ids, 10, 3), ids[None])
    with pytest.raises(ValueError, match="fewer than one window of 11"):
        windows(ids, 11, 1)
    plain = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(10, 2)])
    assert isinstance(model_inputs(windows(ids, 4, 2), plain), np.ndarray)


# -- language models: text calibration on a tiny KerasHub GPT-2 --------------------------------


def gpt2_lm(vocabulary_size):
    """A GPT2CausalLM on a one-block GPT2Backbone (hidden 16), built from its constructor."""
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32, dropout=0.0,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


@pytest.fixture
def lm_files(tmp_path):
    pytest.importorskip("keras_hub")
    gpt2_lm(len(VOCABULARY)).save(tmp_path / "lm.keras")
    rng = np.random.default_rng(0)
    (tmp_path / "text.txt").write_text("".join(rng.choice(list(VOCABULARY), size=3000)), encoding="utf-8")
    (tmp_path / "chars.txt").write_text(VOCABULARY, encoding="utf-8")
    (tmp_path / "chars.json").write_text(json.dumps(list(VOCABULARY)), encoding="utf-8")
    return tmp_path


def block_kernels(path):
    """``{path: kernel}`` of every Dense/EinsumDense kernel in the model's transformer block."""
    model = keras.saving.load_model(path)
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights
            if "transformer_layer_0" in v.path and v.path.endswith("kernel")}


@pytest.mark.tensorflow_only
def test_text_calibration_with_a_character_vocabulary_prunes_the_transformer_layers(capsys, lm_files):
    out = lm_files / "pruned.keras"
    code, stdout, err = run_cli(capsys, "prune", lm_files / "lm.keras", "-o", out, "--method", "sparsegpt",
                                "--sparsity", "0.5", "--calibration", lm_files / "text.txt",
                                "--vocabulary", lm_files / "chars.txt", "--layers", "transformer_layer",
                                "--samples", "16", "--quiet")
    assert code == 0, err
    kernels = block_kernels(out)
    assert len(kernels) >= 6  # query, key, value, attention output, and the two FFN kernels
    for path, values in kernels.items():
        assert np.count_nonzero(values == 0) == prune_count(0.5, values.size), path
    embedding = keras.saving.load_model(out).backbone.token_embedding
    assert np.count_nonzero(keras.ops.convert_to_numpy(embedding.embeddings) == 0) == 0  # not selected
    assert "transformer_layer_0" in stdout
    # The JSON vocabulary, an explicit window length and 2:4 with Wanda work the same way.
    out = lm_files / "nm.keras"
    code, _, err = run_cli(capsys, "prune", lm_files / "lm.keras", "-o", out, "--method", "wanda", "--m-by-n", "2:4",
                           "--calibration", lm_files / "text.txt", "--vocabulary", lm_files / "chars.json",
                           "--sequence-length", "8", "--layers", "transformer_layer", "--quiet")
    assert code == 0, err
    for path, values in block_kernels(out).items():
        assert np.count_nonzero(values == 0) * 2 == values.size, path


@pytest.mark.tensorflow_only
def test_text_calibration_with_a_kerashub_tokenizer_preset(capsys, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "c": 3, "Ġ": 4, "ab": 5, "Ġa": 6}
    model = gpt2_lm(len(vocabulary))
    model.backbone.save_to_preset(tmp_path / "preset")
    keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["a b", "Ġ a"]).save_to_preset(tmp_path / "preset")
    model.save(tmp_path / "lm.keras")
    (tmp_path / "text.txt").write_text("ab cab a bc " * 50, encoding="utf-8")
    out = tmp_path / "pruned.keras"
    code, _, err = run_cli(capsys, "prune", tmp_path / "lm.keras", "-o", out, "--method", "wanda", "--sparsity", "0.5",
                           "--calibration", tmp_path / "text.txt", "--tokenizer", tmp_path / "preset",
                           "--layers", "transformer_layer", "--samples", "8", "--quiet")
    assert code == 0, err
    assert all(np.mean(values == 0) == 0.5 for values in block_kernels(out).values())


@pytest.mark.tensorflow_only
def test_text_calibration_errors(capsys, lm_files):
    out = lm_files / "out.keras"
    (lm_files / "odd.txt").write_text("abc ÄÖ Z abc Z\n", encoding="utf-8")
    (lm_files / "short.txt").write_text("abc", encoding="utf-8")
    (lm_files / "twice.txt").write_text("abca", encoding="utf-8")
    cases = [
        (["odd.txt", "--vocabulary", "chars.txt"], ["Text", "odd.txt", "3 distinct character(s) missing", "'Z'", "'Ä'"]),
        (["short.txt", "--vocabulary", "chars.txt"], ["has 3 tokens, fewer than one window of 32"]),
        (["text.txt", "--vocabulary", "twice.txt"], ["lists 'a' more than once"]),
        (["text.txt", "--vocabulary", "missing.txt"], ["Cannot read vocabulary", "missing.txt"]),
        (["text.txt", "--vocabulary", "chars.txt", "--sequence-length", "64"], ["at most 32 tokens, not 64"]),
        (["text.txt", "--tokenizer", "."], ["Cannot load a KerasHub tokenizer"]),
    ]
    for args, phrases in cases:
        argv = ["--calibration", lm_files / args[0], args[1], lm_files / args[2], *args[3:]]
        code, _, err = run_cli(capsys, "prune", lm_files / "lm.keras", "-o", out, "--method", "sparsegpt",
                               "--sparsity", "0.5", *argv)
        assert_one_line_failure(code, err, *phrases)
    assert not out.exists()
