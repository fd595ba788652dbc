"""Show that a change leaves samlearn's behaviour unchanged: the same computations, run with two
revisions of the code on the same saved models and the same data, give the same numbers.

Run from the repository root::

    python -m benchmarks.behaviour.compare_commits --base HEAD --head WORKTREE
    python -m benchmarks.behaviour.compare_commits --base HEAD~3 --head HEAD --ct-cases lung1

What it does:

1. **Checkouts.** Each revision (``--base``, ``--head``: anything ``git rev-parse`` understands)
   is checked out as a detached ``git worktree`` in a temporary folder, removed at the end (also
   on an error or Ctrl-C). The literal ``WORKTREE`` means this working tree as it is, uncommitted
   changes included.
2. **Models.** A cephalometric model (preset "xray-lite", cephalograms 001-050) and a CT model
   (preset "ct-lite", the five CTs of ``<data>/ct``), given with ``--ceph-model`` / ``--ct-model``
   or else trained once with the BASE revision's code (seed ``--seed``, ``--train-minutes`` each,
   one thread) and cached as ``<out>/models/<preset>_<minutes>min_seed<seed>.samlearn`` (with a
   JSON of how and by which commit it was trained) for later comparisons, whichever revisions
   they compare: delete the file to train it again. Both revisions load the same files, so
   reading saved models across the change is checked too.
3. **Probes.** For each revision, ``benchmarks/behaviour/probe.py`` (this checkout's copy, run by
   its path: old revisions need not have it) runs in a fresh subprocess with the revision's
   checkout first on ``PYTHONPATH`` (it checks that ``samlearn`` really comes from there), on one
   thread, and writes an ``.npz`` of outputs: landmark predictions and scores on cephalograms
   051-070 (template 048) for six detector configurations, and per CT case (``--ct-cases``) the
   affine matrix and the affine and deformable mappings of a 4 x 4 x 4 point grid, registering
   the CT to a known affine warp of itself. See the probe's docstring for the details.
4. **Comparison.** Array by array: the largest absolute difference; an array passes when it is
   ``<= --atol`` (NaN in the same places counts as equal) and both revisions have it with the same
   shape. The table is printed and written as ``report.json`` and ``report.md`` in a folder of
   ``--out`` named by the date and both commits, beside the two ``.npz`` files and the probes'
   metadata; the report records both commit hashes, the date, the machine (CPU model, AVX2 /
   AVX-512 flags), the Python / torch / numpy versions and the wall time of each probe (about
   1.5 minutes each with the default cases, one thread of an AMD EPYC).

``--compare-npz BASE.npz HEAD.npz`` only compares two existing probe outputs (no checkout, no
probe), e.g. again with another ``--atol``; its report goes beside ``HEAD.npz`` as
``compare_npz_report.json`` / ``.md``.

Exit code: 0 when every array is identical within ``--atol``; 1 when some array differs, is
missing on one side, or a probe fails; 2 for a usage or set-up error (an unknown revision, no
data folder, a failed training).

Data: ``--data``, else the environment variable ``SAMLEARN_SHARED_DATA``, else ``../shared/data``
beside the repository (as in the tests). Default paths are relative to the repository root; paths
given as options, to the current folder (the same when run from the root as above).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks._common import cpu_info

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().with_name("probe.py")
WORKTREE = "WORKTREE"
DEFAULT_OUT = Path("benchmarks") / "out" / "behaviour"
#: the CT cases, smallest volumes first. The default probes all five (a probe of both the
#: landmarks and the five CTs takes about 1.5 minutes per revision on one thread of an AMD EPYC);
#: ``--ct-cases`` picks fewer.
ALL_CT_CASES = ("totalseg_abdomen", "totalseg_chest", "lung1", "lung2", "chest_popi00")
#: environment of every subprocess that runs samlearn: one thread everywhere, CPU only.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
    "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
}
#: model kind -> samlearn preset.
PRESETS = {"xray": "xray-lite", "ct": "ct-lite"}


class SetupError(RuntimeError):
    """A usage or set-up problem (exit code 2)."""


class ProbeError(RuntimeError):
    """A probe subprocess failed (exit code 1: the revisions do not behave alike)."""


@dataclass
class Revision:
    """One side of the comparison.

    Attributes
    ----------
    label : str
        ``"base"`` or ``"head"``.
    rev : str
        The revision as given (``WORKTREE`` for the working tree).
    commit : str
        Full commit hash (of ``HEAD`` for the working tree).
    path : pathlib.Path or None
        Root of the checkout, once made.
    changes : list of str
        For ``WORKTREE``: ``git status --porcelain`` lines (uncommitted changes), else empty.
    """

    label: str
    rev: str
    commit: str
    path: Path | None = None
    changes: list = field(default_factory=list)

    @property
    def name(self) -> str:
        """Short description, e.g. ``"10f4983"`` or ``"WORKTREE (HEAD 10f4983 + 12 changes)"``."""
        if self.rev != WORKTREE:
            return self.commit[:7] if self.commit != "unknown" else self.rev
        extra = f" + {len(self.changes)} uncommitted changes" if self.changes else ", clean"
        return f"WORKTREE (HEAD {self.commit[:7]}{extra})"

    def to_dict(self) -> dict:
        return {"label": self.label, "rev": self.rev, "commit": self.commit, "name": self.name,
                "uncommitted_changes": self.changes}


# ------------------------------------------------------------------------------- git
def git(*args, cwd=ROOT) -> str:
    """Run git in ``cwd`` and return its standard output, stripped.

    Raises
    ------
    SetupError
        When git fails (its message included).
    """
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SetupError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve_revision(label, rev) -> Revision:
    """The commit hash of ``rev`` (``WORKTREE``: of ``HEAD``, with the uncommitted changes)."""
    if rev == WORKTREE:
        changes = git("status", "--porcelain", "--untracked-files=all").splitlines()
        return Revision(label, rev, git("rev-parse", "HEAD"), changes=changes)
    try:
        return Revision(label, rev, git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"))
    except SetupError:
        raise SetupError(f"--{label} {rev!r} is not a commit of this repository (nor {WORKTREE})")


@contextlib.contextmanager
def checkouts(revisions):
    """Check out every revision (detached worktrees in a temporary folder) for the ``with`` body.

    ``WORKTREE`` uses the repository itself. The worktrees and the folder are removed on the way
    out, whatever happens inside.

    Parameters
    ----------
    revisions : list of Revision
        Their ``path`` is set.
    """
    tmp = Path(tempfile.mkdtemp(prefix="samlearn-behaviour-"))
    made = []
    try:
        for revision in revisions:
            if revision.rev == WORKTREE:
                revision.path = ROOT
                continue
            path = tmp / revision.label
            git("worktree", "add", "--detach", str(path), revision.commit)
            made.append(path)
            revision.path = path
        yield revisions
    finally:
        for path in made:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


# ------------------------------------------------------------------------------- subprocesses
def run_in_checkout(checkout, probe_args) -> float:
    """Run ``probe.py`` with ``probe_args`` in a fresh interpreter that imports samlearn from
    ``checkout``; its output goes to this terminal.

    Returns
    -------
    float
        Wall seconds.

    Raises
    ------
    ProbeError
        When the subprocess exits with a non-zero code.
    """
    env = dict(os.environ, PYTHONPATH=str(checkout), **SINGLE_THREAD_ENV)
    command = [sys.executable, str(PROBE), *[str(a) for a in probe_args]]
    t0 = time.perf_counter()
    code = subprocess.call(command, cwd=checkout, env=env)
    wall = time.perf_counter() - t0
    if code != 0:
        raise ProbeError(f"`{' '.join(command[1:3])} ...` in {checkout} exited with code {code}")
    return wall


def model_paths(args, base) -> dict:
    """The two model files: given, cached in ``<out>/models``, or trained now with ``base``.

    Parameters
    ----------
    args : argparse.Namespace
    base : Revision
        Checked out; trains the missing models.

    Returns
    -------
    dict
        ``{"xray": path, "ct": path}``.
    """
    given = {"xray": args.ceph_model, "ct": args.ct_model}
    paths = {}
    for kind, path in given.items():
        if path is not None:
            if not path.is_file():
                raise SetupError(f"model file does not exist: {path}")
            paths[kind] = path
            continue
        name = f"{PRESETS[kind]}_{args.train_minutes:g}min_seed{args.seed}.samlearn"
        path = args.out / "models" / name
        if path.is_file():
            print(f"using the cached {kind} model {display_path(path)}", file=sys.stderr)
        else:
            train_model(kind, path, args, base)
        paths[kind] = path
    return paths


def train_model(kind, path, args, base) -> None:
    """Train the ``kind`` model with the ``base`` checkout and save it (and a JSON beside it)."""
    print(f"training the {kind} model with {base.name} ({args.train_minutes:g} min) -> "
          f"{display_path(path)}", file=sys.stderr, flush=True)
    try:
        run_in_checkout(base.path, ["train", "--checkout", base.path, "--data", args.data,
                                    "--kind", kind, "--out", path,
                                    "--minutes", args.train_minutes, "--seed", args.seed])
    except ProbeError as exc:
        raise SetupError(f"training the {kind} model failed: {exc}") from None
    add_to_json(path.with_suffix(".json"), trained_by=base.to_dict())


def run_probe(revision, models, args, npz) -> dict:
    """Run the probe of one revision; returns its metadata (the JSON beside ``npz``) with the
    wall time of the whole subprocess (``subprocess_wall_s``)."""
    if revision.rev == WORKTREE:  # others may have committed or edited since the start
        now = resolve_revision(revision.label, WORKTREE)
        revision.commit, revision.changes = now.commit, now.changes
    print(f"probing {revision.label}: {revision.name}", file=sys.stderr, flush=True)
    wall = run_in_checkout(revision.path, [
        "probe", "--checkout", revision.path, "--data", args.data, "--seed", args.seed,
        "--ceph-model", models["xray"], "--ct-model", models["ct"],
        "--ct-cases", ",".join(args.ct_cases), "--out", npz])
    return add_to_json(npz.with_suffix(".json"), revision=revision.to_dict(),
                       subprocess_wall_s=wall)


def add_to_json(path, **entries) -> dict:
    """Add ``entries`` to the JSON object in ``path``; returns the updated object."""
    data = json.loads(path.read_text())
    data.update(entries)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


# ------------------------------------------------------------------------------- comparison
def load_npz(path) -> dict:
    """All arrays of an ``.npz`` file, by key."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two arrays of the same shape.

    Numbers: equal values (infinities included) and NaN in both count as 0, NaN in one only as
    infinity. Anything else (strings, such as recorded errors): 0 when equal, else infinity.
    An empty array gives 0.
    """
    a, b = np.asarray(a), np.asarray(b)
    numeric = all(np.issubdtype(x.dtype, np.number) or x.dtype == bool for x in (a, b))
    if not numeric:
        return 0.0 if np.array_equal(a, b) else float("inf")
    if a.size == 0:
        return 0.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b))
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    diff = np.where(nan_a & nan_b, 0.0, diff)
    diff = np.where(nan_a ^ nan_b, np.inf, diff)
    return float(np.max(diff))


def compare_arrays(base, head, atol) -> list:
    """One row per key of either side: shape, max |diff|, pass.

    Parameters
    ----------
    base, head : dict of str -> numpy.ndarray
    atol : float
        Largest absolute difference that passes.

    Returns
    -------
    list of dict
        Keys ``array``, ``shape`` (base's, or head's when base lacks it), ``head_shape`` (only
        when it differs), ``max_abs_diff`` (None when not comparable), ``passed``, ``note``.
    """
    rows = []
    for key in sorted(set(base) | set(head)):
        a, b = base.get(key), head.get(key)
        shape = (a if a is not None else b).shape
        row = {"array": key, "shape": list(shape), "max_abs_diff": None, "passed": False,
               "note": ""}
        if a is None or b is None:
            row["note"] = "missing in " + ("base" if a is None else "head")
        elif a.shape != b.shape:
            row["head_shape"] = list(b.shape)
            row["note"] = "shapes differ"
        else:
            row["max_abs_diff"] = max_abs_diff(a, b)
            row["passed"] = row["max_abs_diff"] <= atol
            if str(a.dtype) != str(b.dtype):
                row["note"] = f"dtypes {a.dtype} / {b.dtype}"
        rows.append(row)
    return rows


def table_lines(rows, markdown=False) -> list:
    """The comparison table as text lines (aligned columns, or a Markdown table)."""
    header = ("array", "shape", r"max \|diff\|" if markdown else "max |diff|", "result")
    body = []
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        if "head_shape" in r:
            shape += " / " + ("x".join(map(str, r["head_shape"])) or "scalar")
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3g}"
        result = ("pass" if r["passed"] else "FAIL") + (f" ({r['note']})" if r["note"] else "")
        body.append((r["array"], shape, diff, result))
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---|"]
        return lines + [f"| `{name}` | " + " | ".join(rest) + " |" for name, *rest in body]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body]]


# ------------------------------------------------------------------------------- report
def file_sha256(path) -> str:
    """SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_info(path) -> dict:
    """Path, checksum and (for a model trained here) the training metadata of a model file."""
    info = {"path": display_path(path), "sha256": file_sha256(path)}
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        train = json.loads(sidecar.read_text())
        keys = ("preset", "n_iter", "train_time_s", "minutes", "seed", "trained_by")
        info.update({k: train.get(k) for k in keys})
    return info


