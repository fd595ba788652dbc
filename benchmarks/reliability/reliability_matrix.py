"""Print the bad-input matrix of tests/test_reliability.py as a Markdown table: for every case, the
expected exception and message, and what this samlearn actually did.

    python -m benchmarks.reliability.reliability_matrix
    PYTHONPATH=/path/to/older/samlearn python -m benchmarks.reliability.reliability_matrix

The matrix (``MATRIX`` in tests/test_reliability.py, with its fixtures) belongs to the tests, and
benchmarks never import the tests: this script runs pytest on the matrix test in a subprocess,
with this module loaded there as a pytest plugin. For every case the plugin makes the call itself
(warnings ignored), records the exception it raised, and checks type and message as the test does;
the records come back as JSON lines in a temporary file. ``samlearn`` in the subprocess is the one
first on ``PYTHONPATH``, else this checkout's (the subprocess runs outside the repository, so the
current folder does not shadow ``PYTHONPATH``): an older samlearn is measured against this
checkout's matrix that way. ``--tests-from REPO``: take the matrix from REPO's tests/ instead.

Exit status 1 if any case does not raise exactly the expected exception with a matching message.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from benchmarks._common import ROOT

#: the environment variable that tells the plugin (in the pytest subprocess) where to write
RECORDS_ENV = "SAMLEARN_MATRIX_RECORDS"
MATRIX_TEST = "test_bad_input_matrix"


# ------------------------------------------------------------------------------ pytest plugin
def pytest_pyfunc_call(pyfuncitem):
    """Run one matrix case here instead of the test function, and record what happened."""
    path = os.environ.get(RECORDS_ENV)
    if not path or pyfuncitem.originalname != MATRIX_TEST:
        return None
    row, ctx = pyfuncitem.funcargs["row"], pyfuncitem.funcargs["ctx"]
    record = {"area": row.area, "case": row.case, "expected": row.exc.__name__}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row.call(ctx)
        record.update(raised=None, message="", ok=False)
    except Exception as exc:  # noqa: BLE001 - we report whatever happened
        record.update(raised=type(exc).__name__, message=str(exc),
                      ok=type(exc) is row.exc and re.search(row.match, str(exc)) is not None)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return True  # the case ran here; the table, not pytest's verdict, is the result


def pytest_sessionstart(session):
    path = os.environ.get(RECORDS_ENV)
    if path:
        import samlearn
        with open(path, "a") as fh:
            fh.write(json.dumps({"samlearn": samlearn.__version__,
                                 "samlearn_path": str(Path(samlearn.__file__).parent)}) + "\n")


# ------------------------------------------------------------------------------ the table
def run_matrix(tests_from: Path) -> list:
    """Run the matrix test of ``tests_from``/tests in a pytest subprocess; its records in order
    (the first one names the samlearn that ran)."""
    test_file = Path(tests_from).resolve() / "tests" / "test_reliability.py"
    if not test_file.is_file():
        raise SystemExit(f"no {test_file}")
    with tempfile.TemporaryDirectory(prefix="samlearn_matrix_") as tmp:
        records = Path(tmp) / "records.jsonl"
        # this module must import in the subprocess; PYTHONPATH as given comes first
        path = [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), **{RECORDS_ENV: str(records)})
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp}/pytest",
               "-p", "benchmarks.reliability.reliability_matrix", f"{test_file}::{MATRIX_TEST}"]
        res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        lines = records.read_text().splitlines() if records.exists() else []
    out = [json.loads(line) for line in lines]
    if res.returncode != 0 or len(out) < 2:
        raise SystemExit(f"pytest could not run the matrix (exit {res.returncode}):\n"
                         f"{(res.stdout + res.stderr)[-3000:]}")
    return out


def result_cell(rec: dict) -> str:
    if rec["raised"] is None:
        got = "**no error: accepted silently**"
    else:
        msg = " ".join(rec["message"].split())
        got = f"{rec['raised']}: {msg[:110]}{'...' if len(msg) > 110 else ''}"
        if not rec["ok"]:
            got = "**" + got.replace("|", "/") + "**"
    return f"{'pass' if rec['ok'] else 'FAIL'}: {got.replace('|', '/')}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests-from", type=Path, default=ROOT,
                    help="repository whose tests/ holds the matrix (default: this one)")
    args = ap.parse_args(argv)
    head, *rows = run_matrix(args.tests_from)
    print(f"samlearn {head['samlearn']} from {head['samlearn_path']}\n")
    print("| area | case | expected | result |")
    print("|---|---|---|---|")
    for rec in rows:
        print(f"| {rec['area']} | {rec['case']} | {rec['expected']} | {result_cell(rec)} |")
    failed = sum(not rec["ok"] for rec in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} cases pass.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
