"""benchmarks/bench_calibrated.py in --quick mode: every leg prunes and is measured.

Tiny models and data: the numbers mean nothing, but every one-shot leg (the char GPT-2 at 50%,
2:4 and 4:8 with magnitude, Wanda and SparseGPT; two CNNs at each sparsity with magnitude and
SparseGPT, layer and global) must end with a finite measurement at the sparsity it asked for,
the four speed runs (SparseGPT and Keras' GPTQ, each in its own process) must finish, and the
results section must land between its markers.
"""

import json
import math

import pytest

from helpers import DATA_DIR, load_benchmark

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.slow]

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    bench = load_benchmark("bench_calibrated")
    folder = tmp_path_factory.mktemp("bench_calibrated")
    docs = folder / "oneshot.md"
    docs.write_text("# A guide\n\nSome text.\n")
    results = bench.main(["--quick", "--data-dir", str(DATA_DIR), "--cache-dir", str(folder / "cache"),
                          "--output", str(folder / "results.json"), "--plot", str(folder / "plot.png"),
                          "--write-docs", str(docs)])
    return bench, results, folder, docs


def test_gpt2_legs_reach_their_pattern_with_a_finite_loss(quick_run):
    bench, results, _, _ = quick_run
    legs = results["gpt2"]["legs"]
    assert set(legs) == {f"{m} {p}" for m in bench.GPT2_METHODS for p in bench.PATTERNS}
    for name, leg in legs.items():
        assert "error" not in leg, f"{name} failed: {leg['error']}"
        assert math.isfinite(leg["val_loss"]) and 0 < leg["val_loss"] < 10, name
        assert leg["sparsity"] == pytest.approx(0.5, abs=0.01), name
        assert leg["embedding_sparsity"] < 0.01, name
        if leg["pattern"] != "50%":
            assert leg["m_by_n_groups"] == 1.0, name


def test_cnn_legs_reach_their_sparsity(quick_run):
    bench, results, _, _ = quick_run
    for name in bench.CNN_MODELS:
        res = results["cnn"][name]
        assert "error" not in res, res.get("error")
        assert 0 < res["dense_accuracy"] <= 1
        variants = len(bench.CNN_LEGS) + (name in bench.EXTRA_MODELS)
        assert len(res["legs"]) == variants * len(bench.QUICK["sparsities"])
        for leg in res["legs"]:
            assert "error" not in leg, f"{name} {leg}"
            assert 0 <= leg["accuracy"] <= 1
            assert leg["reported_sparsity"] == pytest.approx(leg["target"], abs=0.01)


def test_speed_runs_finish_in_their_own_processes(quick_run):
    bench, results, _, _ = quick_run
    for model_name in bench.SPEED_MODELS:
        entry = results["speed"][model_name]
        for method in bench.SPEED_METHODS:
            row = entry[method]
            assert "error" not in row, f"{model_name} {method}: {row['error']}"
            assert row["seconds"] > 0 and row["rss_peak"] >= row["rss_before"] > 0
        assert entry["gptq"]["quantized_layers"] > 0
        assert entry["ratio"] > 0


def test_tables_targets_plot_and_docs(quick_run):
    bench, results, folder, docs = quick_run
    table = results["table"]
    assert "FAILED" not in table and "not run" not in table
    assert len(results["targets"]) == 8
    for row in results["targets"]:
        assert row["verdict"] in ("PASS", "FAIL"), row  # measured, not "FAIL (not measured ...)"
        assert f"| {row['target']} | {row['measured']} | {row['verdict']} |" in table
    assert json.loads((folder / "results.json").read_text())["table"] == table
    assert (folder / "plot.png").stat().st_size > 0
    text = docs.read_text()
    assert text.startswith("# A guide\n\nSome text.\n")
    assert text.count(bench.BEGIN) == text.count(bench.END) == 1
    assert table in text
    bench.main(["--from-results", str(folder / "results.json"), "--write-docs", str(docs)])
    again = docs.read_text()
    assert again.count(bench.BEGIN) == 1 and again.startswith("# A guide\n\nSome text.\n")
