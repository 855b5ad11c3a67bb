"""benchmarks/bench_compression.py in --quick mode: the whole pipeline on a tiny budget.

Narrow LeNet-300-100 and LeNet-5, 600 training and 300 test images, one epoch per phase: the
numbers mean nothing, but every variant must be exported, read back and measured, and the
files must keep the promises the benchmark's table rests on: the ratio is 4 x parameters over
the bytes of the file; clustered kernels hold at most k distinct nonzero values and every
pruned zero; the entropy-coded file is no larger than the plain lossless one; the results
section lands between its markers.
"""

import json

import numpy as np
import pytest

from helpers import DATA_DIR, load_benchmark

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.slow]

CLUSTERS = (4, 8)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    bench = load_benchmark("bench_compression", needs=("mnist",))
    folder = tmp_path_factory.mktemp("bench_compression")
    docs = folder / "export.md"
    docs.write_text(f"# A guide\n\nSome text.\n\n{bench.DOCS_ANCHOR}\n\nThe format.\n")
    results = bench.main(["--quick", "--data-dir", str(DATA_DIR), "--cache-dir", str(folder / "cache"),
                          "--clusters", ",".join(map(str, CLUSTERS)), "--files-dir", str(folder / "files"),
                          "--output", str(folder / "results.json"), "--plot", str(folder / "plot.png"),
                          "--write-docs", str(docs)])
    return bench, results, folder, docs


def kernels_of(path):
    import keras_prune

    model = keras_prune.load_sparse(path)
    return [np.asarray(w) for w in model.get_weights() if np.ndim(w) >= 2]


def test_every_variant_is_measured_and_the_ratio_is_recomputed_from_the_file(quick_run):
    bench, results, folder, _ = quick_run
    names = {"dense": "dense", "dense_all_epochs": "dense_all", "pruned": "pruned", "pruned_int8": "pruned_int8"}
    for k in CLUSTERS:
        names[f"clustered_{k}"], names[f"clustered_{k}_entropy"] = f"c{k}", f"c{k}e"
    for model_name, res in results["models"].items():
        assert "error" not in res, res.get("error")
        assert set(res["rows"]) == set(names)
        for key, row in res["rows"].items():
            path = folder / "files" / model_name / f"{names[key]}.kpsparse"
            assert row["file_bytes"] == path.stat().st_size
            assert row["ratio"] == pytest.approx(4 * res["params"] / path.stat().st_size, rel=1e-12)
            assert row["kernel_bytes"] + row["other_bytes"] + row["header_bytes"] == row["file_bytes"]
            assert 0 <= row["error"] <= 100
        assert res["rows"]["pruned"]["density"] < 0.5  # the quick recipes prune 30-97% per kernel


def test_clustered_kernels_keep_k_values_and_the_pruned_zeros(quick_run):
    _, results, folder, _ = quick_run
    for model_name, res in results["models"].items():
        pruned = kernels_of(folder / "files" / model_name / "pruned.kpsparse")
        for k in CLUSTERS:
            assert res["invariants"][k]["at_most_k_values"] and res["invariants"][k]["pruned_zeros_kept"]
            for name in (f"c{k}", f"c{k}e"):
                clustered = kernels_of(folder / "files" / model_name / f"{name}.kpsparse")
                for before, after in zip(pruned, clustered, strict=True):
                    assert np.unique(after[after != 0]).size <= k
                    assert np.all(after[before == 0] == 0)
            # Lossless either way: the two files hold the same model, so the same test error.
            rows = res["rows"]
            assert rows[f"clustered_{k}"]["error"] == rows[f"clustered_{k}_entropy"]["error"]
            assert rows[f"clustered_{k}_entropy"]["error"] == pytest.approx(rows[f"clustered_{k}"]["keras_error"])


