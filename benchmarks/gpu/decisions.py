"""The GPU decisions of samlearn checked on a real GPU (tests/test_gpu_decisions.py checks the same
rules on the CPU with the GPU's properties mocked):

1. **amp**: ``amp="auto"`` is bf16 on a GPU of compute capability 8.0 or newer, else fp16;
   ``amp="bf16"`` on an older GPU is refused.
2. **fp16 training**: ``SAMEmbedder(amp="fp16")`` trains a tiny network a few iterations with a
   gradient scaler: the scaler scales every step's loss, the losses stay finite, the weights move,
   the scaler's state (its scale) is kept for checkpoints, and fp16 inference gives finite maps.
3. **device per torchrun rank**: with ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set in this
   process for each local rank, ``device="cuda:0"`` resolves to ``cuda:LOCAL_RANK``; a
   ``LOCAL_RANK`` beyond the GPUs is refused.

    python -m benchmarks.gpu.decisions [--device cuda]

On the CPU the GPU-only checks are reported as skipped and the others still run (``amp="auto"``
off, fp16 refused, no scaler). ``benchmarks/gpu/gpu.py`` runs these checks first. Exit status 1
when a check fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import torch

from samlearn import SAMEmbedder
from samlearn.datasets.synthetic import make_smooth_images
from samlearn.embedding.config import amp_dtype, resolve_device
from samlearn.exceptions import InvalidParameterError
from samlearn.training.loop import make_grad_scaler

TINY = dict(preset="xray-lite", image_size=(64, 64), patch_shape=(32, 32), batch_size=2, depth="resnet10",
            width=0.125, stem_kernel=3, n_stages=3, fpn_channels=16, embed_dim=16, n_pos=16, n_hard=20,
            n_random=20, n_candidates=50, n_local=20, warmup_iter=1, num_workers=0, random_state=0)
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _check(rows, name, ok, **details):
    rows.append({"check": name, "ok": bool(ok), **details})


def check_amp(device, rows):
    if device.type != "cuda":
        _check(rows, "amp auto is off on the CPU", amp_dtype("auto", device) is None)
        try:
            amp_dtype("fp16", device)
            _check(rows, "amp fp16 refused on the CPU", False)
        except InvalidParameterError:
            _check(rows, "amp fp16 refused on the CPU", True)
        _check(rows, "no gradient scaler on the CPU", make_grad_scaler(torch.float16, device) is None)
        return
    cap = tuple(torch.cuda.get_device_capability(device))
    expected = torch.bfloat16 if cap >= (8, 0) else torch.float16
    got = amp_dtype("auto", device)
    _check(rows, "amp auto follows the compute capability", got == expected, capability=list(cap),
           resolved=str(got), bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
    try:
        amp_dtype("bf16", device)
        refused = False
    except InvalidParameterError:
        refused = True
    _check(rows, "amp bf16 refused only without native bf16", refused == (cap < (8, 0)), refused=refused)


def check_fp16_training(device, rows, iters=6):
    if device.type != "cuda":
        rows.append({"check": "fp16 training with a gradient scaler", "ok": None, "skipped": "no GPU"})
        return
    calls = {"scale": 0}
    original = torch.amp.GradScaler.scale

    def counting(self, outputs):
        calls["scale"] += 1
        return original(self, outputs)

    images = make_smooth_images(4, ndim=2, seed=0, shape=(64, 64))
    est = SAMEmbedder(**TINY, max_iter=iters, device=str(device), amp="fp16")
    torch.amp.GradScaler.scale = counting
    try:
        est.fit(images)
        first_state = dict(getattr(est, "_scaler_state", None) or {})
        before = [p.detach().clone() for p in est.network_.parameters()]
        est.partial_fit(images, n_iter=2)   # continues: the scaler state carries over
    finally:
        torch.amp.GradScaler.scale = original
    moved = any(not torch.equal(a, b.detach()) for a, b in zip(before, est.network_.parameters()))
    losses = [h["loss"] for h in est.history_]
    scale = first_state.get("scale", 0.0)
    emb = est.transform(images[0])[0]
    maps_finite = bool(torch.isfinite(emb.global_map.data).all() and torch.isfinite(emb.local_map.data).all())
    _check(rows, "fp16 training with a gradient scaler",
           calls["scale"] == iters + 2 and all(np.isfinite(losses)) and scale > 0 and moved and maps_finite,
           scale_calls=calls["scale"], iters=iters + 2, loss_first=losses[0], loss_last=losses[-1],
           scale_after_fit=scale, scale_at_end=(est._scaler_state or {}).get("scale"),
           weights_moved_after_continuing=moved, fp16_maps_finite=maps_finite)


def check_rank_devices(device, rows):
    n = torch.cuda.device_count() if device.type == "cuda" else 0
    if n == 0:
        rows.append({"check": "cuda:LOCAL_RANK per torchrun rank", "ok": None, "skipped": "no GPU"})
        return
    saved = {v: os.environ.get(v) for v in TORCHRUN_VARS}
    got, refused = [], False
    try:
        for local in range(n + 1):
            os.environ.update(RANK=str(local), WORLD_SIZE=str(n + 1), LOCAL_RANK=str(local))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    got.append(str(resolve_device("cuda:0", "auto")))
                except ValueError:
                    refused = local == n
    finally:
        for v, val in saved.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val
    expected = [f"cuda:{i}" for i in range(n)]
    _check(rows, "cuda:LOCAL_RANK per torchrun rank", got == expected and refused, gpus=n, devices=got,
           too_high_local_rank_refused=refused)


def run_checks(device) -> list:
    """All checks on ``device``: one row per check (``ok`` None when skipped)."""
    rows = []
    for check in (check_amp, check_fp16_training, check_rank_devices):
        try:
            check(device, rows)
        except Exception as exc:  # noqa: BLE001 - report and go on
            rows.append({"check": check.__name__, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    rows = run_checks(torch.device(args.device))
    for r in rows:
        status = "skipped" if r["ok"] is None else ("ok" if r["ok"] else "FAILED")
        print(f"{status:8s} {r['check']}: {({k: v for k, v in r.items() if k not in ('check', 'ok')})}")
    return 1 if any(r["ok"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
