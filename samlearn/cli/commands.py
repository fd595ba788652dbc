"""The ``samlearn`` command-line tool (also ``python -m samlearn``): the commands and :func:`main`.

One function per subcommand (``cmd_<name>(args) -> exit code``), named in the parser
(:mod:`samlearn.cli.parser`). Exit codes: 0 done; 3 done with failures (a batch command whose bad
images are listed in ``<output stem>.failures.csv``, or a registration flagged as likely wrong); 2 bad arguments or inputs (a missing file, a
CSV without the expected columns, points outside the image, an unreadable model file, an output
that cannot be written or that another run holds); 1 a failure while running (a registration
without enough confident matches, an unexpected error). Errors print ``samlearn COMMAND: error:
<one line>`` to stderr, without a traceback (set ``SAMLEARN_DEBUG=1`` to see it). Heavy modules
(torch and everything built on it) are imported inside the commands that need them, so that
``--help`` and ``--version`` answer at once.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

from .._version import __version__
from .files import CLIError, collect_images, image_stem, one_line, read_lesions_csv, write_csv
from .parser import POINT_SUFFIXES, build_parser

logger = logging.getLogger("samlearn.cli")

TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5")
MARKUP_SUFFIXES = (".mrk.json", ".fcsv")


# ---------------------------------------------------------------------------- shared helpers
def _set_threads(args) -> None:
    n = getattr(args, "threads", None)
    if n is not None:
        import torch
        torch.set_num_threads(int(n))


def _check_model_file(path) -> str:
    if not Path(path).is_file():
        raise CLIError(f"model file does not exist: '{path}' (train one with `samlearn train` or run "
                       f"`samlearn demo`, which writes one)")
    return str(path)


def _load_model(path):
    from ..jobs.tasks import load_model
    return load_model(_check_model_file(path))


def _suffix(path) -> str:
    low = str(path).lower()
    return next((s for s in POINT_SUFFIXES if low.endswith(s)), Path(low).suffix)


def _read_marks(path, what: str, ndim=None, lesions: bool = False):
    """Names and points (or lesion boxes) from a CSV or a 3D Slicer markups file, LPS world mm."""
    suffix = _suffix(path)
    if suffix not in POINT_SUFFIXES:
        raise CLIError(f"{what} file '{path}' must be .csv, .mrk.json or .fcsv, got '{suffix}'")
    if suffix == ".csv" and lesions:
        return read_lesions_csv(path)  # centres or boxes
    if not Path(path).is_file():
        raise CLIError(f"{what} file does not exist: '{path}'")
    from ..image import read_points

    # a CSV keeps its own dimension (the caller names a mismatch with the model); markups always
    # hold three coordinates, which a 2D model takes on the z = 0 plane
    return read_points(path, ndim=ndim if suffix in MARKUP_SUFFIXES else None)


def _output_names(files) -> dict:
    """Image -> a unique output file name (its stem, ``_2``, ``_3``... for repeats), fixed before
    any work so that a resumed run names every file as the first one did."""
    names, used = {}, set()
    for f in files:
        stem = image_stem(f)
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        names[f] = name
    return names


def _dask_client(args):
    if getattr(args, "dask_scheduler", None) is None and getattr(args, "dask_workers", None) is None:
        return None
    if args.dask_scheduler is not None and args.dask_workers is not None:
        raise CLIError("give --dask-scheduler or --dask-workers, not both")
    from ..jobs import dask_client
    return dask_client(args.dask_scheduler, args.dask_workers, args.threads)


def _run_batch(args, task, images, output, table=None, write=None) -> int:
    """Run a batch task durably; report; the exit code (0 done, 3 done with failures)."""
    from ..jobs import run_batch

    client = _dask_client(args)
    try:
        res = run_batch(task, images, output, table=table, resume=args.resume, client=client,
                        verbose=args.verbose > 0, write=write)
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    done = len(images) - len(res.failures)
    extra = f" ({res.resumed} from the interrupted run)" if res.resumed else ""
    logger.info(f"{done} of {len(images)} images done{extra}; results in {table or output}")
    if res.failures:
        logger.warning(f"{len(res.failures)} image(s) failed; see {res.failures_file}")
    return res.exit_code


def _run_to_stdout(args, task, images) -> int:
    """A task's table on standard output (no journal: nothing to resume); failures on stderr."""
    from ..jobs import run_serial

    if args.resume or args.dask_scheduler or args.dask_workers:
        raise CLIError("--resume and Dask need --out (a file the results are recorded in)")
    rows, failed = [], 0
    for image, r, error in run_serial(task, images):
        if error is None:
            rows.extend(r)
        else:
            failed += 1
            logger.warning(f"{image}: failed: {error}")
    write_csv(None, list(task.header), rows)
    return 3 if failed else 0


