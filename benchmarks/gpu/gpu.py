"""One prepared GPU check: training throughput and model FLOP utilisation, inference time per 2 mm
chest CT, peak GPU memory. Designed to finish in under 5 minutes on one H100 / H200.

    python -m benchmarks.gpu.gpu [--ct PATH] [--smoke] [--compile] [--decisions-only]

Phases (each guarded: a failure is reported in the table and the next phase still runs):

0. **decisions** (:mod:`benchmarks.gpu.decisions`, seconds): ``amp="auto"`` resolves by the GPU's
   compute capability, fp16 training runs with a gradient scaler (finite losses), each torchrun
   rank gets ``cuda:LOCAL_RANK``. ``--decisions-only`` stops after it.
1. **train/<preset>** for ``ct`` and ``xray``: ``SAMEmbedder(preset=...).fit`` on synthetic images
   (CT: the chest CT and flipped / shifted copies; X-ray: smooth random 512 x 512 images) for
   ``--iters`` iterations with DataLoader workers: the *pipeline* rate (it/s over the iterations
   after ``--warmup``, from ``history_``; augmentation included: the GPU waits when workers are too
   slow). Then the *compute* rate: the same training loop fed one prepared batch over and over
   (no augmentation), in the default and the channels-last memory format.
2. **MFU**: FLOPs of one training step (forward, loss, backward) counted by
   ``torch.utils.flop_counter.FlopCounterMode``, divided by the compute step time and the card's
   dense bf16 peak (H100 / H200 SXM: 989 TFLOP/s; ``--peak-tflops`` to override).
3. **infer/ct**: embedding (``transform``) + matching 19 points of a 2 mm chest CT (``--ct PATH``
   resampled to 2 mm outside the timing; otherwise a synthetic 180 x 160 x 160 volume at 2 mm), the
   template embedding computed once; median of 5 after a warm-up, against the paper's 0.23 s.
   Also the CPU preprocessing of the raw CT (resampling), reported separately, and both memory
   formats.

Peak GPU memory (``torch.cuda.max_memory_allocated``) per phase. ``--smoke`` runs the same code on
the CPU with tiny networks in about a minute (for testing the script, numbers meaningless).
Results (with the machine's description) also go to ``--json``, else to ``$OUT/gpu_results.json``
when the environment variable ``OUT`` is set (the device runner's output folder).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import time
import traceback

import numpy as np
import torch

from benchmarks._common import machine_info, synchronize, timed, write_json
from benchmarks.gpu.decisions import run_checks
from samlearn import Image, SAMEmbedder
from samlearn.embedding.config import amp_dtype, loss_config
from samlearn.matching import match_points, template_vectors
from samlearn.training import PairStream, TrainState, make_loader, sampler_from_config, train

PAPER_S_PER_CT = 0.23
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "GH200": 989.0}

# --smoke: the same code on the CPU with tiny networks (numbers are meaningless)
SMOKE = {
    "ct": dict(spacing_mm=4.0, patch_shape=(16, 32, 32), batch_size=2, width=0.125, fpn_channels=16,
               embed_dim=16, n_pos=16, n_hard=20, n_random=20, n_candidates=50, n_local=20, warmup_iter=1),
    "xray": dict(image_size=(96, 96), patch_shape=(64, 64), batch_size=2, depth="resnet18", width=0.125,
                 fpn_channels=16, embed_dim=16, n_pos=16, n_hard=20, n_random=20, n_candidates=50,
                 n_local=20, warmup_iter=1),
}


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device):
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")


def peak_tflops(device, override):
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in PEAK_BF16_TFLOPS.items():
        if key in name:
            return val
    return None


# ------------------------------------------------------------------------------------ data
def synthetic_ct(shape=(180, 160, 160), spacing=2.0, seed=0) -> Image:
    """A CT-like volume: an elliptic body with smooth structure, lungs and a spine, in HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2 < 1
    lungs = ((np.abs(x) - 0.4) / 0.28) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1
    spine = (x ** 2 + (y - 0.4) ** 2) < 0.08 ** 2
    tissue = 40 * np.sin(7 * x + 3 * z) * np.cos(5 * y - 2 * z) + rng.normal(0, 10, shape).astype(np.float32)
    arr = np.where(body, np.where(lungs, -800.0, tissue), -1000.0) + spine * 700.0
    return Image.from_array(arr.astype(np.float32), spacing=spacing, origin=(-160.0, -160.0, -180.0))


