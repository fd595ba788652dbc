"""Cephalometric one-shot landmark benchmark: one labelled template, 19 landmarks predicted on 30
unseen cephalograms, errors in full-resolution pixels. Protocol helpers, rows, table printing.

Run from the repository root (the peers need the ``bench`` extra, in an environment of its own:
see benchmarks/README.md; benchmarks/RESULTS.md has the recorded runs)::

    python -m benchmarks.landmarks.cephalometric --methods ants-affine,ants-syn,elastix-bspline \\
        --samlearn-model benchmarks/out/ceph_samlearn.samlearn

Protocol (fixed; every row of one run uses exactly this):

* data: ``samlearn.datasets.load_cephalograms``; ground truth = mean of the two annotators (the
  other one alone where one annotation is missing), in the PNG world frame (half-resolution
  pixels);
* split: images 001-070 may be used for training and for choosing the template; images 071-100
  are the evaluation queries and are never trained on;
* template: ONE image of 001-070, the one whose normalised landmarks are closest (sum of squared
  distances) to the mean normalised landmarks of 001-070 (the paper's rule, its ref. [50]).
  Normalisation of an image's 19 points (:func:`normalise_landmarks`): subtract their centroid,
  divide by their RMS distance to the centroid (translation and scale removed, rotation kept);
* errors: Euclidean distance to the ground truth, in full-resolution pixels (world distance times
  ``FULL_RESOLUTION_FACTOR`` = 2; 10 px = 1 mm at the original 0.1 mm pixels); summary by
  :func:`samlearn.metrics.landmark_summary`: MRE, SD, median, max, SDR at 20 and 40 px
  (2 and 4 mm); seconds per query (wall time of the prediction, template preparation included).

Rows:

* ``inter-annotator``: annotator 1 against annotator 2 on 071-100 (the human floor);
* ``identity``: the template's landmark coordinates copied unchanged. All 100 PNGs are 670 x 835
  with spacing 1, origin 0, so copying world coordinates is the same as copying normalised image
  coordinates;
* one row per registration peer (``benchmarks/registration/peers.py``): register template (fixed)
  to query (moving), carry the template landmarks through the returned transform. Preprocessing: the PNG
  (8-bit grey values as float) resized by ``--scale`` (default 0.5: 335 x 418 pixels, i.e. 0.4 mm
  pixels of the original) over the same physical extent, so world coordinates are unchanged;
  no intensity normalisation (all peers use Mattes mutual information).
  ``--threads`` ITK threads per tool (default 1).
  samlearn: ``--samlearn-threads`` torch threads; ``--samlearn-jobs N`` the detector's ``n_jobs``
  (N queries embedded and matched at once in threads, one torch thread each on 2 cores), the fair
  match for peers given ``--threads 2``.
* samlearn rows: any ``predict(template, template_points, queries) -> (n_queries, 19, 2)``
  callable goes through :func:`evaluate_predictor` with the same split, template and scoring; this
  is where ``evaluate_samlearn`` plugs in (see ``EXTRA_ROWS`` and :func:`main`).
* few-label samlearn (paper §IV-H, Table IX "x+1"): ``--samlearn-labelled N`` trains with the
  landmark labels (ground truth above, world mm) of the template plus N other images of 001-070,
  chosen by :func:`choose_labelled_ids` (the template first, then a draw without replacement by
  ``numpy.random.default_rng(--samlearn-label-seed)`` from the other 69 training ids in sorted
  order); every other training image stays unlabelled; rows are named "samlearn PRESET +N labels".
  Images 071-100 are never labelled, trained on or used for choices.

Data: ``--data``, else the shared data's ``cephalograms`` folder (``$SAMLEARN_SHARED_DATA``, else
``../shared/data`` beside the repository).

Output: a markdown table on stdout and JSON (protocol, machine, versions, rows with per-image
errors) in ``benchmarks/out/cephalometric.json`` (ignored by git).
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmarks._common import CEPH_DIR, OUT, command_line, key_values, machine_info, write_json
from samlearn.datasets import CEPH_EVAL_IDS as EVAL_IDS
from samlearn.datasets import CEPH_TRAIN_IDS as TRAIN_IDS
from samlearn.datasets import (
    FULL_RESOLUTION_FACTOR,
    choose_labelled_ids,
    choose_template,
    load_cephalograms,
    training_labels,
)
from samlearn.image import Image, read_image
from samlearn.metrics import landmark_summary, radial_errors

# ------------------------------------------------------------------------------------ protocol
RADII_PX = (20.0, 40.0)
DEFAULT_DATA = CEPH_DIR
DEFAULT_OUT = OUT / "cephalometric.json"

#: predict(template: Image, template_points (19, 2) world, queries: list[Image]) -> (n, 19, 2) world
Predictor = Callable[[Image, np.ndarray, Sequence[Image]], np.ndarray]


def score(pred, truth) -> tuple:
    """Radial errors in full-resolution pixels and their summary (MRE, SD, median, max, SDR at
    RADII_PX), for world-frame predictions and truth of shape (n, 19, 2)."""
    err = radial_errors(pred, truth, scale=FULL_RESOLUTION_FACTOR)
    return err, landmark_summary(err, radii=RADII_PX)


def _row(name: str, err: np.ndarray, summary: dict, seconds, threads, notes: str, ids) -> dict:
    return {"name": name, "mre": summary["mre"], "sd": summary["sd"], "median": summary["median"],
            "max": summary["max"], "sdr": {f"{r:g}": v for r, v in summary["sdr"].items()},
            "n_errors": summary["n_errors"], "seconds_per_query": seconds, "threads": threads,
            "notes": notes, "ids": list(ids),
            "errors_px": np.where(np.isnan(err), None, np.round(err, 3)).tolist()}


# ------------------------------------------------------------------------------------ rows
def row_inter_annotator(data, eval_ids: Sequence[str] = EVAL_IDS) -> dict:
    """Annotator 1 against annotator 2 on the evaluation images (pairs with a missing annotation
    are left out)."""
    idx = [data.ids.index(i) for i in eval_ids]
    a1, a2 = data.annotators[0][idx], data.annotators[1][idx].copy()
    a2[np.isnan(a1).any(-1)] = np.nan
    err, s = score(a1, a2)
    return _row("inter-annotator", err, s, None, None,
                f"{data.annotator_names[0]} vs {data.annotator_names[1]}", eval_ids)


def evaluate_predictor(name: str, predict: Predictor, data, template_id: str,
                       eval_ids: Sequence[str] = EVAL_IDS, *, threads=None, notes: str = "",
                       verbose: bool = True) -> dict:
    """Score any predictor under the protocol: it gets the template image, the template's ground
    truth landmarks (world) and the query images; it returns (n_queries, 19, 2) world points.
    Seconds per query = wall time of the whole call / number of queries (see also
    :func:`retime_rows`)."""
    idx = [data.ids.index(i) for i in eval_ids]
    pred, seconds = _timed_call(predict, data, template_id, eval_ids)
    if pred.shape != (len(idx),) + data.landmarks.shape[1:]:
        raise ValueError(f"predictor {name!r} returned shape {pred.shape}, expected "
                         f"{(len(idx),) + data.landmarks.shape[1:]}")
    err, s = score(pred, data.landmarks[idx])
    if verbose:
        print(f"[{name}] MRE {s['mre']:.1f} px, median {s['median']:.1f}, {seconds:.2f} s/query",
              file=sys.stderr)
    return _row(name, err, s, seconds, threads, notes, eval_ids)


def _timed_call(predict: Predictor, data, template_id: str, eval_ids: Sequence[str]):
    """One call of ``predict`` on the protocol's inputs: (predictions, seconds per query)."""
    t = data.ids.index(template_id)
    template = read_image(data.image_paths[t])
    queries = [read_image(data.image_paths[data.ids.index(i)]) for i in eval_ids]
    t0 = time.perf_counter()
    pred = np.asarray(predict(template, data.landmarks[t].copy(), queries), dtype=np.float64)
    return pred, (time.perf_counter() - t0) / len(queries)