def _markup_writer(pattern: str, images, ndim: int):
    """Write each image's points as a 3D Slicer markups file named by ``pattern``."""
    stems = [image_stem(f) for f in images]
    if len(images) > 1 and "{image}" not in pattern:
        raise CLIError(f"--out '{pattern}': with several images, put {{image}} in the markups file name "
                       f"(e.g. 'out/{{image}}.mrk.json'), or write a .csv")
    if len(set(stems)) != len(stems):
        raise CLIError("--out: two images have the same file name; write a .csv instead")
    stem_of = dict(zip(images, stems))

    def write(_table, _header, rows):
        import numpy as np

        from ..image import write_points
        by_image = {}
        for row in rows:
            by_image.setdefault(row[0], []).append(row)
        for image, rs in by_image.items():
            names = [r[1] for r in rs]
            pts = np.array([[float(v) for v in r[2:2 + ndim]] for r in rs])
            write_points(pattern.replace("{image}", stem_of[image]), names, pts)
    return write


def _check_table_out(args, images):
    """Check ``--out`` before any work. Returns (output, table, writer) for :func:`_run_batch`."""
    from ..jobs import check_output_file, check_output_folder

    out = args.out
    if _suffix(out) in MARKUP_SUFFIXES:
        folder = Path(out).parent
        check_output_folder(folder, "--out")
        return folder / args.command, out, out
    if not str(out).lower().endswith(".csv"):
        raise CLIError(f"--out '{out}' must be a .csv file or a 3D Slicer markups file (.mrk.json, .fcsv)")
    return check_output_file(out), None, None



# ---------------------------------------------------------------------------- info, demo
def cmd_info(args) -> int:
    """Print the versions (``samlearn info``)."""
    import numpy
    import SimpleITK
    import torch

    print(f"samlearn {__version__}")
    print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    print(f"numpy {numpy.__version__}, SimpleITK {SimpleITK.Version_VersionString()}")
    return 0


def cmd_demo(args) -> int:
    """Run the embedded main job (``samlearn demo``)."""
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
    logger.debug("launching: %s", " ".join(cmd))
    return subprocess.call(cmd)


def cmd_train(args, argv=None) -> int:
    """Train and save a model (``samlearn train``)."""
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
        logger.info(f"trained {est.n_iter_} iterations in {est.train_time_:.1f} s on {len(files)} images "
                  f"({est.world_size_} process(es)); model written to {out}")
    return 0



# ---------------------------------------------------------------------------- embed
def cmd_embed(args) -> int:
    """Embed images into one file each (``samlearn embed``)."""
    from ..jobs import EmbedTask, check_output_folder, prepared

    files = collect_images(args.images)
    out = check_output_folder(args.out)
    model = _check_model_file(args.model)
    names = _output_names(files)
    out.mkdir(parents=True, exist_ok=True)
    task = EmbedTask(model=model, threads=args.threads, folder=str(out), file_names=tuple(names.items()),
                     format=args.format)
    prepared(task)  # an unreadable model fails here, before any image (exit 2)
    return _run_batch(args, task, files, out, table=out / "embeddings.csv")


# ---------------------------------------------------------------------------- detect
def cmd_detect(args) -> int:
    """Find template landmarks in images (``samlearn detect``)."""
    from ..jobs import DetectTask, prepared

    files = collect_images(args.images)
    output = table = writer = pattern = None
    if args.out not in (None, "-"):
        output, table, pattern = _check_table_out(args, files)
    model = _load_model(args.model)
    names, points = _read_marks(args.points, "points", ndim=model.ndim_)
    if points.shape[1] != model.ndim_:
        raise CLIError(f"points file '{args.points}' has {points.shape[1]} coordinates per point but "
                       f"the model works on {model.ndim_}D images")
    radius = None if args.search_radius == "none" else args.search_radius
    detector = (("consistency", None if args.consistency == "none" else args.consistency),
                ("search_radius_mm", radius), ("cycle_check", args.cycle_check),
                ("ncc_radius_mm", args.ncc_radius))
    task = DetectTask(model=args.model, threads=args.threads, template=args.template, names=tuple(names),
                      points=tuple(map(tuple, points.tolist())), detector=detector)
    prepared(task)  # a bad template or points fail here, before any image (exit 2)
    if output is None:
        return _run_to_stdout(args, task, files)
    if pattern is not None:
        writer = _markup_writer(pattern, files, model.ndim_)
    return _run_batch(args, task, files, output, table=table, write=writer)


