"""Time patch-pair sampling (samlearn.augment) per preset on one CPU thread.

Run from the project root:  python benchmarks/bench_augment.py [--n 60]
Prints a markdown table: milliseconds per pair (draw + resample + jitter), per 100 positives and
per stride-4 source_mm grid, and the mean fraction of patch voxels outside the source (padding).
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread, as in a DataLoader worker

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's samlearn
from samlearn.augment import sampler_for_preset  # noqa: E402

CASES = [
    ("xray-lite", {}, (512, 512)),
    ("xray", {}, (512, 512)),
    ("xray-lite", {"elastic": False, "rotation_deg": 0.0}, (512, 512)),
    ("ct-lite", {}, (150, 176, 176)),
    ("ct", {}, (150, 176, 176)),
    ("ct", {"rotation_deg": 15.0}, (150, 176, 176)),
    ("ct", {"rotation_deg": 15.0, "rotation_axes": "any"}, (150, 176, 176)),
    ("ct", {"elastic": True}, (150, 176, 176)),
]


def timed(fn, n):
    """Wall-clock and CPU (process) milliseconds per call; CPU time is what a busy shared machine
    distorts least (time spent descheduled does not count)."""
    ts, cs = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return np.array(cs) * 1e3, np.array(ts) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}, n={args.n} pairs per row")
    print("| preset | overrides | source | pair: CPU ms median | pair: wall ms median / min / p90 "
          "| 100 positives CPU ms | source_mm s=4 CPU ms | padding |")
    print("|---|---|---|---|---|---|---|---|")
    for name, over, shape in CASES:
        sampler = sampler_for_preset(name, **over)
        src = rng.normal(size=shape).astype(np.float32)
        sampler.sample(src, rng)  # warm-up
        pairs = []
        spacing = [2.0] * len(shape)
        c_pair, t_pair = timed(lambda: pairs.append(sampler.sample(src, rng, spacing=spacing)),
                               args.n)
        t_pos, _ = timed(lambda: pairs[-1].positives(100, rng), args.n)
        t_mm, _ = timed(lambda: pairs[-1].source_mm(0, 4), args.n)
        pad = np.mean([(p.clean_patches == p.cval).mean() for p in pairs])
        print(f"| {name} {sampler.patch_shape} | {over or '-'} | {shape} | "
              f"{np.median(c_pair):.1f} | "
              f"{np.median(t_pair):.1f} / {t_pair.min():.1f} / {np.percentile(t_pair, 90):.1f} | "
              f"{np.median(t_pos):.2f} | {np.median(t_mm):.2f} | {pad:.2f} |")


if __name__ == "__main__":
    main()
