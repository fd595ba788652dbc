"""Development loop for the X-ray presets on the cephalograms, WITHOUT touching the evaluation
images 071-100: train on 001-050, choose the template from 001-050 by the benchmark's rule,
evaluate one-shot on 051-070. Used to choose the xray-lite settings; the official numbers come
from benchmarks/landmarks/cephalometric.py (train 001-070, evaluate 071-100).

    python -m benchmarks.landmarks.dev_split --max-time 600 --set lr=1e-3 --out benchmarks/out/dev.samlearn
    python -m benchmarks.landmarks.dev_split --model benchmarks/out/dev.samlearn --threads 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import CEPH_DIR, key_values
from benchmarks.landmarks.cephalometric import score
from samlearn import OneShotLandmarkDetector, SAMEmbedder, load
from samlearn.datasets import choose_template, load_cephalograms

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
        rows.append((name, summ["mre"], summ["median"], summ["max"], summ["sdr"].get(20.0), dt))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(CEPH_DIR), help="cephalogram folder")
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
    extra = key_values(args.set)
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
        sdr = sdr if sdr is None else round(100 * sdr, 1)
        print(f"{name:22s} {mre:7.1f} {med:7.1f} {mx:7.1f} {sdr!s:>6s} {dt:8.3f}")


if __name__ == "__main__":
    main()