# ---------------------------------------------------------------------------- match-lesions
def cmd_match_lesions(args) -> int:
    """Find template lesions in follow-up scans (``samlearn match-lesions``)."""
    from ..jobs import LesionTask, prepared

    files = collect_images(args.images)
    output = None
    if args.out not in (None, "-"):
        output, _table, pattern = _check_table_out(args, files)
        if pattern is not None:
            raise CLIError("--out: match-lesions writes a .csv (found, score and cycle_mm per lesion)")
    model = _load_model(args.model)
    names, lesions = _read_marks(args.lesions, "lesions", ndim=model.ndim_, lesions=True)
    nd = model.ndim_
    if lesions.shape[1] not in (nd, 2 * nd):
        raise CLIError(f"lesions file '{args.lesions}' has {lesions.shape[1]} values per lesion; a "
                       f"{nd}D model needs {nd} (centre) or {2 * nd} (box)")
    kw = []
    if args.score_threshold is not None:
        kw.append(("score_threshold", args.score_threshold))
    if args.cycle_threshold is not None:
        kw.append(("cycle_threshold_mm", None if args.cycle_threshold == "none" else args.cycle_threshold))
    task = LesionTask(model=args.model, threads=args.threads, template=args.template, names=tuple(names),
                      lesions=tuple(map(tuple, lesions.tolist())), matcher=tuple(kw))
    prepared(task)
    if output is None:
        return _run_to_stdout(args, task, files)
    return _run_batch(args, task, files, output)


# ---------------------------------------------------------------------------- register
def _register_one(args, moving) -> int:
    from ..jobs import check_output_file

    out = check_output_file(args.out)
    model = _load_model(args.model)
    from ..apps import SAMAffineRegistrar
    from ..exceptions import RegistrationQualityWarning
    from ..image import read_image
    fixed, moving = read_image(args.fixed), read_image(moving)
    with warnings.catch_warnings():  # reported below, with the exit code
        warnings.simplefilter("ignore", RegistrationQualityWarning)
        reg = SAMAffineRegistrar(embedder=model, **dict(_registrar_params(args))).fit(fixed, moving)
    out.parent.mkdir(parents=True, exist_ok=True)
    reg.transform_.save(out)
    inl = getattr(reg, "inlier_mask_", None)
    n_inl = len(reg.matches_) if inl is None else int(sum(bool(v) for v in inl))
    logger.info(f"affine from {len(reg.matches_)} confident matches ({n_inl} inliers), "
                f"{reg.timings_.get('total', float('nan')):.1f} s; transform (fixed -> moving world "
                f"points) written to {out}")
    if args.resampled:
        warped = reg.transform_.resample(moving, reference=fixed)
        warped.save(args.resampled)
        logger.info(f"moving image resampled onto the fixed grid: {args.resampled}")
    if not reg.quality_.ok:
        logger.warning("the registration is flagged as likely wrong (exit code 3): "
                       + "; ".join(reg.quality_.reasons))
        return 3
    return 0


def _registrar_params(args):
    kw = [("random_state", args.seed)]
    if args.grid_spacing is not None:
        kw.append(("grid_spacing_mm", args.grid_spacing))
    if args.ncc_radius is not None:
        kw.append(("ncc_radius_mm", args.ncc_radius))
    return tuple(kw)


def cmd_register(args) -> int:
    """Register moving images to a fixed image (``samlearn register``)."""
    from ..jobs import RegisterTask, check_output_folder, prepared

    if not Path(args.fixed).exists():
        raise CLIError(f"fixed image does not exist: '{args.fixed}'")
    out = Path(args.out)
    single = len(args.moving) == 1 and out.suffix.lower() in TRANSFORM_SUFFIXES
    if single:
        if not Path(args.moving[0]).exists():
            raise CLIError(f"moving image does not exist: '{args.moving[0]}'")
        if args.resume or args.dask_scheduler or args.dask_workers:
            raise CLIError("--resume and Dask are for a batch (-o a folder)")
        return _register_one(args, args.moving[0])
    if out.suffix.lower() in TRANSFORM_SUFFIXES:
        raise CLIError(f"--out '{out}': several moving images need a folder for their transforms")
    if out.suffix:
        raise CLIError(f"--out '{out}' must be a SimpleITK transform file (.tfm, .txt, .mat, .h5) or a folder")
    if args.resampled:
        raise CLIError("--resampled is for one moving image")
    files = collect_images(args.moving)
    check_output_folder(out)
    _check_model_file(args.model)
    names = _output_names(files)
    out.mkdir(parents=True, exist_ok=True)
    task = RegisterTask(model=args.model, threads=args.threads, fixed=args.fixed, folder=str(out),
                        file_names=tuple(names.items()), registrar=_registrar_params(args))
    prepared(task)
    return _run_batch(args, task, files, out, table=out / "registrations.csv")


# ---------------------------------------------------------------------------- main
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
        The exit code: 0 done, 3 done with failures (batch commands), 2 bad arguments or input
        (or no command), 1 a failure while running, 130 when interrupted.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .logs import configure_logging, level_for  # SimpleITK: not for --help and --version

    configure_logging(level_for(getattr(args, "quiet", False), getattr(args, "verbose", 0)))
    prefix = f"samlearn {args.command}: error:"
    try:
        if args.func == "train":
            return cmd_train(args, argv)
        _set_threads(args)
        return globals()[f"cmd_{args.func}"](args)
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
    finally:
        logging.captureWarnings(False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
