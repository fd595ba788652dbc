"""Batch jobs over an archive: does a killed run lose nothing, does Dask scale, is ``--help`` fast?

    python -m benchmarks.reliability.archive --images 200 --json benchmarks/out/archive.json

1. **Kill and resume.** ``samlearn detect`` over N small 2D images, one of them corrupt: an
   uninterrupted run (the reference file), then a run killed with SIGKILL once the journal holds
   about half the images, then ``--resume``. Reports whether the resumed file is byte-identical to
   the reference, how many images the kill lost (redone), and that the corrupt image is the one
   line of the failures file.
2. **Throughput** of the same job in one process (one torch thread) and on a local Dask cluster of
   1 and 2 worker processes (one thread each), alternated over ``--repeats`` rounds; medians.
3. **Start-up**: ``samlearn --help`` and ``--version`` against ``python -c "import torch"`` (what
   every command paid before the parser was split from the commands), medians of ``--starts``.

The model is an ``xray-lite`` embedder trained for a few iterations on the synthetic images
(durability does not depend on its accuracy; the seconds per image are those of the ``xray-lite``
network at its working size, whatever it learned).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ROOT, machine_info, machine_summary, write_json

def _prepare(folder: Path, n_images: int) -> list:
    from samlearn import SAMEmbedder
    from samlearn.datasets.synthetic import make_smooth_images

    images = make_smooth_images(n_images + 1, ndim=2, seed=11)
    SAMEmbedder(preset="xray-lite", max_iter=10, device="cpu", random_state=0).fit(images[:4]).save(
        folder / "model.samlearn")
    images[0].save(folder / "template.nrrd")
    q = folder / "queries"
    q.mkdir()
    for i, im in enumerate(images[1:]):
        im.save(q / f"q{i:04d}.nrrd")
    corrupt = q / f"q{n_images // 3:04d}.nrrd"
    corrupt.write_bytes(b"NRRD0004\nnot an image\n")
    pts = images[0].geometry.index_to_world(np.array([[20.0, 25.0], [40.0, 30.0], [30.0, 45.0], [25.0, 35.0]]))
    (folder / "points.csv").write_text("name,x,y\n" + "".join(f"p{k},{p[0]:.4f},{p[1]:.4f}\n"
                                                              for k, p in enumerate(pts)))
    return [str(corrupt)]


def _detect(folder: Path, out: Path, *extra) -> list:
    return [sys.executable, "-m", "samlearn", "detect", "-m", str(folder / "model.samlearn"), "-t",
            str(folder / "template.nrrd"), "-p", str(folder / "points.csv"), str(folder / "queries"),
            "-o", str(out), "--consistency", "affine", "-q", *extra]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _run(cmd) -> tuple:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    return res.returncode, time.perf_counter() - t0, res.stderr


def kill_and_resume(folder: Path, n_images: int) -> dict:
    ref = folder / "ref.csv"
    code, t_ref, err = _run(_detect(folder, ref, "--threads", "1"))
    if code != 3:
        raise SystemExit(f"reference run: exit {code}\n{err}")
    out = folder / "killed.csv"
    journal = out.with_name(out.name + ".journal")
    proc = subprocess.Popen(_detect(folder, out, "--threads", "1"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lines = 0
    while proc.poll() is None:
        if journal.exists():
            lines = len(journal.read_text().splitlines()) - 1
            if lines >= n_images // 2:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = len(journal.read_text().splitlines()) - 1
    code, t_resume, err = _run(_detect(folder, out, "--threads", "1", "--resume"))
    fails = out.with_name("killed.failures.csv").read_text().splitlines()
    return {"images": n_images, "reference_s": t_ref, "resume_s": t_resume, "exit_code_resume": code,
            "recorded_at_kill": at_kill, "identical": out.read_bytes() == ref.read_bytes(),
            "failures_identical": fails == ref.with_name("ref.failures.csv").read_text().splitlines(),
            "failure_lines": len(fails) - 1, "journal_removed": not journal.exists()}


def throughput(folder: Path, repeats: int) -> dict:
    configs = {"one process, 1 thread": ["--threads", "1"],
               "Dask, 1 worker x 1 thread": ["--threads", "1", "--dask-workers", "1"],
               "Dask, 2 workers x 1 thread": ["--threads", "1", "--dask-workers", "2"]}
    times = {k: [] for k in configs}
    for r in range(repeats):
        for name, extra in configs.items():  # alternated, so a drifting machine hits all alike
            out = folder / f"tp_{r}_{len(times[name])}_{abs(hash(name))}.csv"
            code, t, err = _run(_detect(folder, out, *extra))
            if code != 3:
                raise SystemExit(f"{name}: exit {code}\n{err}")
            times[name].append(t)
    return {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}


def startup(starts: int) -> dict:
    cmds = {"samlearn --help": [sys.executable, "-m", "samlearn", "--help"],
            "samlearn --version": [sys.executable, "-m", "samlearn", "--version"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "python -c 'import samlearn.apps'": [sys.executable, "-c", "import samlearn.apps"]}
    times = {k: [] for k in cmds}
    for _ in range(starts):
        for name, cmd in cmds.items():
            times[name].append(_run(cmd)[1])
    return {k: {"median_s": statistics.median(v)} for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200, help="query images (default 200)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput rounds (default 3)")
    ap.add_argument("--starts", type=int, default=10, help="start-up timings (default 10)")
    ap.add_argument("--json", default=None, help="write the record here")
    args = ap.parse_args(argv)
    info = machine_info()
    print(machine_summary(info))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corrupt = _prepare(folder, args.images)
        record = {"machine": info, "corrupt": corrupt, "kill_resume": kill_and_resume(folder, args.images)}
        record["throughput"] = throughput(folder, args.repeats)
    record["startup"] = startup(args.starts)
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=1))
    if args.json:
        write_json(args.json, record)
    kr = record["kill_resume"]
    return 0 if kr["identical"] and kr["failures_identical"] and kr["failure_lines"] == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
