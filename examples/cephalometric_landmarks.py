"""One-shot landmarks on real cephalometric X-rays: mark 19 landmarks on ONE image, find them in others.

    python examples/cephalometric_landmarks.py ../shared/data/cephalograms
    python examples/cephalometric_landmarks.py DATA --minutes 30 --save ceph.samlearn   # better model
    python examples/cephalometric_landmarks.py DATA --model ceph.samlearn --queries 50   # reuse it

DATA is a folder with ``images/NNN.png`` and ``landmarks.csv`` (the layout of the public Hamedan
cephalometric set; see ``samlearn.datasets.load_cephalograms``). The embedder trains on the images
without their landmarks (self-supervised, preset ``xray-lite``); only the template's landmarks are
used. Training and template use the first images, the queries the last ones, so they never overlap.
Errors are reported in full-resolution pixels (0.1 mm each), as in the cephalometric literature; the
two human annotators of this set differ by about a dozen pixels on average. The last line is the
error of copying the template's points unchanged: what the matching must beat.
"""
import argparse
import time

import numpy as np

import samlearn
from samlearn.datasets import FULL_RESOLUTION_FACTOR, PIXEL_SIZE_MM, load_cephalograms
from samlearn.metrics import landmark_summary, radial_errors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="cephalogram folder (images/ and landmarks.csv)")
    ap.add_argument("--model", default=None, help="use this trained model instead of training one")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time when training (default 3)")
    ap.add_argument("--train", type=int, default=50, help="unlabeled training images (default: the first 50)")
    ap.add_argument("--queries", type=int, default=10, help="query images (default: the last 10)")
    ap.add_argument("--template", type=int, default=0, help="index of the template image (default 0)")
    ap.add_argument("--save", default=None, help="save the trained model to this file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = load_cephalograms(args.data)
    n = len(data.ids)
    if args.train + args.queries > n:
        raise SystemExit(f"--train {args.train} + --queries {args.queries} exceeds the {n} images")
    train_paths = data.image_paths[: args.train]
    query_idx = list(range(n - args.queries, n))

    if args.model:
        emb = samlearn.load(args.model)
        print(f"loaded {args.model} ({emb.preset_}, {emb.n_iter_} iterations)")
    else:
        emb = samlearn.SAMEmbedder(preset="xray-lite", max_time=60 * args.minutes, max_iter=None,
                                   random_state=args.seed, verbose=1)
        emb.fit(train_paths)   # no landmarks: self-supervised
        if args.save:
            emb.save(args.save)

    det = samlearn.OneShotLandmarkDetector(embedder=emb)
    det.fit(data.image_paths[args.template], data.landmarks[args.template])
    t0 = time.perf_counter()
    pred = det.predict([data.image_paths[i] for i in query_idx])
    sec = (time.perf_counter() - t0) / len(query_idx)
    # world units of the half-resolution PNGs x 2 = full-resolution pixels
    err = radial_errors(pred, data.landmarks[query_idx], scale=FULL_RESOLUTION_FACTOR)
    px_per_mm = 1.0 / PIXEL_SIZE_MM
    s = landmark_summary(err, radii=(20.0, 25.0, 30.0, 40.0))  # 2, 2.5, 3, 4 mm in px
    print(f"{len(query_idx)} queries x {err.shape[1]} landmarks, {sec:.2f} s per query")
    print(f"MRE {s['mre']:.1f} px ({s['mre'] / px_per_mm:.2f} mm), median {s['median']:.1f} px, "
          f"max {s['max']:.1f} px")
    print("success rate within 2 / 2.5 / 3 / 4 mm: "
          + " / ".join(f"{100 * v:.0f} %" for v in s["sdr"].values()))
    # the baseline any matching must beat: the template's points copied as they are
    copied = np.repeat(data.landmarks[args.template][None], len(query_idx), axis=0)
    base = radial_errors(copied, data.landmarks[query_idx], scale=FULL_RESOLUTION_FACTOR)
    print(f"copying the template's points instead: MRE {np.nanmean(base):.1f} px")
    return s


if __name__ == "__main__":
    main()
