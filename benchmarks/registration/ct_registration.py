"""CT registration benchmark: SAM-affine and SAM-coarse against ANTs / elastix affine on real CTs
warped by known transforms, plus follow-up lesion matching on the lung tumours.

Run from the repository root, in an environment with the ``bench`` extra (torch, antspyx and
itk-elastix; see benchmarks/README.md, and benchmarks/RESULTS.md "CT registration")::

    OMP_NUM_THREADS=1 python -m benchmarks.registration.ct_registration \\
        --model benchmarks/out/ct_lite_15min.samlearn

Protocol:

* **Model**: ``SAMEmbedder(preset="ct-lite", max_time=900, n_threads=1, random_state=0)`` trained
  self-supervised (no labels) on the five CTs of ``--data`` (default: the shared data's ``ct``
  folder, ``$SAMLEARN_SHARED_DATA``, else ``../shared/data`` beside the repository) -- the same
  volumes that are then registered (the warped copies are never trained on). ``--train`` trains it when the model file
  is missing (about 15 minutes on one CPU thread).
* **Images**: each CT resampled to 2 mm (its own direction kept; the paper's working resolution,
  also what the peers get), intensities in HU. This is the FIXED image.
* **Known warp** per case (seeded): the MOVING image is the fixed image resampled through a known
  moving -> fixed map ``H(y) = B (y + e(y))``: ``B`` a random affine about the image centre
  (rotation 5-15 degrees about a random axis, per-axis scale 0.9-1.1, translation up to 20 mm per
  axis) and ``e`` a mild smooth elastic field (Gaussian-smoothed noise, sigma 20 mm, scaled to a
  maximum of ``--elastic-mm``, default 6 mm). The truth fixed -> moving is ``G = H^-1``, computed
  per point by fixed-point iteration (to 1e-6 mm).
* **Evaluation points**: fixed-grid points every 10 mm inside the body (-500 HU rule of
  ``samlearn.matching.body_mask``) whose true position lies at least 5 mm inside the moving
  image. TRE = ``|method(x) - G(x)|`` in mm, on the same points for every method.
* **Rows**: ``identity`` (no registration); ``best affine`` (least-squares affine fit of ``G`` on
  the evaluation points: the floor of any affine method; what is left is the elastic part);
  the SAM rows of ``SAM_ROWS`` (``SAMAffineRegistrar`` defaults, and with one refinement pass;
  ``SAMDeformableRegistrar`` defaults, and with ``rematch="warped"``); ANTs affine and elastix affine
  (``benchmarks/registration/peers.py``, one ITK thread, elastix warmed up first). Times: wall
  seconds of registration + point mapping, both images' embedding included for SAM.
* **Lesion matching** (lung1, lung2): template = the fixed image with the tumour's box; follow-ups
  = ``--lesion-warps`` warped copies. Correct = the matched point inside the tumour's true box in
  the follow-up (the box of the mapped tumour voxels). Not-found checks: each follow-up cropped
  along z so that the tumour is gone, (a) ``near``: the crop ends 5 mm beyond the tumour's edge,
  (b) ``far``: 40 mm beyond it; a correct answer there is "not found".

Output: a markdown summary on stdout and every number in ``benchmarks/out/ct_registration.json``.
"""
from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np

from benchmarks._common import CT_DIR, OUT, machine_info, write_json
from samlearn import Image, ImageGeometry, LesionMatcher, SAMAffineRegistrar, SAMDeformableRegistrar
from samlearn.apps.lesions import DEFAULT_LESION_SCORE_THRESHOLD
from samlearn.datasets import load_ct_folder
from samlearn.matching import body_mask, grid_points
from samlearn.metrics import points_in_boxes
from samlearn.transforms import AffineTransform, CompositeTransform, DisplacementField, fit_affine

