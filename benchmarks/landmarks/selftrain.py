"""Self-training on the cephalograms: the one-shot detector's pseudo-labels of the unlabelled
training images train a :class:`samlearn.SelfTrainedLandmarkDetector`; both are scored side by side.

Splits (the issue's rule: choices on the development split only):

* ``--split dev``: embedder trained on 001-050 (``benchmarks.landmarks.dev_split --out``),
  template chosen from 001-050 by the protocol's rule, pseudo-labels on 001-050, scored on
  051-070. Every setting of the self-training was chosen here.
* ``--split eval``: embedder trained on 001-070 (``benchmarks.landmarks.cephalometric
  --samlearn-out``), template from 001-070, pseudo-labels on 001-070, scored on 071-100: the
  number reported, once per design.

``--template suggested`` replaces the protocol's template (chosen from ground-truth landmarks) by
:func:`samlearn.suggest_templates` on the pool (no labels). ``--n-images N`` pseudo-labels a seeded
draw of N pool images (the template always among them). ``--set key=value`` sets a
SelfTrainedLandmarkDetector parameter, ``--detector-set`` a OneShotLandmarkDetector one.

Scoring: ``benchmarks.landmarks.cephalometric.score`` (full-resolution px against the mean of the
two annotators), plus the 95th percentile, the worst landmark's MRE and seconds per query on
``--threads`` torch threads (prediction alone, images already read).

    python -m benchmarks.landmarks.selftrain --split dev --embedder benchmarks/out/ceph_dev30.samlearn \\
        --max-time 600 --threads 1 --json benchmarks/out/selftrain_dev.json
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time

import numpy as np

from benchmarks._common import CEPH_DIR, OUT, command_line, key_values, machine_info, write_json
from benchmarks.landmarks.cephalometric import score
from benchmarks.landmarks.dev_split import DEV_EVAL, DEV_TRAIN
from samlearn import OneShotLandmarkDetector, SelfTrainedLandmarkDetector, load, suggest_templates
from samlearn.datasets import CEPH_EVAL_IDS, CEPH_TRAIN_IDS, choose_template, load_cephalograms

SPLITS = {"dev": (DEV_TRAIN, DEV_EVAL), "eval": (list(CEPH_TRAIN_IDS), list(CEPH_EVAL_IDS))}
#: the pseudo-labeller: the detector's defaults plus the intensity refinement (its best row)
DETECTOR = {"ncc_radius_mm": 32.0}


def summary(pred, truth) -> dict:
    """The protocol's summary plus the 95th percentile and the worst landmark's MRE."""
    err, s = score(pred, truth)
    flat = err[np.isfinite(err)]
    per_landmark = np.nanmean(err, axis=0)
    return {"mre": s["mre"], "median": s["median"], "p95": float(np.percentile(flat, 95)), "max": s["max"],
            "sdr20": s["sdr"][20.0], "worst_landmark_mre": float(per_landmark.max()),
            "worst_landmark": int(per_landmark.argmax()), "errors_px": np.round(err, 2).tolist()}


def timed_predict(predict, images, threads):
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        pred = predict(images)
        return pred, (time.perf_counter() - t0) / len(images)
    finally:
        torch.set_num_threads(old)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=sorted(SPLITS), default="dev")
    ap.add_argument("--embedder", required=True, help="a saved SAMEmbedder trained on the split's pool")
    ap.add_argument("--data", default=str(CEPH_DIR))
    ap.add_argument("--template", choices=["protocol", "suggested"], default="protocol")
    ap.add_argument("--n-images", type=int, default=None, help="pseudo-label this many pool images")
    ap.add_argument("--max-time", type=float, default=600.0, help="seconds of the whole self-training fit")
    ap.add_argument("--max-iter", type=int, default=100000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="SelfTrainedLandmarkDetector param=value")
    ap.add_argument("--detector-set", action="append", default=[], help="OneShotLandmarkDetector param=value")
    ap.add_argument("--out", default=None, help="save the self-trained model here")
    ap.add_argument("--json", default=str(OUT / "selftrain.json"))
    ap.add_argument("--name", default="self-trained")
    args = ap.parse_args(argv)

    pool_ids, eval_ids = SPLITS[args.split]
    data = load_cephalograms(args.data, load_images=True)
    idx = {k: i for i, k in enumerate(data.ids)}
    emb = load(args.embedder)
    emb.set_params(n_threads=args.threads)
    pool = [data.images[idx[k]] for k in pool_ids]
    if args.template == "suggested":
        t0 = time.perf_counter()
        sug = suggest_templates(emb, pool)
        template_id = pool_ids[int(sug.indices[0])]
        print(f"suggested template {template_id} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        template_id = choose_template(data, pool_ids)[0]
    chosen = list(pool_ids)
    if args.n_images is not None and args.n_images < len(pool_ids):
        others = [k for k in pool_ids if k != template_id]
        draw = np.random.default_rng(args.seed).choice(len(others), args.n_images - 1, replace=False)
        chosen = sorted([template_id] + [others[i] for i in draw])
    det_params = dict(DETECTOR, **key_values(args.detector_set, "--detector-set"))
    det = OneShotLandmarkDetector(embedder=emb, **det_params).fit(data.images[idx[template_id]],
                                                                  data.landmarks[idx[template_id]])
    params = dict(max_time=args.max_time, max_iter=args.max_iter, n_threads=args.threads, random_state=args.seed)
    params.update(key_values(args.set, "--set"))
    st = SelfTrainedLandmarkDetector(detector=det, **params)
    t0 = time.perf_counter()
    st.fit([data.images[idx[k]] for k in chosen])
    fit_wall = time.perf_counter() - t0
    if args.out:
        st.save(args.out)
    queries = [data.images[idx[k]] for k in eval_ids]
    truth = np.stack([data.landmarks[idx[k]] for k in eval_ids])
    rows = {}
    for name, predict in (("one-shot (pseudo-labeller)", det.predict), (args.name, st.predict)):
        pred, sec = timed_predict(predict, queries, args.threads)
        rows[name] = dict(summary(pred, truth), seconds_per_query=sec)
    pl_truth = np.stack([data.landmarks[idx[k]] for k in chosen])
    pl_err = score(st.pseudo_labels_, pl_truth)[0]
    kept = st.pseudo_weights_ > 0
    info = {"template": template_id, "n_images": len(chosen), "n_iter": st.n_iter_, "train_time": st.train_time_,
            "fit_wall": fit_wall, "kept_fraction": float(kept.mean()),
            "pseudo_label_mre_kept": float(np.nanmean(pl_err[kept])),
            "pseudo_label_mre_dropped": float(np.nanmean(pl_err[~kept])) if (~kept).any() else None,
            "final_loss": float(np.mean(st.history_[-50:])) if st.history_ else None}
    print(f"split {args.split}, template {template_id}, {len(chosen)} images, {st.n_iter_} iterations, "
          f"fit {fit_wall:.0f} s; pseudo-labels kept {100 * info['kept_fraction']:.0f}% "
          f"(MRE kept {info['pseudo_label_mre_kept']:.1f} px, dropped {info['pseudo_label_mre_dropped']})")
    heads = ("MRE", "median", "p95", "max", "SDR20", "worst lm", "s/q")
    print(f"{'method':28s} " + " ".join(f"{h:>6s}" for h in heads))
    for name, r in rows.items():
        print(f"{name:28s} {r['mre']:6.1f} {r['median']:6.1f} {r['p95']:6.1f} {r['max']:6.0f} "
              f"{100 * r['sdr20']:6.1f} {r['worst_landmark_mre']:8.1f} {r['seconds_per_query']:6.3f}")
    result = {"benchmark": "cephalometric self-training", "date": datetime.date.today().isoformat(),
              "machine": machine_info(None), "command": command_line(), "split": args.split,
              "params": {k: repr(v) for k, v in params.items()}, "detector": det_params, "info": info, "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
