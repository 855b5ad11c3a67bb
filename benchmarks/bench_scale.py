"""One-shot magnitude pruning at scale: time and peak memory against the bare numpy work.

The 100M-parameter model (10 Dense layers of 3162x3162, float32, 0.4 GB) is pruned in this
process, next to the reference the "Scale" issue defines: one numpy pass over all weights,
concatenated (abs, np.partition for the global k-th value, the mask). Printed and recorded:

- time ratio: ``magnitude_prune(sparsity=0.9)`` (global and layer scope) over the reference,
  each call timed right after a reference pass, the median of ``--repeats`` ratios (also of
  the calling thread's CPU time, steadier than the wall clock on a loaded machine) (weights reset from the same seeded values between runs); the target is at most 2;
- memory: the peak rise of the process's resident memory during the call over the largest
  layer (the target is at most 1.5), and (weights + rise) over the weights.

Memory is measured as resident memory (VmRSS of /proc/self/status), sampled every
millisecond by a thread, minus its value just before the call: that counts every allocation,
numpy's and TensorFlow's alike, which tracemalloc (numpy only) would not. TensorFlow's oneDNN
CPU allocator keeps freed blocks and hands them out again, so a layer-sized buffer would not
show as a rise once one was freed; the benchmark therefore runs with
``TF_ENABLE_ONEDNN_OPTS=0`` (unless that is set), where large buffers come from and go back
to the system and the rise counts each of them. The weights are set in the variables' own
buffers, so setting them leaves no freed memory behind either.

``--billion`` then prunes a 1B-parameter model (10 Dense layers of 10000x10000, 4 GB) in a
child process, so its peak is its own, and reports its time and peak.

Run: ``python benchmarks/bench_scale.py [--billion] [--repeats 3]``; results go to
``benchmarks/results/scale.json`` (``--label`` names the run, ``--out`` another file).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # see above: freed memory goes back to the system

RESULTS = Path(__file__).parent / "results" / "scale.json"
SPARSITY = 0.9
TIME_TARGET = 2.0  # time over the numpy reference
MEMORY_TARGET = 1.5  # peak rise over the largest layer


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """The largest rise of resident memory over its value at entry, sampled every millisecond."""

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.rise = self.peak - self.start
        return False


def build(layers: int, width: int, seed: int = 0):
    """A Sequential of ``layers`` Dense(width) layers; kernels set from a seeded normal."""
    import keras

    model = keras.Sequential(
        [keras.Input((width,))]
        + [keras.layers.Dense(width, kernel_initializer="zeros", name=f"dense_{i}") for i in range(layers)]
    )
    reset(model, seed)
    return model


def reset(model, seed: int = 0) -> None:
    """Sets the kernels from a seeded normal: on TensorFlow written into each variable's own
    buffer (no new tensor, so no freed one left behind for a measured call to reuse)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        kernel = layer.kernel
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            own = tf.raw_ops.ReadVariableOp(resource=kernel.handle, dtype=kernel.value.dtype)._numpy()
            if own.flags.writeable and own.dtype == np.float32:
                rng.standard_normal(out=own, dtype=np.float32)  # the same values as below
                del own
                continue
        kernel.assign(rng.standard_normal(tuple(kernel.shape), dtype=np.float32))
    gc.collect()


def kernels_numpy(model) -> list[np.ndarray]:
    import keras

    return [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]


def reference_pass(flat: np.ndarray, k: int) -> np.ndarray:
    """The work itself: |w|, the k-th smallest by np.partition, the keep mask."""
    magnitudes = np.abs(flat)
    kth = np.partition(magnitudes, k - 1)[k - 1]
    return magnitudes > kth


def prune_once(model, scope: str) -> tuple[float, float, int, float]:
    """Seconds (wall clock, and CPU of this thread), peak resident-memory rise and resulting
    sparsity of one ``magnitude_prune``."""
    from keras_prune import magnitude_prune

    gc.collect()
    with PeakRSS() as peak:
        start, cpu = time.perf_counter(), time.thread_time()
        report = magnitude_prune(model, sparsity=SPARSITY, scope=scope)
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    return seconds, cpu, peak.rise, report.totals["sparsity"]