def retime_rows(timed, data, template_id: str, eval_ids: Sequence[str], repeats: int) -> None:
    """Time every ``(row, predictor)`` of ``timed`` ``repeats - 1`` more times, round-robin (one
    pass of every method, then the next pass), and report the median pass in place: on a shared
    machine whose speed drifts over minutes, methods timed back to back would otherwise meet
    different conditions. All passes go to ``seconds_per_query_passes``."""
    if repeats <= 1:
        return
    for row, _ in timed:
        row["seconds_per_query_passes"] = [row["seconds_per_query"]]
    for _ in range(repeats - 1):
        for row, predict in timed:
            row["seconds_per_query_passes"].append(_timed_call(predict, data, template_id, eval_ids)[1])
    for row, _ in timed:
        row["seconds_per_query"] = float(np.median(row["seconds_per_query_passes"]))


def identity_predictor(template, template_points, queries):
    """Copy the template coordinates into every query."""
    return np.repeat(np.asarray(template_points)[None], len(queries), axis=0)


def peer_predictor(method: str, *, scale: float = 0.5, threads: int = 1, verbose: bool = True) -> Predictor:
    """A registration peer as a predictor: images resized by ``scale`` (same physical extent, so
    world coordinates are unchanged), template registered as fixed to each query as moving."""
    from benchmarks.registration import peers

    def predict(template, template_points, queries):
        fixed = _prepare(template, scale)
        out = []
        for k, q in enumerate(queries):
            res = peers.map_points(fixed, _prepare(q, scale), template_points, method, threads=threads)
            out.append(res.points)
            if verbose:
                print(f"  {method} query {k + 1}/{len(queries)}: {res.seconds:.1f} s", file=sys.stderr)
        return np.stack(out)

    return predict


