"""The tfmot comparison's pure helpers: aggregation, verdicts, loss onset, page, data order.

No training and no tfmot here: the cells are small hand-made dicts.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "tfmot_compare"))

import page  # noqa: E402

import shared  # noqa: E402

pytestmark = pytest.mark.core


def cell(tool, sparsity, seed, accuracy, seconds=1.0, cpu=2.0, model="lenet_300_100"):
    return {"tool": tool, "model": model, "seed": seed, "sparsity": sparsity, "accuracy": accuracy,
            "kernel_sparsity": sparsity, "epoch_seconds": [9.0, seconds, seconds],
            "epoch_cpu_seconds": [9.0, cpu, cpu], "keras_bytes": 1000, "keras_gzip_bytes": 900,
            "h5_bytes": 1100, "h5_gzip_bytes": 950, "sparse_bytes": 100 + seed,
            "negative_zeros": 1234 if tool == "tfmot" else 0,
            "versions": {"tfmot": "0.8.0"} if tool == "tfmot" else {"keras": "3.x"},
            "machine": {"cpu": "cpu", "cores": 2, "system": "Linux", "python": "3.11", "load_average_1min": 1.0 + seed}}


def fake_cells():
    cells = []
    for seed in (0, 1):
        cells += [cell("keras_prune", 0.0, seed, 0.980), cell("tfmot", 0.0, seed, 0.980, seconds=0.8, cpu=1.6)]
        # 0.5: within the spread (a tie); 0.9: keras-prune clearly better; 0.95: clearly worse.
        cells += [cell("keras_prune", 0.5, seed, 0.979 + 0.002 * seed, seconds=1.1, cpu=2.2),
                  cell("tfmot", 0.5, seed, 0.980 + 0.002 * seed, seconds=1.0, cpu=2.0)]
        cells += [cell("keras_prune", 0.9, seed, 0.975, seconds=1.1, cpu=2.2),
                  cell("tfmot", 0.9, seed, 0.960, seconds=1.0, cpu=2.4)]
        cells += [cell("keras_prune", 0.95, seed, 0.940, cpu=2.4), cell("tfmot", 0.95, seed, 0.950, cpu=1.6)]
    dense = [{"model": "lenet_300_100", "seed": s, "accuracy": 0.981, "weights": 266610} for s in (0, 1)]
    return cells, dense


def rendered_summary(cells, dense):
    """The summary as `write_all` completes it, without plots or files."""
    summary = page.summarize(cells, dense)
    budget = {"epochs": 3, "epoch_samples": 100, "batch_size": 8, "learning_rate": 1e-3, "frequency": 5, "ramp": 0.5}
    summary.update(name="fake", command="harness.py", budget={"lenet_300_100": budget}, models={"lenet_300_100": "MLP"},
                   schedule={"lenet_300_100": shared.schedule_steps(budget)})
    return summary


def test_verdicts_use_the_seed_spread():
    summary = page.summarize(*fake_cells())
    verdicts = {c["sparsity"]: c["verdict"] for c in summary["comparisons"]}
    assert verdicts == {0.0: "tie", 0.5: "tie", 0.9: "better", 0.95: "worse"}
    at_half = next(c for c in summary["comparisons"] if c["sparsity"] == 0.5)
    assert at_half["spread"] == pytest.approx(np.std([0.979, 0.981], ddof=1))
    assert at_half["difference"] == pytest.approx(-0.001)


def test_one_seed_has_no_spread_so_it_is_not_judged():
    cells = [cell("keras_prune", 0.5, 0, 0.9701), cell("tfmot", 0.5, 0, 0.9800)]
    summary = rendered_summary(cells, [])
    assert summary["comparisons"][0]["verdict"] == "one seed"
    assert "- Lower accuracy on a single seed (not judged: no spread to compare with): lenet_300_100 at 50% (-0.99 pp)." \
        in page.render(summary)


def test_tools_are_compared_on_the_seeds_both_ran():
    cells = [cell("keras_prune", 0.5, 0, 0.97), cell("keras_prune", 0.5, 1, 0.99), cell("tfmot", 0.5, 0, 0.98)]
    comparison = page.summarize(cells, [])["comparisons"][0]
    assert comparison["seeds"] == 1
    assert comparison["keras_prune"] == pytest.approx(0.97) and comparison["difference"] == pytest.approx(-0.01)


def test_overhead_is_relative_to_the_same_tools_plain_run_of_the_same_seed():
    rows = page._index(page.summarize(*fake_cells())["rows"])
    assert rows[("lenet_300_100", 0.5, "keras_prune")]["overhead_seconds"] == pytest.approx(1.1)
    assert rows[("lenet_300_100", 0.5, "tfmot")]["overhead_seconds"] == pytest.approx(1.25)
    assert rows[("lenet_300_100", 0.9, "tfmot")]["overhead_cpu_seconds"] == pytest.approx(1.5)
    assert rows[("lenet_300_100", 0.0, "tfmot")]["epoch_seconds"] == pytest.approx(0.8)  # first epoch dropped


def test_overhead_summary_calls_overlapping_ranges_noise():
    overhead = page.summarize(*fake_cells())["overhead"]["lenet_300_100"]
    # keras-prune's CPU ratios: 1.1, 1.1, 1.1, 1.1, 1.2, 1.2; tfmot's: 1.25, 1.25, 1.5, 1.5, 1.0, 1.0.
    assert overhead["keras_prune"] == {"median": pytest.approx(1.1), "min": pytest.approx(1.1),
                                       "max": pytest.approx(1.2), "cells": 6}
    assert overhead["tfmot"]["median"] == pytest.approx(1.25)
    assert overhead["keras_prune_verdict"] == "within noise"
    cells = [cell(t, s, 0, 0.98, cpu=c) for t, s, c in
             (("keras_prune", 0.0, 2.0), ("keras_prune", 0.5, 2.1), ("tfmot", 0.0, 2.0), ("tfmot", 0.5, 2.6))]
    assert page.summarize(cells, [])["overhead"]["lenet_300_100"]["keras_prune_verdict"] == "lower"


def test_loss_begins_at_the_first_sparsity_beyond_tolerance():
    losses = page.summarize(*fake_cells())["loss_begins"]["lenet_300_100"]
    assert losses["keras_prune"]["first_loss_at"] == 0.9
    assert losses["tfmot"]["first_loss_at"] == 0.9
    assert losses["keras_prune"]["losses"][0.95]["loss"] == pytest.approx(0.04)
    cells = [cell("keras_prune", 0.0, 0, 0.98), cell("keras_prune", 0.5, 0, 0.9795)]
    assert page.summarize(cells, [])["loss_begins"]["lenet_300_100"]["keras_prune"]["first_loss_at"] is None


def test_page_states_every_pair_and_each_shortfall():
    summary = rendered_summary(*fake_cells())
    text = page.render(summary)
    assert "| lenet_300_100 | 90% | 2 | 97.50 ± 0.00 | 96.00 ± 0.00 | +1.50 | better | 90.000 / 90.000 |" in text
    assert "| lenet_300_100 | 95% | 2 | 94.00 ± 0.00 | 95.00 ± 0.00 | -1.00 | worse | 95.000 / 95.000 |" in text
    assert "keras-prune better: 1, tie: 2, worse: 1, not judged (one seed): 0" in text
    assert "ranged from 1.0 to 2.0." in text
    assert "| lenet_300_100 | 90% | 1 | 1 | 0 | 1 | 1 | 0 | 0 / 1,234 |" in text  # KiB; sparse 100.5 B median
    assert "| lenet_300_100 | 3 | 100 | 39 | 15 |" in text  # 13 steps per epoch; half of 39 -> 15
    assert "- Accuracy, lenet_300_100 at 95%: 94.00% vs tfmot's 95.00%" in text
    assert ("- Training overhead (CPU time), lenet_300_100: keras-prune 1.10x vs tfmot 1.25x (medians; within noise: "
            "the ranges 1.10-1.20 and 1.00-1.50 overlap; cell timings, taken one after another).") in text
    assert "| lenet_300_100 | 1.64 | 1.59 | 1.90 | 2.00 | 95% (20x) | 6.00 | 5.00 | - |" in text
    assert "global ranking (vs tfmot)" not in text


def test_side_by_side_overhead_gets_its_table_and_verdict():
    summary = rendered_summary(*fake_cells())
    assert "side by side" not in page.render(summary)  # absent until overhead.py has run

    def result(keras_version, f100, f10):
        return {"keras": keras_version, "ratios": {"f100": f100, "f10": f10},
                "epoch_seconds": {"plain": [2.0, 3.0, 2.2]}}

    summary["interleaved_overhead"] = {
        "model": "LeNet-300-100, full MNIST", "batch_size": 128, "timed_epochs": 3, "schedule": "PolynomialDecay",
        "results": {"keras_prune": result("3.15.1", 1.08, 1.22), "tfmot": result("2.21.0", 1.30, 1.20)}}
    text = page.render(summary)
    assert "| keras-prune | 3.15.1 | 1.08x | 1.22x | 2.20 |" in text
    assert "| tfmot | 2.21.0 | 1.30x | 1.20x | 2.20 |" in text
    assert ("keras-prune's overhead is not lower than tfmot's at every frequency: 1.08x / 1.22x vs 1.30x / 1.20x"
            in text)


def test_longer_budget_run_is_shown_against_its_own_plain_fine_tuning():
    summary = rendered_summary(*fake_cells())
    budget = {"epochs": 8, "epoch_samples": 60000}
    summary["longer_budget"] = [{**cell("keras_prune", 0.0, 0, 0.9921), "budget": budget},
                                {**cell("keras_prune_global", 0.92, 0, 0.9915), "budget": budget}]
    text = page.render(summary)
    assert "With a longer budget (8 epochs of 60,000 images, seed 0;" in text
    assert "| lenet_300_100 | keras-prune, global ranking | 92% | 0.85 | 0.79 | +0.06 |" in text


def test_global_ranking_is_compared_to_tfmot_against_keras_prunes_plain_baseline():
    cells, dense = fake_cells()
    cells += [cell("keras_prune_global", 0.95, seed, 0.970, seconds=1.2) for seed in (0, 1)]
    summary = page.summarize(cells, dense)
    at_95 = next(c for c in summary["comparisons"] if c["sparsity"] == 0.95)
    assert at_95["verdict"] == "worse" and at_95["global_verdict"] == "better"
    assert at_95["global_difference"] == pytest.approx(0.02)
    losses = summary["loss_begins"]["lenet_300_100"]["keras_prune_global"]
    assert losses["baseline"] == pytest.approx(0.98) and losses["losses"][0.95]["loss"] == pytest.approx(0.01)
    row = page._index(summary["rows"])[("lenet_300_100", 0.95, "keras_prune_global")]
    assert row["overhead_seconds"] == pytest.approx(1.2)


def test_data_order_is_shared_and_seeded():
    a = shared.epoch_indices(seed=1, epoch=2, n=1000, samples=300)
    assert np.array_equal(a, shared.epoch_indices(1, 2, 1000, 300))
    assert len(np.unique(a)) == 300
    assert not np.array_equal(a, shared.epoch_indices(1, 3, 1000, 300))
    assert not np.array_equal(a, shared.epoch_indices(2, 2, 1000, 300))


def test_schedule_ramps_over_the_first_half_on_update_steps():
    job = {"epochs": 4, "epoch_samples": 15000, "batch_size": 128, "frequency": 25, "ramp": 0.5}
    steps = shared.schedule_steps(job)  # 4 x 118 = 472 steps; half is 236 -> 225
    assert steps == {"initial_sparsity": 0.0, "begin_step": 0, "end_step": 225, "frequency": 25, "power": 3}


def test_kernel_sparsity_counts_zeros_over_all_kernels():
    assert shared.kernel_sparsity([np.zeros((2, 2)), np.ones((4,))]) == pytest.approx(0.5)
