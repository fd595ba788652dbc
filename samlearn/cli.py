"""The ``samlearn`` command-line tool (also ``python -m samlearn``)."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args) -> int:
    import numpy
    import SimpleITK
    import torch

    from . import __version__

    print(f"samlearn {__version__}")
    print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    print(f"numpy {numpy.__version__}, SimpleITK {SimpleITK.Version_VersionString()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samlearn", description="Self-supervised anatomical embeddings "
                                "(SAM) for CT and X-ray: one-shot landmarks, lesion matching, registration.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions and the compute device")
    info.set_defaults(func=_cmd_info)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