def display_path(path) -> str:
    """``path`` relative to the repository root when it lies inside, else as it is."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


def probe_wall(meta) -> float:
    """Wall seconds of a probe: of its subprocess, else as the probe measured it, else NaN."""
    return meta.get("subprocess_wall_s", meta.get("wall_s", float("nan")))


def markdown_report(report) -> str:
    """The report as a Markdown document."""
    m, rows = report["machine"], report["arrays"]
    lines = [f"# Behaviour comparison: {report['base']['name']} -> {report['head']['name']}", "",
             f"- **Result: {'IDENTICAL' if report['identical'] else 'DIFFERENT'}** within atol "
             f"{report['atol']:g} ({sum(r['passed'] for r in rows)} of {len(rows)} arrays pass)",
             f"- base: `{report['base']['rev']}` = `{report['base']['commit']}`",
             f"- head: `{report['head']['rev']}` = `{report['head']['commit']}`"
             + (f" + {len(report['head']['uncommitted_changes'])} uncommitted changes"
                if report["head"]["uncommitted_changes"] else ""),
             f"- date: {report['date']}",
             f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, AVX2 "
             f"{'yes' if m['avx2'] else 'no'}, AVX-512: {', '.join(m['avx512_flags']) or 'none'}"]
    for label in ("base", "head"):
        p = report["probes"].get(label)
        if p:
            lines.append(f"- {label} probe: {probe_wall(p):.1f} s wall; "
                         f"python {p.get('python')}, torch {p.get('torch')} "
                         f"({p.get('torch_cpu_capability')}), numpy {p.get('numpy')}, SimpleITK "
                         f"{p.get('SimpleITK')}; samlearn from `{p.get('samlearn_file')}`")
    for kind, info in report.get("models", {}).items():
        iterations = f", {info['n_iter']} iterations" if info.get("n_iter") is not None else ""
        lines.append(f"- {kind} model: `{info['path']}` (sha256 {info['sha256'][:12]}{iterations})")
    if report.get("ct_cases") is not None:
        lines.append(f"- CT cases: {', '.join(report['ct_cases']) or 'none'}")
    return "\n".join(lines + ["", *table_lines(rows, markdown=True), ""])


def jsonable(obj):
    """``obj`` with every non-finite float written as a string ("inf", "nan"): strict JSON."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def write_report(report, folder, name="report") -> Path:
    """Write ``<name>.json`` and ``<name>.md`` into ``folder``; returns the Markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(jsonable(report), indent=1) + "\n")
    (folder / f"{name}.md").write_text(markdown_report(report))
    return folder / f"{name}.md"


def print_summary(report, markdown) -> None:
    """The table and the verdict on standard output."""
    print("\n".join(table_lines(report["arrays"])))
    for label in ("base", "head"):
        p = report["probes"].get(label)
        if p:
            print(f"{label}: {report[label]['name']}: probe {probe_wall(p):.1f} s "
                  f"wall (samlearn from {p.get('samlearn_file')})")
    n_fail = sum(not r["passed"] for r in report["arrays"])
    verdict = "IDENTICAL" if report["identical"] else f"DIFFERENT ({n_fail} arrays)"
    print(f"{verdict} within atol {report['atol']:g}; report: {display_path(markdown)}")


def build_report(base, head, arrays, atol, probes=None, models=None, ct_cases=None) -> dict:
    """Everything the report holds (see :func:`markdown_report`)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"base": base.to_dict(), "head": head.to_dict(), "date": now, "machine": cpu_info(),
            "atol": atol, "identical": bool(arrays) and all(r["passed"] for r in arrays),
            "probes": probes or {}, "models": models or {}, "ct_cases": ct_cases,
            "arrays": arrays}