def run_100m(repeats: int) -> dict:
    model = build(10, 3162)
    kernels = kernels_numpy(model)
    weights = sum(k.nbytes for k in kernels)
    largest = max(k.nbytes for k in kernels)
    n = sum(k.size for k in kernels)
    k = int(np.floor(SPARSITY * n + 0.5))
    flat = np.concatenate([w.ravel() for w in kernels])
    del kernels
    gc.collect()
    reference, runs = [], {scope: {"all_seconds": [], "ratios": [], "cpu_ratios": [], "rises": []}
                           for scope in ("global", "layer")}
    for _ in range(repeats):  # each call right after a reference pass, so load hits both alike
        for scope, run in runs.items():
            start, cpu = time.perf_counter(), time.thread_time()
            reference_pass(flat, k)
            reference.append(time.perf_counter() - start)
            reference_cpu = time.thread_time() - cpu
            reset(model)
            seconds, cpu, rise, sparsity = prune_once(model, scope)
            run["all_seconds"].append(seconds)
            run["ratios"].append(seconds / reference[-1])
            run["cpu_ratios"].append(cpu / reference_cpu)
            run["rises"].append(rise)
            run["sparsity"] = sparsity
    del flat
    result = {"params": n, "weights_bytes": weights, "largest_layer_bytes": largest,
              "reference_seconds": statistics.median(reference), "all_reference_seconds": reference}
    for scope, run in runs.items():
        rise = max(run["rises"])
        result[scope] = {
            "seconds": statistics.median(run["all_seconds"]), "all_seconds": run["all_seconds"],
            "time_ratio": statistics.median(run["ratios"]), "all_time_ratios": run["ratios"],
            "cpu_time_ratio": statistics.median(run["cpu_ratios"]), "all_cpu_time_ratios": run["cpu_ratios"],
            "peak_rise_bytes": rise, "all_peak_rise_bytes": run["rises"], "sparsity": run["sparsity"],
            "peak_ratio": (weights + rise) / weights, "rise_over_largest_layer": rise / largest,
        }
    return result


def run_billion() -> dict:
    layers, width = 10, 10000
    with PeakRSS() as building:
        model = build(layers, width)
    weights = layers * width * width * 4
    gc.collect()
    start_rss = rss_bytes()
    seconds, _, rise, sparsity = prune_once(model, "global")
    return {"params": layers * width * width, "weights_bytes": weights, "largest_layer_bytes": width * width * 4,
            "seconds": seconds, "peak_rise_bytes": rise, "process_peak_bytes": start_rss + rise,
            "peak_ratio": (weights + rise) / weights,
            "rise_over_largest_layer": rise / (width * width * 4),
            "build_peak_rise_bytes": building.rise, "sparsity": sparsity}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"One-shot magnitude pruning at scale ({result.get('label', '')}, sparsity {SPARSITY})")
    for header in ("model", "call", "seconds", "time / reference", "peak rise", "peak / weights",
                   "rise / largest layer"):
        table.add_column(header, justify="left" if header in ("model", "call") else "right")
    small = result["100m"]
    name = f"{small['params'] / 1e6:.0f}M ({gib(small['weights_bytes'])})"
    table.add_row(name, "numpy reference", f"{small['reference_seconds']:.2f}", "1.00", "", "", "")
    for scope in ("global", "layer"):
        row = small[scope]
        table.add_row(name, f"magnitude_prune {scope}", f"{row['seconds']:.2f}", f"{row['time_ratio']:.2f}",
                      gib(row["peak_rise_bytes"]), f"{row['peak_ratio']:.2f}", f"{row['rise_over_largest_layer']:.2f}")
    if "1b" in result:
        big = result["1b"]
        table.add_row(f"{big['params'] / 1e9:.0f}B ({gib(big['weights_bytes'])})", "magnitude_prune global",
                      f"{big['seconds']:.2f}", "", gib(big["peak_rise_bytes"]), f"{big['peak_ratio']:.2f}",
                      f"{big['rise_over_largest_layer']:.2f}")
    Console().print(table)
    for scope in ("global", "layer"):
        row = small[scope]
        time_ok = row["time_ratio"] <= TIME_TARGET
        memory_ok = row["rise_over_largest_layer"] <= MEMORY_TARGET
        print(f"{scope:>6} scope: time {row['time_ratio']:.2f}x the numpy pass (CPU time of the thread "
              f"{row.get('cpu_time_ratio', float('nan')):.2f}x; target <= {TIME_TARGET:g}x): "
              f"{'PASS' if time_ok else 'FAIL'}; memory rise {row['rise_over_largest_layer']:.2f}x the largest "
              f"layer (target <= {MEMORY_TARGET:g}x): {'PASS' if memory_ok else 'FAIL'}")
    if "1b" in result:
        big = result["1b"]
        print(f"    1B global: {big['seconds']:.1f} s, peak rise {gib(big['peak_rise_bytes'])} = "
              f"{big['rise_over_largest_layer']:.2f}x the largest layer, process peak {gib(big['process_peak_bytes'])} "
              f"for {gib(big['weights_bytes'])} of weights: "
              f"{'PASS' if big['rise_over_largest_layer'] <= MEMORY_TARGET else 'FAIL'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--billion", action="store_true", help="also prune a 1B-parameter model, in a child process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["billion"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "billion":
        print(json.dumps(run_billion()))
        return
    import keras

    result = {"label": args.label, "backend": keras.backend.backend(), "sparsity": SPARSITY,
              "100m": run_100m(args.repeats)}
    if args.billion:
        child = subprocess.run([sys.executable, __file__, "--child", "billion"], capture_output=True, text=True,
                               env=dict(os.environ), check=True)
        result["1b"] = json.loads(child.stdout.strip().splitlines()[-1])
    show(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs[args.label] = result
    args.out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
