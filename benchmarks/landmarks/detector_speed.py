"""Seconds per query of OneShotLandmarkDetector on cephalograms, end to end and per stage.

The development split only (template from 001-050 by the benchmark's rule, queries 051-070): the
evaluation images 071-100 stay for benchmarks/landmarks/cephalometric.py. A saved model is loaded,
a detector (``--ncc-radius``; 0 for none) fitted on the template, and ``predict`` timed on the queries
``--repeats`` times per ``n_jobs`` value, alternating, so that a noisy machine affects all settings
alike (medians are reported). With one job the time is also split into stages by wrapping the
library's functions (preprocessing, network, matching calls, RANSAC, field, NCC).

To compare with an older commit in the same session, copy this checkout's benchmarks/ folder into
a worktree of that commit and run it there too (from each root), alternating; a stage whose
function an older samlearn does not have where this one looks is left out of its split:

    python -m benchmarks.landmarks.detector_speed --model benchmarks/out/ceph_samlearn.samlearn \\
        --jobs 1,2 --repeats 5 --out benchmarks/out/detector_speed.json
"""
from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

import samlearn
from benchmarks._common import CEPH_DIR, command_line, machine_info, write_json
from benchmarks.landmarks.dev_split import DEV_EVAL, DEV_TRAIN
from samlearn import OneShotLandmarkDetector, load
from samlearn.datasets import choose_template, load_cephalograms


def _module(name):
    try:
        return importlib.import_module(name)
    except ImportError:  # an older samlearn (see the docstring): its stages are left out
        return None


#: the modules whose functions the stages are: where the inference engine and the detector look
#: the names up when they call them
_INFERENCE = _module("samlearn.embedding.inference")
_LANDMARKS = _module("samlearn.apps.landmarks")


class StageClock:
    """Wall time per stage, by wrapping module functions (restored on exit)."""

    WRAPS = [(_INFERENCE, "preprocess", "preprocess"),
             (_INFERENCE, "run_network", "network"),
             (_LANDMARKS, "match_points", "match_points (4 calls)"),
             (_LANDMARKS, "fit_affine", "RANSAC affine"),
             (_LANDMARKS, "field_from_matches", "displacement field"),
             (_LANDMARKS, "ncc_refine", "NCC refinement")]

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self._saved = []

    def __enter__(self):
        for owner, name, label in self.WRAPS:
            if owner is None or not hasattr(owner, name):
                continue
            fn = getattr(owner, name)
            self._saved.append((owner, name, fn))

            def wrapped(*args, _fn=fn, _label=label, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    self.seconds[_label] += time.perf_counter() - t0
            setattr(owner, name, wrapped)
        return self

    def __exit__(self, *exc):
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a saved SAMEmbedder (xray preset)")
    ap.add_argument("--data", type=Path, default=CEPH_DIR, help="cephalogram folder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the process")
    ap.add_argument("--jobs", default="1,2", help="comma-separated n_jobs values of the detector")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ncc-radius", type=float, default=32.0, help="0: no NCC refinement")
    ap.add_argument("--machine", default=None, help="a note on the machine, kept beside its description")
    ap.add_argument("--label", default="", help="a name for this code version in the output")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"no data at {args.data}")
    torch.set_num_threads(args.threads)
    data = load_cephalograms(args.data, load_images=True)
    template_id = choose_template(data, DEV_TRAIN)[0]
    idx = {k: i for i, k in enumerate(data.ids)}
    t = idx[template_id]
    queries = [data.images[idx[k]] for k in DEV_EVAL]
    emb = load(args.model)
    emb.set_params(n_threads=args.threads)
    params = {} if args.ncc_radius <= 0 else {"ncc_radius_mm": args.ncc_radius}
    det = OneShotLandmarkDetector(embedder=emb, **params).fit(data.images[t], data.landmarks[t])
    det.predict(queries[:2])  # warm-up: network copy, caches
    jobs = [int(j) for j in args.jobs.split(",")]
    times = {j: [] for j in jobs}
    preds = {}
    for _ in range(args.repeats):
        for j in jobs:
            det.set_params(n_jobs=None if j == 1 else j)
            t0 = time.perf_counter()
            preds[j] = det.predict(queries)
            times[j].append((time.perf_counter() - t0) / len(queries))
    det.set_params(n_jobs=None)
    stage_runs = []
    for _ in range(max(1, args.repeats // 2)):
        with StageClock() as clock:
            t0 = time.perf_counter()
            det.predict(queries)
            total = time.perf_counter() - t0
        stage_runs.append((total, dict(clock.seconds)))
    total, stages = min(stage_runs, key=lambda r: r[0])  # the least disturbed run
    result = {
        "benchmark": "detector seconds per query (cephalometric dev split)",
        "date": datetime.date.today().isoformat(), "machine": machine_info(args.machine), "label": args.label,
        "samlearn": samlearn.__version__, "samlearn_path": str(Path(samlearn.__file__).parent),
        "torch": torch.__version__, "command": command_line(),
        "model": str(args.model), "threads": args.threads, "ncc_radius_mm": args.ncc_radius,
        "template": template_id, "queries": [DEV_EVAL[0], DEV_EVAL[-1]],
        "seconds_per_query": {str(j): times[j] for j in jobs},
        "median_seconds_per_query": {str(j): float(np.median(times[j])) for j in jobs},
        "max_difference_between_jobs_mm": float(max(np.abs(preds[j] - preds[jobs[0]]).max() for j in jobs)),
        "stages_ms_per_query": {k: 1000 * v / len(queries) for k, v in stages.items()},
        "stages_total_ms_per_query": 1000 * total / len(queries),
    }
    print(f"{args.label or 'this code'}: model {args.model.name}, {args.threads} torch thread(s), "
          f"NCC {'off' if args.ncc_radius <= 0 else args.ncc_radius}")
    for j in jobs:
        print(f"  n_jobs={j}: median {1000 * np.median(times[j]):.1f} ms/query "
              f"(runs: {', '.join(f'{1000 * v:.0f}' for v in times[j])})")
    print(f"  largest difference between n_jobs settings: {result['max_difference_between_jobs_mm']:.2g} mm")
    print(f"  stages (one job, least disturbed run, {result['stages_total_ms_per_query']:.1f} ms/query):")
    for k, v in sorted(result["stages_ms_per_query"].items(), key=lambda kv: -kv[1]):
        print(f"    {k:24s} {v:6.1f} ms")
    if args.out is not None:
        print(f"JSON: {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