def ct_copies(ct: Image, n=4):
    """The CT and flipped / shifted copies (distinct 'images' for the random negatives)."""
    out = [ct]
    for k in range(1, n):
        arr = ct.array[:, :, ::-1] if k % 2 else np.roll(ct.array, 5 * k, axis=0)
        out.append(Image(np.ascontiguousarray(arr), ct.geometry))
    return out


def synthetic_xrays(n=4, size=512, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    out = []
    for _ in range(n):
        arr = np.zeros((size, size), np.float32)
        for _ in range(20):
            cy, cx, w = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(10, 60)
            arr += rng.uniform(0, 100) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
        out.append(Image.from_array(arr, spacing=0.1))
    return out


# ------------------------------------------------------------------------------------ phases
def train_phase(preset, images, args, device, results):
    over = SMOKE[preset] if args.smoke else {}
    iters = args.iters
    reset_peak(device)
    est = SAMEmbedder(preset=preset, max_iter=iters, device=str(device), num_workers=args.workers,
                      random_state=0, compile=args.compile, **over)
    t0 = time.perf_counter()
    est.fit(images)
    fit_s = time.perf_counter() - t0
    hist = est.history_
    k = min(args.warmup, len(hist) - 2)
    pipe_its = (len(hist) - 1 - k) / max(hist[-1]["time"] - hist[k]["time"], 1e-9)
    row = {"phase": f"train/{preset}", "pipeline_it_s": pipe_its, "fit_s": fit_s, "iters": len(hist),
           "batch": est.config_["batch_size"], "patch": list(est.config_["patch_shape"]),
           "peak_gb_fit": peak_gb(device), "loss_last": hist[-1]["loss"]}

    # compute-only: one prepared batch, the real training loop
    cfg = est.config_
    net = est.network_
    arrays, spacings = [], []
    for im in images:
        pre = est._preprocess(im)
        arrays.append(pre.array)
        spacings.append(pre.spacing[::-1].copy())
    stream = PairStream(arrays, spacings, sampler_from_config(cfg), cfg["n_pos"], net.config.global_stride,
                        net.config.local_stride, np.random.SeedSequence(0))
    batch = next(iter(make_loader(stream, cfg["batch_size"], 0, pin_memory=device.type == "cuda")))
    amp = amp_dtype(est.amp, device)
    loss_cfg = loss_config(cfg)
    n_steps = max(3, args.iters // 2)
    for cl in (False, True):
        mf = torch.channels_last_3d if cfg["ndim"] == 3 else torch.channels_last
        model = net.to(memory_format=mf if cl else torch.contiguous_format)
        opt = torch.optim.RAdam(model.parameters(), lr=1e-5)
        gen = torch.Generator(device=device).manual_seed(0)
        step_net = torch.compile(model) if args.compile else model
        kw = dict(loss_config=loss_cfg, device=device, amp_dtype=amp, max_time=None, lr=1e-5, warmup=0,
                  schedule="constant", generator=gen, channels_last=cl, config=net.config, log_every=10 ** 6)
        state = TrainState()
        train(step_net, opt, itertools.repeat(batch), state, max_iter=3, **kw)  # warm-up
        reset_peak(device)
        synchronize(device)
        t0 = time.perf_counter()
        train(step_net, opt, itertools.repeat(batch), state, max_iter=3 + n_steps, **kw)
        synchronize(device)
        step_s = (time.perf_counter() - t0) / n_steps
        row[f"compute_it_s{'_cl' if cl else ''}"] = 1.0 / step_s
        row[f"peak_gb{'_cl' if cl else ''}"] = peak_gb(device)
        if not cl:
            from torch.utils.flop_counter import FlopCounterMode
            with FlopCounterMode(display=False) as fc:
                train(model, opt, itertools.repeat(batch), state, max_iter=state.iteration + 1, **kw)
            flops = fc.get_total_flops()
            row["tflop_per_step"] = flops / 1e12
            peak = peak_tflops(device, args.peak_tflops)
            row["mfu"] = flops / step_s / (peak * 1e12) if peak else None
            row["mfu_pipeline"] = flops * pipe_its / (peak * 1e12) if peak else None
        else:
            row["mfu_cl"] = row["tflop_per_step"] * 1e12 / step_s / (peak * 1e12) if peak else None
    net.to(memory_format=torch.contiguous_format)
    results.append(row)
    return est


def infer_phase(est, ct_raw, args, device, results):
    row = {"phase": "infer/ct"}
    if ct_raw is not None:
        t0 = time.perf_counter()
        ct = ct_raw.resample_to_spacing(2.0)
        row["resample_raw_ct_cpu_s"] = time.perf_counter() - t0
        row["raw_shape"] = list(ct_raw.array.shape)
    else:
        ct = synthetic_ct((24, 32, 32) if args.smoke else (180, 160, 160))
    row["shape_2mm"] = list(ct.array.shape)
    rng = np.random.default_rng(0)
    pts = ct.geometry.index_to_world(rng.uniform(0.25, 0.75, (19, 3)) * (np.array(ct.geometry.size) - 1))
    query = Image(np.ascontiguousarray(np.roll(ct.array, 3, axis=0)), ct.geometry)
    for cl in (False, True):
        est.set_params(channels_last=cl, tile_shape="auto")
        tmpl = est.transform(ct)[0]
        vg, vl = template_vectors(tmpl, pts)
        del tmpl
        last = {}

        def query_pass():  # embedding + matching of the query (its embedding freed at once)
            last["result"] = match_points(vg, vl, est.transform(query)[0], search_radius_mm="auto")

        reset_peak(device)
        t = timed(query_pass, 5, warmup=1, device=device)
        key = "_cl" if cl else ""
        row[f"s_per_ct{key}"] = float(np.median(t.wall))
        row[f"peak_gb{key}"] = peak_gb(device)
        assert np.isfinite(last["result"].points).all()
    row["paper_s"] = PAPER_S_PER_CT
    est.set_params(channels_last="auto")
    results.append(row)


def fmt(v, spec=".2f"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def table(results, device_name):
    lines = [f"device: {device_name}", ""]
    for r in results:
        if r["phase"] == "decisions":
            lines += [f"decision {'skipped' if c['ok'] is None else 'ok' if c['ok'] else 'FAILED'}: "
                      f"{c['check']} {({k: v for k, v in c.items() if k not in ('check', 'ok')})}"
                      for c in r["checks"]] + [""]
    lines += ["| phase | pipeline it/s | compute it/s (default / channels-last) | TFLOP/step "
             "| MFU (compute / pipeline / cl) | peak GB (default / cl) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if r["phase"] == "decisions":
            continue
        if "error" in r:
            lines.append(f"| {r['phase']} | FAILED: {r['error'][:150]} | | | | |")
        elif r["phase"].startswith("train"):
            lines.append(
                f"| {r['phase']} (batch {r['batch']}, patch {r['patch']}) | {fmt(r['pipeline_it_s'])} | "
                f"{fmt(r.get('compute_it_s'))} / {fmt(r.get('compute_it_s_cl'))} | "
                f"{fmt(r.get('tflop_per_step'), '.3f')} | "
                f"{fmt(r.get('mfu'), '.1%')} / {fmt(r.get('mfu_pipeline'), '.1%')} / {fmt(r.get('mfu_cl'), '.1%')} | "
                f"{fmt(r.get('peak_gb'))} / {fmt(r.get('peak_gb_cl'))} |")
    for r in results:
        if r["phase"].startswith("infer") and "error" not in r:
            lines += ["", "| inference | volume (2 mm) | s per CT: embedding + 19 points (default / channels-last) | "
                          "paper | CPU resampling of the raw CT | peak GB (default / cl) |",
                      "|---|---|---|---|---|---|",
                      f"| ct preset | {r['shape_2mm']} | "
                      f"{fmt(r.get('s_per_ct'), '.3f')} / {fmt(r.get('s_per_ct_cl'), '.3f')} | "
                      f"{r['paper_s']} | {fmt(r.get('resample_raw_ct_cpu_s'))} s | {fmt(r.get('peak_gb'))} / "
                      f"{fmt(r.get('peak_gb_cl'))} |"]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct", default=None, help="a chest CT file (default: synthetic 180x160x160 at 2 mm)")
    p.add_argument("--smoke", action="store_true", help="tiny networks on the CPU (tests the script)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per preset (default 40; smoke 6)")
    p.add_argument("--warmup", type=int, default=None, help="iterations left out of the rate (default 15; smoke 2)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 8; smoke 0)")
    p.add_argument("--presets", nargs="*", default=["ct", "xray"])
    p.add_argument("--compile", action="store_true", help="also torch.compile the network (slow start)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card")
    p.add_argument("--json", default=None)
    p.add_argument("--decisions-only", action="store_true", help="only phase 0 (the GPU decisions)")
    args = p.parse_args(argv)
    args.iters = args.iters or (6 if args.smoke else 40)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 15)
    args.workers = args.workers if args.workers is not None else (0 if args.smoke else 8)
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --smoke to test the script on the CPU")
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    t_start = time.perf_counter()
    results = []
    ct_raw = None
    if args.ct:
        from samlearn import read_image
        ct_raw = read_image(args.ct)
    checks = run_checks(device)
    results.append({"phase": "decisions", "checks": checks,
                    "ok": not any(c["ok"] is False for c in checks)})
    print(f"[{time.perf_counter() - t_start:.0f} s] {results[-1]}", flush=True)
    ct_est = None
    for preset in ([] if args.decisions_only else args.presets):
        try:
            if preset == "ct":
                base = ct_raw.resample_to_spacing(2.0) if ct_raw is not None else \
                    synthetic_ct((40, 64, 64) if args.smoke else (180, 160, 160))
                images = ct_copies(base)
            else:
                images = synthetic_xrays(4, 128 if args.smoke else 512)
            est = train_phase(preset, images, args, device, results)
            if preset == "ct":
                ct_est = est
        except Exception as exc:  # noqa: BLE001 - report and go on
            traceback.print_exc()
            results.append({"phase": f"train/{preset}", "error": f"{type(exc).__name__}: {exc}"})
        print(f"[{time.perf_counter() - t_start:.0f} s] {results[-1]}", flush=True)
    if ct_est is not None:
        try:
            infer_phase(ct_est, ct_raw, args, device, results)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results.append({"phase": "infer/ct", "error": f"{type(exc).__name__}: {exc}"})
        print(f"[{time.perf_counter() - t_start:.0f} s] {results[-1]}", flush=True)
    total = time.perf_counter() - t_start
    print()
    print(table(results, device_name))
    print(f"\ntotal {total:.0f} s; torch {torch.__version__}")
    out = args.json or (os.path.join(os.environ["OUT"], "gpu_results.json") if os.environ.get("OUT") else None)
    if out:
        write_json(out, {"device": device_name, "machine": machine_info(), "total_s": total,
                         "torch": torch.__version__, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