#: the SAM rows: label, estimator, parameters besides embedder and random_state (defaults otherwise)
SAM_ROWS = (
    ("SAM-affine 1 pass", SAMAffineRegistrar, {"n_refinements": 0}),
    ("SAM-affine", SAMAffineRegistrar, {}),
    ("SAM-coarse", SAMDeformableRegistrar, {}),
    ("SAM-coarse 16 mm", SAMDeformableRegistrar, {"smoothing_mm": 16.0}),
    ("SAM-coarse 16 mm, 2 passes", SAMDeformableRegistrar, {"smoothing_mm": 16.0, "n_coarse_passes": 2}),
    # hybrids: SAM's matches on the affinely resampled moving image refined by NCC of 10 mm patches
    ("SAM-affine + NCC", SAMAffineRegistrar, {"ncc_radius_mm": 10.0}),
    ("SAM-coarse + NCC", SAMDeformableRegistrar, {"ncc_radius_mm": 10.0}),
    ("SAM-coarse 16 mm + NCC", SAMDeformableRegistrar, {"smoothing_mm": 16.0, "ncc_radius_mm": 10.0}),
)
AIR = -1024.0
ELASTIC_SIGMA_MM = 20.0


# ----------------------------------------------------------------------------- warps
def random_rotation(rng, max_deg=15.0, min_deg=5.0):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = np.deg2rad(rng.uniform(min_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k, float(np.rad2deg(ang))


def centre_of(geom: ImageGeometry):
    return geom.index_to_world((np.asarray(geom.size) - 1) / 2.0)


def make_warp(fixed: Image, rng, elastic_mm: float):
    """Known moving -> fixed map H = [elastic field e, affine B] (points: y -> B(y + e(y)))."""
    r, ang = random_rotation(rng)
    s = np.diag(rng.uniform(0.9, 1.1, 3))
    a = r @ s
    c = centre_of(fixed.geometry)
    t = c - a @ c + rng.uniform(-20, 20, 3)
    b = AffineTransform.from_linear(a, t)
    sp = 8.0
    corners = fixed.geometry.corners_world()
    lo, hi = corners.min(0) - 30, corners.max(0) + 30
    n = np.ceil((hi - lo) / sp).astype(int) + 1
    geom = ImageGeometry(tuple(int(v) for v in n), sp, lo, np.eye(3))
    from scipy.ndimage import gaussian_filter
    noise = rng.normal(size=geom.shape + (3,))
    u = np.stack([gaussian_filter(noise[..., k], ELASTIC_SIGMA_MM / sp) for k in range(3)], -1)
    u *= elastic_mm / np.linalg.norm(u, axis=-1).max()
    e = DisplacementField(u, geom)
    h = CompositeTransform([e, b])
    info = {"rotation_deg": ang, "scale": np.diag(s).tolist(), "translation_mm": (t - (c - a @ c)).tolist(),
            "elastic_max_mm": elastic_mm}
    return h, e, b, info


def truth_fixed_to_moving(x, e: DisplacementField, b: AffineTransform):
    """G = H^-1 at fixed points x: solve B(y + e(y)) = x by fixed-point iteration."""
    z = b.inverse().transform_points(x)
    y = z.copy()
    for _ in range(200):
        y_new = z - e.displacement_at(y)
        if np.abs(y_new - y).max() < 1e-6:
            y = y_new
            break
        y = y_new
    return y


def eval_points(fixed: Image, moving_geom: ImageGeometry, e, b, spacing_mm=10.0):
    pts = grid_points(fixed.geometry, spacing_mm)
    _, inside = body_mask(fixed, -500.0)
    pts = pts[inside(pts)]
    truth = truth_fixed_to_moving(pts, e, b)
    ok = moving_geom.contains(truth, margin=-5.0 / moving_geom.spacing.max())
    return pts[ok], truth[ok]


def tre_summary(mapped, truth):
    err = np.linalg.norm(np.asarray(mapped) - truth, axis=1)
    return {"mean": float(err.mean()), "median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
            "max": float(err.max())}


# ----------------------------------------------------------------------------- model
def get_model(path: Path, data: Path, train: bool, max_time: float):
    from samlearn import SAMEmbedder, load
    if path.exists():
        return load(path)
    if not train:
        raise SystemExit(f"model {path} not found; pass --train to train it (~{max_time / 60:.0f} min)")
    ct = load_ct_folder(data)
    emb = SAMEmbedder(preset="ct-lite", max_time=max_time, max_iter=100000, n_threads=1, num_workers=0,
                      random_state=0)
    emb.fit([ct.images[n] for n in ct.names])
    path.parent.mkdir(parents=True, exist_ok=True)
    emb.save(path)
    return emb


# ----------------------------------------------------------------------------- registration
def run_registration(cases, embedder, methods, seed, elastic_mm, threads, sam_rows=None):
    from benchmarks.registration import peers
    rows = []
    for ci, (name, img) in enumerate(cases):
        rng = np.random.default_rng(np.random.SeedSequence([seed, ci]))
        fixed = img.resample_to_spacing(2.0, default_value=AIR)
        fixed.source = f"{name} (2 mm)"
        h, e, b, info = make_warp(fixed, rng, elastic_mm)
        moving = h.resample(fixed, reference=fixed.geometry, default_value=AIR)
        moving.source = f"{name} (warped)"
        pts, truth = eval_points(fixed, moving.geometry, e, b)
        row = {"case": name, "size": list(fixed.geometry.size), "warp": info, "n_points": int(len(pts)),
               "methods": {}}
        row["methods"]["identity"] = {"tre": tre_summary(pts, truth), "seconds": 0.0}
        m_best, _ = fit_affine(pts, truth)
        row["methods"]["best affine"] = {"tre": tre_summary(AffineTransform(m_best).transform_points(pts), truth),
                                         "seconds": 0.0}
        for label, cls, kw in SAM_ROWS:
            if sam_rows is not None and label not in sam_rows:
                continue
            t0 = time.perf_counter()
            reg = cls(embedder=embedder, random_state=0, **kw).fit(fixed, moving)
            mapped = reg.transform_points(pts)
            sec = time.perf_counter() - t0
            row["methods"][label] = {
                "tre": tre_summary(mapped, truth), "seconds": sec,
                "timings": {k: float(v) for k, v in reg.timings_.items()},
                "n_matches": int(len(reg.matches_)), "n_inliers": int(reg.inlier_mask_.sum()),
                "n_body_points": int(reg.n_body_points_),
                "quality": reg.quality_.as_dict() if hasattr(reg, "quality_") else None,
                "score_median": float(np.median(reg.matches_.scores)),
                "match_error_median": float(np.median(np.linalg.norm(
                    reg.matches_.moving_points - truth_fixed_to_moving(reg.matches_.fixed_points, e, b), axis=1))),
            }
            if hasattr(reg, "dense_matches_"):
                d = reg.dense_matches_
                row["methods"][label]["n_dense_matches"] = int(len(d))
                row["methods"][label]["dense_match_error_median"] = float(np.median(np.linalg.norm(
                    d.moving_points - truth_fixed_to_moving(d.fixed_points, e, b), axis=1)))
                row["methods"][label]["affine_part_tre"] = tre_summary(
                    reg.affine_transform_.transform_points(pts), truth)
        for method in methods:
            res = peers.map_points(fixed, moving, pts, method, threads=threads, random_state=0)
            row["methods"][method] = {"tre": tre_summary(res.points, truth), "seconds": float(res.seconds)}
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v['tre']['mean']:.2f} mm / {v['seconds']:.1f} s"
                                      for k, v in row["methods"].items()), flush=True)
    return rows


