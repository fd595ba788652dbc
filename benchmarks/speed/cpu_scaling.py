"""CPU inference cost against volume size: samlearn ``ct-lite`` next to ANTs affine registration.

For each volume, the same pair goes to both: a CT (crops of the 2 mm chest CT
``chest_ct_popi00.nii.gz`` of the shared data's ``ct`` folder, resampled to isotropic 2 mm) and a copy warped by a
known affine (5 degree rotation, 3% scaling, a few mm shift, about the volume's centre), with 19
points in the central part of the CT.

* samlearn: embed the template and the query (``SAMEmbedder.transform``), read the template vectors
  at the 19 points and match them in the query (coarse-to-fine window, as the detector does).
  "pair" = both embeddings + matching; "query" = query embedding + matching (a template's
  embedding is computed once and reused for every query).
* ANTs: ``benchmarks.registration.peers.map_points(method="ants-affine")`` (registration + point mapping).

Every measurement runs in a fresh child process (one thread), so its peak resident memory
(``ru_maxrss``) is its own. samlearn alone also runs on the chest CT as stored (0.98 x 0.98 x 2 mm:
the resampling to 2 mm is part of the cost) and on a whole-body sized volume (512 x 512 x 600 at
0.8 x 0.8 x 1.5 mm, synthetic), in one pass and tiled under a 0.5 GB budget.

The model: ``--model PATH`` or ct-lite trained for ``--train-seconds`` on the five CTs of the
shared data's ``ct`` folder (a brief run: the speed does not depend on training, the matching
error does). The shared data: ``$SAMLEARN_SHARED_DATA``, else ``../shared/data`` beside the
repository.

    python -m benchmarks.speed.cpu_scaling [--model M] [--no-ants] [--json benchmarks/out/cpu_scaling.json]

Needs the ``bench`` extra (antspyx) for the ANTs rows (a Python environment of its own, see
benchmarks/README.md). Prints a Markdown table and writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import CT_DIR, ROOT, machine_info, module_command, write_json

CHEST = CT_DIR / "chest_ct_popi00.nii.gz"

# crops of the 2 mm chest CT (141 x 250 x 250 voxels, numpy order) by fraction of each axis
CASES = {
    "chest 2mm, 1/8": (0.5, 0.5, 0.5),
    "chest 2mm, 1/4": (0.5, 0.71, 0.71),
    "chest 2mm, 1/2": (1.0, 0.71, 0.71),
    "chest 2mm (full)": (1.0, 1.0, 1.0),
}
WHOLE_BODY = "whole body 512x512x600 @0.8x0.8x1.5 (synthetic)"
WHOLE_BODY_TILED = "whole body, tiled (max_memory_gb=0.5)"
AS_STORED = "chest as stored 512x512x141 @0.98x0.98x2"
SAMLEARN_ONLY = (AS_STORED, WHOLE_BODY, WHOLE_BODY_TILED)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _single_thread(n):
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch
    torch.set_num_threads(n)


def _central_points(image, seed: int) -> np.ndarray:
    """19 world points drawn uniformly in the central 40% of ``image``'s index range."""
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0.3, 0.7, size=(19, 3)) * (np.array(image.geometry.size) - 1)
    return image.geometry.index_to_world(idx)


def make_pair(case: str, seed: int = 0):
    """(template Image, query Image, template points (19, 3), true query points (19, 3))."""
    import SimpleITK as sitk

    from samlearn import Image, ImageGeometry, read_image
    if case in (WHOLE_BODY, WHOLE_BODY_TILED):
        tmpl = synthetic_whole_body()
        shift = np.array([6.0, -4.0, 9.0])
        # the query: the same voxels, origin moved: anatomy at template point p is at p + shift
        g = tmpl.geometry
        query = Image(tmpl.array, ImageGeometry(g.size, g.spacing, np.asarray(g.origin) + shift, g.direction))
        pts = _central_points(tmpl, seed)
        return tmpl, query, pts, pts + shift
    full = read_image(CHEST)
    if case != AS_STORED:
        full = full.resample_to_spacing(2.0)
    frac = CASES.get(case, (1.0, 1.0, 1.0))
    shape = np.array(full.array.shape)
    n = np.maximum(16, np.round(shape * np.array(frac))).astype(int)
    lo = (shape - n) // 2
    arr = np.ascontiguousarray(full.array[lo[0]:lo[0] + n[0], lo[1]:lo[1] + n[1], lo[2]:lo[2] + n[2]])
    origin = full.geometry.array_index_to_world(lo.astype(float)[None])[0]
    tmpl = Image.from_array(arr, spacing=full.spacing, origin=origin, direction=full.direction)
    s = tmpl.to_sitk()
    tx = sitk.AffineTransform(3)
    centre = tmpl.geometry.index_to_world((np.array(tmpl.geometry.size) - 1) / 2.0)
    tx.SetCenter([float(v) for v in centre])
    th = np.deg2rad(5.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]) * 1.03
    tx.SetMatrix([float(v) for v in rot.ravel()])
    tx.SetTranslation([4.0, -3.0, 2.0])
    query = Image.from_sitk(sitk.Resample(s, s, tx, sitk.sitkLinear, -1024.0))
    pts = _central_points(tmpl, seed)
    inv = tx.GetInverse()
    truth = np.array([inv.TransformPoint([float(v) for v in p]) for p in pts])
    return tmpl, query, pts, truth