def _prepare(image: Image, scale: float) -> Image:
    if scale == 1.0:
        return image
    size = np.maximum(8, np.round(np.asarray(image.size) * scale)).astype(int)
    return image.resize(size)


#: Extra rows: (name, factory(args) -> Predictor, notes).
EXTRA_ROWS: list = []


# ------------------------------------------------------------------------------------ samlearn
def extra_params(pairs: Sequence[str]) -> dict:
    """``--samlearn-set key=value`` pairs as a dict (values read as Python literals)."""
    return key_values(pairs, "--samlearn-set")


def train_samlearn(data, args, labelled_ids: Sequence[str] = ()):
    """Train ``SAMEmbedder(preset=args.samlearn_preset)`` on images 001-070 only for at most
    ``args.samlearn_minutes`` minutes of training on this machine; save it to
    ``args.samlearn_out``. Unlabelled unless ``labelled_ids`` (training ids whose ground-truth
    landmarks ``fit`` gets as ``y``). Returns the fitted embedder and the wall time."""
    from samlearn import SAMEmbedder
    params = dict(preset=args.samlearn_preset, max_time=60.0 * args.samlearn_minutes, max_iter=10**9,
                  random_state=args.samlearn_seed, verbose=1, n_threads=args.samlearn_threads)
    params.update(extra_params(args.samlearn_set))
    emb = SAMEmbedder(**params)
    train = [read_image(data.image_paths[data.ids.index(i)]) for i in TRAIN_IDS]
    y = training_labels(data, labelled_ids) if labelled_ids else None
    if labelled_ids:
        print(f"samlearn: landmark labels of {len(labelled_ids)} training images {list(labelled_ids)} "
              f"(label_positive_prob={emb.label_positive_prob})", file=sys.stderr)
    t0 = time.perf_counter()
    emb.fit(train, y)
    wall = time.perf_counter() - t0
    print(f"samlearn: {emb.n_iter_} iterations, {emb.train_time_:.0f} s of training "
          f"({wall:.0f} s wall with preprocessing), {emb.n_iter_ / emb.train_time_:.2f} it/s",
          file=sys.stderr)
    if args.samlearn_out:
        emb.save(args.samlearn_out)
    return emb, wall


def samlearn_predictor(embedder, **detector_params) -> Predictor:
    """One-shot detection with a fitted embedder: fit the detector on the template, predict the
    queries (embedding + matching are both inside the timed call)."""
    from samlearn import OneShotLandmarkDetector

    def predict(template, template_points, queries):
        det = OneShotLandmarkDetector(embedder=embedder, **detector_params).fit(template, template_points)
        return det.predict(list(queries))

    return predict


def self_trained_predictor(path, **params) -> Predictor:
    """A saved ``SelfTrainedLandmarkDetector`` (``params`` set on it, e.g. ``shape_check=False``):
    it predicts the queries alone (it was fitted with its own template and pseudo-labels); the
    protocol's template is ignored."""
    from samlearn import SelfTrainedLandmarkDetector
    det = SelfTrainedLandmarkDetector.load(path).set_params(**params)
    return lambda template, pts, queries: det.predict(list(queries))


def self_trained_rows(specs: Sequence[str]) -> list:
    """``(name, path)`` of ``--self-trained`` values ``NAME=PATH`` (or ``PATH``)."""
    out = []
    for spec in specs:
        name, _, path = spec.rpartition("=")
        out.append((name or f"samlearn self-trained ({Path(path).name})", Path(path)))
    return out


