"""`finetune` and `shrink` lose nothing and write nothing wrong.

Checkpoint folders: only ones keras-prune created are written, and only its own files are
deleted, once the run has succeeded. Training: a NaN loss or NaN weights stop the run before
anything is written; bad data and flags are refused before any work. Shrink: models with
nothing to shrink, several inputs and outputs, or pruning wrappers.
"""

import json

import keras
import numpy as np
import pytest

import keras_prune as kp
from keras_prune.cli._checkpoint import MARKER, Checkpoint
from keras_prune.cli._training import NonFiniteTraining, finite_guard
from keras_prune.io import error_summary

from helpers import run_cli

pytestmark = pytest.mark.core


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    np.savez(tmp_path / "data.npz", x_train=x[:64], y_train=y[:64], x_val=x[64:], y_val=y[64:])
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(2, name="logits")])
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.save(tmp_path / "model.keras")
    return tmp_path


def finetune(files, *extra, out="out.keras"):
    return ["finetune", files / "model.keras", "--data", files / "data.npz", "-o", files / out,
            "--sparsity", "0.5", "--batch-size", "16", "--quiet", *extra]


def interrupt_after(monkeypatch, epochs: int, then=None):
    """Makes the checkpoint raise KeyboardInterrupt once ``epochs`` are saved (or call ``then``)."""
    real_save = Checkpoint.save

    def save(self, model, epochs_done):
        real_save(self, model, epochs_done)
        if epochs_done == epochs:
            if then is None:
                raise KeyboardInterrupt
            then(model)

    monkeypatch.setattr(Checkpoint, "save", save)
    return real_save


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# -- checkpoint folders ------------------------------------------------------------------------


