"""benchmarks/bench_allocation.py in --quick mode: every leg prunes to its overall sparsity.

Tiny models, data and sweeps: the numbers mean nothing, but the sensitivity analysis of each
model must finish, every allocation leg (three models, five rules, magnitude and SparseGPT, two
overall sparsities) must end with a finite metric at exactly the overall sparsity it asked for,
the budget searches must keep a consistent history, and the results section must land between
its markers.
"""

import json
import math
from pathlib import Path

import pytest

from helpers import DATA_DIR, load_benchmark

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.slow]

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    bench = load_benchmark("bench_allocation")
    folder = tmp_path_factory.mktemp("bench_allocation")
    docs = folder / "allocation.md"
    docs.write_text("# A guide\n\nSome text.\n")
    results = bench.main(["--quick", "--data-dir", str(DATA_DIR), "--cache-dir", str(folder / "cache"),
                          "--output", str(folder / "results.json"), "--image-dir", str(folder / "img"),
                          "--write-docs", str(docs)])
    return bench, results, folder, docs


def test_sensitivity_analysis_of_every_model(quick_run):
    bench, results, folder, _ = quick_run
    for name in bench.MODELS:
        res = results["models"][name]
        assert "error" not in res, res.get("error")
        for method in bench.QUICK["sensitivity_methods"][name]:
            entry = res["sensitivity"][method]
            assert "error" not in entry, f"{name} {method}: {entry['error']}"
            assert entry["evaluations"] == 1 + entry["weights"] * len(bench.QUICK["sweep"])
            assert entry["seconds"] > 0
            assert Path(entry["plot"]).stat().st_size > 0
            assert all(math.isfinite(v) for curve in entry["result"]["curves"].values() for v in curve)


def test_every_leg_reaches_its_overall_sparsity_with_a_finite_metric(quick_run):
    bench, results, _, _ = quick_run
    for name in bench.MODELS:
        legs = results["models"][name]["legs"]
        assert len(legs) == len(bench.QUICK["targets"]) * len(bench.METHODS) * len(bench.RULES)
        for leg in legs:
            where = f"{name} {leg['method']} {leg['rule']} {leg['target']}"
            assert "error" not in leg, f"{where}: {leg['error']}"
            assert math.isfinite(leg["metric"]), where
            assert leg["allocated"] == pytest.approx(leg["target"], abs=0.005), where
            assert leg["sparsity"] == pytest.approx(leg["target"], abs=0.005), where


def test_budget_search_history_is_consistent(quick_run):
    bench, results, _, _ = quick_run
    settings = results["settings"]
    budget = results["models"][bench.BUDGET_MODEL]["budget"]
    assert len(budget) == len(bench.METHODS) * len(bench.RULES)
    for row in budget:
        where = f"{row['method']} {row['rule']}"
        assert "error" not in row, f"{where}: {row['error']}"
        history = row["history"]
        assert history, where
        for probe in history:
            assert 0.0 <= probe["sparsity"] <= settings["budget_high"] + 0.005, where
            assert math.isfinite(probe["metric"]), where
            assert probe["within"] == (probe["drop"] <= settings["max_drop"]), where
        within = [probe["sparsity"] for probe in history if probe["within"]]
        assert row["reached"] == pytest.approx(max(within, default=0.0), abs=0.005), where
        assert 0.0 <= row["held_out"] <= 1.0, where


def test_tables_targets_figures_and_docs(quick_run):
    bench, results, folder, docs = quick_run
    table = results["table"]
    assert "FAILED" not in table and "not run" not in table
    assert len(results["targets"]) == len(bench.MODELS) + len(bench.METHODS)
    for row in results["targets"]:
        assert row["verdict"] in ("PASS", "FAIL"), row  # measured, not "FAIL (not measured ...)"
        assert f"| {row['target']} | {row['measured']} | {row['verdict']} |" in table
    assert json.loads((folder / "results.json").read_text())["table"] == table
    assert (folder / "img" / "allocation_rules.png").stat().st_size > 0
    text = docs.read_text()
    assert text.startswith("# A guide\n\nSome text.\n")
    assert text.count(bench.BEGIN) == text.count(bench.END) == 1
    assert text.index(bench.BEGIN) < text.index(table) < text.index(bench.END)
    bench.main(["--from-results", str(folder / "results.json"), "--write-docs", str(docs)])
    again = docs.read_text()
    assert again.count(bench.BEGIN) == 1 and again.startswith("# A guide\n\nSome text.\n")
