"""Registration where intensity registration struggles: large misalignments and partial views.

    python -m benchmarks.registration.robustness --model M [--methods elastix-affine,ants-affine]

Each of the five real CTs (``$SAMLEARN_SHARED_DATA/ct``), resampled to 2 mm, is the FIXED image;
the MOVING image is the same volume under a known rigid motion (a shift of (6, -8, 4) mm, or a
rotation of 30, 90 or 180 degrees about an axis through the centre plus that shift), then cropped:
by a fraction of its size on two faces (low x and high z, or low y and low z), or resliced at 5 mm.
The truth ``T`` (fixed -> moving world mm) is known exactly. Error (TRE) at the fixed image's body
points on a 10 mm grid whose counterpart lies inside the moving image (5 mm from its faces); a
registration *succeeds* when its mean TRE is below 10 mm.

For samlearn's registrars the table also gives whether the result was *flagged* (``quality_.ok``
False, with a warning): every failure should be flagged, and as few successes as possible.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import CT_DIR, OUT, machine_info, write_json
from samlearn import Image, SAMAffineRegistrar, load
from samlearn.datasets import load_ct_folder
from samlearn.matching import body_mask, grid_points
from samlearn.transforms import AffineTransform

AIR = -1024.0
SHIFT = np.array([6.0, -8.0, 4.0])

#: variant name -> (rotation axis or None, degrees, crops {(array axis, side): fraction}, slice mm)
VARIANTS = {
    "shift": (None, 0.0, {}, None),
    "shift, 2 faces cropped 20%": (None, 0.0, {(2, "low"): 0.2, (0, "high"): 0.2}, None),
    "shift, 2 faces cropped 35%": (None, 0.0, {(2, "low"): 0.35, (0, "high"): 0.35}, None),
    "shift, low y + low z cropped 35%": (None, 0.0, {(1, "low"): 0.35, (0, "low"): 0.35}, None),
    "shift, one face cropped 60%": (None, 0.0, {(0, "high"): 0.6}, None),
    "5 mm slices": (None, 0.0, {}, 5.0),
    "rotation 30 deg (z)": ("z", 30.0, {}, None),
    "rotation 90 deg (x)": ("x", 90.0, {}, None),
    "rotation 180 deg (z)": ("z", 180.0, {}, None),
    "rotation 30 deg (y), 2 faces cropped 30%": ("y", 30.0, {(2, "low"): 0.3, (0, "high"): 0.3}, None),
}


def _rotation(axis, deg):
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _crop(image: Image, crops: dict) -> Image:
    arr, g = image.array, image.geometry
    lo = [0, 0, 0]
    hi = list(arr.shape)
    for (ax, side), frac in crops.items():
        n = int(round(frac * arr.shape[ax]))
        if side == "low":
            lo[ax] = n
        else:
            hi[ax] = arr.shape[ax] - n
    sub = arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    origin = g.array_index_to_world(np.array([lo], dtype=np.float64))[0]
    return Image.from_array(np.ascontiguousarray(sub), spacing=g.spacing, origin=origin, direction=g.direction)


def make_variant(fixed: Image, variant: str):
    """The moving image and the true fixed -> moving affine of one variant."""
    axis, deg, crops, slice_mm = VARIANTS[variant]
    g = fixed.geometry
    centre = g.index_to_world((np.asarray(g.size) - 1) / 2.0)
    r = np.eye(3) if axis is None else _rotation(axis, deg)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre - r @ centre + SHIFT
    truth = AffineTransform(m)
    # the moving grid: the fixed grid carried by the motion, so the whole body stays in view
    moving_geom = g.__class__(g.size, g.spacing, truth.transform_points(g.origin[None])[0], r @ g.direction)
    moving = truth.inverse().resample(fixed, reference=moving_geom, default_value=AIR)
    if slice_mm is not None:
        sp = moving.geometry.spacing.copy()
        sp[2] = slice_mm
        moving = moving.resample_to_spacing(sp, default_value=AIR)
    if crops:
        moving = _crop(moving, crops)
    return moving, truth


def eval_points(fixed: Image, moving: Image, truth: AffineTransform, spacing_mm=10.0):
    pts = grid_points(fixed.geometry, spacing_mm)
    _, inside = body_mask(fixed, -500.0)
    pts = pts[inside(pts)]
    mapped = truth.transform_points(pts)
    g = moving.geometry
    ok = g.contains(mapped, margin=-5.0 / g.spacing.max())
    return pts[ok], mapped[ok]


def run(cases, embedder, variants, methods, seed):
    rows = []
    for name, img in cases:
        fixed = img.resample_to_spacing(2.0, default_value=AIR)
        for variant in variants:
            moving, truth = make_variant(fixed, variant)
            pts, true_pts = eval_points(fixed, moving, truth)
            row = {"case": name, "variant": variant, "n_points": int(len(pts)),
                   "moving_size": list(moving.geometry.size), "methods": {}}
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    reg = SAMAffineRegistrar(embedder=embedder, random_state=seed).fit(fixed, moving)
                    err = np.linalg.norm(reg.transform_points(pts) - true_pts, axis=1)
                    q = getattr(reg, "quality_", None)
                    rec = {"tre_mean": float(err.mean()), "tre_max": float(err.max()),
                           "n_matches": int(len(reg.matches_)), "n_inliers": int(reg.inlier_mask_.sum()),
                           "n_matched": int(reg.n_matched_),
                           "quality": None if q is None else q.as_dict()}
                except Exception as exc:  # noqa: BLE001 - a refusal is a flagged failure
                    rec = {"tre_mean": float("nan"), "error": f"{type(exc).__name__}: {exc}"}
            rec["seconds"] = time.perf_counter() - t0
            rec["warned"] = any("quality" in str(w.message).lower() for w in caught)
            row["methods"]["SAM-affine"] = rec
            if methods:
                from benchmarks.registration import peers
                for method in methods:
                    res = peers.map_points(fixed, moving, pts, method, threads=1, random_state=0)
                    e = np.linalg.norm(res.points - true_pts, axis=1)
                    row["methods"][method] = {"tre_mean": float(e.mean()), "tre_max": float(e.max()),
                                              "seconds": float(res.seconds)}
            rows.append(row)
            print(f"{name:24s} {variant:42s} " + "  ".join(
                f"{k} {v['tre_mean']:.1f} mm" + (f" agree {v['quality']['agreement']:.2f}" if v.get("quality") else "")
                + (" FLAGGED" if v.get("quality") and not v["quality"]["ok"]
                                                  else "") + (" REFUSED" if "error" in v else "")
                for k, v in row["methods"].items()), flush=True)
    return rows


def summarize(rows) -> str:
    """A Markdown table: per variant and method, successes (mean TRE < 10 mm) of the cases, the median
    of the mean TREs, and for samlearn how many failures and successes were flagged."""
    methods = list(rows[0]["methods"])
    head = "| variant | " + " | ".join(f"{m}: success, median TRE" for m in methods) + " | SAM-affine flagged: failures / successes |"
    lines = [head, "|---" * (len(methods) + 2) + "|"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    totals = {m: [0, 0] for m in methods}
    flags = [0, 0, 0, 0]  # flagged failures, failures, flagged successes, successes

    def cells(sel):
        out = []
        for m in methods:
            tre = np.array([r["methods"][m]["tre_mean"] for r in sel], dtype=float)
            ok = np.nan_to_num(tre, nan=np.inf) < 10.0
            totals[m][0] += int(ok.sum())
            totals[m][1] += len(sel)
            out.append(f"{int(ok.sum())}/{len(sel)}, {np.nanmedian(tre):.1f} mm")
        return out

    for v in variants:
        sel = [r for r in rows if r["variant"] == v]
        row = cells(sel)
        sam = [r["methods"]["SAM-affine"] for r in sel]
        fail = [x for x in sam if not x["tre_mean"] < 10.0]
        good = [x for x in sam if x["tre_mean"] < 10.0]
        flagged = lambda x: "error" in x or (x.get("quality") and not x["quality"]["ok"])  # noqa: E731
        f = [sum(map(flagged, fail)), len(fail), sum(map(flagged, good)), len(good)]
        flags = [a + b for a, b in zip(flags, f)]
        lines.append(f"| {v} | " + " | ".join(row) + f" | {f[0]}/{f[1]} / {f[2]}/{f[3]} |")
    lines.append("| **all** | " + " | ".join(f"**{a}/{b}**" for a, b in totals.values())
                 + f" | **{flags[0]}/{flags[1]} / {flags[2]}/{flags[3]}** |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(CT_DIR))
    ap.add_argument("--variants", default=None, help="';'-separated variant names (default: all)")
    ap.add_argument("--methods", default="", help="peers, comma-separated (bench environment)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT / "robustness.json"))
    ap.add_argument("--summarize", default=None, metavar="JSON", help="print the table of a saved run and exit")
    args = ap.parse_args(argv)
    if args.summarize:
        import json
        print(summarize(json.loads(Path(args.summarize).read_text())["rows"]))
        return
    ct = load_ct_folder(args.data)
    cases = [(n, ct.images[n]) for n in ct.names]
    variants = list(VARIANTS) if args.variants is None else args.variants.split(";")
    methods = [m for m in args.methods.split(",") if m]
    rows = run(cases, load(args.model), variants, methods, args.seed)
    write_json(args.out, {"machine": machine_info(), "model": str(Path(args.model).name), "rows": rows})
    print(summarize(rows))


if __name__ == "__main__":
    main()