def test_an_existing_folder_that_is_not_a_checkpoint_is_refused_and_kept(files, capsys, monkeypatch):
    (files / "results").mkdir()
    (files / "results" / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1", "--checkpoint-dir", files / "results"))
    assert code == 1 and "'" + str(files / "results") + "' already exists" in err and "--checkpoint-dir" in err
    assert listing(files / "results") == ["notes.txt"] and not (files / "out.keras").exists()

    monkeypatch.chdir(files)  # the working folder itself
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1", "--checkpoint-dir", ".", out="../elsewhere.keras"))
    assert code == 1 and "checkpoint folder '.'" in err.lower()
    assert {"model.keras", "data.npz", "results"} <= set(listing(files))


def test_outputs_and_inputs_may_not_overlap_the_checkpoint_folder(files, capsys):
    (files / "ck").mkdir()
    argv = finetune(files, "--epochs", "1", "--checkpoint-dir", files / "ck", out="ck/out.keras")
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "is inside the checkpoint folder" in err
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1", "--checkpoint-dir", files / "data.npz"))
    assert code == 1 and "overlaps the input" in err
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1", "--checkpoint-dir", files))
    assert code == 1 and "is inside the checkpoint folder" in err
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1", "--checkpoint-dir", files / "no" / "ck"))
    assert code == 1 and "does not exist; create it first" in err
    assert listing(files) == ["ck", "data.npz", "model.keras"] and listing(files / "ck") == []


def test_a_marked_checkpoint_with_foreign_files_is_refused(files, capsys, monkeypatch):
    argv = finetune(files, "--epochs", "2")
    interrupt_after(monkeypatch, 1)
    assert run_cli(capsys, *argv)[0] == 130
    folder = files / "out.keras.ckpt"
    assert listing(folder) == [MARKER, "epoch-1.keras", "state.json"]
    (folder / "diary.txt").write_text("mine")
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "holds files keras-prune did not write (diary.txt)" in err
    assert listing(folder) == [MARKER, "diary.txt", "epoch-1.keras", "state.json"]


def test_success_removes_only_its_own_files_and_its_own_folder(files, capsys, monkeypatch):
    (files / "runs").mkdir()
    folder = files / "runs" / "ck"
    argv = finetune(files, "--epochs", "2", "--checkpoint-dir", folder)
    real_save = interrupt_after(monkeypatch, 1)
    assert run_cli(capsys, *argv)[0] == 130
    monkeypatch.setattr(Checkpoint, "save", real_save)
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "Resuming from epoch 1/2" in err
    assert not folder.exists() and (files / "runs").is_dir() and (files / "out.keras").is_file()


def test_restart_deletes_nothing_until_the_run_succeeds(files, capsys, monkeypatch):
    argv = finetune(files, "--epochs", "3")
    folder = files / "out.keras.ckpt"
    real_save = interrupt_after(monkeypatch, 2)
    assert run_cli(capsys, *argv)[0] == 130
    old_state = (folder / "state.json").read_text()

    code, _, err = run_cli(capsys, *argv, "--restart", "--loss", "no_such_loss")  # fails before training
    assert code == 1 and "no_such_loss" in err
    assert listing(folder) == [MARKER, "epoch-2.keras", "state.json"]
    assert (folder / "state.json").read_text() == old_state

    monkeypatch.setattr(Checkpoint, "save", real_save)
    interrupt_after(monkeypatch, 1)  # the new run replaces the old checkpoint epoch by epoch
    assert run_cli(capsys, *argv, "--restart")[0] == 130
    assert listing(folder) == [MARKER, "epoch-1.keras", "state.json"]
    assert json.loads((folder / "state.json").read_text())["epochs_done"] == 1

    monkeypatch.setattr(Checkpoint, "save", real_save)
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "Resuming from epoch 1/3" in err and not folder.exists()


def test_a_damaged_checkpoint_names_the_cause_and_the_fix(files, capsys, monkeypatch):
    argv = finetune(files, "--epochs", "2")
    interrupt_after(monkeypatch, 1)
    assert run_cli(capsys, *argv)[0] == 130
    folder = files / "out.keras.ckpt"
    (folder / "epoch-1.keras").write_bytes(b"not a zip")
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "cannot be loaded" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert (folder / "epoch-1.keras").exists() and not (files / "out.keras").exists()


def test_a_checkpoint_is_not_resumed_on_changed_data(files, capsys, monkeypatch):
    argv = finetune(files, "--epochs", "2")
    interrupt_after(monkeypatch, 1)
    assert run_cli(capsys, *argv)[0] == 130
    with np.load(files / "data.npz") as arrays:
        changed = {key: arrays[key] for key in arrays.files}
    changed["y_train"] = 1 - changed["y_train"]
    np.savez(files / "data.npz", **changed)  # same path, other labels
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "different run" in err and "--restart" in err


# -- training that goes wrong ------------------------------------------------------------------


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(files, capsys, monkeypatch):
    def poison(model):  # after epoch 1 is safely checkpointed, a weight goes bad
        bias = model.layer.get_layer("logits").bias
        bias.assign(np.full(bias.shape, np.nan, "float32"))

    real_save = interrupt_after(monkeypatch, 1, then=poison)
    argv = finetune(files, "--epochs", "3")
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "the loss became nan at epoch 2" in err and len(err.strip().splitlines()) == 1
    assert "Checkpoint" in err and "keeps epoch 1/3" in err and "--learning-rate" in err
    folder = files / "out.keras.ckpt"
    assert not (files / "out.keras").exists()
    assert listing(folder) == [MARKER, "epoch-1.keras", "state.json"]
    saved = keras.saving.load_model(folder / "epoch-1.keras")
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in saved.weights)

    monkeypatch.setattr(Checkpoint, "save", real_save)  # the good checkpoint resumes
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "Resuming from epoch 1/3" in err


def test_a_diverging_learning_rate_writes_nothing(files, capsys):
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "2", "--optimizer", "sgd", "--learning-rate", "1e30"))
    assert code == 1 and "Training diverged" in err and "Nothing was written" in err
    assert listing(files) == ["data.npz", "model.keras"]


def test_non_finite_weights_stop_before_the_checkpoint():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    guard = finite_guard(keras)
    guard.set_model(model)
    guard.on_epoch_end(0, {"loss": 0.5})  # all finite: nothing happens
    model.get_layer("d").bias.assign([np.inf])
    with pytest.raises(NonFiniteTraining, match=r"weights \S*d/bias became NaN or infinite in epoch 1"):
        guard.on_epoch_end(0, {"loss": 0.5})
    with pytest.raises(NonFiniteTraining, match="loss became inf at epoch 1, step 3"):
        guard.on_train_batch_end(2, {"loss": float("inf")})