# ----------------------------------------------------------------------------- lesions
def crop_z(image: Image, keep_above: bool, z_cut_mm: float) -> Image:
    """Keep the slices (array axis 0) whose world z is above / below ``z_cut_mm``."""
    g = image.geometry
    zs = g.array_index_to_world(np.stack([np.arange(g.shape[0]), np.zeros(g.shape[0]), np.zeros(g.shape[0])], 1))[:, 2]
    keep = zs > z_cut_mm if keep_above else zs < z_cut_mm
    idx = np.flatnonzero(keep)
    if len(idx) < 8:
        return None
    a, b_ = idx.min(), idx.max() + 1
    origin = g.array_index_to_world(np.array([a, 0, 0], float))
    geom = ImageGeometry((g.size[0], g.size[1], b_ - a), g.spacing, origin, g.direction)
    return Image(image.array[a:b_].copy(), geom, image.source)


def run_lesions(ct, embedder, seed, elastic_mm, n_warps):
    out = []
    for ci, name in enumerate([n for n in ("lung1", "lung2") if n in ct.names]):
        img = ct.images[name]
        fixed = img.resample_to_spacing(2.0, default_value=AIR)
        fixed.source = f"{name} (2 mm)"
        lab = ct.labels[name]
        vox = np.argwhere(lab.array > 0.5)
        tumour_pts = lab.geometry.array_index_to_world(vox.astype(float))
        box = ct.bboxes[name]["tumour"]
        matcher = LesionMatcher(embedder=embedder, score_threshold=-1.0, fov_margin_mm=0.0,
                                cycle_threshold_mm=None)
        matcher.fit(fixed, box.reshape(1, -1))
        matcher_cyc = LesionMatcher(embedder=embedder, score_threshold=-1.0, fov_margin_mm=0.0,
                                    cycle_threshold_mm=1e9).fit(fixed, box.reshape(1, -1))
        default = LesionMatcher(embedder=embedder).fit(fixed, box.reshape(1, -1))
        for w in range(n_warps):
            rng = np.random.default_rng(np.random.SeedSequence([seed, 100 + ci, w]))
            h, e, b, info = make_warp(fixed, rng, elastic_mm)
            moving = h.resample(fixed, reference=fixed.geometry, default_value=AIR)
            moving.source = f"{name} warp {w}"
            mapped = truth_fixed_to_moving(tumour_pts, e, b)
            true_box = np.r_[mapped.min(0), mapped.max(0)]
            true_centre = truth_fixed_to_moving(matcher.centers_, e, b)[0]
            zlo, zhi = true_box[2], true_box[5]
            g = moving.geometry
            zs = g.corners_world()[:, 2]
            above = (zs.max() - zhi) > (zlo - zs.min())  # keep the larger side
            variants = [("present", moving)]
            for label, gap in (("near", 5.0), ("far", 40.0)):
                crop = crop_z(moving, above, zhi + gap if above else zlo - gap)
                if crop is not None:
                    variants.append((label, crop))
            for label, im in variants:
                t0 = time.perf_counter()
                det = matcher_cyc.match([im])
                sec = time.perf_counter() - t0
                raw = det["raw_points"][0, 0]
                t0 = time.perf_counter()
                pts_d, scores_d, found_d = default.predict([im], return_scores=True)
                sec_default = time.perf_counter() - t0
                rec = {"case": name, "warp": w, "variant": label, "score": float(det["scores"][0, 0]),
                       "cycle_mm": float(det["cycle_mm"][0, 0]), "seconds": sec,
                       "raw_point": raw.tolist(), "true_box": true_box.tolist(),
                       "fov_distance_mm": float(_fov_distance(im, raw)),
                       "raw_inside_box": bool(points_in_boxes(raw[None], true_box[None])[0]),
                       "raw_error_mm": float(np.linalg.norm(raw - true_centre)) if label == "present" else None,
                       "default_found": bool(found_d[0, 0]), "default_seconds": sec_default,
                       "default_correct": bool(points_in_boxes(pts_d[0], true_box[None])[0]) if label == "present"
                       else not bool(found_d[0, 0])}
                out.append(rec)
                print(f"lesion {name} warp {w} {label}: score {rec['score']:.3f} cycle {rec['cycle_mm']:.1f} mm "
                      f"fov-dist {rec['fov_distance_mm']:.1f} mm inside-box {rec['raw_inside_box']} "
                      f"err {rec['raw_error_mm']}", flush=True)
    return out