# ------------------------------------------------------------------------------- main
def default_data_dir() -> Path:
    """``SAMLEARN_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("SAMLEARN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.behaviour.compare_commits",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD",
                   help=f"base revision, or {WORKTREE} (default HEAD)")
    p.add_argument("--head", default=WORKTREE,
                   help=f"head revision, or {WORKTREE} for the working tree (default)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {DEFAULT_OUT} in the repository); models are "
                        "cached in OUT/models")
    p.add_argument("--ceph-model", type=Path, default=None,
                   help="saved xray-lite model (default: OUT/models/xray-lite_<M>min_seed<S>"
                        ".samlearn, trained with the base when absent)")
    p.add_argument("--ct-model", type=Path, default=None,
                   help="saved ct-lite model (default: OUT/models/ct-lite_<M>min_seed<S>.samlearn, "
                        "trained with the base when absent)")
    p.add_argument("--train-minutes", type=float, default=3.0,
                   help="training budget M of each model (default 3)")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed S and seed of the CT warps (default 0)")
    p.add_argument("--data", type=Path, default=None,
                   help="shared data folder (default: $SAMLEARN_SHARED_DATA or ../shared/data)")
    p.add_argument("--ct-cases", default="all",
                   help=f"comma-separated CT cases among {', '.join(ALL_CT_CASES)}, 'all' "
                        f"(default) or 'none'")
    p.add_argument("--atol", type=float, default=1e-6,
                   help="largest absolute difference that passes (default 1e-6)")
    p.add_argument("--compare-npz", nargs=2, type=Path, metavar=("BASE_NPZ", "HEAD_NPZ"),
                   help="only compare two existing probe outputs (the report is written beside "
                        "HEAD_NPZ as compare_npz_report.json / .md)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and normalise the options: absolute paths, the CT case list."""
    args = build_parser().parse_args(argv)
    args.out = args.out.resolve() if args.out is not None else ROOT / DEFAULT_OUT
    args.data = (args.data or default_data_dir()).resolve()
    for name in ("ceph_model", "ct_model"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    cases = {"all": ",".join(ALL_CT_CASES), "none": ""}.get(args.ct_cases, args.ct_cases)
    args.ct_cases = [c.strip() for c in cases.split(",") if c.strip()]
    unknown = sorted(set(args.ct_cases) - set(ALL_CT_CASES))
    if unknown:
        build_parser().error(f"unknown CT cases {unknown}; known: {', '.join(ALL_CT_CASES)}")
    if not args.train_minutes > 0:
        build_parser().error("--train-minutes must be positive")
    return args


def compare_files(args) -> dict:
    """``--compare-npz``: the report of two existing probe outputs."""
    paths = dict(zip(("base", "head"), args.compare_npz))
    revisions, probes = {}, {}
    for label, path in paths.items():
        if not path.is_file():
            raise SetupError(f"no such file: {path}")
        sidecar = path.with_suffix(".json")
        probes[label] = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        known = probes[label].get("revision") or {}
        revisions[label] = Revision(label, known.get("rev", display_path(path)),
                                    known.get("commit", "unknown"),
                                    changes=known.get("uncommitted_changes", []))
    rows = compare_arrays(load_npz(paths["base"]), load_npz(paths["head"]), args.atol)
    return build_report(revisions["base"], revisions["head"], rows, args.atol, probes=probes)


def compare_revisions(args):
    """Check out, train when needed, probe both revisions and compare; returns the report and the
    run folder."""
    if not (args.data / "cephalograms").is_dir() or not (args.data / "ct").is_dir():
        raise SetupError(f"data folder {args.data} lacks cephalograms/ or ct/ (set --data or "
                         f"SAMLEARN_SHARED_DATA)")
    base, head = resolve_revision("base", args.base), resolve_revision("head", args.head)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    names = [r.commit[:7] + ("-worktree" if r.rev == WORKTREE else "") for r in (base, head)]
    folder = args.out / f"{stamp}_{names[0]}_{names[1]}"
    with checkouts([base, head]):
        models = model_paths(args, base)
        probes = {r.label: run_probe(r, models, args, folder / f"{r.label}.npz")
                  for r in (base, head)}
    rows = compare_arrays(load_npz(folder / "base.npz"), load_npz(folder / "head.npz"), args.atol)
    report = build_report(base, head, rows, args.atol, probes=probes, ct_cases=args.ct_cases,
                          models={kind: model_info(path) for kind, path in models.items()})
    return report, folder


def main(argv=None) -> int:
    """Entry point; returns the exit code (0 identical, 1 different, 2 set-up error)."""
    args = parse_args(argv)
    try:
        if args.compare_npz:
            report, folder = compare_files(args), args.compare_npz[1].resolve().parent
            name = "compare_npz_report"
        else:
            (report, folder), name = compare_revisions(args), "report"
    except SetupError as exc:
        print(f"compare_commits: error: {exc}", file=sys.stderr)
        return 2
    except ProbeError as exc:
        print(f"compare_commits: a probe failed, the revisions do not behave alike: {exc}",
              file=sys.stderr)
        return 1
    print_summary(report, write_report(report, folder, name))
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
