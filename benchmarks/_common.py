"""Helpers shared by the benchmark scripts: where things are, timing, the machine a number was
measured on, JSON records, and the small pieces several scripts would otherwise repeat.

The scripts are run as modules from the repository root (``python -m benchmarks.speed.augment_speed``),
so ``samlearn`` and ``benchmarks`` import normally, with no change to the import path.
"""
from __future__ import annotations

import ast
import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the repository root
ROOT = Path(__file__).resolve().parents[1]
#: the real data (never in the repository): ``$SAMLEARN_SHARED_DATA``, else ``../shared/data``
#: beside the repository
SHARED_DATA = Path(os.environ.get("SAMLEARN_SHARED_DATA", ROOT.parent / "shared" / "data"))
CEPH_DIR = SHARED_DATA / "cephalograms"
CT_DIR = SHARED_DATA / "ct"
#: where the scripts write results and models by default (git-ignored)
OUT = ROOT / "benchmarks" / "out"


# ------------------------------------------------------------------------------------ timing
@dataclass
class Timings:
    """Seconds per call: ``wall`` (``time.perf_counter``) and ``cpu`` (``time.process_time`` of
    this process, all its threads), one entry per timed call. CPU time is what a busy shared
    machine distorts least (time spent descheduled does not count)."""

    wall: np.ndarray
    cpu: np.ndarray


def timed(fn, repeats: int, *, warmup: int = 0, device=None) -> Timings:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed.

    ``device``: a CUDA device (``torch.device`` or string) is synchronised before the clock
    starts and after every call, so that the time covers the GPU's work too.
    """
    sync = _synchroniser(device)
    for _ in range(warmup):
        fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timings(np.asarray(wall), np.asarray(cpu))


def _synchroniser(device):
    if device is None or "cuda" not in str(device):
        return lambda: None
    import torch
    return lambda: torch.cuda.synchronize(device)


def synchronize(device) -> None:
    """Wait for a CUDA device's queued work (nothing on the CPU)."""
    _synchroniser(device)()


# ------------------------------------------------------------------------------------ records
def cpu_info() -> dict:
    """The CPU: model, logical cores, AVX2 and AVX-512 flags (Linux ``/proc/cpuinfo``) and the
    platform. Imports nothing heavy (the behaviour comparison records it without loading samlearn)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and model:
                break
    return {"cpu_model": model, "logical_cpus": os.cpu_count(), "avx2": "avx2" in flags,
            "avx512_flags": sorted(f for f in flags if f.startswith("avx512")),
            "platform": platform.platform()}


def machine_info(note: str | None = None) -> dict:
    """The machine and software a result was measured with: :func:`cpu_info`, the CUDA device if
    any, Python / torch / numpy / samlearn versions and the date. ``note``: free text to keep
    beside them (e.g. "idle host")."""
    info = dict(cpu_info(), python=platform.python_version(), numpy=np.__version__,
                date=datetime.datetime.now().isoformat(timespec="seconds"))
    with contextlib.suppress(ImportError):
        import torch
        info["torch"] = torch.__version__
        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    with contextlib.suppress(ImportError):
        import samlearn
        info["samlearn"] = samlearn.__version__
    if note:
        info["note"] = note
    return info


def machine_summary(info: dict | None = None) -> str:
    """One line of :func:`machine_info`, for the head of a printed table."""
    info = info or machine_info()
    simd = "AVX-512" if info["avx512_flags"] else ("AVX2" if info["avx2"] else "no AVX2")
    parts = [info["cpu_model"], f"{info['logical_cpus']} logical CPUs", simd]
    if info.get("cuda_device"):
        parts.append(info["cuda_device"])
    parts += [f"python {info['python']}", f"torch {info.get('torch', '-')}", f"numpy {info['numpy']}",
              info["date"]]
    return ", ".join(parts)


def command_line() -> str:
    """The command that runs this process, for a record: the interpreter by its name only, and
    ``-m module`` for a script run as a module."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    script = ["-m", spec.name] if spec is not None else sys.argv[:1]
    return shlex.join([Path(sys.executable).name, *script, *sys.argv[1:]])


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)  # paths, dtypes, devices, ...


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON (numpy values as numbers, paths and other objects as
    strings), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=_jsonable))
    return path


# ------------------------------------------------------------------------------------ misc
def key_values(pairs, option: str = "--set") -> dict:
    """``key=value`` strings (repeated command-line options) as a dict, values read as Python
    literals."""
    out = {}
    for kv in pairs:
        key, sep, val = kv.partition("=")
        if not sep:
            raise SystemExit(f"{option} wants key=value, got {kv!r}")
        out[key] = ast.literal_eval(val)
    return out


def module_command(module: str, *args) -> list:
    """The command that runs ``python -m module args...`` with this interpreter (run it with
    ``cwd=ROOT``): how a script starts fresh copies of itself in child processes."""
    return [sys.executable, "-m", module, *[str(a) for a in args]]
