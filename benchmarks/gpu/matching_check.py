"""Device check of the matching engine: same answers on an accelerator as on the CPU, and timings.

Runs match_points on analytic maps (Fourier features of world position, known peaks) on the CPU
and on ``--device`` (default cuda), checks that points agree to 1e-3 mm and scores to 1e-4 for
every mode / window / top-k combination, then times the 2 mm chest-CT-sized case (local grid
90x128x128, global 12x20x20, 128 channels, 19 points) on the device, whole grid vs windowed.
Needs only torch, numpy, SimpleITK and the package; prints one JSON line per result.

    python -m benchmarks.gpu.matching_check --device cuda
"""
import argparse
import json

import numpy as np
import torch

from benchmarks._common import machine_info, timed
from samlearn import ImageGeometry
from samlearn.embedding import Embedding, EmbeddingMap
from samlearn.matching import match_points, template_vectors


def feature_map(geom, c, scale, gen):
    omega = torch.randn(c, geom.ndim, generator=gen, dtype=torch.float64) / scale
    phase = torch.rand(c, generator=gen, dtype=torch.float64) * 2 * np.pi
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geom.shape], indexing="ij"), -1).reshape(-1, geom.ndim)
    world = torch.as_tensor(geom.array_index_to_world(idx))
    f = torch.nn.functional.normalize(torch.cos(world @ omega.T + phase), dim=1)
    return EmbeddingMap(f.T.reshape(c, *geom.shape).float().contiguous(), geom)


def analytic(geom, g_stride, l_stride, c, seed):
    gen = torch.Generator().manual_seed(seed)
    g, loc = geom.strided(g_stride), geom.strided(l_stride)
    return Embedding(feature_map(g, c, 3 * g.spacing.max(), gen), feature_map(loc, c, 3 * loc.spacing.max(), gen), geom)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    dev = args.device
    print(json.dumps({"machine": machine_info()}), flush=True)
    rng = np.random.default_rng(0)
    ok = True
    for ndim in (2, 3):
        size = (96, 80) if ndim == 2 else (48, 40, 30)
        d, _ = np.linalg.qr(rng.normal(size=(ndim, ndim)))
        geom = ImageGeometry(size, (1.1, 0.8, 2.0)[:ndim], rng.uniform(-50, 50, ndim), d)
        emb = analytic(geom, 8, 2, 64, ndim)
        pts = geom.index_to_world(rng.uniform(0.1, 0.9, (12, ndim)) * (np.asarray(size) - 1))
        g, loc = template_vectors(emb, pts)
        emb_d = emb.to(dev)
        for kw in [dict(mode="sum"), dict(mode="sum", search_radius_mm="auto"), dict(mode="local"),
                   dict(mode="global"), dict(mode="sum", top_k=3), dict(mode="sum", chunk_size=5000)]:
            a = match_points(g, loc, emb, **kw)
            b = match_points(g.to(dev), loc.to(dev), emb_d, **kw)
            dp = float(np.nanmax(np.abs(a.hypotheses - b.hypotheses)))
            sa, sb = a.hypothesis_scores, b.hypothesis_scores
            if not np.array_equal(np.isfinite(sa), np.isfinite(sb)):
                ds = float("inf")
            else:
                ds = float(np.abs(sa - sb)[np.isfinite(sa)].max())
            good = dp < 1e-3 and ds < 1e-4
            ok &= good
            print(json.dumps({"ndim": ndim, "kwargs": kw, "max_point_diff_mm": dp, "max_score_diff": ds,
                              "ok": good}), flush=True)
    # timing on the device
    gen = torch.Generator(device=dev).manual_seed(0)
    ig = ImageGeometry((256, 256, 180), 2.0, (-255.0, -255.0, -180.0))
    maps = []
    for geom in (ig.strided((12.8, 12.8, 15.0)), ig.strided(2)):
        data = torch.randn(128, *geom.shape, generator=gen, device=dev)
        maps.append(EmbeddingMap(torch.nn.functional.normalize(data, dim=0), geom))
    emb = Embedding(maps[0], maps[1], ig)
    pts = ig.index_to_world(rng.uniform(0.2, 0.8, (19, 3)) * 255)
    g, loc = template_vectors(emb, pts)
    for label, kw in [("sum, whole grid", dict(search_radius_mm=None)),
                      ("sum, window auto", dict(search_radius_mm="auto")),
                      ("sum, whole grid, top_k=3", dict(search_radius_mm=None, top_k=3))]:
        ts = timed(lambda: match_points(g, loc, emb, **kw), 5, warmup=1, device=dev).wall
        print(json.dumps({"case": "CT 90x128x128 local, C=128, K=19", "device": dev, "config": label,
                          "min_s": round(float(ts.min()), 5), "median_s": round(float(np.median(ts)), 5)}),
              flush=True)
    print(json.dumps({"all_equal_to_cpu": bool(ok)}))


if __name__ == "__main__":
    main()
