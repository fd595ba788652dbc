"""Time patch-pair sampling (samlearn.training) per preset on one CPU thread.

    python -m benchmarks.speed.augment_speed [--n 60]

Prints a markdown table: milliseconds per pair (draw + resample + jitter), per 100 positives and
per stride-4 source_mm grid, and the mean fraction of patch voxels outside the source (padding).
"""
import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread, as in a DataLoader worker

import numpy as np  # noqa: E402

from benchmarks._common import machine_summary, timed  # noqa: E402
from samlearn.training import sampler_for_preset  # noqa: E402

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="pairs per row")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"# {machine_summary()}; load average {os.getloadavg()[0]:.2f}, n={args.n} pairs per row")
    print("| preset | overrides | source | pair: CPU ms median | pair: wall ms median / min / p90 "
          "| 100 positives CPU ms | source_mm s=4 CPU ms | padding |")
    print("|---|---|---|---|---|---|---|---|")
    for name, over, shape in CASES:
        sampler = sampler_for_preset(name, **over)
        src = rng.normal(size=shape).astype(np.float32)
        sampler.sample(src, rng)  # warm-up
        pairs = []
        spacing = [2.0] * len(shape)
        t_pair = timed(lambda: pairs.append(sampler.sample(src, rng, spacing=spacing)), args.n)
        c_pair, w_pair = t_pair.cpu * 1e3, t_pair.wall * 1e3
        t_pos = timed(lambda: pairs[-1].positives(100, rng), args.n).cpu * 1e3
        t_mm = timed(lambda: pairs[-1].source_mm(0, 4), args.n).cpu * 1e3
        pad = np.mean([(p.clean_patches == p.cval).mean() for p in pairs])
        print(f"| {name} {sampler.patch_shape} | {over or '-'} | {shape} | "
              f"{np.median(c_pair):.1f} | "
              f"{np.median(w_pair):.1f} / {w_pair.min():.1f} / {np.percentile(w_pair, 90):.1f} | "
              f"{np.median(t_pos):.2f} | {np.median(t_mm):.2f} | {pad:.2f} |")


if __name__ == "__main__":
    main()