@pytest.mark.parametrize(("extra", "phrase"), [
    (["--learning-rate", "0"], "--learning-rate must be a finite number > 0"),
    (["--learning-rate", "-0.1"], "--learning-rate must be a finite number > 0"),
    (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0"),
    (["--learning-rate", "inf"], "--learning-rate must be a finite number > 0"),
    (["--epochs", "1000000"], "--epochs must be in [0, 10000]"),
    (["--validation-split", "nan"], "--validation-split must be in [0, 1)"),
    (["--image-scale", "inf"], "--image-scale must be a finite number > 0"),
])
def test_flags_that_cannot_work_are_refused_before_any_work(files, capsys, extra, phrase):
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1", *extra))
    assert code == 1 and phrase in err and len(err.strip().splitlines()) == 1, err
    assert listing(files) == ["data.npz", "model.keras"]


@pytest.mark.parametrize(("y", "phrase"), [
    (np.where(np.arange(64) == 5, np.nan, 0.0), "y_train must hold finite numbers"),
    (np.where(np.arange(64) == 5, np.inf, 0.0), "y_train must hold finite numbers"),
    (np.array(["a"] * 64), "y_train must hold finite numbers"),
])
def test_non_finite_labels_are_refused(files, capsys, y, phrase):
    np.savez(files / "data.npz", x_train=np.zeros((64, 8), "float32"), y_train=y)
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1"))
    assert code == 1 and phrase in err, err
    assert not (files / "out.keras").exists()


def test_labels_of_shape_n_by_1_train(files, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 8)).astype("float32")
    np.savez(files / "data.npz", x_train=x, y_train=(x[:, :1] > 0).astype("int64"))
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1"))
    assert code == 0, err
    np.savez(files / "data.npz", x_train=x, y_train=np.full((48, 1), 2))
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1", out="other.keras"))
    assert code == 1 and "class indices 2..2" in err


def test_a_batch_larger_than_the_data_warns(files, capsys):
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1", "--batch-size", "1000"))
    assert code == 0 and "warning: --batch-size 1000 exceeds the 64 training samples" in err
    assert len([line for line in err.splitlines() if "warning" in line]) == 1


def test_nothing_to_prune_is_an_error_before_training(files, capsys, monkeypatch):
    fits = []
    monkeypatch.setattr(keras.Model, "fit", lambda *a, **k: fits.append(1))
    model = keras.Sequential([keras.Input((8,)), keras.layers.BatchNormalization(name="bn")])
    model.compile("adam", "mse")
    model.save(files / "bn.keras")
    np.savez(files / "reg.npz", x_train=np.ones((16, 8), "float32"), y_train=np.ones((16, 8), "float32"))
    code, _, err = run_cli(capsys, "finetune", files / "bn.keras", "--data", files / "reg.npz", "-o", files / "o.keras",
                       "--sparsity", "0.5")
    assert code == 1 and "nothing to prune" in err and "BatchNormalization" in err
    code, _, err = run_cli(capsys, *finetune(files, "--exclude", "."))
    assert code == 1 and "--exclude" in err
    assert fits == [] and not (files / "o.keras").exists() and not (files / "out.keras").exists()


def test_errors_keep_their_cause(files, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("Exception encountered when calling Sequential.call().\n\n\x1b[1mThe real cause\x1b[0m")

    monkeypatch.setattr(keras.Model, "fit", fail)
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "1"))
    assert code == 1 and "calling Sequential.call(). The real cause" in err and len(err.strip().splitlines()) == 1
    assert error_summary(ValueError("")) == "ValueError"


def test_any_training_failure_keeps_the_resume_hint(files, capsys, monkeypatch):
    def fail(model):  # such as a TensorFlow op failing in epoch 2, after epoch 1 is checkpointed
        raise RuntimeError("Graph execution error:\n\nDetected at node foo\n[[{{node foo}}]] [Op:__inference]")

    interrupt_after(monkeypatch, 1, then=fail)
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "2"))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "Training failed: RuntimeError: Graph execution error: Detected at node foo" in err
    assert "keeps epoch 1/2; the same command resumes from it" in err and not (files / "out.keras").exists()


# -- shrink ------------------------------------------------------------------------------------


