"""Time the similarity search (samlearn.matching.match_points) on map sizes of real use.

Reports the minimum and the median over ``--repeats`` runs after one warm-up (the minimum is the
figure least disturbed by other load on a shared machine) and the median CPU time of this process
(with one thread, the best estimate of the cost on an idle core). Maps are random unit vectors (the
search cost does not depend on their content); template vectors are read from the query maps at
random points. Cases: a 2 mm chest CT (local grid 90x128x128,
global 12x20x20, 128 channels, 19 points) and a 512x512 X-ray (local 128x128, global 32x32).

    python -m benchmarks.speed.matching_speed [--threads 1] [--repeats 3]

Prints one JSON line for the machine, then one per case and configuration.
"""
import argparse
import json

import numpy as np
import torch

from benchmarks._common import machine_info, timed
from samlearn import ImageGeometry
from samlearn.embedding import Embedding, EmbeddingMap
from samlearn.matching import match_points, resolve_search_radius, template_vectors


def random_map(geom, channels, gen):
    data = torch.randn(channels, *geom.shape, generator=gen)
    return EmbeddingMap(torch.nn.functional.normalize(data, dim=0), geom)


def case(name, image_geom, local_stride, global_stride, channels, n_points, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = Embedding(random_map(image_geom.strided(global_stride), channels, gen),
                    random_map(image_geom.strided(local_stride), channels, gen), image_geom)
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0.2, 0.8, size=(n_points, image_geom.ndim)) * (np.asarray(image_geom.size) - 1)
    gv, lv = template_vectors(emb, image_geom.index_to_world(idx))
    return name, emb, gv, lv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": machine_info()}), flush=True)
    cases = [
        case("CT 2 mm: local 90x128x128, global 12x20x20, C=128, K=19",
             ImageGeometry((256, 256, 180), 2.0, (-255.0, -255.0, -180.0)),
             local_stride=2, global_stride=(12.8, 12.8, 15.0), channels=128, n_points=19),
        case("X-ray 512x512: local 128x128, global 32x32, C=128, K=19",
             ImageGeometry((512, 512), 0.4), local_stride=4, global_stride=16, channels=128,
             n_points=19),
    ]
    rows = []
    for name, emb, gv, lv in cases:
        auto = resolve_search_radius("auto", emb)
        configs = [("sum, whole grid", dict(mode="sum", search_radius_mm=None)),
                   (f"sum, window 'auto' ({auto:.0f} mm)", dict(mode="sum", search_radius_mm="auto")),
                   ("sum, window 0.5x auto", dict(mode="sum", search_radius_mm=auto / 2)),
                   ("sum, whole grid, top_k=3", dict(mode="sum", search_radius_mm=None, top_k=3)),
                   ("global only", dict(mode="global"))]
        for label, kw in configs:
            t = timed(lambda: match_points(gv, lv, emb, **kw), args.repeats, warmup=1)
            rows.append({"case": name, "config": label, "min_s": round(float(t.wall.min()), 4),
                         "median_s": round(float(np.median(t.wall)), 4),
                         "cpu_median_s": round(float(np.median(t.cpu)), 4)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