def test_entropy_coding_is_no_larger_and_is_measured_against_its_bound(quick_run):
    _, results, folder, _ = quick_run
    for model_name, res in results["models"].items():
        for k in CLUSTERS:
            coded = folder / "files" / model_name / f"c{k}e.kpsparse"
            plain = folder / "files" / model_name / f"c{k}.kpsparse"
            assert coded.stat().st_size <= plain.stat().st_size
            assert coded.stat().st_size <= (folder / "files" / model_name / "pruned.kpsparse").stat().st_size
            coded = {e for e in res["rows"][f"clustered_{k}_entropy"]["encodings"].values() if e.startswith("codebook")}
            assert coded and not any(e.startswith("codebook") for e in res["rows"][f"clustered_{k}"]["encodings"].values())
            bound = res["entropy"][k]
            # Two ways to the same order-0 entropy: mask + indices, and the exporter's joint symbols.
            assert bound["bound_bytes"] == pytest.approx(bound["library_bound_bytes"], rel=1e-9)
            assert 0 < bound["stored_kernel_bytes"] <= bound["file_bytes"]
            if "codebook_rows" not in coded:  # order 0: no coder beats the bound (a few bytes of slack)
                assert bound["bound_bytes"] <= bound["stored_kernel_bytes"]
                assert bound["symbols_over_their_bound"] >= 0.99
            else:  # row contexts code below the order-0 bound, never far below it
                assert 0.5 < bound["symbols_over_their_bound"] < 1.01


def test_litert_legs_and_verdicts(quick_run):
    _, results, _, _ = quick_run
    for res in results["models"].values():
        litert = res["litert"]
        clustered = litert["clustered"]
        assert clustered["bytes"] > 0 and clustered["max_abs_diff"] < 1e-3
        assert clustered["int8_weights"] == 0 and clustered["max_distinct"] <= max(CLUSTERS)
        assert litert["int8_dynamic_range"]["int8_weights"] >= 1
        assert "error" in litert["keras_quantize_int8"] or litert["keras_quantize_int8"]["bytes"] > 0
        verdict = res["verdict"]
        assert verdict["best"] is not None and verdict["passed"] in (True, False)


def test_tables_json_plot_and_docs(quick_run):
    bench, results, folder, docs = quick_run
    table = results["table"]
    assert json.loads((folder / "results.json").read_text())["table"] == table
    assert (folder / "plot.png").stat().st_size > 0
    for line in bench.verdict_lines(results):
        assert line.split(":")[0] in table and ("PASS" in line or "FAIL" in line)
    text = docs.read_text()
    assert text.startswith("# A guide\n\nSome text.\n")
    assert text.count(bench.BEGIN) == text.count(bench.END) == 1
    assert text.index(bench.END) < text.index(bench.DOCS_ANCHOR)  # placed before the format section
    assert table in text
    bench.main(["--from-results", str(folder / "results.json"), "--write-docs", str(docs)])
    again = docs.read_text()
    assert again.count(bench.BEGIN) == 1 and again.count(bench.DOCS_ANCHOR) == 1


def test_several_seeds_are_judged_on_the_mean_error_and_the_lowest_ratio():
    bench = load_benchmark("bench_compression", needs=())

    def run(dense, control, coded, ratio):
        rows = {"dense": {"error": dense, "ratio": 1.2}, "dense_all_epochs": {"error": control, "ratio": 1.2},
                "clustered_16_entropy": {"error": coded, "ratio": ratio}}
        return {"rows": rows, "recipe": bench.RECIPES["lenet_300_100"]}

    # Seed 1 alone passes (+0.05 at 52x); the mean of the two is +0.15 points: FAIL.
    failing = bench.combine_seeds({0: run(1.8, 1.7, 1.95, 52.0), 1: run(1.7, 1.6, 1.65, 51.0)})
    assert failing["mean_rows"]["clustered_16_entropy"]["error"] == pytest.approx(1.80)
    assert failing["verdict"]["dense_error"] == pytest.approx(1.65)  # the better dense mean: the controls'
    assert not failing["verdict"]["passed"] and failing["verdict"]["best"]["points"] == pytest.approx(0.15)
    # Within 0.1 point on the mean, but one seed's file is below 50x: the lowest ratio decides.
    low = bench.combine_seeds({0: run(1.8, 1.7, 1.72, 52.0), 1: run(1.7, 1.6, 1.70, 49.9)})
    assert low["verdict"]["best"]["ratio"] == 49.9 and not low["verdict"]["passed"]
    passing = bench.combine_seeds({0: run(1.8, 1.7, 1.72, 52.0), 1: run(1.7, 1.6, 1.70, 50.1)})
    assert passing["verdict"]["passed"]
    assert "mean of 2 seeds" in bench.verdict_lines({"models": {"lenet_300_100": passing}})[0]
    assert "seed 0 | seed 1" in bench.seeds_table(passing)
    # One seed: that seed's rows, as before.
    single = bench.combine_seeds({3: run(1.8, 1.7, 1.95, 52.0)})
    assert "seeds" not in single and "mean_rows" not in single
