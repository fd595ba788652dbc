"""Development loop for the X-ray presets on the cephalograms, WITHOUT touching the evaluation
images 071-100: train on 001-050, choose the template from 001-050 by the benchmark's rule,
evaluate one-shot on 051-070. Used to choose the xray-lite settings; the official numbers come
from benchmarks/cephalometric.py (train 001-070, evaluate 071-100).

    python benchmarks/ceph_dev.py --max-time 600 --set lr=1e-3 --out benchmarks/out/dev.samlearn
"""
from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cephalometric import choose_template, score  # noqa: E402
from samlearn import OneShotLandmarkDetector, SAMEmbedder, load  # noqa: E402
from samlearn.datasets import load_cephalograms  # noqa: E402

DEV_TRAIN = [f"{i:03d}" for i in range(1, 51)]
DEV_EVAL = [f"{i:03d}" for i in range(51, 71)]


def evaluate(emb, data, template_id, eval_ids, variants):
    idx = {k: i for i, k in enumerate(data.ids)}
    t = idx[template_id]
    truth = np.stack([data.landmarks[idx[k]] for k in eval_ids])
    queries = [data.images[idx[k]] for k in eval_ids]
    rows = []
    for name, kw in variants:
        det = OneShotLandmarkDetector(embedder=emb, **kw).fit(data.images[t], data.landmarks[t])
        t0 = time.perf_counter()
        pred = det.predict(queries)
        dt = (time.perf_counter() - t0) / len(queries)
        err, summ = score(pred, truth)
        rows.append((name, summ["mre"], summ["median"], summ["max"], summ["sdr"][20.0] if 20.0 in summ["sdr"] else None, dt))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cephalograms"))
    ap.add_argument("--preset", default="xray-lite")
    ap.add_argument("--max-time", type=float, default=600)
    ap.add_argument("--max-iter", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="param=value (python literal)")
    ap.add_argument("--model", default=None, help="evaluate this saved model instead of training")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data = load_cephalograms(args.data, load_images=True)
    template_id = choose_template(data, DEV_TRAIN)[0]
    extra = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        extra[k] = ast.literal_eval(v)
    if args.model:
        emb = load(args.model)
        # inference settings apply to the loaded model (its saved n_threads would otherwise win)
        emb.set_params(**({"n_threads": args.threads} if args.threads else {}), **extra)
    else:
        params = dict(preset=args.preset, max_time=args.max_time, max_iter=args.max_iter or 10**9,
                      random_state=args.seed, verbose=1, n_threads=args.threads, num_workers=args.workers)
        params.update(extra)
        emb = SAMEmbedder(**params)
        idx = {k: i for i, k in enumerate(data.ids)}
        t0 = time.perf_counter()
        emb.fit([data.images[idx[k]] for k in DEV_TRAIN])
        print(f"trained {emb.n_iter_} iterations in {time.perf_counter() - t0:.0f} s "
              f"({emb.n_iter_ / emb.train_time_:.2f} it/s); last losses "
              f"{np.mean([h['loss'] for h in emb.history_[-50:]]):.3f} "
              f"(g {np.mean([h['loss_global'] for h in emb.history_[-50:]]):.3f}, "
              f"l {np.mean([h['loss_local'] for h in emb.history_[-50:]]):.3f})", flush=True)
        if args.out:
            emb.save(args.out)
    variants = [
        ("SAM-coarse prior (default)", dict()),
        ("+ NCC refinement 32", dict(ncc_radius_mm=32.0)),
        ("sum, auto + affine check", dict(consistency="affine")),
        ("sum, window auto, no check", dict(consistency=None)),
        ("sum, window 40mm", dict(search_radius_mm=40.0, consistency=None)),
        ("sum, window 80mm", dict(search_radius_mm=80.0, consistency=None)),
        ("sum, whole image", dict(search_radius_mm=None, consistency=None)),
        ("global only", dict(mode="global", consistency=None)),
        ("local only", dict(mode="local", search_radius_mm=None, consistency=None)),
    ]
    print(f"template {template_id}; dev eval {DEV_EVAL[0]}-{DEV_EVAL[-1]}; errors in full-res px")
    print(f"{'variant':22s} {'MRE':>7s} {'median':>7s} {'max':>7s} {'SDR20':>6s} {'s/query':>8s}")
    for name, mre, med, mx, sdr, dt in evaluate(emb, data, template_id, DEV_EVAL, variants):
        print(f"{name:22s} {mre:7.1f} {med:7.1f} {mx:7.1f} {sdr if sdr is None else round(100 * sdr, 1)!s:>6s} {dt:8.3f}")


if __name__ == "__main__":
    main()
