"""Training iterations per second of ``SAMEmbedder(preset="xray-lite")`` on the cephalograms'
training images 001-070, for a few (torch threads, DataLoader workers) settings: which use of a
small CPU gives the 30-minute budget the most iterations. Each setting trains from scratch for
``--seconds`` (same seed); run it on an otherwise idle machine.

    python -m benchmarks.speed.xray_train_speed --seconds 75 --settings 1,1 2,1 2,0
"""
from __future__ import annotations

import argparse

from benchmarks._common import CEPH_DIR, machine_summary
from samlearn import SAMEmbedder
from samlearn.datasets import CEPH_TRAIN_IDS, load_cephalograms


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(CEPH_DIR), help="cephalogram folder")
    ap.add_argument("--seconds", type=float, default=75.0)
    ap.add_argument("--settings", nargs="+", default=["1,1", "2,1", "2,0"], help="threads,workers pairs")
    args = ap.parse_args(argv)
    data = load_cephalograms(args.data, load_images=True)
    train = [data.images[data.ids.index(i)] for i in CEPH_TRAIN_IDS]
    print(f"# {machine_summary()}")
    print("| torch threads | DataLoader workers | iterations | training s | it/s |")
    print("|---:|---:|---:|---:|---:|")
    for setting in args.settings:
        threads, workers = (int(v) for v in setting.split(","))
        emb = SAMEmbedder(preset="xray-lite", max_time=args.seconds, max_iter=10**9, n_threads=threads,
                          num_workers=workers, random_state=0).fit(train)
        print(f"| {threads} | {workers} | {emb.n_iter_} | {emb.train_time_:.0f} | "
              f"{emb.n_iter_ / emb.train_time_:.3f} |", flush=True)


if __name__ == "__main__":
    main()
