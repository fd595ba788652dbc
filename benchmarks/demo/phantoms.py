"""Timing of samlearn.datasets.make_phantoms and a PNG montage to eyeball the anatomy.

    python -m benchmarks.demo.phantoms                      # timings (3D and 2D, default settings)
    python -m benchmarks.demo.phantoms --montage --seed 3   # benchmarks/out/phantoms.png

The montage (axial slices at landmark levels, coronal and sagittal views, a label map and AP
radiographs, landmarks drawn in red) goes to ``--montage PNG`` (default
``benchmarks/out/phantoms.png``, not committed).
"""

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks._common import OUT, machine_summary, timed
from samlearn.datasets import make_phantoms


def timings(n3=8, n2=4, seed=0):
    make_phantoms(1, spacing=8.0, random_state=999)  # warm-up (imports)
    print(f"# {machine_summary()}")
    for ndim, n in ((3, n3), (2, n2)):
        seeds, vox = iter(range(seed, seed + n)), []

        def one_subject():
            vox.append(make_phantoms(1, ndim=ndim, random_state=next(seeds)).images[0].array.size)

        t = timed(one_subject, n)
        wall, cpu = t.wall, t.cpu
        print(
            f"{ndim}D default: {n} subjects, mean {np.mean(wall):.2f} s wall / "
            f"{np.mean(cpu):.2f} s CPU per subject (min {np.min(wall):.2f}, "
            f"max {np.max(wall):.2f}); mean size {np.mean(vox) / 1e6:.2f} "
            f"M{'voxels' if ndim == 3 else 'pixels'}"
        )
    d = make_phantoms(1, random_state=seed)
    t = time.perf_counter()
    r = d.images[0].resample_to_spacing(2.0)
    print(
        f"resample a default volume {d.images[0].shape} to 2 mm {r.shape}: "
        f"{time.perf_counter() - t:.2f} s"
    )


def montage(path, seed=0, phase="arterial"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = make_phantoms(
        1,
        contrast_phase=phase,
        direction="identity",
        field_of_view="full",
        n_lesions=2,
        random_state=seed,
    )
    x = make_phantoms(2, ndim=2, n_lesions=1, random_state=seed)
    img, lab, lm = d.images[0], d.labels[0], d.landmarks[0]
    names, a, g = d.landmark_names, img.array, img.geometry
    ai = g.world_to_array_index(lm)
    sx, sy, sz = g.spacing
    fig, axs = plt.subplots(3, 6, figsize=(30, 15))
    levels = [
        "lung_apex_left",
        "aortic_arch_top",
        "carina",
        "heart_apex",
        "liver_dome",
        "kidney_left_upper_pole",
        "portal_vein_bifurcation",
        "vertebra_L3",
        "aortic_bifurcation",
        "femoral_head_left",
    ]
    for ax, n in zip(axs.ravel()[:10], levels):
        k = int(np.clip(round(ai[names.index(n), 0]), 0, a.shape[0] - 1))
        ax.imshow(a[k], cmap="gray", vmin=-400, vmax=500, aspect=sy / sx)
        for j, nn in enumerate(names):
            if abs(ai[j, 0] - k) < 1.0:
                ax.plot(ai[j, 2], ai[j, 1], "r+", ms=12)
                ax.text(ai[j, 2], ai[j, 1], nn, color="y", fontsize=7)
        ax.set_title(f"axial at {n}")
    for ax, n in zip(axs.ravel()[10:12], ["vertebra_T6", "aortic_arch_top"]):
        j = int(round(ai[names.index(n), 1]))
        ax.imshow(a[::-1, j, :], cmap="gray", vmin=-400, vmax=500, aspect=sz / sx)
        near = np.abs(ai[:, 1] - j) < 6
        ax.plot(ai[near, 2], a.shape[0] - 1 - ai[near, 0], "r+", ms=10)
        ax.set_title(f"coronal at {n}")
    i = int(round(ai[names.index("vertebra_T6"), 2]))
    axs[2, 0].imshow(a[::-1, :, i], cmap="gray", vmin=-400, vmax=500, aspect=sz / sy)
    near = np.abs(ai[:, 2] - i) < 8
    axs[2, 0].plot(ai[near, 1], a.shape[0] - 1 - ai[near, 0], "r+", ms=10)
    axs[2, 0].set_title("sagittal (midline)")
    j = int(round(ai[names.index("vertebra_T6"), 1])) - 12
    axs[2, 1].imshow(lab.array[::-1, j, :], cmap="tab20", aspect=sz / sx, interpolation="nearest")
    axs[2, 1].set_title("organ labels, coronal")
    for ax, im2, lm2, boxes in zip(axs[2, 2:4], x.images, x.landmarks, x.lesions):
        g2 = im2.geometry
        ax.imshow(im2.array, cmap="gray", aspect=g2.spacing[1] / g2.spacing[0])
        ok = np.isfinite(lm2[:, 0])
        p = g2.world_to_array_index(lm2[ok])
        ax.plot(p[:, 1], p[:, 0], "r+", ms=10)
        for b in boxes:
            c = g2.world_to_array_index(np.array([[b[0], b[1]], [b[2], b[3]]]))
            ax.plot(c[[0, 1, 1, 0, 0], 1], c[[0, 0, 1, 1, 0], 0], "c-")
        ax.set_title(f"AP radiograph, direction {np.diag(g2.direction).tolist()}")
    for ax in axs[2, 4:]:
        ax.axis("off")
    plt.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(path, dpi=50)
    print("montage written to", path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--montage", metavar="PNG", nargs="?", const=str(OUT / "phantoms.png"),
                    help="write a montage PNG (default benchmarks/out/phantoms.png) instead of timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phase", default="arterial")
    args = ap.parse_args(argv)
    if args.montage:
        montage(args.montage, args.seed, args.phase)
    else:
        timings(seed=args.seed)


if __name__ == "__main__":
    main()