def synthetic_whole_body():
    """A 512 x 512 x 600 volume at 0.8 x 0.8 x 1.5 mm (CT-like HU: air, an elliptic body with
    smooth internal structure, a spine-like rod), float32, built in slabs to stay light."""
    from samlearn import Image
    nz, ny, nx = 600, 512, 512
    arr = np.empty((nz, ny, nx), np.float32)
    y = (np.arange(ny, dtype=np.float32) - ny / 2) * 0.8
    x = (np.arange(nx, dtype=np.float32) - nx / 2) * 0.8
    yy, xx = np.meshgrid(y, x, indexing="ij")
    for z0 in range(0, nz, 50):
        z = (np.arange(z0, min(nz, z0 + 50), dtype=np.float32) * 1.5)[:, None, None]
        a = 170 + 20 * np.sin(z / 90.0)
        body = (xx / a) ** 2 + (yy / (0.7 * a)) ** 2 < 1
        tissue = 40 * np.sin(xx / 23.0 + z / 31.0) * np.cos(yy / 17.0 - z / 43.0) + 30 * np.sin(z / 11.0)
        spine = ((xx ** 2 + (yy - 60) ** 2) < 15 ** 2) * 700.0
        lungs = (((np.abs(xx) - 70) / 50.0) ** 2 + (yy / 60.0) ** 2 < 1) & (z > 300) & (z < 600)
        arr[z0:z0 + z.shape[0]] = np.where(body, np.where(lungs, -800.0, tissue + spine), -1000.0)
    return Image.from_array(arr, spacing=(0.8, 0.8, 1.5), origin=(-204.8, -204.8, 0.0))


