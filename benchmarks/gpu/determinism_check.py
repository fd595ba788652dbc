"""Device check of determinism and portability: how far apart two same-seed training runs end up on
a GPU (bf16 autocast, fp32, fp32 with torch's deterministic algorithms), how far a GPU run is from
the CPU run, and whether a model trained on the GPU and saved loads and embeds the same on the CPU.

Trains a tiny 2D configuration (``TINY_2D``, the size of the unit tests' small embedder, with
``--max-iter`` iterations) on smooth synthetic images; prints one JSON line per result. With
``--out DIR`` it also writes the GPU-trained model and its embedding of one image, for
``--compare DIR`` on a CPU machine.

    python -m benchmarks.gpu.determinism_check --device cuda --out $OUT
    python -m benchmarks.gpu.determinism_check --compare <that folder>        # on the CPU
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import samlearn
from benchmarks._common import machine_info
from samlearn import OneShotLandmarkDetector, SAMEmbedder
from samlearn.datasets.synthetic import make_smooth_images

#: an X-ray embedder small enough to train a few iterations in a second on the CPU
TINY_2D = dict(preset="xray-lite", image_size=(64, 64), patch_shape=(32, 32), batch_size=2, depth="resnet10",
               width=0.125, stem_kernel=3, n_stages=3, fpn_channels=16, embed_dim=16, n_pos=16, n_hard=20,
               n_random=20, n_candidates=50, n_local=20, max_iter=3, warmup_iter=1, num_workers=0,
               n_threads=1, device="cpu")


def tiny_embedder(**overrides):
    return SAMEmbedder(**dict(TINY_2D, **overrides))


def fit(device, amp, seed, max_iter, images, **kw):
    t0 = time.perf_counter()
    est = tiny_embedder(random_state=seed, max_iter=max_iter, device=device, amp=amp, n_threads=None,
                        num_workers=0, **kw).fit(images)
    return est, time.perf_counter() - t0


def weights(est):
    return {k: v.detach().float().cpu() for k, v in est.network_.state_dict().items() if v.is_floating_point()}


def compare(a, b, images, points):
    wa, wb = weights(a), weights(b)
    w_abs = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    w_rel = max(float((wa[k] - wb[k]).norm() / (wa[k].norm() + 1e-12)) for k in wa)
    ea, eb = a.embed(images[1]), b.embed(images[1])
    la, lb = ea.local_map.data.float().cpu(), eb.local_map.data.float().cpu()
    cos = float((la * lb).sum(0).min())
    pa = OneShotLandmarkDetector(embedder=a).fit(images[0], points).predict(images[1:])
    pb = OneShotLandmarkDetector(embedder=b).fit(images[0], points).predict(images[1:])
    d = np.linalg.norm(pa - pb, axis=-1)
    return {"bit_identical_weights": w_abs == 0.0, "max_abs_weight_diff": w_abs, "max_rel_weight_diff": w_rel,
            "min_cosine_local_embedding": cos, "landmarks_identical": bool(np.all(d == 0)),
            "max_landmark_diff_mm": float(d.max()), "mean_landmark_diff_mm": float(d.mean()),
            "losses_identical": [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_],
            "final_loss": [a.history_[-1]["loss"], b.history_[-1]["loss"]]}


def emit(**rec):
    print(json.dumps(rec), flush=True)


def run_device(args):
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    images = make_smooth_images(4, seed=0)
    points = images[0].geometry.array_index_to_world(
        np.array([[10.0, 12.0], [45.0, 50.0], [30.0, 33.0], [20.0, 60.0], [50.0, 20.0]]))
    dev = args.device
    emit(check="machine", **machine_info())
    emit(check="environment", torch=torch.__version__, samlearn=samlearn.__version__,
         device=torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
         cudnn=torch.backends.cudnn.version() if dev.startswith("cuda") else None)
    cpu, t_cpu = fit("cpu", "none", 5, args.max_iter, images)
    runs = {}
    for label, amp in (("bf16_autocast", "auto"), ("fp32", "none")):
        a, ta = fit(dev, amp, 5, args.max_iter, images)
        b, tb = fit(dev, amp, 5, args.max_iter, images)
        runs[label] = a
        emit(check=f"same seed twice on {dev}, {label}", seconds=[ta, tb], **compare(a, b, images, points))
    # deterministic algorithms: what it takes to be bit-identical on the GPU
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        a, ta = fit(dev, "none", 5, args.max_iter, images)
        b, tb = fit(dev, "none", 5, args.max_iter, images)
        emit(check=f"same seed twice on {dev}, fp32 + torch.use_deterministic_algorithms(True)",
             seconds=[ta, tb], **compare(a, b, images, points))
    except RuntimeError as exc:
        emit(check="deterministic algorithms", error=str(exc)[:500])
    finally:
        torch.use_deterministic_algorithms(False)
    emit(check=f"{dev} fp32 vs cpu fp32, same seed", seconds=[t_cpu], **compare(runs["fp32"], cpu, images, points))
    emit(check=f"{dev} bf16 vs cpu fp32, same seed", **compare(runs["bf16_autocast"], cpu, images, points))
    # checkpoint + resume on the device (the checkpoint in --out, else in a temporary folder)
    with tempfile.TemporaryDirectory(prefix="samlearn-determinism-") as tmp:
        ckpt = Path(args.out or tmp) / "gpu_ckpt.samlearn"
        if ckpt.exists():
            ckpt.unlink()
        fit(dev, "auto", 5, args.max_iter // 2, images, checkpoint_path=str(ckpt))
        res, _ = fit(dev, "auto", 5, args.max_iter, images, checkpoint_path=str(ckpt), resume=True)
    emit(check=f"resume on {dev}", n_iter=res.n_iter_,
         continuous=[h["iteration"] for h in res.history_] == list(range(1, args.max_iter + 1)))
    if args.out:
        model = runs["bf16_autocast"]
        model.save(Path(args.out) / "gpu_model.samlearn")
        e = model.embed(images[1])
        np.save(Path(args.out) / "gpu_local_map.npy", e.local_map.data.float().cpu().numpy())
        np.save(Path(args.out) / "gpu_landmarks.npy",
                OneShotLandmarkDetector(embedder=model).fit(images[0], points).predict(images[1:]))
        emit(check="saved", files=sorted(p.name for p in Path(args.out).iterdir()))


def run_compare(folder):
    """On the CPU: load the GPU-trained model, embed and detect, compare with the GPU's answers."""
    folder = Path(folder)
    images = make_smooth_images(4, seed=0)
    points = images[0].geometry.array_index_to_world(
        np.array([[10.0, 12.0], [45.0, 50.0], [30.0, 33.0], [20.0, 60.0], [50.0, 20.0]]))
    model = samlearn.load(folder / "gpu_model.samlearn")
    local = model.embed(images[1]).local_map.data.numpy()
    gpu_local = np.load(folder / "gpu_local_map.npy")
    pred = OneShotLandmarkDetector(embedder=model).fit(images[0], points).predict(images[1:])
    gpu_pred = np.load(folder / "gpu_landmarks.npy")
    d = np.linalg.norm(pred - gpu_pred, axis=-1)
    emit(check="GPU-trained model loaded on the CPU", device=str(model.device_),
         max_abs_embedding_diff=float(np.abs(local - gpu_local).max()),
         min_cosine=float((local * gpu_local).sum(0).min()),
         max_landmark_diff_mm=float(d.max()), landmarks_identical=bool(np.all(d == 0)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-iter", type=int, default=40)
    ap.add_argument("--out", default=None, help="folder for the GPU-trained model and its answers")
    ap.add_argument("--compare", default=None, help="on the CPU: compare with the answers in this folder")
    args = ap.parse_args(argv)
    if args.compare:
        run_compare(args.compare)
    else:
        run_device(args)


if __name__ == "__main__":
    main()
