"""Segmentation from the SAM backbone (paper §IV-G): does a U-Net whose encoder starts from a
self-supervised SAM model segment better from a few labels than the same U-Net from random weights?

Everything is synthetic and runs on a CPU in a few minutes (2D only: the 2D phantoms keep it fast):

1. ``samlearn.datasets.make_phantoms(ndim=2)``: AP radiograph phantoms with organ label maps. The
   target is the liver (label 14 of the 2D label map: pixels where the liver is the structure a
   reader would outline, so ribs in front of it cut bites out of it).
2. A :class:`samlearn.SAMEmbedder` (``xray-lite`` architecture, 128 x 128 working grid) is trained
   without labels on ``--n-unlabelled`` phantoms plus the labelled pool (their labels unused), for
   ``--sam-seconds`` seconds. The test phantoms are never seen.
3. For each seed, ``--n-train`` labelled phantoms are drawn from the pool, and two identical U-Nets
   are fine-tuned for the same ``--iters`` iterations on the same batches (RAdam, cross entropy +
   soft Dice, as the paper): encoder = :class:`samlearn.nn.SAMBackbone` of the same architecture,
   either loaded with ``embedder.backbone_state_dict()`` ("SAM init") or left at its random
   initialisation ("random init"); the decoder is random in both (same seed, same weights).
4. Dice of the liver on the ``--n-test`` held-out phantoms (on the working grid), after 25 %, 50 %
   and 100 % of the iterations.

Inputs of the U-Net are the images as the embedder preprocesses them (``embedder.preprocess``), so
both arms see exactly the same pixels. Run::

    OMP_NUM_THREADS=1 python examples/segmentation_finetune.py            # about 5.5 minutes (2 seeds)
    python examples/segmentation_finetune.py --help

``main(argv)`` returns the results as a dict (and ``--out`` writes them as JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from samlearn import Image, SAMEmbedder  # noqa: E402
from samlearn.datasets import make_phantoms  # noqa: E402
from samlearn.nn import SAMBackbone  # noqa: E402

LIVER = 14


# ------------------------------------------------------------------------------------ network
class _Up(nn.Module):
    """Upsample to the skip's size, concatenate, two 3x3 conv-BN-ReLU."""

    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin + cskip, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.body(torch.cat([x, skip], 1))


class UNet(nn.Module):
    """A U-Net whose encoder is a :class:`SAMBackbone` (2D): skips from every stage and from the
    stem, a light decoder, logits at the input resolution."""

    def __init__(self, backbone: SAMBackbone, n_classes: int = 2, widths=(96, 64, 48, 32)):
        super().__init__()
        if backbone.config.ndim != 2:
            raise ValueError("this example's U-Net is 2D")
        self.encoder = backbone
        ch = backbone.channels
        skips = ch[:-1][::-1] + [ch[0]]  # stages n-2 .. 0, then the stem (ch[0] channels)
        blocks, cin = [], ch[-1]
        for cskip, cout in zip(skips, widths):
            blocks.append(_Up(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, n_classes, 1)

    def forward(self, x):
        stem = self.encoder.stem(x)
        feats, h = [], stem
        for stage in self.encoder.stages:
            h = stage(h)
            feats.append(h)
        skips = feats[:-1][::-1] + [stem]
        h = feats[-1]
        for block, skip in zip(self.decoder, skips):
            h = block(h, skip)
        return F.interpolate(self.head(h), size=x.shape[2:], mode="bilinear", align_corners=False)


def seg_loss(logits, target):
    """Cross entropy + soft Dice of the foreground (the paper's combined loss)."""
    ce = F.cross_entropy(logits, target)
    p = logits.softmax(1)[:, 1]
    t = target.float()
    dice = (2 * (p * t).sum((1, 2)) + 1.0) / (p.sum((1, 2)) + t.sum((1, 2)) + 1.0)
    return ce + (1.0 - dice.mean())


def dice_scores(pred, target):
    """Hard Dice per image of boolean masks (N, H, W)."""
    inter = (pred & target).sum((1, 2)).astype(float)
    total = (pred.sum((1, 2)) + target.sum((1, 2))).astype(float)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


# ------------------------------------------------------------------------------------ data
def _prepare(embedder, images, labels):
    """Working-grid inputs (N, 1, H, W) and liver masks (N, H, W) for the U-Net."""
    xs, ys = [], []
    for im, lab in zip(images, labels):
        pre = embedder.preprocess(im)
        mask = Image((lab.array == LIVER).astype(np.float32), lab.geometry)
        m = mask.resample_to_geometry(pre.geometry, interpolator="linear", antialias=False,
                                      default_value=0.0).array >= 0.5
        xs.append(pre.array)
        ys.append(m)
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)).long()


def _evaluate(net, x, y):
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1).numpy().astype(bool)
    net.train()
    return dice_scores(pred, y.numpy().astype(bool))


