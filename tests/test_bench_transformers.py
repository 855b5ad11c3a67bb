"""benchmarks/bench_transformers.py in --quick mode: every leg trains and is measured.

A tiny GPT-2 on the real Tiny Shakespeare text, a few steps per leg: the numbers mean nothing,
but every fine-tuning leg (dense, unstructured 50/75/90%, 2:4, structured) must end with a
finite validation loss and the sparsity it was asked for, the latency comparison must run, and
the printed table must hold every row.
"""

import json
import math

import pytest

from helpers import DATA_DIR, load_benchmark

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.slow]

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    bench = load_benchmark("bench_transformers", needs=("tinyshakespeare/input.txt",))
    folder = tmp_path_factory.mktemp("bench_transformers")
    docs = folder / "transformers.md"
    results = bench.main(["--quick", "--data-dir", str(DATA_DIR), "--cache-dir", str(folder / "cache"),
                          "--output", str(folder / "results.json"), "--write-docs", str(docs)])
    return bench, results, folder, docs


def test_every_leg_ends_with_a_finite_loss(quick_run):
    bench, results, _, _ = quick_run
    assert set(results["legs"]) == set(bench.LEGS)
    for name, leg in results["legs"].items():
        assert "error" not in leg, f"leg {name} failed: {leg['error']}"
        assert math.isfinite(leg["val_loss"]), name
        assert 0 < leg["val_loss"] < 10, name  # nats/char over a 65-character vocabulary
    assert math.isfinite(results["pretrain"]["val_loss"])
    assert math.isfinite(results["legs"]["structured_50"]["val_loss_before_finetune"])


def test_magnitude_legs_reach_their_sparsity_and_leave_the_embeddings_dense(quick_run):
    _, results, _, _ = quick_run
    legs = results["legs"]
    assert legs["dense"]["sparsity"] == 0.0
    for name, target in (("unstructured_50", 0.5), ("unstructured_75", 0.75), ("unstructured_90", 0.9),
                         ("2:4", 0.5)):
        assert legs[name]["sparsity"] == pytest.approx(target, abs=0.01), name
        assert legs[name]["embedding_sparsity"] < 0.01, name
        assert legs[name]["params"] == legs["dense"]["params"], name
        assert legs[name]["nonzero_params"] < legs["dense"]["nonzero_params"], name


def test_structured_leg_is_smaller(quick_run):
    _, results, _, _ = quick_run
    assert results["legs"]["structured_50"]["params"] < results["legs"]["dense"]["params"]


def test_table_has_every_row_and_the_latency_and_targets(quick_run):
    bench, results, folder, docs = quick_run
    table = results["table"]
    for label in bench.LABELS.values():
        assert f"| {label} |" in table, label
    assert "FAILED" not in table and "not run" not in table
    for runtime in bench.RUNTIMES.values():
        for batch in bench.LATENCY_BATCHES:
            assert f"| {runtime} | {batch} |" in table
    assert set(results["latency"]) == {f"{r}_batch{b}" for r in bench.RUNTIMES for b in bench.LATENCY_BATCHES}
    for row in results["latency"].values():
        assert row["dense_ms"] > 0 and row["shrunk_ms"] > 0
    assert len(results["targets"]) == len(bench.TARGETS)
    for row in results["targets"]:
        assert row["verdict"] in ("PASS", "FAIL"), row  # measured, not "FAIL (not measured ...)"
        assert f"| {row['target']} | {row['measured']} | {row['verdict']} |" in table
    saved = json.loads((folder / "results.json").read_text())
    assert saved["table"] == table
    assert table in docs.read_text()


def test_second_run_reuses_the_cached_pretrained_model(quick_run):
    bench, results, folder, _ = quick_run
    assert results["pretrain"]["cached"] is False
    assert len(list((folder / "cache").glob("*.weights.h5"))) == 1
    args = bench.parse_args(["--quick", "--data-dir", str(DATA_DIR), "--cache-dir", str(folder / "cache")])
    settings = bench.settings_for(args)
    data = bench.load_text(args.data_dir)
    data["val_xy"] = bench.val_windows(data["val"], settings["seq_len"], settings["val_windows"])
    model, info = bench.pretrained(data, settings, args)
    assert info["cached"] is True
    assert bench.val_loss(model, *data["val_xy"]) == pytest.approx(results["pretrain"]["val_loss"], abs=1e-5)