def _fov_distance(image: Image, point):
    g = image.geometry
    idx = g.world_to_index(np.asarray(point)[None])[0]
    lo = (idx + 0.5) * g.spacing
    hi = (np.asarray(g.size) - 0.5 - idx) * g.spacing
    return float(min(lo.min(), hi.min()))


def decide(records, score_threshold, fov_margin_mm, cycle_threshold_mm):
    """Apply LesionMatcher's rule to recorded raw matches: found = score >= thr and fov distance >=
    margin (and cycle <= thr). Returns accuracy on present and on absent cases."""
    res = {"present": [], "absent": []}
    for r in records:
        found = r["score"] >= score_threshold and r["fov_distance_mm"] >= fov_margin_mm
        if cycle_threshold_mm is not None:
            found = found and r["cycle_mm"] <= cycle_threshold_mm
        if r["variant"] == "present":
            res["present"].append(bool(found and r["raw_inside_box"]))
        else:
            res["absent"].append(not found)
    return {k: (int(sum(v)), len(v)) for k, v in res.items()}


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(CT_DIR), help="folder of the CTs")
    ap.add_argument("--model", default=str(OUT / "ct_lite_15min.samlearn"))
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--train-seconds", type=float, default=900.0)
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--methods", default="ants-affine,elastix-affine")
    ap.add_argument("--sam-rows", default=None,
                    help="';'-separated labels of SAM_ROWS to run (default: all)")
    ap.add_argument("--elastic-mm", type=float, default=6.0)
    ap.add_argument("--lesion-warps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-registration", action="store_true")
    ap.add_argument("--skip-lesions", action="store_true")
    ap.add_argument("--out", default=str(OUT / "ct_registration.json"))
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    if methods:
        from benchmarks.registration import peers
        peers.configure_threads(args.threads)
    embedder = get_model(Path(args.model), Path(args.data), args.train, args.train_seconds)
    embedder.set_params(n_threads=args.threads)
    ct = load_ct_folder(args.data, names=args.cases.split(",") if args.cases else None)
    result = {"date": datetime.date.today().isoformat(), "machine": machine_info(),
              "args": vars(args), "model": {"path": args.model, "n_iter": int(embedder.n_iter_),
                                            "train_time_s": float(embedder.train_time_),
                                            "preset": embedder.preset_}}
    if methods:
        result["peer_versions"] = peers.peer_versions()
        t0 = time.perf_counter()
        peers.warm_up(methods, ndim=3)
        result["peer_warm_up_s"] = time.perf_counter() - t0
    if not args.skip_registration:
        cases = [(n, ct.images[n]) for n in ct.names]
        result["registration"] = run_registration(
            cases, embedder, methods, args.seed, args.elastic_mm, args.threads,
            sam_rows=None if args.sam_rows is None else set(args.sam_rows.split(";")))
    if not args.skip_lesions:
        recs = run_lesions(ct, embedder, args.seed, args.elastic_mm, args.lesion_warps)
        result["lesions"] = recs
    write_json(args.out, result)
    print_summary(result)


