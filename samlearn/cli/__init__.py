"""The ``samlearn`` command line (also ``python -m samlearn``): :mod:`~samlearn.cli.main` holds the
commands, :mod:`~samlearn.cli.files` the file plumbing (image lists, point and lesion CSV files),
:mod:`~samlearn.cli.demo` the embedded main job (``samlearn demo``)."""
from .commands import build_parser, main
from .files import CLIError, collect_images

__all__ = ["main", "build_parser", "collect_images", "CLIError"]
