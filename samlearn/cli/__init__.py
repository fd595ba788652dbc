"""The ``samlearn`` command line (also ``python -m samlearn``): :mod:`~samlearn.cli.parser` holds the
arguments (no heavy imports: ``--help`` answers at once), :mod:`~samlearn.cli.commands` the commands,
:mod:`~samlearn.cli.files` the file plumbing (image lists, point and lesion CSV files),
:mod:`~samlearn.cli.logs` the logging set-up, :mod:`~samlearn.cli.demo` the embedded main job
(``samlearn demo``)."""
from .commands import main
from .files import CLIError, collect_images
from .parser import build_parser

__all__ = ["main", "build_parser", "collect_images", "CLIError"]