def print_summary(result):
    regs = result.get("registration", [])
    if regs:
        names = list(regs[0]["methods"])
        print("\n| case | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for r in regs:
            cells = [f"{r['methods'][m]['tre']['mean']:.2f} / {r['methods'][m]['seconds']:.1f} s" for m in names]
            print(f"| {r['case']} | " + " | ".join(cells) + " |")
        means = [np.mean([r["methods"][m]["tre"]["mean"] for r in regs]) for m in names]
        secs = [np.mean([r["methods"][m]["seconds"] for r in regs]) for m in names]
        print("| **mean** | " + " | ".join(f"**{a:.2f} / {s:.1f} s**" for a, s in zip(means, secs)) + " |")
    recs = result.get("lesions", [])
    if recs:
        thr = DEFAULT_LESION_SCORE_THRESHOLD
        print("\nlesion decisions (correct / cases; present = found inside the true box, absent = "
              "reported not found):")
        for variant in ("present", "near", "far"):
            rr = [r for r in recs if r["variant"] == variant]
            print(f"  LesionMatcher defaults, {variant}: {sum(r['default_correct'] for r in rr)} / {len(rr)}")
        rules = (("score >= 0.5 only", dict(score_threshold=thr, fov_margin_mm=0.0, cycle_threshold_mm=None)),
                 ("fov margin 8 mm only", dict(score_threshold=-1, fov_margin_mm=8.0, cycle_threshold_mm=None)),
                 ("score + fov (no cycle)", dict(score_threshold=thr, fov_margin_mm=8.0, cycle_threshold_mm=None)),
                 ("cycle <= 20 mm only", dict(score_threshold=-1, fov_margin_mm=0.0, cycle_threshold_mm=20.0)),
                 ("score + fov + cycle 20 mm (= defaults)",
                  dict(score_threshold=thr, fov_margin_mm=8.0, cycle_threshold_mm=20.0)))
        for label, kw in rules:
            print(f"  rule {label}: {decide(recs, **kw)}")


if __name__ == "__main__":
    main()