SAMLEARN_VARIANTS = (  # the first row is the detector's defaults (consistency="coarse" since 2026-11-26)
    ("samlearn {preset}{labels} (S^g+S^l, coarse-to-fine window, SAM-coarse prior)", {}),
    # world unit = one half-resolution pixel (the loader's PNGs): a 32-unit patch is 64 full-res px
    ("samlearn {preset}{labels}: + NCC refinement (patch radius 32 half-res px)", {"ncc_radius_mm": 32.0}),
    ("samlearn {preset}{labels}: affine check instead of the SAM-coarse prior", {"consistency": "affine"}),
    ("samlearn {preset}{labels}: without any check", {"consistency": None}),
    ("samlearn {preset}{labels}: S^g+S^l over the whole image (paper rule)",
     {"search_radius_mm": None, "consistency": None}),
    ("samlearn {preset}{labels}: global only", {"mode": "global", "consistency": None}),
    ("samlearn {preset}{labels}: local only", {"mode": "local", "search_radius_mm": None, "consistency": None}),
)

# ------------------------------------------------------------------------------------ table
def markdown_table(rows: Sequence[dict]) -> str:
    r1, r2 = (f"{r:g}" for r in RADII_PX)
    lines = [f"| method | MRE px | SD | median | max | SDR {r1} px (2 mm) | SDR {r2} px (4 mm) | s / query | threads |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sec = "-" if r["seconds_per_query"] is None else f"{r['seconds_per_query']:.2f}"
        thr = "-" if r["threads"] is None else str(r["threads"])
        lines.append(f"| {r['name']} | {r['mre']:.1f} | {r['sd']:.1f} | {r['median']:.1f} | {r['max']:.0f} | "
                     f"{100 * r['sdr'][r1]:.1f}% | {100 * r['sdr'][r2]:.1f}% | {sec} | {thr} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cephalogram folder")
    ap.add_argument("--methods", default="ants-affine,ants-syn,elastix-bspline",
                    help="comma-separated peers (benchmarks/registration/peers.py METHODS), or 'none'")
    ap.add_argument("--scale", type=float, default=0.5, help="image resize factor for the peers")
    ap.add_argument("--threads", type=int, default=1, help="ITK threads per peer")
    ap.add_argument("--limit", type=int, default=None, help="only the first N evaluation images (smoke runs)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output")
    ap.add_argument("--machine", default=None, help="a note on the machine, kept beside its description")
    ap.add_argument("--samlearn-minutes", type=float, default=None,
                    help="train samlearn on 001-070 for at most this many minutes (then evaluate it)")
    ap.add_argument("--samlearn-model", type=Path, default=None, help="evaluate this saved model instead")
    ap.add_argument("--samlearn-preset", default="xray-lite")
    ap.add_argument("--samlearn-seed", type=int, default=0)
    ap.add_argument("--samlearn-threads", type=int, default=None, help="torch threads for samlearn")
    ap.add_argument("--repeats", type=int, default=1,
                    help="time every method this many times, round-robin; the median pass is reported")
    ap.add_argument("--samlearn-jobs", type=int, default=None,
                    help="n_jobs of the detector: queries embedded and matched in that many threads")
    ap.add_argument("--samlearn-set", action="append", default=[], help="extra SAMEmbedder param=value")
    ap.add_argument("--self-trained", action="append", default=[],
                    help="NAME=PATH of a saved SelfTrainedLandmarkDetector, scored as one more row")
    ap.add_argument("--samlearn-out", type=Path, default=OUT / "ceph_samlearn.samlearn")
    ap.add_argument("--samlearn-labelled", type=int, default=0,
                    help="few-label training: landmarks of the template plus N other images of 001-070")
    ap.add_argument("--samlearn-label-seed", type=int, default=0,
                    help="seed of the draw of the N extra labelled images (choose_labelled_ids)")
    args = ap.parse_args(argv)
    if not 0 <= args.samlearn_labelled <= len(TRAIN_IDS) - 1:
        ap.error(f"--samlearn-labelled must be in [0, {len(TRAIN_IDS) - 1}]")
    if args.samlearn_labelled and args.samlearn_model is not None:
        ap.error("--samlearn-labelled applies to training (--samlearn-minutes); a saved model "
                 "(--samlearn-model) was trained with whatever labels it was trained with")

    methods = [] if args.methods in ("", "none") else args.methods.split(",")
    if methods:
        from benchmarks.registration import peers
        bad = [m for m in methods if m not in peers.METHODS]
        if bad:
            ap.error(f"unknown methods {bad}; choose from {peers.METHODS}")
        peers.configure_threads(args.threads)  # before any ITK registration
    data = load_cephalograms(args.data)
    eval_ids = EVAL_IDS[: args.limit] if args.limit else EVAL_IDS
    template_id, dists = choose_template(data)
    print(f"template: {template_id} (normalised-landmark distance {dists.min():.4f}; "
          f"median over 001-070 {np.median(dists):.4f})", file=sys.stderr)
    labelled_ids = (choose_labelled_ids(template_id, args.samlearn_labelled, args.samlearn_label_seed)
                    if args.samlearn_labelled else [])
    embedder, train_info = None, {}
    if args.samlearn_model is not None:  # trained earlier (its training record travels in the file)
        from samlearn import load
        embedder = load(args.samlearn_model)
        # inference settings apply to the loaded model; its saved n_threads (that of its training)
        # would otherwise override --samlearn-threads during transform
        embedder.set_params(n_threads=args.samlearn_threads, **extra_params(args.samlearn_set))
    elif args.samlearn_minutes:  # train first, while nothing else runs
        embedder, wall = train_samlearn(data, args, labelled_ids)
        train_info = {"wall_seconds": wall}
    if embedder is not None:
        train_info.update(preset=embedder.preset_, n_iter=embedder.n_iter_,
                          train_seconds=embedder.train_time_, train_ids=[TRAIN_IDS[0], TRAIN_IDS[-1]],
                          interrupted=embedder.interrupted_, labelled_ids=labelled_ids,
                          label_positive_prob=embedder.label_positive_prob if labelled_ids else None)

    rows = [row_inter_annotator(data, eval_ids),
            evaluate_predictor("identity (template coordinates)", identity_predictor, data,
                               template_id, eval_ids, notes="world = PNG pixel; all images 670 x 835")]
    if methods:
        warm = peers.warm_up(methods)
        print(f"warm-up (not timed): { {k: round(v, 1) for k, v in warm.items()} }", file=sys.stderr)
    timed = []  # (row, predictor) of every timed method, for --repeats
    for m in methods:
        predictor = peer_predictor(m, scale=args.scale, threads=args.threads)
        rows.append(evaluate_predictor(
            m, predictor, data, template_id, eval_ids,
            threads=args.threads, notes=f"PNG resized x{args.scale:g}, template fixed, query moving"))
        timed.append((rows[-1], predictor))
    if embedder is not None:
        notes = (f"trained on 001-070 only: {embedder.n_iter_} iterations, "
                 f"{embedder.train_time_ / 60:.1f} min on this CPU")
        tag = ""
        if labelled_ids:
            tag = f" +{len(labelled_ids) - 1} labels"
            notes += (f"; landmark labels of the template and {len(labelled_ids) - 1} other training "
                      f"images ({', '.join(labelled_ids[1:])})")
        for name, params in SAMLEARN_VARIANTS:
            threads = args.samlearn_threads
            if args.samlearn_jobs is not None and args.samlearn_jobs > 1:
                threads = f"{args.samlearn_jobs} jobs"  # one thread each on this 2-core machine
            predictor = samlearn_predictor(embedder, n_jobs=args.samlearn_jobs, **params)
            rows.append(evaluate_predictor(name.format(preset=embedder.preset_, labels=tag), predictor,
                                           data, template_id, eval_ids, threads=threads, notes=notes))
            timed.append((rows[-1], predictor))
    for name, path in self_trained_rows(args.self_trained):
        predictor = self_trained_predictor(path)
        rows.append(evaluate_predictor(name, predictor, data, template_id, eval_ids,
                                       threads=args.samlearn_threads, notes=str(path)))
        timed.append((rows[-1], predictor))
    for name, factory, notes in EXTRA_ROWS:
        predictor = factory(args)
        rows.append(evaluate_predictor(name, predictor, data, template_id, eval_ids, notes=notes))
        timed.append((rows[-1], predictor))
    retime_rows(timed, data, template_id, eval_ids, args.repeats)

    result = {
        "benchmark": "cephalometric one-shot landmarks",
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(args.machine),
        "command": command_line(),
        "versions": _versions(methods),
        "protocol": {"train_ids": [TRAIN_IDS[0], TRAIN_IDS[-1]], "eval_ids": list(eval_ids),
                     "template": template_id, "ground_truth": "mean of the two annotators",
                     "template_rule": "min sum of squared distances of centroid-removed, RMS-scaled "
                                      "landmarks to their mean over 001-070",
                     "error_unit": "full-resolution pixel (0.1 mm)", "radii_px": list(RADII_PX),
                     "peer_scale": args.scale, "threads": args.threads, "repeats": args.repeats,
                     "labelled_ids": labelled_ids, "label_seed": args.samlearn_label_seed},
        "samlearn_training": train_info,
        "rows": rows,
    }
    write_json(args.out, result)
    print(markdown_table(rows))
    print(f"\nJSON: {args.out}", file=sys.stderr)
    return result


def _versions(methods) -> dict:
    if methods:
        from benchmarks.registration import peers
        return peers.peer_versions()
    return {"numpy": np.__version__}


if __name__ == "__main__":
    main()