def finetune(backbone, x_train, y_train, x_test, y_test, iters, seed, lr=1e-3, batch_size=4,
             checkpoints=()):
    """Fine-tune a U-Net on (x_train, y_train) for ``iters`` iterations: the decoder's weights and
    the batch order come from ``seed`` only (identical for both initialisations). Returns
    {iteration: mean test Dice} at ``checkpoints`` and the per-image Dice at the end."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global torch RNG alone
        torch.manual_seed(seed)
        net = UNet(backbone)
    opt = torch.optim.RAdam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    curve = {}
    net.train()
    t0 = time.perf_counter()
    for it in range(1, iters + 1):
        idx = rng.choice(len(x_train), size=min(batch_size, len(x_train)), replace=False)
        loss = seg_loss(net(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it in checkpoints:
            curve[it] = float(_evaluate(net, x_test, y_test).mean())
    seconds = time.perf_counter() - t0
    final = _evaluate(net, x_test, y_test)
    curve[iters] = float(final.mean())
    return {"curve": curve, "dice": final.tolist(), "seconds": seconds, "final_loss": float(loss.detach())}


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-unlabelled", type=int, default=16, help="phantoms for SAM only")
    ap.add_argument("--n-pool", type=int, default=12, help="labelled pool the training sets are drawn from")
    ap.add_argument("--n-train", type=int, default=4, help="labelled phantoms per fine-tuning run")
    ap.add_argument("--n-test", type=int, default=12, help="held-out phantoms for Dice")
    ap.add_argument("--sam-seconds", type=float, default=120.0, help="SAM training budget (seconds)")
    ap.add_argument("--sam-iter", type=int, default=10**9, help="SAM training budget (iterations)")
    ap.add_argument("--iters", type=int, default=120, help="fine-tuning iterations (both arms)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="0,1", help="comma-separated fine-tuning seeds")
    ap.add_argument("--image-size", type=int, default=128, help="working grid (pixels per side)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--random-state", type=int, default=0, help="phantoms and SAM seed")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    t0 = time.perf_counter()
    n_all = args.n_unlabelled + args.n_pool + args.n_test
    data = make_phantoms(n_all, ndim=2, random_state=args.random_state)
    unl = list(range(args.n_unlabelled))
    pool = list(range(args.n_unlabelled, args.n_unlabelled + args.n_pool))
    test = list(range(args.n_unlabelled + args.n_pool, n_all))
    say(f"{n_all} phantoms in {time.perf_counter() - t0:.0f} s")

    size = args.image_size
    sam = SAMEmbedder(preset="xray-lite", image_size=(size, size), patch_shape=(96, 96), batch_size=4,
                      max_time=args.sam_seconds, max_iter=args.sam_iter, warmup_iter=20,
                      num_workers=0, n_threads=args.threads, device="cpu", random_state=args.random_state)
    sam.fit([data.images[i] for i in unl + pool])  # no labels, no test images
    say(f"SAM: {sam.n_iter_} iterations in {sam.train_time_:.0f} s, final loss "
        f"{np.mean([h['loss'] for h in sam.history_[-20:]]):.3f}")
    state = sam.backbone_state_dict()
    cfg = sam.network_.config

    x_pool, y_pool = _prepare(sam, [data.images[i] for i in pool], [data.labels[i] for i in pool])
    x_test, y_test = _prepare(sam, [data.images[i] for i in test], [data.labels[i] for i in test])
    checkpoints = sorted({max(1, args.iters // 4), max(1, args.iters // 2)} - {args.iters})

    runs = []
    for seed in seeds:
        pick = np.random.default_rng(1000 + seed).choice(len(pool), size=args.n_train, replace=False)
        x_tr, y_tr = x_pool[pick], y_pool[pick]
        for init in ("sam", "random"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(10_000 + seed)      # random encoder: same per seed for both runs
                backbone = SAMBackbone(cfg)
            if init == "sam":
                backbone.load_state_dict(state, strict=True)
            res = finetune(backbone, x_tr, y_tr, x_test, y_test, args.iters, seed, lr=args.lr,
                           batch_size=args.batch_size, checkpoints=checkpoints)
            res.update(seed=seed, init=init, train_ids=[pool[i] for i in pick])
            runs.append(res)
            say(f"seed {seed} {init:6s}: Dice {res['curve']} ({res['seconds']:.0f} s)")

    summary = {}
    for init in ("sam", "random"):
        per_seed = [float(np.mean(r["dice"])) for r in runs if r["init"] == init]
        curve = {it: float(np.mean([r["curve"][it] for r in runs if r["init"] == init]))
                 for it in checkpoints + [args.iters]}
        summary[init] = {"dice_mean_over_seeds": float(np.mean(per_seed)),
                         "dice_sd_over_seeds": float(np.std(per_seed)), "per_seed": per_seed,
                         "curve": curve}
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "organ": "liver (label 14 of the 2D phantom label map)",
              "sam": {"n_iter": sam.n_iter_, "train_seconds": sam.train_time_,
                      "architecture": cfg.to_dict()},
              "summary": summary, "runs": runs, "wall_seconds": time.perf_counter() - t0}
    say(f"Dice after {args.iters} iterations, mean over seeds {seeds}: "
        f"SAM init {summary['sam']['dice_mean_over_seeds']:.3f}, "
        f"random init {summary['random']['dice_mean_over_seeds']:.3f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
