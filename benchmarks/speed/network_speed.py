"""Milliseconds per forward pass of saved models' inference networks (BatchNorm folded,
channels-last: what ``transform`` runs on the CPU) on one 384 x 384 image, one thread, the models
alternated; median of the passes after the first.

    python -m benchmarks.speed.network_speed model_a.samlearn model_b.samlearn [--size 384] [--passes 7]
"""
import argparse
import time

import numpy as np
import torch

from benchmarks._common import machine_summary
from samlearn import load
from samlearn._utils.parallel import limit_threads


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="saved SAMEmbedder files (2D)")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--passes", type=int, default=7)
    args = ap.parse_args(argv)
    nets = [load(m)._network_for_inference()[0] for m in args.models]
    x = torch.randn(1, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    times = {m: [] for m in args.models}
    with limit_threads(1), torch.no_grad():
        for _ in range(args.passes):  # the models alternate: drifts of a shared machine hit all alike
            for m, net in zip(args.models, nets):
                t0 = time.perf_counter()
                net(x)
                times[m].append(time.perf_counter() - t0)
    print(f"# {machine_summary()}")
    for m in args.models:
        print(f"{m}: {1000 * np.median(times[m][1:]):.1f} ms (median of {args.passes - 1})")


if __name__ == "__main__":
    main()
