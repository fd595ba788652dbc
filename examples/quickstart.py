"""Quickstart: learn anatomy from unlabeled synthetic CTs, then find landmarks one-shot.

    python examples/quickstart.py                  # ~3 minutes on a laptop CPU
    python examples/quickstart.py --minutes 10     # longer training, smaller errors

1. ``make_phantoms`` draws synthetic torso CTs (Hounsfield units, each with its own anatomy, pose and
   scan geometry) with 20 named landmarks as ground truth. Nothing is downloaded.
2. ``SAMEmbedder`` learns pixel-wise anatomical embeddings from the training CTs, without labels.
3. ``OneShotLandmarkDetector`` reads the landmarks of ONE template CT and finds them in new CTs.
All points are world millimetres (x, y, z), as SimpleITK reports them.
"""
import argparse

import numpy as np

import samlearn
from samlearn.datasets import make_phantoms
from samlearn.metrics import landmark_summary, radial_errors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0, help="training time (default 2)")
    ap.add_argument("--train", type=int, default=8, help="training phantoms (default 8)")
    ap.add_argument("--test", type=int, default=2, help="held-out phantoms (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="save the trained model here (e.g. phantoms.samlearn)")
    args = ap.parse_args(argv)

    # 1. data: unlabeled training CTs and held-out CTs with known landmarks
    train = make_phantoms(args.train, field_of_view="full", random_state=args.seed)
    test = make_phantoms(args.test, field_of_view="full", random_state=args.seed + 1000)
    print(f"{args.train} training CTs, e.g. {train.images[0]!r}")

    # 2. self-supervised training (labels are never used); ct-lite is the CPU preset; the demo's
    #    batch size and working spacing let a CPU learn something in minutes
    emb = samlearn.SAMEmbedder(preset="ct-lite", max_time=60 * args.minutes, max_iter=None,
                               batch_size=2, spacing_mm=4.0, random_state=args.seed, verbose=1)
    emb.fit(train.images)
    if args.model:
        emb.save(args.model)

    # 3. one template: the landmarks of the first training CT ...
    det = samlearn.OneShotLandmarkDetector(embedder=emb)
    det.fit(train.images[0], train.landmarks[0])
    # ... found in the held-out CTs
    points, scores = det.predict(test.images, return_scores=True)
    err = radial_errors(points, test.landmarks)
    s = landmark_summary(err, radii=(10.0, 20.0))
    print(f"mean radial error {s['mre']:.1f} mm, median {s['median']:.1f} mm, max {s['max']:.1f} mm "
          f"({s['n_errors']} landmarks), within 10 mm: {100 * s['sdr'][10.0]:.0f} %")
    for name, p, t, e in list(zip(test.landmark_names, points[0], test.landmarks[0], err[0]))[:5]:
        print(f"  {name:<24} found {np.round(p, 1)} mm, true {np.round(t, 1)} mm, error {e:.1f} mm")
    return s


if __name__ == "__main__":
    main()
