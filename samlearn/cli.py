"""The ``samlearn`` command-line tool (also ``python -m samlearn``).

One function per subcommand (``_cmd_<name>(args) -> exit code``), registered in
:func:`build_parser`. Errors in the user's input print one line to stderr and exit with code 2;
a failure while running exits with code 1.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

# files a folder given to `samlearn train` is searched for (DICOM: see collect_images)
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                  ".tif", ".tiff", ".bmp")


class CLIError(Exception):
    """A problem with the command line or its inputs (exit code 2)."""


def _cmd_info(args) -> int:
    import numpy
    import SimpleITK
    import torch

    from . import __version__

    print(f"samlearn {__version__}")
    print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    print(f"numpy {numpy.__version__}, SimpleITK {SimpleITK.Version_VersionString()}")
    return 0


# ---------------------------------------------------------------------------- train


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(IMAGE_SUFFIXES)


def _is_dicom_series(folder: Path) -> bool:
    return any(f.is_file() and f.name.lower().endswith(".dcm") for f in folder.iterdir())


def _images_in_folder(folder: Path) -> list:
    """A folder's images: its image files (sorted, not recursive); a folder of ``.dcm`` files is
    one DICOM series; otherwise its sub-folders that are DICOM series."""
    files = sorted(str(f) for f in folder.iterdir() if _is_image_file(f))
    if files:
        return files
    if _is_dicom_series(folder):
        return [str(folder)]
    return sorted(str(d) for d in folder.iterdir() if d.is_dir() and _is_dicom_series(d))


def collect_images(sources) -> list:
    """Images from folders (see :func:`_images_in_folder`), glob patterns (sorted matches) and
    file paths, in the order given, without duplicates."""
    out, seen = [], set()
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = _images_in_folder(p)
            if not found:
                raise CLIError(f"folder '{src}' holds no image files ({', '.join(IMAGE_SUFFIXES)}) "
                               f"and no DICOM series (.dcm files)")
        elif p.is_file():
            found = [str(p)]
        elif glob.has_magic(src):
            found = sorted(f for f in glob.glob(src) if Path(f).is_file())
            if not found:
                raise CLIError(f"pattern '{src}' matches no files")
        else:
            raise CLIError(f"'{src}' is not a file, a folder or a glob pattern that matches files")
        for f in found:
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


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

    from . import SAMEmbedder

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
    try:
        est.fit(files)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    if getattr(est, "rank_", 0) == 0:
        est.save(out)
        if args.verbose:
            print(f"trained {est.n_iter_} iterations in {est.train_time_:.1f} s on {len(files)} images "
                  f"({est.world_size_} process(es)); model written to {out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samlearn", description="Self-supervised anatomical embeddings "
                                "(SAM) for CT and X-ray: one-shot landmarks, lesion matching, registration.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions and the compute device")
    info.set_defaults(func=_cmd_info)

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
    return p


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.func is _cmd_train:
            return _cmd_train(args, argv)
        return args.func(args)
    except CLIError as exc:
        print(f"samlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"samlearn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
