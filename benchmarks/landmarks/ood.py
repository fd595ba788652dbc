"""Out-of-domain check for X-ray landmark detectors: the cephalometric one-shot protocol on
deliberately altered copies of the query cephalograms (another resolution and magnification,
another intensity window, a cropped field of view, flipped contrast, noise and bias), with the
tail of the errors (95th percentile, maximum) reported next to the mean.

Run from the repository root, in the peers' environment (it has samlearn installed too; see
benchmarks/README.md)::

    ../venv-bench/bin/python -m benchmarks.landmarks.ood --split dev --methods ants-syn \\
        --samlearn-model benchmarks/out/dev.samlearn
    ../venv-bench/bin/python -m benchmarks.landmarks.ood --split eval --methods ants-syn \\
        --samlearn-model benchmarks/out/ceph_samlearn.samlearn [--self-trained NAME=PATH]

Protocol (that of benchmarks/landmarks/cephalometric.py, whose helpers this script imports):

* data and ground truth: ``samlearn.datasets.load_cephalograms``, mean of the two annotators, world
  frame = PNG half-resolution pixels;
* split (``--split``): ``eval`` = queries 071-100, template chosen from 001-070 by
  ``choose_template`` (the official numbers); ``dev`` = queries 051-070, template chosen from
  001-050 (``benchmarks/landmarks/dev_split.py``), for design choices without touching 071-100;
* the template is an ordinary, unaltered image with its ground truth; only the queries change;
* every variant is a deterministic function ``Image -> (Image, point_map)``; ``point_map`` takes
  the original world landmarks (..., 2) to the variant's world frame, so the ground truth follows
  the image exactly. Geometry is changed through the samlearn ``Image`` spacing / origin rather
  than by moving pixels wherever possible:

  - ``original``: unchanged (the in-domain reference; not pooled into "all variants");
  - ``rescaled``: resampled to 0.6 x the pixels per axis over the same physical extent (another
    detector resolution; world unchanged, anti-aliased), THEN spacing and origin multiplied by 1.3
    (another scanner magnification: the world extent is 1.3 x bigger). Every world point scales
    about the world origin: ``point_map(p) = 1.3 p`` exactly. Errors are reported in the ORIGINAL
    full-resolution px: the world error is divided by 1.3 before the usual
    ``FULL_RESOLUTION_FACTOR`` (a detector that is 10 px off on the anatomy scores 10 px);
  - ``rewindowed``: intensities (8-bit grey values) through a gamma 0.5 curve,
    ``255 (v / 255) ** 0.5``, then a narrowed window: clipped to their 10th-90th percentiles and
    rescaled to 0-255 (both steps monotone, so the order does not matter); geometry unchanged;
  - ``cropped``: the bottom 25 % of the rows and the right 15 % of the columns removed (kept:
    ``round(0.75 ny)`` rows, ``round(0.85 nx)`` columns; same spacing and origin, so world points do
    not move). Landmarks that fall outside the cropped grid (beyond its outer voxel borders) get
    NaN ground truth and are left out of the scoring (``radial_errors`` / ``landmark_summary``
    skip NaN truth; the count is ``n_missing``);
  - ``inverted``: ``255 - v`` (flipped contrast); geometry unchanged;
  - ``noisy``: multiplicative smooth bias field (a 4 x 4 grid of standard normals, B-spline
    interpolated over the image, rescaled to span exactly 0.7-1.3), then additive Gaussian noise of
    SD 20 grey levels, clipped to 0-255; seeded by ``(NOISE_SEED, crc32 of the pixels)``, so each
    image gets its own, reproducible field and noise; geometry unchanged;
* errors: Euclidean distance in full-resolution px (world distance x 2 / magnification);
  per variant MRE, median, 95th percentile (``numpy.nanpercentile``) and max; "all variants" pools
  every error of the five altered variants; seconds per query per variant in the JSON.

Rows: ``identity (template coordinates)`` (always: runs without any model); ``--methods``
registration peers (``peer_predictor``: PNG resized by ``--scale``, template fixed, query moving);
``--samlearn-model PATH``: the one-shot detector of ``samlearn.load(PATH)`` with default settings
and with ``ncc_radius_mm=32.0``; ``--self-trained NAME=PATH``:
``SelfTrainedLandmarkDetector.load(PATH)`` with and without its shape check, predicting the
queries alone (it was fitted on its own template, which must come from the split's training
ids); ``EXTRA_ROWS``: ``(name, factory(args) -> predictor, notes)``, as in cephalometric.py.

Output: a markdown table on stdout and JSON with per-image errors of every row and variant in
``benchmarks/out/ood_<split>.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks._common import OUT, command_line, machine_info, write_json
from benchmarks.landmarks.cephalometric import (
    DEFAULT_DATA,
    EVAL_IDS,
    RADII_PX,
    SAMLEARN_VARIANTS,
    TRAIN_IDS,
    _row,
    _versions,
    identity_predictor,
    peer_predictor,
    samlearn_predictor,
    self_trained_predictor,
    self_trained_rows,
)
from samlearn.datasets import FULL_RESOLUTION_FACTOR, choose_template, load_cephalograms
from samlearn.image import Image, ImageGeometry, read_image
from samlearn.metrics import landmark_summary, radial_errors

# ------------------------------------------------------------------------------------ variants
RESOLUTION = 0.6  # pixels per axis, relative
MAGNIFICATION = 1.3  # world extent, relative
GAMMA, WINDOW_PERCENTILES = 0.5, (10.0, 90.0)
CROP_BOTTOM, CROP_RIGHT = 0.25, 0.15
NOISE_SD, BIAS_RANGE, BIAS_GRID, NOISE_SEED = 20.0, (0.7, 1.3), 4, 0


def _same(points) -> np.ndarray:
    return np.array(points, dtype=np.float64)


def original(image: Image):
    return image, _same


def rescaled(image: Image):
    size = np.maximum(8, np.round(np.asarray(image.size) * RESOLUTION)).astype(int)
    small = image.resize(size)
    g = small.geometry
    geom = ImageGeometry(g.size, g.spacing * MAGNIFICATION, g.origin * MAGNIFICATION, g.direction)
    return Image(small.array, geom, image.source), lambda p: _same(p) * MAGNIFICATION


def rewindowed(image: Image):
    v = 255.0 * (np.clip(image.array, 0.0, 255.0) / 255.0) ** GAMMA
    lo, hi = np.percentile(v, WINDOW_PERCENTILES)
    return image.with_array(255.0 * (np.clip(v, lo, hi) - lo) / max(hi - lo, 1e-6)), _same


def cropped(image: Image):
    ny, nx = image.shape
    keep = (int(round(nx * (1 - CROP_RIGHT))), int(round(ny * (1 - CROP_BOTTOM))))  # (x, y)
    g = image.geometry
    geom = ImageGeometry(keep, g.spacing, g.origin, g.direction)

    def point_map(points):
        p = _same(points)
        flat = p.reshape(-1, 2)
        flat[~geom.contains(flat, margin=0.5)] = np.nan
        return flat.reshape(p.shape)

    return Image(image.array[: keep[1], : keep[0]], geom, image.source), point_map


def inverted(image: Image):
    return image.with_array(255.0 - image.array), _same


def noisy(image: Image):
    rng = np.random.default_rng([NOISE_SEED, zlib.crc32(image.array.tobytes())])
    coarse = Image.from_array(rng.standard_normal((BIAS_GRID, BIAS_GRID)))
    field = coarse.resize(image.size, interpolator="bspline").array.astype(np.float64)
    lo, hi = BIAS_RANGE
    field = lo + (hi - lo) * (field - field.min()) / max(np.ptp(field), 1e-12)
    v = image.array * field + rng.normal(0.0, NOISE_SD, size=image.shape)
    return image.with_array(np.clip(v, 0.0, 255.0)), _same


#: name -> Image -> (Image, point_map); "original" first, then the altered ones
VARIANTS: dict = {f.__name__: f for f in (original, rescaled, rewindowed, cropped, inverted, noisy)}
#: variants pooled into "all variants"
OOD_VARIANTS = tuple(v for v in VARIANTS if v != "original")
#: world magnification of a variant (its errors are divided by it: original full-resolution px)
WORLD_SCALE = {"rescaled": MAGNIFICATION}


def variant_inputs(name: str, data, ids: Sequence[str]):
    """The queries ``ids`` through variant ``name``: (images, ground truth (n, 19, 2) in each
    variant image's world frame, NaN where a landmark left the image)."""
    images, truth = [], []
    for i in ids:
        k = data.ids.index(i)
        image, point_map = VARIANTS[name](read_image(data.image_paths[k]))
        images.append(image)
        truth.append(point_map(data.landmarks[k]))
    return images, np.stack(truth)


# ------------------------------------------------------------------------------------ scoring
def summarise(err) -> dict:
    """``landmark_summary`` of full-resolution px errors plus their 95th percentile (NaN skipped)."""
    s = landmark_summary(err, radii=RADII_PX)
    s["p95"] = float(np.nanpercentile(err, 95))
    return s


def score_variant(pred, truth, variant: str):
    """Errors in ORIGINAL full-resolution px: world distance x FULL_RESOLUTION_FACTOR divided by
    the variant's world magnification; and their :func:`summarise`."""
    err = radial_errors(pred, truth, scale=FULL_RESOLUTION_FACTOR / WORLD_SCALE.get(variant, 1.0))
    return err, summarise(err)


def evaluate_cell(predict, template: Image, template_points, variant: str, queries, truth,
                  ids: Sequence[str]) -> dict:
    """One predictor on one variant's queries: ``_row``-style record plus ``p95``."""
    t0 = time.perf_counter()
    pred = np.asarray(predict(template, np.array(template_points), queries), dtype=np.float64)
    seconds = (time.perf_counter() - t0) / len(queries)
    if pred.shape != truth.shape:
        raise ValueError(f"predictor returned shape {pred.shape}, expected {truth.shape}")
    err, s = score_variant(pred, truth, variant)
    return dict(_row(variant, err, s, seconds, None, "", ids), p95=s["p95"])


def pooled(cells: dict) -> dict:
    """Summary of every error of the altered variants in ``cells`` together."""
    errs = [np.array(cells[v]["errors_px"], dtype=np.float64).ravel() for v in OOD_VARIANTS if v in cells]
    s = summarise(np.concatenate(errs))
    return {k: s[k] for k in ("mre", "sd", "median", "p95", "max", "n_errors", "n_missing")}


# ------------------------------------------------------------------------------------ rows
#: Extra rows: (name, factory(args) -> Predictor, notes), as in cephalometric.py.
EXTRA_ROWS: list = []


def build_predictors(args, methods: Sequence[str]) -> list:
    """(name, predictor, notes) of every row of this run, identity first."""
    out = [("identity (template coordinates)", identity_predictor,
            "template world coordinates copied (not magnified in 'rescaled')")]
    out += [(m, peer_predictor(m, scale=args.scale, threads=args.threads),
             f"PNG resized x{args.scale:g}, template fixed, query moving, {args.threads} ITK threads")
            for m in methods]
    if args.samlearn_model is not None:
        from samlearn import load
        emb = load(args.samlearn_model)
        emb.set_params(n_threads=args.samlearn_threads)
        for name, params in SAMLEARN_VARIANTS[:2]:  # defaults, + NCC refinement 32
            out.append((name.format(preset=emb.preset_, labels=""), samlearn_predictor(emb, **params),
                        f"{args.samlearn_model}: {emb.n_iter_} iterations"))
    for name, path in self_trained_rows(args.self_trained):
        out.append((name, self_trained_predictor(path), f"{path} (its own template)"))
        out.append((f"{name}, no shape check", self_trained_predictor(path, shape_check=False),
                    f"{path} (its own template), shape_check=False"))
    out += [(name, factory(args), notes) for name, factory, notes in EXTRA_ROWS]
    return out


def split_protocol(data, split: str, limit=None):
    """(template id, query ids) of ``split``: eval = 001-070 / 071-100, dev = 001-050 / 051-070."""
    if split == "dev":
        from benchmarks.landmarks.dev_split import DEV_EVAL, DEV_TRAIN
        train, queries = DEV_TRAIN, DEV_EVAL
    else:
        train, queries = TRAIN_IDS, EVAL_IDS
    return choose_template(data, train)[0], list(queries[:limit] if limit else queries)


def run_rows(predictors, data, template_id: str, ids, variants, verbose=True) -> list:
    """Every predictor on every variant (one variant's queries in memory at a time)."""
    t = data.ids.index(template_id)
    template, points = read_image(data.image_paths[t]), data.landmarks[t]
    cells = {name: {} for name, _, _ in predictors}
    for v in variants:
        queries, truth = variant_inputs(v, data, ids)
        for name, predict, _ in predictors:
            c = cells[name][v] = evaluate_cell(predict, template, points, v, queries, truth, ids)
            if verbose:
                print(f"[{name} | {v}] MRE {c['mre']:.1f} px, p95 {c['p95']:.1f}, max {c['max']:.0f}, "
                      f"{c['seconds_per_query']:.2f} s/query", file=sys.stderr)
    return [{"name": name, "notes": notes, "variants": cells[name],
             "all_variants": pooled(cells[name]) if set(OOD_VARIANTS) & set(variants) else None}
            for name, _, notes in predictors]


# ------------------------------------------------------------------------------------ table
def markdown_table(rows: Sequence[dict], variants: Sequence[str]) -> str:
    """Rows = methods; per variant (and "all variants") MRE, median, p95, max in full-res px."""
    groups = list(variants) + (["all variants"] if rows and rows[0]["all_variants"] else [])
    head = "| method | " + " | ".join(f"{g} MRE | median | p95 | max" for g in groups) + " |"
    lines = [head, "|---|" + "---:|" * (4 * len(groups))]
    for r in rows:
        cells = [r["variants"][v] for v in variants] + ([r["all_variants"]] if len(groups) > len(variants) else [])
        lines.append(f"| {r['name']} | " + " | ".join(
            f"{c['mre']:.1f} | {c['median']:.1f} | {c['p95']:.1f} | {c['max']:.0f}" for c in cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cephalogram folder")
    ap.add_argument("--split", choices=("dev", "eval"), default="dev",
                    help="dev: template from 001-050, queries 051-070; eval: 001-070 / 071-100")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--methods", default="ants-syn",
                    help="comma-separated peers (benchmarks/registration/peers.py METHODS), or 'none'")
    ap.add_argument("--scale", type=float, default=0.5, help="image resize factor for the peers")
    ap.add_argument("--threads", type=int, default=1, help="ITK threads per peer")
    ap.add_argument("--samlearn-model", default=None, help="a saved SAMEmbedder (samlearn.load)")
    ap.add_argument("--samlearn-threads", type=int, default=None, help="torch threads of the embedder")
    ap.add_argument("--self-trained", action="append", default=[],
                    help="NAME=PATH of a saved SelfTrainedLandmarkDetector (also scored without its shape check)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N queries (smoke runs)")
    ap.add_argument("--machine", default=None, help="free-text note on the machine, kept in the JSON")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/out/ood_<split>.json)")
    args = ap.parse_args(argv)
    args.variants = args.variants.split(",")
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {list(VARIANTS)}")
    return args


def protocol_record(args, template_id: str, ids) -> dict:
    return {"split": args.split, "template": template_id, "query_ids": list(ids),
            "ground_truth": "mean of the two annotators, mapped by each variant's point_map",
            "error_unit": "original full-resolution pixel (0.1 mm): world error x "
                          f"{FULL_RESOLUTION_FACTOR:g} / variant magnification",
            "variants": list(args.variants), "pooled": list(OOD_VARIANTS),
            "rescaled": {"resolution": RESOLUTION, "magnification": MAGNIFICATION},
            "rewindowed": {"gamma": GAMMA, "window_percentiles": list(WINDOW_PERCENTILES)},
            "cropped": {"bottom": CROP_BOTTOM, "right": CROP_RIGHT},
            "noisy": {"noise_sd": NOISE_SD, "bias_range": list(BIAS_RANGE), "bias_grid": BIAS_GRID,
                      "seed": NOISE_SEED},
            "peer_scale": args.scale, "threads": args.threads}


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods = [] if args.methods in ("", "none") else args.methods.split(",")
    if methods:
        from benchmarks.registration import peers
        if bad := [m for m in methods if m not in peers.METHODS]:
            raise SystemExit(f"unknown methods {bad}; choose from {peers.METHODS}")
        peers.configure_threads(args.threads)
        peers.warm_up(methods)
    data = load_cephalograms(args.data)
    template_id, ids = split_protocol(data, args.split, args.limit)
    print(f"split {args.split}: template {template_id}, queries {ids[0]}-{ids[-1]}", file=sys.stderr)
    rows = run_rows(build_predictors(args, methods), data, template_id, ids, args.variants)
    result = {"benchmark": "cephalometric one-shot landmarks, out-of-domain queries",
              "date": datetime.date.today().isoformat(), "machine": machine_info(args.machine),
              "command": command_line(), "versions": _versions(methods),
              "protocol": protocol_record(args, template_id, ids), "rows": rows}
    out = write_json(args.out or OUT / f"ood_{args.split}.json", result)
    print(markdown_table(rows, args.variants))
    print(f"\nJSON: {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
