"""Print the bad-input matrix of tests/test_reliability.py as a Markdown table: for every case, the
expected exception and message, and what this samlearn actually did.

    python benchmarks/reliability_matrix.py               # the samlearn on sys.path
    PYTHONPATH=/path/to/older/samlearn python benchmarks/reliability_matrix.py --tests-from .

Exit status 1 if any case does not raise exactly the expected exception with a matching message.
"""
import argparse
import re
import sys
import tempfile
import warnings
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests-from", default=str(Path(__file__).resolve().parents[1]),
                    help="repository whose tests/ holds the matrix (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.tests_from) / "tests"))
    import samlearn
    import test_reliability as tr

    ctx = tr.Context(Path(tempfile.mkdtemp(prefix="samlearn_matrix_")))
    print(f"samlearn {samlearn.__version__} from {Path(samlearn.__file__).parent}\n")
    print("| area | case | expected | result |")
    print("|---|---|---|---|")
    failed = 0
    for row in tr.MATRIX:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row.call(ctx)
            got, ok = "**no error: accepted silently**", False
        except Exception as exc:  # noqa: BLE001 - we report whatever happened
            msg = " ".join(str(exc).split())
            ok = type(exc) is row.exc and re.search(row.match, str(exc)) is not None
            got = f"{type(exc).__name__}: {msg[:110]}{'...' if len(msg) > 110 else ''}"
            if not ok:
                got = "**" + got.replace("|", "/") + "**"
        failed += not ok
        got = got.replace("|", "/")
        print(f"| {row.area} | {row.case} | {row.exc.__name__} | {'pass' if ok else 'FAIL'}: {got} |")
    print(f"\n{len(tr.MATRIX) - failed} of {len(tr.MATRIX)} cases pass.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