def child_samlearn(case: str, model: str, threads: int) -> dict:
    _single_thread(threads)
    import torch

    import samlearn
    from samlearn import Image
    from samlearn.matching import match_points, template_vectors
    tmpl, query, pts, truth = make_pair(case)
    est = samlearn.load(model).set_params(n_threads=threads, device="cpu")
    if case == WHOLE_BODY_TILED:
        est.set_params(max_memory_gb=0.5)
    base_mb = _peak_mb()
    # warm-up on a central crop (a corner of the whole-body volume is air only: a blank image)
    c = [max(0, (n - m) // 2) for n, m in zip(tmpl.array.shape, (48, 96, 96))]
    crop = Image.from_array(np.ascontiguousarray(tmpl.array[c[0]:c[0] + 48, c[1]:c[1] + 96, c[2]:c[2] + 96]),
                            spacing=tmpl.spacing, origin=tmpl.geometry.array_index_to_world(
                                np.array(c, float)[None])[0], direction=tmpl.direction)
    est.transform(crop)  # warm-up (allocator, kernels)
    del crop
    t0, c0 = time.perf_counter(), time.process_time()
    et = est.transform(tmpl)[0]
    t1, c1 = time.perf_counter(), time.process_time()
    vg, vl = template_vectors(et, pts)
    del et
    t2, c2 = time.perf_counter(), time.process_time()
    eq = est.transform(query)[0]
    t3 = time.perf_counter()
    res = match_points(vg, vl, eq, search_radius_mm="auto")
    t4, c4 = time.perf_counter(), time.process_time()
    err = np.linalg.norm(res.points - truth, axis=1)
    work = est._preprocess(query).array.shape
    tiles = est._engine(use_cache=False).tile_core(work)
    return {"tool": "samlearn", "case": case, "input_shape": list(query.array.shape), "work_shape": list(work),
            "tile_core": None if tiles is None else list(tiles),
            "embed_template_s": t1 - t0, "embed_query_s": t3 - t2, "match_s": t4 - t3,
            "pair_s": (t1 - t0) + (t2 - t1) + (t4 - t2), "query_s": t4 - t2,
            "pair_cpu_s": (c1 - c0) + (c2 - c1) + (c4 - c2), "query_cpu_s": c4 - c2,
            "mean_error_mm": float(err.mean()), "peak_mb": _peak_mb(), "base_mb": base_mb,
            "torch_threads": torch.get_num_threads()}


def child_ants(case: str, threads: int) -> dict:
    from benchmarks.registration import peers
    peers.configure_threads(threads)
    tmpl, query, pts, truth = make_pair(case)
    base_mb = _peak_mb()
    r = peers.map_points(tmpl, query, pts, "ants-affine", threads=threads)
    err = np.linalg.norm(r.points - truth, axis=1)
    return {"tool": "ants-affine", "case": case, "input_shape": list(query.array.shape), "pair_s": r.seconds,
            "mean_error_mm": float(err.mean()), "peak_mb": _peak_mb(), "base_mb": base_mb,
            "versions": peers.peer_versions()}


def train_model(path: str, seconds: float, threads: int) -> dict:
    _single_thread(threads)
    from samlearn import SAMEmbedder, read_image
    files = [str(CT_DIR / n) for n in ("chest_ct_popi00.nii.gz", "lung1_image.nii.gz", "lung2_image.nii.gz",
                                       "totalseg_abdomen_ct.nii.gz", "totalseg_chest_ct.nii.gz")]
    imgs = [read_image(f) for f in files]
    t0 = time.perf_counter()
    est = SAMEmbedder(preset="ct-lite", max_time=float(seconds), max_iter=None, device="cpu", n_threads=threads,
                      num_workers=0, random_state=0).fit(imgs)
    est.save(path)
    return {"n_iter": est.n_iter_, "train_s": est.train_time_, "fit_s": time.perf_counter() - t0,
            "images": [Path(f).name for f in files]}


def run_child(args_list, timeout):
    cmd = module_command("benchmarks.speed.cpu_scaling", *args_list)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"child {args_list} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a saved ct-lite model (default: train one briefly)")
    p.add_argument("--train-seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-ants", action="store_true", help="skip the ANTs rows")
    p.add_argument("--cases", nargs="*", default=None, help="subset of the cases (names as printed; "
                   "chest crops and the samlearn-only cases)")
    p.add_argument("--no-whole-body", action="store_true")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        kind = args.child[0]
        if kind == "samlearn":
            out = child_samlearn(args.child[1], args.child[2], args.threads)
        elif kind == "ants":
            out = child_ants(args.child[1], args.threads)
        elif kind == "train":
            out = train_model(args.child[1], float(args.child[2]), args.threads)
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(out))
        return

    if not CHEST.exists():
        raise SystemExit(f"needs the chest CT at {CHEST}")
    results = {"machine": machine_info(), "threads": args.threads, "rows": []}
    with tempfile.TemporaryDirectory(prefix="samlearn-scaling-") as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "ct-lite.samlearn")
            info = run_child(["--threads", str(args.threads), "--child", "train", model, str(args.train_seconds)],
                             timeout=3600)
            results["training"] = info
            print(f"trained ct-lite {info['n_iter']} iterations in {info['train_s']:.0f} s on "
                  f"{len(info['images'])} CTs", flush=True)
        results["model"] = args.model or "ct-lite, trained by this script"
        # --cases names any of the printed cases (chest crops and the samlearn-only ones)
        cases = [c for c in args.cases if c in CASES] if args.cases else list(CASES)
        for case in cases:
            row = run_child(["--threads", str(args.threads), "--child", "samlearn", case, model], timeout=1800)
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
            if not args.no_ants:
                row = run_child(["--threads", str(args.threads), "--child", "ants", case], timeout=7200)
                print(json.dumps(row), flush=True)
                results["rows"].append(row)
        extra = [AS_STORED] + ([] if args.no_whole_body else [WHOLE_BODY, WHOLE_BODY_TILED])
        if args.cases:
            extra = [c for c in extra if c in args.cases]
        for case in extra:
            row = run_child(["--threads", str(args.threads), "--child", "samlearn", case, model], timeout=3600)
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
    print()
    print(table(results))
    if args.json:
        write_json(args.json, results)


def table(results) -> str:
    rows = results["rows"]
    ants = {r["case"]: r for r in rows if r["tool"] == "ants-affine"}
    lines = ["| volume (input voxels, z y x) | work grid | samlearn pair s (CPU s) | query s | match s | "
             "samlearn peak MB | ANTs affine s | ANTs peak MB | ANTs / samlearn pair | errors mm (samlearn / ANTs) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["tool"] != "samlearn":
            continue
        a = ants.get(r["case"])
        shape = "x".join(str(v) for v in r["input_shape"])
        work = "x".join(str(v) for v in r["work_shape"])
        if r.get("tile_core"):
            work += f" (tiles: cores {'x'.join(str(v) for v in r['tile_core'])})"
        lines.append(
            f"| {r['case']} ({shape}) | {work} | {r['pair_s']:.2f} ({r['pair_cpu_s']:.2f}) | {r['query_s']:.2f} | "
            f"{r['match_s']:.2f} | {r['peak_mb']:.0f} | "
            + (f"{a['pair_s']:.1f} | {a['peak_mb']:.0f} | **{a['pair_s'] / r['pair_s']:.0f}x** | "
               f"{r['mean_error_mm']:.1f} / {a['mean_error_mm']:.2f} |" if a
               else f"- | - | - | {r['mean_error_mm']:.1f} / - |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
