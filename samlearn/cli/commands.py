"""The ``samlearn`` command-line tool (also ``python -m samlearn``).

One function per subcommand (``_cmd_<name>(args) -> exit code``), registered in
:func:`build_parser`. Bad command-line syntax (argparse) and bad inputs (a missing file, a CSV
without the expected columns, points outside the image, an unreadable model file) exit with code
2; a failure while running (a registration without enough confident matches, an unexpected error)
exits with code 1. Both
print ``samlearn COMMAND: error: <one line>`` to stderr, without a traceback (set
``SAMLEARN_DEBUG=1`` to see it). File formats: see :mod:`samlearn.cli.files` and the README.
Heavy modules (torch and everything built on it) are imported inside the commands that need them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .._version import __version__
from .files import CLIError, collect_images, image_stem, one_line, read_lesions_csv, read_points_csv, write_csv


# ---------------------------------------------------------------------------- shared helpers
def _set_threads(args) -> None:
    n = getattr(args, "threads", None)
    if n is None:
        return
    import torch
    torch.set_num_threads(int(n))


def _load_model(path):
    if not Path(path).is_file():
        raise CLIError(f"model file does not exist: '{path}' (train one with `samlearn train` or run "
                       f"`samlearn demo`, which writes one)")
    from ..embedding import load
    return load(path)


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return v


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return v


def _fmt(v) -> str:
    return f"{float(v):.3f}"


def _log(args, text) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _write_rows(args, header, rows) -> int:
    """Write the result CSV to ``--out`` (standard output when absent); exit code 0."""
    write_csv(args.out, header, rows)
    if args.out not in (None, "-"):
        _log(args, f"wrote {len(rows)} rows to {args.out}")
    return 0


# ---------------------------------------------------------------------------- info
def _cmd_info(args) -> int:
    import numpy
    import SimpleITK
    import torch

    print(f"samlearn {__version__}")
    print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    print(f"numpy {numpy.__version__}, SimpleITK {SimpleITK.Version_VersionString()}")
    return 0


# ---------------------------------------------------------------------------- demo
def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(minutes=args.minutes, out=args.out, seed=args.seed, n_train=args.subjects,
             n_test=args.test, threads=args.threads, device=args.device, baseline=not args.no_baseline,
             figure=not args.no_figure, verbose=0 if args.quiet else 1)
    return 0


# ---------------------------------------------------------------------------- train
def _parse_param(text: str):
    if "=" not in text:
        raise CLIError(f"--param expects KEY=VALUE, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, list):
        value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return key.strip(), value


def _launch_workers(args, argv) -> int:
    """Re-run this command under ``torch.distributed.run`` with ``--nproc-per-node`` workers."""
    rest, skip = [], False
    for a in argv:  # drop --nproc-per-node N / --nproc-per-node=N: the workers must not relaunch
        if skip:
            skip = False
            continue
        if a == "--nproc-per-node":
            skip = True
            continue
        if a.startswith("--nproc-per-node="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={args.nproc_per_node}", "-m", "samlearn.cli"] + rest
    if args.verbose:
        print("launching: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


def _cmd_train(args, argv=None) -> int:
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise CLIError(f"--nproc-per-node must be a positive integer, got {args.nproc_per_node}")
    under_torchrun = all(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    files = collect_images(args.images)
    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"--out '{out}' is a folder; give the model's file name, e.g. {out / 'model.samlearn'}")
    if args.resume and not args.checkpoint:
        raise CLIError("--resume needs --checkpoint PATH (the checkpoint to continue)")
    if args.max_iter is not None and args.max_iter < 1:
        raise CLIError(f"--max-iter must be a positive integer, got {args.max_iter}")
    if args.max_time is not None and not args.max_time > 0:
        raise CLIError(f"--max-time must be a positive number of seconds, got {args.max_time}")
    params = dict(_parse_param(p) for p in (args.param or []))
    if args.nproc_per_node is not None and args.nproc_per_node > 1 and not under_torchrun:
        return _launch_workers(args, argv if argv is not None else sys.argv[1:])

    from ..embedding import SAMEmbedder

    params.update(preset=args.preset, device=args.device, verbose=args.verbose)
    for key, val in (("max_iter", args.max_iter), ("max_time", args.max_time), ("random_state", args.seed),
                     ("checkpoint_path", args.checkpoint), ("checkpoint_every", args.checkpoint_every)):
        if val is not None:
            params[key] = val
    if args.resume:
        params["resume"] = True
    try:
        est = SAMEmbedder(**params)
    except TypeError as exc:
        raise CLIError(f"--param: {exc}") from None
    est.fit(files)  # bad images: ValueError / TypeError / OSError, exit 2 in main()
    if getattr(est, "rank_", 0) == 0:
        est.save(out)
        if args.verbose:
            print(f"trained {est.n_iter_} iterations in {est.train_time_:.1f} s on {len(files)} images "
                  f"({est.world_size_} process(es)); model written to {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- embed
def _cmd_embed(args) -> int:
    _set_threads(args)
    files = collect_images(args.images)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out '{out}' is a file; give a folder for the embedding files")
    model = _load_model(args.model)
    from ..embedding import save_embedding

    out.mkdir(parents=True, exist_ok=True)
    used = set()
    for f in files:
        stem = image_stem(f)
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        t0 = time.perf_counter()
        emb = model.transform([f])[0]
        path = save_embedding(emb, out / f"{name}.{args.format}")
        g, loc = emb.global_map, emb.local_map
        _log(args, f"{f} -> {path} (global {tuple(g.data.shape)}, local {tuple(loc.data.shape)}, "
                   f"{time.perf_counter() - t0:.1f} s)")
    return 0


# ---------------------------------------------------------------------------- detect
def _cmd_detect(args) -> int:
    _set_threads(args)
    names, points = read_points_csv(args.points)
    files = collect_images(args.images)
    model = _load_model(args.model)
    if points.shape[1] != model.ndim_:
        raise CLIError(f"points file '{args.points}' has {points.shape[1]} coordinates per point but "
                       f"the model works on {model.ndim_}D images")
    from ..apps import OneShotLandmarkDetector

    det = OneShotLandmarkDetector(embedder=model, consistency=None if args.consistency == "none" else args.consistency,
                                  search_radius_mm=None if args.search_radius == "none" else
                                  ("auto" if args.search_radius == "auto" else float(args.search_radius)),
                                  cycle_check=args.cycle_check, ncc_radius_mm=args.ncc_radius)
    det.fit(args.template, points)
    axes = ["x", "y", "z"][: model.ndim_]
    header = ["image", "name", *axes, "score"] + (["cycle_mm"] if args.cycle_check else [])
    rows = []
    for f in files:
        t0 = time.perf_counter()
        res = det.predict([f], return_scores=True)
        pts, scores = res[0][0], res[1][0]
        cyc = res[2][0] if args.cycle_check else None
        for j, name in enumerate(names):
            row = [f, name, *(_fmt(v) for v in pts[j]), _fmt(scores[j])]
            if cyc is not None:
                row.append(_fmt(cyc[j]))
            rows.append(row)
        _log(args, f"{f}: {len(names)} points, median score {float(sorted(scores)[len(scores) // 2]):.3f} "
                   f"({time.perf_counter() - t0:.1f} s)")
    return _write_rows(args, header, rows)


# ---------------------------------------------------------------------------- match-lesions
def _cmd_match_lesions(args) -> int:
    _set_threads(args)
    from ..apps import LesionMatcher

    names, lesions = read_lesions_csv(args.lesions)
    files = collect_images(args.images)
    model = _load_model(args.model)
    nd = model.ndim_
    if lesions.shape[1] not in (nd, 2 * nd):
        raise CLIError(f"lesions file '{args.lesions}' has {lesions.shape[1]} values per lesion; a "
                       f"{nd}D model needs {nd} (centre) or {2 * nd} (box)")
    kw = {}
    if args.score_threshold is not None:
        kw["score_threshold"] = args.score_threshold
    if args.cycle_threshold is not None:
        kw["cycle_threshold_mm"] = None if args.cycle_threshold == "none" else (
            "auto" if args.cycle_threshold == "auto" else float(args.cycle_threshold))
    matcher = LesionMatcher(embedder=model, **kw).fit(args.template, lesions)
    axes = ["x", "y", "z"][:nd]
    header = ["image", "name", "found", *axes, "score", "cycle_mm"]
    rows = []
    for f in files:
        t0 = time.perf_counter()
        res = matcher.match([f])
        for j, name in enumerate(names):
            p = res["raw_points"][0, j]
            rows.append([f, name, int(bool(res["found"][0, j])), *(_fmt(v) for v in p),
                         _fmt(res["scores"][0, j]), _fmt(res["cycle_mm"][0, j])])
        _log(args, f"{f}: {int(res['found'][0].sum())} of {len(names)} lesions found "
                   f"({time.perf_counter() - t0:.1f} s)")
    return _write_rows(args, header, rows)


# ---------------------------------------------------------------------------- register
def _cmd_register(args) -> int:
    _set_threads(args)
    from ..apps import SAMAffineRegistrar

    out = Path(args.out)
    if out.suffix.lower() not in (".tfm", ".txt", ".mat", ".h5", ".hdf5", ".xfm"):
        raise CLIError(f"--out '{out}' must be a SimpleITK transform file (.tfm, .txt, .mat, .h5)")
    for name, path in (("fixed", args.fixed), ("moving", args.moving)):
        if not Path(path).exists():
            raise CLIError(f"{name} image does not exist: '{path}'")
    model = _load_model(args.model)
    import SimpleITK as sitk

    from ..image import read_image
    fixed, moving = read_image(args.fixed), read_image(args.moving)
    kw = {"random_state": args.seed}
    if args.grid_spacing is not None:
        kw["grid_spacing_mm"] = args.grid_spacing
    if args.ncc_radius is not None:
        kw["ncc_radius_mm"] = args.ncc_radius
    reg = SAMAffineRegistrar(embedder=model, **kw).fit(fixed, moving)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteTransform(reg.transform_.to_sitk(), str(out))
    inl = getattr(reg, "inlier_mask_", None)
    n_inl = len(reg.matches_) if inl is None else int(sum(bool(v) for v in inl))
    _log(args, f"affine from {len(reg.matches_)} confident matches ({n_inl} inliers), "
               f"{reg.timings_.get('total', float('nan')):.1f} s; transform (fixed -> moving world "
               f"points) written to {out}")
    if args.resampled:
        warped = reg.transform_.resample(moving, reference=fixed)
        warped.save(args.resampled)
        _log(args, f"moving image resampled onto the fixed grid: {args.resampled}")
    return 0


# ---------------------------------------------------------------------------- parser
def _common(p, threads=True):
    if threads:
        p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="CPU threads for torch (default: torch's choice, all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")


def _template_query_args(p, images_help, template_help):
    """The arguments of the commands that carry marks from a template to query images."""
    p.add_argument("images", nargs="+", help=images_help)
    p.add_argument("-m", "--model", required=True, help="trained model file")
    p.add_argument("-t", "--template", required=True, help=template_help)
    p.add_argument("-o", "--out", default=None, help="output CSV (default: standard output)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``samlearn`` command.

    Subcommands: ``info``, ``demo``, ``train``, ``embed``, ``detect``, ``match-lesions`` and
    ``register``; each sets ``func``, the function that runs it.

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    p = argparse.ArgumentParser(
        prog="samlearn",
        description="Self-supervised anatomical embeddings (SAM) for CT and X-ray: one-shot landmarks, "
                    "lesion matching, registration. Points are world millimetres (x, y[, z]) as "
                    "SimpleITK reports them. Start with `samlearn demo`.",
        epilog="Run `samlearn COMMAND --help` for the options of a command.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="print versions and the compute device",
                          description="Print the versions of samlearn, torch, numpy and SimpleITK and "
                                      "whether CUDA is available.")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser(
        "demo", help="train on synthetic CT phantoms and find 20 landmarks one-shot (no data needed)",
        description="The main job on an embedded default: generate synthetic CT torso phantoms, train "
                    "a ct-lite SAMEmbedder on the training phantoms for --minutes, mark the 20 "
                    "landmarks on one training phantom and find them in held-out phantoms, with the "
                    "one-shot detector and through SAM-affine + SAM-coarse registration; compare "
                    "with copying the template coordinates and with SimpleITK's intensity-based "
                    "affine registration; write a table, the model and a figure to --out.")
    demo.add_argument("--minutes", type=_positive_float, default=4.0,
                      help="training time in minutes (default 4)")
    demo.add_argument("--out", default="samlearn-demo",
                      help="output folder for the model, results and figure (default ./samlearn-demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--subjects", type=_positive_int, default=20, help="training phantoms (default 20)")
    demo.add_argument("--test", type=_positive_int, default=10, help="held-out phantoms (default 10)")
    demo.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    demo.add_argument("--no-baseline", action="store_true", help="skip the SimpleITK affine baseline")
    demo.add_argument("--no-figure", action="store_true", help="skip the PNG figure")
    _common(demo)
    demo.set_defaults(func=_cmd_demo)

    tr = sub.add_parser(
        "train", help="train a SAM model on unlabelled images",
        description="Train a SAMEmbedder on unlabelled images and save it. With --nproc-per-node N "
                    "the training runs data-parallel in N processes on this machine (one GPU each, or "
                    "CPU processes with the Gloo backend), launched with torch.distributed.run; for "
                    "several machines run `torchrun --nnodes ... -m samlearn.cli train ...` yourself.")
    tr.add_argument("images", nargs="+", help="image files, folders of images (or of DICOM series), "
                    "or glob patterns (quote them: 'data/*.nii.gz')")
    tr.add_argument("--out", "-o", required=True, help="model file to write")
    tr.add_argument("--preset", default="auto", help="ct, xray, ct-lite, xray-lite or auto (default)")
    tr.add_argument("--max-iter", type=int, default=None, help="training iterations (default: preset)")
    tr.add_argument("--max-time", type=float, default=None, help="training time budget in seconds")
    tr.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    tr.add_argument("--seed", type=int, default=None, help="random seed (random_state)")
    tr.add_argument("--nproc-per-node", type=int, default=None,
                    help="data-parallel processes on this machine (torch.distributed.run)")
    tr.add_argument("--checkpoint", default=None, help="checkpoint file, written during training")
    tr.add_argument("--checkpoint-every", type=int, default=None, help="iterations between checkpoints")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    tr.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="any other SAMEmbedder parameter (VALUE in JSON: --param batch_size=4 "
                         "--param patch_shape=[32,64,64]); repeatable")
    tr.add_argument("-v", "--verbose", action="count", default=0, help="progress bar and summary")
    tr.set_defaults(func=_cmd_train)

    emb = sub.add_parser(
        "embed", help="embed images with a trained model (one .npz/.pt file per image)",
        description="Compute the global and local embedding maps of each image and save them, with "
                    "the world geometry of every grid, as OUT/<image name>.npz (numpy) or .pt "
                    "(torch). Read them back with samlearn.embedding.load_embedding.")
    emb.add_argument("images", nargs="+", help="image files, folders of images (or one DICOM series "
                     "folder), or quoted glob patterns")
    emb.add_argument("-m", "--model", required=True, help="trained model file (samlearn.save)")
    emb.add_argument("-o", "--out", required=True, help="output folder")
    emb.add_argument("--format", choices=("npz", "pt"), default="npz", help="file format (default npz)")
    _common(emb)
    emb.set_defaults(func=_cmd_embed)

    det = sub.add_parser(
        "detect", help="find landmarks marked on one template image in other images",
        description="One-shot landmark detection: read the points marked on --template from --points "
                    "(CSV with header name,x,y[,z], world mm) and find them in every image. Writes a "
                    "CSV with one row per image and point: image,name,x,y[,z],score (world mm of each "
                    "image; score = peak cosine similarity in [-1, 1]).")
    _template_query_args(det, "query image files, folders or quoted glob patterns",
                         "template image the points are marked on")
    det.add_argument("-p", "--points", required=True, help="CSV of template points: name,x,y[,z] (mm)")
    det.add_argument("--consistency", choices=("coarse", "affine", "none"), default="coarse",
                     help="joint check of the points: 'coarse' (default) searches each point near "
                          "where a grid of template points' affine + smooth field puts it; 'affine' "
                          "re-searches points that disagree with a robust affine fit of all points "
                          "(faster; needs ndim + 2 points); 'none' searches each point on its own")
    det.add_argument("--ncc-radius", type=_positive_float, default=None, metavar="MM",
                     help="refine each match by normalised cross-correlation of the template's "
                          "intensity patch of this half-width (mm) within one local voxel (off by default)")
    det.add_argument("--search-radius", default="auto",
                     help="coarse-to-fine window in mm around the global peak, 'auto' (default) or "
                          "'none' (whole image)")
    det.add_argument("--cycle-check", action="store_true",
                     help="also report the forward-backward distance (cycle_mm column)")
    _common(det)
    det.set_defaults(func=_cmd_detect)

    les = sub.add_parser(
        "match-lesions", help="find lesions marked on one scan in follow-up scans",
        description="Follow-up lesion matching: lesions marked on --template (CSV: name,x,y[,z] "
                    "centres or name,x0,y0[,z0],x1,y1[,z1] boxes, world mm) are searched in every "
                    "image; a lesion whose match is not trusted (low score, outside the field of "
                    "view, failed cycle check) is reported with found=0. Writes a CSV: "
                    "image,name,found,x,y[,z],score,cycle_mm.")
    _template_query_args(les, "follow-up image files, folders or quoted glob patterns",
                         "scan the lesions are marked on")
    les.add_argument("-l", "--lesions", required=True, help="CSV of lesion centres or boxes (mm)")
    les.add_argument("--score-threshold", type=float, default=None,
                     help="minimum peak score of a found lesion (default: LesionMatcher's)")
    les.add_argument("--cycle-threshold", default=None,
                     help="maximum forward-backward distance in mm, 'auto' or 'none' "
                          "(default: LesionMatcher's)")
    _common(les)
    les.set_defaults(func=_cmd_match_lesions)

    reg = sub.add_parser(
        "register", help="affine registration of two images from SAM matches",
        description="SAM-affine registration: match a grid of points of FIXED into MOVING and fit an "
                    "affine. Writes a SimpleITK transform file mapping FIXED world points to MOVING "
                    "world points (what sitk.Resample expects to pull MOVING onto FIXED's grid), and "
                    "with --resampled the moving image on the fixed grid.")
    reg.add_argument("fixed", help="fixed image (file or DICOM folder)")
    reg.add_argument("moving", help="moving image (file or DICOM folder)")
    reg.add_argument("-m", "--model", required=True, help="trained model file")
    reg.add_argument("-o", "--out", required=True, help="transform file to write (.tfm)")
    reg.add_argument("--resampled", default=None, help="also write the moving image resampled onto "
                     "the fixed grid (e.g. moved.nii.gz)")
    reg.add_argument("--grid-spacing", type=_positive_float, default=None,
                     help="spacing in mm of the matched point grid (default: the registrar's)")
    reg.add_argument("--ncc-radius", type=_positive_float, default=None, metavar="MM",
                     help="refine the matches made on the affinely resampled moving image by normalised "
                          "cross-correlation of fixed-image patches of this half-width in mm (same "
                          "modality only; off by default; 10 on 2 mm CT)")
    reg.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _common(reg)
    reg.set_defaults(func=_cmd_register)
    return p


def main(argv=None) -> int:
    """Run the ``samlearn`` command line.

    Errors are printed as ``samlearn COMMAND: error: <one line>`` to stderr, without a traceback
    (set ``SAMLEARN_DEBUG=1`` to raise it instead).

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 on success, 2 for bad input (or no command), 1 for a failure while
        running, 130 when interrupted.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prefix = f"samlearn {args.command}: error:"
    try:
        if args.func is _cmd_train:
            return _cmd_train(args, argv)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"samlearn {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, the traceback on request
        if os.environ.get("SAMLEARN_DEBUG"):
            raise
        # bad input (ModelFileError and NotFittedError are ValueErrors) -> 2; a failure -> 1
        bad_input = isinstance(exc, (CLIError, ValueError, TypeError, OSError))
        known = bad_input or type(exc).__name__ == "RegistrationError"
        hint = "" if known else f" ({type(exc).__name__}; set SAMLEARN_DEBUG=1 for the traceback)"
        print(f"{prefix} {one_line(exc)}{hint}", file=sys.stderr)
        return 2 if bad_input else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
