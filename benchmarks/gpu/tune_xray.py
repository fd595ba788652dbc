"""Choose the ``xray-lite`` settings on a GPU, at the iteration budgets a 2-core CPU affords in
30 minutes (the CPU cost per iteration of each variant was measured beforehand, so every variant
gets the same CPU-time budget). fp32 (no autocast), as on the CPU.

Dev protocol only (never the evaluation images 071-100): train on cephalograms 001-050, template
from 001-050 by the benchmark's rule, one-shot evaluation on 051-070, errors in full-resolution px.
The data travels as 512 x 512 uint8 .mha files with exact geometry (``.devdata/ceph512`` under
the repository root, made by resampling the PNGs exactly as SAMEmbedder's preprocessing does, with
``ids.json`` and ``landmarks.npy``), since the shared data does not travel to the GPU machine.

    python -m benchmarks.gpu.tune_xray --data .devdata/ceph512 --parallel 3

Environment: ``SAMLEARN_TUNE_DEVICE`` (default cuda; cpu for a local smoke run),
``SAMLEARN_TUNE_SCALE`` (iteration budget multiplier, default 1), ``SAMLEARN_TUNE_SAVE`` (set: also
save each model). Every variant writes ``<name>.json`` and ``<name>.log`` to ``--out``
(default ``benchmarks/out/tune``), and ``summary.json`` at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
DEVICE = os.environ.get("SAMLEARN_TUNE_DEVICE", "cuda")  # "cpu" for a local smoke run
SCALE = float(os.environ.get("SAMLEARN_TUNE_SCALE", "1"))  # iteration budget multiplier

import numpy as np  # noqa: E402
from sklearn.utils import Bunch  # noqa: E402

from benchmarks._common import OUT, ROOT, machine_info, module_command, write_json  # noqa: E402
from benchmarks.landmarks.cephalometric import score  # noqa: E402
from samlearn.datasets import choose_template  # noqa: E402

CONFIGS = {
    "base": ({"head": "separable"}, 1500),
    "conv-head": ({"head": "conv"}, 1500),
    "ncand1000": ({"head": "separable", "n_candidates": 1000}, 1500),
    "p192": ({"head": "separable", "patch_shape": (192, 192)}, 3000),
    "stages4": ({"head": "separable", "n_stages": 4}, 1500),
    "lr3e-3": ({"head": "separable", "lr": 3e-3}, 1500),
    # second round, around the first round's winner (a 4th stage: global stride 32)
    "s4-ncand1000": ({"head": "separable", "n_stages": 4, "n_candidates": 1000}, 1500),
    "s4-lr3e-3": ({"head": "separable", "n_stages": 4, "lr": 3e-3}, 1500),
    "s4-conv": ({"head": "conv", "n_stages": 4}, 1500),
    "s4-w075": ({"head": "separable", "n_stages": 4, "width": 0.75}, 1200),
    "s4-3000": ({"head": "separable", "n_stages": 4}, 3000),
    "s4-p192": ({"head": "separable", "n_stages": 4, "patch_shape": (192, 192)}, 3000),
}
VARIANTS = [
    ("sum/window-auto", {}),
    ("sum/window-80mm", {"search_radius_mm": 80.0}),
    ("sum/whole", {"search_radius_mm": None}),
    ("global", {"mode": "global"}),
    ("local/whole", {"mode": "local", "search_radius_mm": None}),
]


def load_dev(folder):
    from samlearn import read_image
    folder = Path(folder)
    ids = json.loads((folder / "ids.json").read_text())
    images = [read_image(folder / f"{k}.mha") for k in ids]
    return ids, images, np.load(folder / "landmarks.npy")


def run_one(name, data_dir, out_dir, workers):
    import torch

    from samlearn import OneShotLandmarkDetector, SAMEmbedder
    overrides, n_iter = CONFIGS[name]
    ids, images, lms = load_dev(data_dir)
    train = list(range(50))
    evaluation = list(range(50, 70))
    t_idx = ids.index(choose_template(Bunch(ids=ids, landmarks=lms), ids[:50])[0])  # the benchmark's rule
    est = SAMEmbedder(preset="xray-lite", max_iter=max(1, int(n_iter * SCALE)), amp="none", device=DEVICE,
                      num_workers=workers,
                      random_state=0, **overrides)
    t0 = time.perf_counter()
    est.fit([images[i] for i in train])
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    res = {"name": name, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
           "n_iter": est.n_iter_, "train_wall_s": wall,
           "loss_last100": float(np.mean([h["loss"] for h in est.history_[-100:]])),
           "loss_global_last100": float(np.mean([h["loss_global"] for h in est.history_[-100:]])),
           "loss_local_last100": float(np.mean([h["loss_local"] for h in est.history_[-100:]])),
           "variants": {}}
    truth = lms[evaluation]
    for vname, kw in VARIANTS:
        det = OneShotLandmarkDetector(embedder=est, **kw).fit(images[t_idx], lms[t_idx])
        _, s = score(det.predict([images[i] for i in evaluation]), truth)  # full-resolution px
        res["variants"][vname] = {"mre": s["mre"], "median": s["median"], "max": s["max"], "sdr20": s["sdr"][20.0]}
    if os.environ.get("SAMLEARN_TUNE_SAVE"):
        est.save(Path(out_dir) / f"{name}.samlearn")
    (Path(out_dir) / f"{name}.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".devdata" / "ceph512"), help="the 512 x 512 dev data")
    ap.add_argument("--out", default=str(OUT / "tune"))
    ap.add_argument("--parallel", type=int, default=3, help="variants trained at once")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers per variant")
    ap.add_argument("--only", default=None, help=f"comma-separated variants (default all: {', '.join(CONFIGS)})")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.child:
        try:
            res = run_one(args.child, args.data, args.out, args.workers)
            print(json.dumps(res), flush=True)
        except Exception:
            traceback.print_exc()
            sys.exit(1)
        return
    # smoke test first: a few iterations on the GPU, so a bug costs seconds, not minutes
    import torch

    from samlearn import SAMEmbedder
    print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
          flush=True)
    ids, images, lms = load_dev(args.data)
    t0 = time.perf_counter()
    SAMEmbedder(preset="xray-lite", max_iter=5, device=DEVICE, num_workers=2, random_state=0).fit(images[:4])
    print(f"smoke fit ok in {time.perf_counter() - t0:.1f} s", flush=True)
    names = args.only.split(",") if args.only else list(CONFIGS)
    procs, results = [], []
    pending = list(names)
    while pending or procs:
        while pending and len(procs) < args.parallel:
            n = pending.pop(0)
            log = open(Path(args.out) / f"{n}.log", "w")
            cmd = module_command("benchmarks.gpu.tune_xray", "--child", n, "--data", Path(args.data).resolve(),
                                 "--out", Path(args.out).resolve(), "--workers", args.workers)
            procs.append((n, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT),
                          time.perf_counter()))
        time.sleep(2)
        for item in list(procs):
            n, p, t = item
            if p.poll() is not None:
                procs.remove(item)
                js = Path(args.out) / f"{n}.json"
                if js.exists():
                    r = json.loads(js.read_text())
                    results.append(r)
                    v = r["variants"]
                    print(f"{n:10s} it={r['n_iter']} train={r['train_wall_s']:.0f}s loss={r['loss_last100']:.3f} | "
                          + " | ".join(f"{k} {v[k]['mre']:.1f}/{v[k]['median']:.1f}/{v[k]['max']:.0f}" for k in v),
                          flush=True)
                else:
                    print(f"{n}: FAILED rc={p.returncode} after {time.perf_counter() - t:.0f}s; log tail:", flush=True)
                    print((Path(args.out) / f"{n}.log").read_text()[-1500:], flush=True)
    write_json(Path(args.out) / "summary.json", {"machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
