"""Self-training in 3D on the demo's synthetic CT phantoms: does the second stage
(:class:`samlearn.SelfTrainedLandmarkDetector`) gain over the one-shot detector there, and what
does a 3D training iteration cost on a CPU?

The demo's recipe (``samlearn.cli.demo``: ``ct-lite`` with its ``DEMO_PARAMS``, 20 training and 10
held-out full-field phantoms, the first training phantom as the template), on validation seeds
apart from the demo's (``--seed``, default 9000). The embedder trains ``--embedder-minutes``, the
self-training ``--selftrain-minutes`` (the whole fit: pseudo-labelling the training phantoms
included), both on the torch threads given. Errors in mm against the phantoms' exact landmarks.

    python -m benchmarks.demo.selftrain3d --embedder-minutes 5 --selftrain-minutes 5 --threads 1
"""
from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
import torch

from benchmarks._common import OUT, command_line, machine_info, write_json
from samlearn import OneShotLandmarkDetector, SAMEmbedder, SelfTrainedLandmarkDetector
from samlearn.cli.demo import DEMO_PARAMS
from samlearn.datasets import make_phantoms


def errors(pred, truth) -> dict:
    err = np.linalg.norm(pred - truth, axis=-1)
    return {"mre_mm": float(np.nanmean(err)), "median_mm": float(np.nanmedian(err)),
            "p95_mm": float(np.nanpercentile(err, 95)), "max_mm": float(np.nanmax(err))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedder-minutes", type=float, default=5.0)
    ap.add_argument("--selftrain-minutes", type=float, default=5.0)
    ap.add_argument("--n-train", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=10)
    ap.add_argument("--seed", type=int, default=9000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(OUT / "selftrain3d.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ss_train, ss_test, ss_model = np.random.SeedSequence(args.seed).spawn(3)
    train = make_phantoms(args.n_train, field_of_view="full", random_state=ss_train)
    test = make_phantoms(args.n_test, field_of_view="full", random_state=ss_test)
    emb = SAMEmbedder(preset="ct-lite", max_time=60 * args.embedder_minutes, max_iter=None, n_threads=args.threads,
                      random_state=int(ss_model.generate_state(1)[0] % 2 ** 31), **DEMO_PARAMS).fit(train.images)
    ok = np.isfinite(train.landmarks[0]).all(axis=1)
    det = OneShotLandmarkDetector(embedder=emb).fit(train.images[0], train.landmarks[0][ok])
    st = SelfTrainedLandmarkDetector(detector=det, max_time=60 * args.selftrain_minutes, max_iter=10 ** 6,
                                     n_threads=args.threads, random_state=0).fit(train.images)
    truth = test.landmarks[:, ok]
    rows = {}
    for name, est in (("one-shot detector", det), ("self-trained", st)):
        t0 = time.perf_counter()
        pred = est.predict(test.images)
        rows[name] = dict(errors(pred, truth), seconds_per_query=(time.perf_counter() - t0) / len(test.images))
    info = {"embedder_iterations": emb.n_iter_, "selftrain_iterations": st.n_iter_,
            "selftrain_train_seconds": st.train_time_, "selftrain_fit_seconds": st.fit_time_,
            "seconds_per_iteration": st.train_time_ / max(st.n_iter_, 1),
            "working_shape": list(st.network_.output_sizes(train.images[0].shape)[1]),
            "pseudo_labels_kept": float(st.pseudo_weights_.mean())}
    print(f"embedder {emb.n_iter_} iterations; self-training {st.n_iter_} iterations "
          f"({info['seconds_per_iteration']:.2f} s each), {100 * info['pseudo_labels_kept']:.0f}% pseudo-labels kept")
    for name, r in rows.items():
        print(f"{name:20s} MRE {r['mre_mm']:.1f} mm, median {r['median_mm']:.1f}, p95 {r['p95_mm']:.1f}, "
              f"max {r['max_mm']:.1f}, {r['seconds_per_query']:.2f} s/query")
    result = {"benchmark": "3D self-training on CT phantoms", "date": datetime.date.today().isoformat(),
              "machine": machine_info(None), "command": command_line(), "info": info, "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