def test_shrink_refuses_a_model_with_nothing_to_shrink(files, capsys):
    keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()]).save(files / "bn.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="out")]).save(files / "one.keras")
    for name, phrase in (("bn.keras", "no Dense, Conv or attention layers"), ("one.keras", "out: kept 3/3")):
        code, _, err = run_cli(capsys, "shrink", files / name, "-o", files / "small.keras", "--ratio", "0.5")
        assert code == 1 and "has no channels shrink can remove" in err and phrase in err, err
        assert len(err.strip().splitlines()) == 1 and not (files / "small.keras").exists()


def two_in_two_out():
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(keras.layers.Concatenate()([a, b]))
    outputs = {"class": keras.layers.Dense(2, name="class")(hidden),
               "value": keras.layers.Dense(1, name="value")(hidden)}
    return keras.Model({"a": a, "b": b}, outputs)


def test_shrink_a_two_input_two_output_model(files, capsys):
    two_in_two_out().save(files / "two.keras")
    out, report = files / "small.keras", files / "report.json"
    code, _, err = run_cli(capsys, "shrink", files / "two.keras", "-o", out, "--ratio", "0.5", "--report", report)
    assert code == 0, err
    assert keras.saving.load_model(out).get_layer("hidden").units == 8
    rows = json.loads(report.read_text())["rows"]
    assert rows["after"]["latency_ms_batch1"] > 0 and rows["after"]["flops"] < rows["before"]["flops"]
    code, _, err = run_cli(capsys, "shrink", files / "two.keras", "-o", files / "s2.keras", "--ratio", "0.5",
                       "--data", files / "data.npz", "--epochs", "1", "--loss", "mse")
    assert code == 1 and "2 inputs and 2 outputs" in err and not (files / "s2.keras").exists()
    assert not (files / "s2.keras.ckpt").exists()


def test_shrink_strips_a_pruning_checkpoint_first(files, capsys):
    model = keras.saving.load_model(files / "model.keras")
    wrapped = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.5, 0))
    wrapped.save(files / "wrapped.keras")
    out, report = files / "small.keras", files / "report.json"
    code, _, err = run_cli(capsys, "shrink", files / "wrapped.keras", "-o", out, "--ratio", "0.5", "--report", report)
    assert code == 0, err
    assert "note:" in err and "pruning masks" in err and "keras-prune strip" in err
    small = keras.saving.load_model(out)
    assert [type(layer).__name__ for layer in small.layers] == ["Dense", "Dense"]
    assert small.get_layer("hidden").units == 8
    rows = json.loads(report.read_text())["rows"]
    assert (rows["before"]["flops"], rows["after"]["flops"]) == (2 * (8 * 16 + 16 * 2), 2 * (8 * 8 + 8 * 2))


def test_shrink_checkpoint_rules_match_finetune(files, capsys):
    rng = np.random.default_rng(0)
    np.savez(files / "data.npz", x_train=rng.normal(size=(32, 8)).astype("float32"), y_train=rng.integers(0, 2, 32))
    (files / "results").mkdir()
    (files / "results" / "notes.txt").write_text("mine")
    base = ["shrink", files / "model.keras", "-o", files / "small.keras", "--ratio", "0.5", "--data",
            files / "data.npz", "--epochs", "1", "--quiet"]
    code, _, err = run_cli(capsys, *base, "--checkpoint-dir", files / "results")
    assert code == 1 and "already exists" in err and listing(files / "results") == ["notes.txt"]
    code, _, err = run_cli(capsys, *base, "--checkpoint-dir", files / "ck")
    assert code == 0, err
    assert not (files / "ck").exists() and (files / "small.keras").is_file()


# -- --keep-optimizer --------------------------------------------------------------------------


def optimizer_state(model):
    return [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]


def test_finetune_keep_optimizer_writes_the_trained_state(files, capsys, monkeypatch):
    trained = []
    interrupt_after(monkeypatch, 2, then=lambda model: trained.extend(optimizer_state(model)))
    code, _, err = run_cli(capsys, *finetune(files, "--epochs", "2", "--keep-optimizer"))
    assert code == 0 and "note:" not in err, err
    saved = optimizer_state(keras.saving.load_model(files / "out.keras"))
    assert int(saved[0]) == 2 * 4  # the step counter: 2 epochs of 64 / 16 batches
    assert len(saved) == len(trained) and all(np.array_equal(a, b) for a, b in zip(saved, trained))
    assert any(np.any(state != 0) for state in saved[2:])  # moments, not a fresh optimizer's zeros


def test_shrink_keep_optimizer_keeps_the_fine_tuned_state_or_says_it_cannot(files, capsys):
    base = ["shrink", files / "model.keras", "--ratio", "0.5", "--keep-optimizer", "--quiet"]
    tune = ["--data", files / "data.npz", "--epochs", "1", "--batch-size", "16"]
    code, _, err = run_cli(capsys, *base, "-o", files / "tuned.keras", *tune)
    assert code == 0 and "note:" not in err, err
    assert int(optimizer_state(keras.saving.load_model(files / "tuned.keras"))[0]) == 4
    code, _, err = run_cli(capsys, *base, "-o", files / "folded.keras", *tune, "--fold-batchnorm")
    assert code == 0 and "note: --keep-optimizer: --fold-batchnorm rebuilt" in err and "starts fresh" in err
    code, _, err = run_cli(capsys, *base, "-o", files / "plain.keras")
    assert code == 0 and "note: --keep-optimizer: nothing was fine-tuned (--epochs 0)" in err
