"""The argument parser of the ``samlearn`` command.

Kept apart from the commands and free of heavy imports (no torch, no scikit-learn), so that
``samlearn --help`` and ``samlearn --version`` answer at once. Each subcommand records the name of
the function that runs it (``args.func``, a name in :mod:`samlearn.cli.commands`).
"""
from __future__ import annotations

import argparse

from .._version import __version__

__all__ = ["build_parser", "positive_float", "positive_int", "POINT_SUFFIXES"]

#: point file formats, chosen by extension: samlearn's CSV and 3D Slicer's markups
POINT_SUFFIXES = (".csv", ".mrk.json", ".fcsv")


def positive_float(text):
    """An argparse type: a positive finite number.

    Parameters
    ----------
    text : str
        The argument.

    Returns
    -------
    float
        The number.
    """
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return v


def positive_int(text):
    """An argparse type: a positive integer.

    Parameters
    ----------
    text : str
        The argument.

    Returns
    -------
    int
        The integer.
    """
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return v


def _radius(text):
    """A search radius: a positive number of mm, 'auto' or 'none'."""
    if text in ("auto", "none"):
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive number of mm, 'auto' or 'none', got '{text}'") from None


def _score(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a score in [-1, 1], got '{text}'") from None
    if not -1.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a score in [-1, 1], got '{text}'")
    return v


def _verbosity(p, threads=True):
    if threads:
        p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="CPU threads for torch (default: torch's choice, all cores)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="progress bars and details (repeat for debug messages)")


def _batch(p):
    """The options of the batch commands (one result per image, nothing lost)."""
    g = p.add_argument_group(
        "batch", "Each image's result is recorded as soon as it is done; a bad image is listed in "
                 "<output stem>.failures.csv (image,error) and the others finish. Exit codes: 0 all "
                 "done, 3 done with failures, 2 bad arguments, 1 run failure.")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run on the same output, skipping the images it "
                        "finished (the final output is the same as an uninterrupted run's)")
    g.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="run the images on a running Dask cluster (tcp://host:8786 or a scheduler "
                        "file .json); the image paths must be readable by its workers")
    g.add_argument("--dask-workers", type=positive_int, default=None, metavar="N",
                   help="run the images on a local Dask cluster of N worker processes")


def _template_query_args(p, images_help, template_help):
    """The arguments of the commands that carry marks from a template to query images."""
    p.add_argument("images", nargs="+", help=images_help)
    p.add_argument("-m", "--model", required=True, help="trained model file")
    p.add_argument("-t", "--template", required=True, help=template_help)
    p.add_argument("-o", "--out", default=None,
                   help="output CSV (default: standard output)")


def _add_train(sub):
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
    tr.add_argument("--checkpoint-every", type=positive_int, default=None, help="iterations between checkpoints")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    tr.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="any other SAMEmbedder parameter (VALUE in JSON: --param batch_size=4 "
                         "--param patch_shape=[32,64,64]); repeatable")
    _verbosity(tr, threads=False)
    tr.set_defaults(func="train")


def _add_embed(sub):
    emb = sub.add_parser(
        "embed", help="embed images with a trained model (one .npz/.pt file per image)",
        description="Compute the global and local embedding maps of each image and save them, with "
                    "the world geometry of every grid, as OUT/<image name>.npz (numpy) or .pt "
                    "(torch), with an index OUT/embeddings.csv. Read them back with "
                    "samlearn.embedding.load_embedding.")
    emb.add_argument("images", nargs="+", help="image files, folders of images (or one DICOM series "
                     "folder), or quoted glob patterns")
    emb.add_argument("-m", "--model", required=True, help="trained model file (samlearn.save)")
    emb.add_argument("-o", "--out", required=True, help="output folder")
    emb.add_argument("--format", choices=("npz", "pt"), default="npz", help="file format (default npz)")
    _batch(emb)
    _verbosity(emb)
    emb.set_defaults(func="embed")


def _add_detect(sub):
    det = sub.add_parser(
        "detect", help="find landmarks marked on one template image in other images",
        description="One-shot landmark detection: read the points marked on --template from --points "
                    "and find them in every image. Point files by extension: .csv (header "
                    "name,x,y[,z], world mm, LPS as SimpleITK reports them), 3D Slicer's .mrk.json or "
                    "legacy .fcsv (RAS or LPS, as the file says). Output by extension: a .csv with "
                    "one row per image and point (image,name,x,y[,z],score; score = peak cosine "
                    "similarity in [-1, 1]), or Slicer markups per image: -o 'out/{image}.mrk.json' "
                    "({image} = the image's file name without suffix).")
    _template_query_args(det, "query image files, folders or quoted glob patterns",
                         "template image the points are marked on")
    det.add_argument("-p", "--points", required=True, help="template points: .csv, .mrk.json or .fcsv")
    det.add_argument("--consistency", choices=("coarse", "affine", "none"), default="coarse",
                     help="joint check of the points: 'coarse' (default) searches each point near "
                          "where a grid of template points' affine + smooth field puts it; 'affine' "
                          "re-searches points that disagree with a robust affine fit of all points "
                          "(faster; needs ndim + 2 points); 'none' searches each point on its own")
    det.add_argument("--ncc-radius", type=positive_float, default=None, metavar="MM",
                     help="refine each match by normalised cross-correlation of the template's "
                          "intensity patch of this half-width (mm) within one local voxel (off by default)")
    det.add_argument("--search-radius", type=_radius, default="auto", metavar="MM",
                     help="coarse-to-fine window in mm around the global peak, 'auto' (default) or "
                          "'none' (whole image)")
    det.add_argument("--cycle-check", action="store_true",
                     help="also report the forward-backward distance (cycle_mm column)")
    _batch(det)
    _verbosity(det)
    det.set_defaults(func="detect")


