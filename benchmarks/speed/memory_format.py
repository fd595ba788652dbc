"""CPU inference speed of the default and the channels-last memory format, per preset.

For each case a lite network (trained for one iteration on synthetic images: the speed does not
depend on the weights) embeds the same image with ``channels_last=False`` and ``True``, one
thread; the two runs alternate and each reports the median of ``--repeats`` timed calls of
``SAMEmbedder.transform`` (resampling, normalisation and the network). The maps of both formats
are compared (they must agree up to float rounding).

    python -m benchmarks.speed.memory_format [--threads 1] [--repeats 7]

Cases: xray-lite on a 1,200 x 967 image at transform_scale 0.75 (384 x 384, the preset default)
and 1.0 (512 x 512); ct-lite on a 141 x 250 x 250 volume at 2 mm (the chest CT of the CPU
scaling benchmark, synthetic content here).
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from benchmarks._common import machine_summary, timed
from samlearn import Image, SAMEmbedder


def smooth(shape, spacing, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.normal(size=tuple(max(4, s // 16) for s in shape)).astype(np.float32)
    arr = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=shape,
                                          mode="bilinear" if len(shape) == 2 else "trilinear",
                                          align_corners=False)[0, 0].numpy()
    return Image.from_array(arr * 300 + rng.normal(0, 5, shape).astype(np.float32), spacing=spacing)


def fitted(preset, image, **params):
    emb = SAMEmbedder(preset=preset, max_iter=1, random_state=0, **params)
    return emb.fit([image, image])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    xray = smooth((1200, 967), (0.2, 0.2), seed=1)
    ct = smooth((141, 250, 250), (2.0, 2.0, 2.0), seed=2)
    cases = [("xray-lite, transform_scale 0.75 (384 x 384)", "xray-lite", xray, dict(transform_scale=0.75)),
             ("xray-lite, transform_scale 1.0 (512 x 512)", "xray-lite", xray, dict(transform_scale=1.0)),
             ("ct-lite, 141 x 250 x 250 at 2 mm", "ct-lite", ct, {})]
    print(f"# {machine_summary()}")
    print("| case | default s | channels-last s | default / channels-last | max abs map difference |")
    print("|---|---:|---:|---:|---:|")
    for name, preset, image, params in cases:
        emb = fitted(preset, image, n_threads=args.threads, **params)
        times = {False: [], True: []}
        maps = {}
        for _ in range(2):  # alternate the formats: drifts of a shared machine hit both alike
            for cl in (False, True):
                emb.set_params(channels_last=cl)
                # one warm-up call (and the inference copy of the network), then the timed calls
                times[cl] += timed(lambda: emb.transform(image), (args.repeats + 1) // 2, warmup=1).wall.tolist()
                maps[cl] = emb.transform(image)[0]
        diff = max(float((maps[False].local_map.data - maps[True].local_map.data).abs().max()),
                   float((maps[False].global_map.data - maps[True].global_map.data).abs().max()))
        a, b = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