def _add_lesions(sub):
    les = sub.add_parser(
        "match-lesions", help="find lesions marked on one scan in follow-up scans",
        description="Follow-up lesion matching: lesions marked on --template (CSV: name,x,y[,z] "
                    "centres or name,x0,y0[,z0],x1,y1[,z1] boxes, world mm; or centres in a 3D "
                    "Slicer .mrk.json / .fcsv) are searched in every image; a lesion whose match is "
                    "not trusted (low score, outside the field of view, failed cycle check) is "
                    "reported with found=0. Writes a CSV: image,name,found,x,y[,z],score,cycle_mm.")
    _template_query_args(les, "follow-up image files, folders or quoted glob patterns",
                         "scan the lesions are marked on")
    les.add_argument("-l", "--lesions", required=True, help="lesion centres or boxes (mm): .csv, .mrk.json, .fcsv")
    les.add_argument("--score-threshold", type=_score, default=None,
                     help="minimum peak score of a found lesion (default: LesionMatcher's)")
    les.add_argument("--cycle-threshold", type=_radius, default=None, metavar="MM",
                     help="maximum forward-backward distance in mm, 'auto' or 'none' "
                          "(default: LesionMatcher's)")
    _batch(les)
    _verbosity(les)
    les.set_defaults(func="match_lesions")


def _add_register(sub):
    reg = sub.add_parser(
        "register", help="affine registration of images to a fixed image from SAM matches",
        description="SAM-affine registration: match a grid of points of FIXED into each MOVING image "
                    "and fit an affine. With one moving image and -o a transform file (.tfm, .txt, "
                    ".mat, .h5), writes that file; with -o a folder, writes OUT/<moving name>.tfm "
                    "per moving image and an index OUT/registrations.csv, as a batch job. A transform "
                    "maps FIXED world points to MOVING world points (what sitk.Resample expects to "
                    "pull MOVING onto FIXED's grid). A registration its own matches do not support "
                    "(quality_) is flagged: one pair exits with 3 (the transform written, a warning "
                    "says why); in a batch it goes to the failures file, without a transform.")
    reg.add_argument("fixed", help="fixed image (file or DICOM folder)")
    reg.add_argument("moving", nargs="+", help="moving image(s): files, folders or quoted glob patterns")
    reg.add_argument("-m", "--model", required=True, help="trained model file")
    reg.add_argument("-o", "--out", required=True, help="transform file to write (.tfm), or a folder")
    reg.add_argument("--resampled", default=None, help="also write the moving image resampled onto "
                     "the fixed grid (e.g. moved.nii.gz; one moving image only)")
    reg.add_argument("--grid-spacing", type=positive_float, default=None, metavar="MM",
                     help="spacing in mm of the matched point grid (default: the registrar's)")
    reg.add_argument("--ncc-radius", type=positive_float, default=None, metavar="MM",
                     help="refine the matches made on the affinely resampled moving image by normalised "
                          "cross-correlation of fixed-image patches of this half-width in mm (same "
                          "modality only; off by default)")
    reg.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _batch(reg)
    _verbosity(reg)
    reg.set_defaults(func="register")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``samlearn`` command.

    Subcommands: ``info``, ``demo``, ``train``, ``embed``, ``detect``, ``match-lesions`` and
    ``register``; each sets ``func``, the name of the function of :mod:`samlearn.cli.commands`
    that runs it.

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    p = argparse.ArgumentParser(
        prog="samlearn",
        description="Self-supervised anatomical embeddings (SAM) for CT and X-ray: one-shot landmarks, "
                    "lesion matching, registration. Points are world millimetres (x, y[, z]) as "
                    "SimpleITK reports them (LPS); 3D Slicer markups (RAS) are converted. Start with "
                    "`samlearn demo`.",
        epilog="Run `samlearn COMMAND --help` for the options of a command.")
    p.add_argument("--version", action="version", version=f"samlearn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="print versions and the compute device",
                          description="Print the versions of samlearn, torch, numpy and SimpleITK and "
                                      "whether CUDA is available.")
    info.set_defaults(func="info")

    demo = sub.add_parser(
        "demo", help="train on synthetic CT phantoms and find 20 landmarks one-shot (no data needed)",
        description="The main job on an embedded default: generate synthetic CT torso phantoms, train "
                    "a ct-lite SAMEmbedder on the training phantoms for --minutes, mark the 20 "
                    "landmarks on one training phantom and find them in held-out phantoms, with the "
                    "one-shot detector and through SAM-affine + SAM-coarse registration; compare "
                    "with copying the template coordinates and with SimpleITK's intensity-based "
                    "affine registration; write a table, the model and a figure to --out.")
    demo.add_argument("--minutes", type=positive_float, default=4.0,
                      help="training time in minutes (default 4)")
    demo.add_argument("--out", default="samlearn-demo",
                      help="output folder for the model, results and figure (default ./samlearn-demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--subjects", type=positive_int, default=20, help="training phantoms (default 20)")
    demo.add_argument("--test", type=positive_int, default=10, help="held-out phantoms (default 10)")
    demo.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    demo.add_argument("--no-baseline", action="store_true", help="skip the SimpleITK affine baseline")
    demo.add_argument("--no-figure", action="store_true", help="skip the PNG figure")
    _verbosity(demo)
    demo.set_defaults(func="demo")

    _add_train(sub)
    _add_embed(sub)
    _add_detect(sub)
    _add_lesions(sub)
    _add_register(sub)
    return p
