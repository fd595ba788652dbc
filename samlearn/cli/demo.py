"""The embedded default main job (``samlearn demo``): learn anatomy from synthetic CT phantoms without
labels, then find 20 landmarks one-shot in held-out phantoms, and compare with two baselines.

1. :func:`~samlearn.datasets.make_phantoms` draws training and held-out torso phantoms (CT in HU,
   each with its own anatomy, pose, scan geometry, noise; full field of view, so every landmark
   exists). Nothing is downloaded.
2. A ``SAMEmbedder(preset="ct-lite")`` trains on the training phantoms for a fixed time (no labels).
   Only the demo's budget and sizes are set here (:data:`DEMO_PARAMS`); the preset itself is
   untouched.
3. The 20 named landmarks of one training phantom (the template) are found in every held-out phantom
   in two samlearn ways, both one-shot (one template, no labels): a
   :class:`~samlearn.OneShotLandmarkDetector` (each landmark's own embedding vectors
   searched in the query), and a :class:`~samlearn.SAMDeformableRegistrar` (SAM-affine
   from a grid of SAM matches, then SAM-coarse, a smooth displacement field from a denser grid) of
   the template to the query, through which the template landmarks are mapped.
4. Baselines: (a) *identity*: the template's world coordinates copied; (b) *affine*: SimpleITK's
   intensity-based affine registration (Mattes mutual information, regular-step gradient descent,
   3 resolution levels; template = fixed, query = moving, so the transform maps template points to
   query points).
5. A table of errors (mm) and seconds per query, ``results.json``, the predicted points of both
   samlearn methods as CSV, the model and a figure (``demo.png``: a held-out phantom with true and
   predicted landmarks of both methods, the similarity map of one landmark, the training loss) are
   written to the output folder.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..apps import OneShotLandmarkDetector, SAMDeformableRegistrar
from ..datasets import make_phantoms
from ..embedding import SAMEmbedder
from ..exceptions import RegistrationError
from ..image import check_points
from ..plot import plot_landmarks, plot_loss, plot_similarity, similarity_map
from .files import write_csv

__all__ = ["run_demo", "affine_baseline", "DEMO_PARAMS", "DEMO_REGISTRATION"]

#: SAMEmbedder parameters the demo sets on top of ``preset="ct-lite"``: a time budget (set from
#: ``minutes``) and sizes that let a 2-core CPU learn enough in a few minutes. Three network stages
#: instead of four: at 4 mm the fourth makes global voxels 16 x 128 x 128 mm, too coarse to tell
#: the phantoms' organs apart (benchmarks/RESULTS.md, "Demo").
DEMO_PARAMS = dict(batch_size=2, spacing_mm=4.0, n_stages=3)

#: SAMDeformableRegistrar parameters of the demo: a SAM-coarse field smoothed over 16 mm instead of
#: the default 32 mm, chosen on validation phantoms drawn apart from the demo's (random_state 9000 +
#: seed; benchmarks/RESULTS.md, "Demo").
DEMO_REGISTRATION = dict(smoothing_mm=16.0)

# phantom landmark used for the similarity-map panel of the figure
_FIGURE_LANDMARK = "carina"


def affine_baseline(fixed, moving, points, *, threads=None, seed=0):
    """Map points into another image with SimpleITK's intensity-based affine registration.

    Mattes mutual information (32 bins, 20 % random samples), regular-step gradient descent (the
    optimiser that converged on these images), a centred geometric initialisation and three
    resolution levels (shrink 8, 4, 2; smoothing 4, 2, 1 voxels). ``fixed`` is the template and
    ``moving`` the query, so the transform SimpleITK returns maps fixed (template) points to
    moving (query) points and is applied to them directly.

    Parameters
    ----------
    fixed : Image
        The template.
    moving : Image
        The query.
    points : array-like of shape (n, ndim)
        Points of ``fixed``, world mm.
    threads : int or None, default None
        SimpleITK threads of the registration (None: its default).
    seed : int, default 0
        Seeds the metric's random sampling.

    Returns
    -------
    points : ndarray of shape (n, ndim)
        The points in ``moving``, world mm.
    seconds : float
        Wall time of the registration.
    """

    t0 = time.perf_counter()
    pts = check_points(points, fixed.ndim, name="points")
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(fixed.ndim),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    if threads is not None:
        reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, int(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    spacing = float(np.min(fixed.spacing))
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=4.0 * spacing, minStep=1e-3 * spacing,
                                                 numberOfIterations=300, relaxationFactor=0.7,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([8, 4, 2])
    reg.SetSmoothingSigmasPerLevel([4, 2, 1])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    tx = reg.Execute(f, m)
    mapped = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in pts], dtype=np.float64)
    return mapped, time.perf_counter() - t0


def _summary(err):
    """Error statistics (mm); ``n`` counts the predictions made, ``failed`` those not made (a failed
    registration), which are left out of the statistics."""
    e = err[np.isfinite(err)]
    if e.size == 0:
        return {"mre": float("nan"), "median": float("nan"), "max": float("nan"), "n": 0,
                "failed": int(err.size)}
    return {"mre": float(np.mean(e)), "median": float(np.median(e)), "max": float(np.max(e)),
            "n": int(e.size), "failed": int(err.size - e.size)}


def _table(rows) -> str:
    head = f"{'method':<42} {'MRE':>7} {'median':>7} {'max':>7} {'s/query':>8}"
    lines = [head, "-" * len(head)]
    for name, s, sec in rows:
        sec_txt = "-" if sec is None else f"{sec:.1f}"
        note = f"  ({s['failed']} of {s['n'] + s['failed']} points not found)" if s.get("failed") else ""
        lines.append(f"{name:<42} {s['mre']:>7.1f} {s['median']:>7.1f} {s['max']:>7.1f} {sec_txt:>8}{note}")
    return "\n".join(lines)


class _Say:
    def __init__(self, verbose):
        self.verbose = verbose
        self.t0 = time.perf_counter()

    def __call__(self, text):
        if self.verbose:
            print(f"[{time.perf_counter() - self.t0:6.0f} s] {text}", flush=True)


def run_demo(*, minutes=4.0, out="samlearn-demo", seed=0, n_train=20, n_test=10, threads=None,
             device="auto", baseline=True, figure=True, verbose=1, embedder_params=None) -> dict:
    """Run the demo (see the module docstring) and return its results.

    Parameters
    ----------
    minutes : float, default 4
        Training time of the embedder.
    out : str or path, default "samlearn-demo"
        Output folder (created): ``model.samlearn``, ``landmarks.csv``, ``results.json`` and
        ``demo.png``.
    seed : int, default 0
        Seeds the phantoms, the training and the baseline.
    n_train, n_test : int, default 20 and 10
        Training and held-out phantoms.
    threads : int or None, default None
        torch / SimpleITK CPU threads (None: their defaults, all cores).
    device : str, default "auto"
        The embedder's ``device`` ("auto", "cpu", "cuda", ...).
    baseline : bool, default True
        Run the SimpleITK affine baseline (:func:`affine_baseline`).
    figure : bool, default True
        Write ``demo.png`` (needs matplotlib).
    verbose : int, default 1
        Progress messages and the final table (0: silent).
    embedder_params : dict, optional
        More ``SAMEmbedder`` parameters (override :data:`DEMO_PARAMS`).

    Returns
    -------
    dict
        The results also written to ``out/results.json``: error statistics (mm) and seconds per
        query of each method, per-landmark errors, training facts and the printed table.

    Raises
    ------
    ValueError
        When ``out`` is a file.
    """

    say = _Say(verbose)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out '{out}' is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(int(threads))
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    ss_train, ss_test, ss_model = np.random.SeedSequence(seed).spawn(3)

    say(f"generating {n_train} training and {n_test} held-out CT phantoms (synthetic torsos, HU)")
    t0 = time.perf_counter()
    train = make_phantoms(n_train, field_of_view="full", random_state=ss_train)
    test = make_phantoms(n_test, field_of_view="full", random_state=ss_test)
    t_gen = time.perf_counter() - t0
    names = list(train.landmark_names)
    say(f"phantoms ready in {t_gen:.0f} s (e.g. {train.images[0].shape[::-1]} voxels of "
        f"{np.round(train.images[0].spacing, 2).tolist()} mm)")

    params = dict(preset="ct-lite", max_time=float(minutes) * 60.0, max_iter=None,
                  random_state=int(ss_model.generate_state(1)[0] % (2**31)), device=device,
                  n_threads=threads, verbose=int(verbose))
    params.update(DEMO_PARAMS)
    params.update(embedder_params or {})
    say(f"training SAMEmbedder(preset='ct-lite', {', '.join(f'{k}={v}' for k, v in DEMO_PARAMS.items())}) "
        f"for {minutes:g} min on the {n_train} training phantoms, no labels")
    emb = SAMEmbedder(**params)
    emb.fit(train.images)
    model_path = out / "model.samlearn"
    emb.save(model_path)
    first = np.mean([h["loss"] for h in emb.history_[:10]])
    last = np.mean([h["loss"] for h in emb.history_[-10:]])
    say(f"trained {emb.n_iter_} iterations in {emb.train_time_:.0f} s (loss {first:.2f} -> {last:.2f}); "
        f"model saved to {model_path}")

    # template: one training phantom, its landmarks (all inside: full field of view)
    k_t = 0
    tmpl_img, tmpl_pts = train.images[k_t], train.landmarks[k_t]
    ok = np.isfinite(tmpl_pts).all(axis=1)
    used = [n for n, o in zip(names, ok) if o]
    det = OneShotLandmarkDetector(embedder=emb)
    det.fit(tmpl_img, tmpl_pts[ok])
    say(f"template: training phantom {k_t} with {len(used)} landmarks; detecting them in the "
        f"{n_test} held-out phantoms")
    truth = test.landmarks[:, ok]
    pred = np.empty_like(truth)
    scores = np.empty(truth.shape[:2])
    t_sam = []
    for i, im in enumerate(test.images):
        t0 = time.perf_counter()
        p, s = det.predict([im], return_scores=True)
        t_sam.append(time.perf_counter() - t0)
        pred[i], scores[i] = p[0], s[0]
    err_sam = np.linalg.norm(pred - truth, axis=-1)
    err_id = np.linalg.norm(tmpl_pts[ok][None] - truth, axis=-1)

    say("samlearn registration: SAM-affine + SAM-coarse (a displacement field from a dense grid of "
        "SAM matches) of the template to each held-out phantom, template landmarks mapped through it")
    reg_pred = np.empty_like(truth)
    t_reg = []
    for i, im in enumerate(test.images):
        t0 = time.perf_counter()
        try:
            reg = SAMDeformableRegistrar(embedder=emb, random_state=seed,
                                         **DEMO_REGISTRATION).fit(tmpl_img, im)
            reg_pred[i] = reg.transform_points(tmpl_pts[ok])
        except RegistrationError as exc:  # too few confident matches: a failure, not a guess
            reg_pred[i] = np.nan
            say(f"  held-out phantom {i}: registration failed ({exc})")
        t_reg.append(time.perf_counter() - t0)
    err_reg = np.linalg.norm(reg_pred - truth, axis=-1)
    rows = [("samlearn one-shot detector", _summary(err_sam), float(np.mean(t_sam))),
            ("samlearn SAM-affine + SAM-coarse", _summary(err_reg), float(np.mean(t_reg))),
            ("identity (template coordinates)", _summary(err_id), None)]
    results = {"minutes": float(minutes), "n_train": int(n_train), "n_test": int(n_test), "seed": int(seed),
               "threads": threads, "n_iter": int(emb.n_iter_), "train_seconds": float(emb.train_time_),
               "phantom_seconds": float(t_gen), "landmarks": used,
               "samlearn": dict(_summary(err_sam), seconds_per_query=float(np.mean(t_sam))),
               "samlearn_registration": dict(_summary(err_reg), seconds_per_query=float(np.mean(t_reg))),
               "identity": _summary(err_id),
               "per_landmark_mre_mm": {n: float(v) for n, v in zip(used, np.nanmean(err_sam, 0))},
               "per_landmark_mre_mm_registration": {n: float(v) for n, v in zip(used, np.nanmean(err_reg, 0))}}
    if baseline:
        say("affine baseline: SimpleITK intensity-based affine registration of the template to each "
            "held-out phantom")
        aff = np.empty_like(truth)
        t_aff = []
        for i, im in enumerate(test.images):
            aff[i], sec = affine_baseline(tmpl_img, im, tmpl_pts[ok], threads=threads, seed=seed)
            t_aff.append(sec)
        err_aff = np.linalg.norm(aff - truth, axis=-1)
        rows.insert(2, ("SimpleITK affine registration (intensity)", _summary(err_aff), float(np.mean(t_aff))))
        results["affine"] = dict(_summary(err_aff), seconds_per_query=float(np.mean(t_aff)))
    table = _table(rows)
    results["table"] = table

    # predicted points of both samlearn methods
    header = ["method", "phantom", "name", "x", "y", "z", "score", "true_x", "true_y", "true_z", "error_mm"]
    csv_rows = []
    for method, P, E in (("detector", pred, err_sam), ("sam-coarse", reg_pred, err_reg)):
        for i in range(n_test):
            for j, n in enumerate(used):
                csv_rows.append([method, i, n, *(f"{v:.2f}" for v in P[i, j]),
                                 f"{scores[i, j]:.3f}" if method == "detector" else "",
                                 *(f"{v:.2f}" for v in truth[i, j]), f"{E[i, j]:.2f}"])
    write_csv(out / "landmarks.csv", header, csv_rows)  # temporary file, then renamed

    if figure:
        fig_path = _figure(out / "demo.png", emb, det, test, truth, pred, reg_pred, used, err_sam, say)
        results["figure"] = None if fig_path is None else str(fig_path)
    results["total_seconds"] = float(time.perf_counter() - t_start)
    tmp = out / ".results.json.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    tmp.replace(out / "results.json")
    if verbose:
        print()
        print(f"One-shot landmark detection on {n_test} held-out phantoms, {len(used)} landmarks each "
              f"(errors in mm; template = 1 training phantom):")
        print(table)
        if baseline:
            a = results["affine"]["mre"]
            for key, label in (("samlearn", "one-shot detector"), ("samlearn_registration",
                                                                     "SAM-affine + SAM-coarse")):
                d = results[key]["mre"] - a
                print(f"samlearn {label}: mean radial error {abs(d):.1f} mm "
                      f"{'below' if d < 0 else 'above'} the intensity-based affine baseline's")
            if not min(results["samlearn"]["mre"], results["samlearn_registration"]["mre"]) < a:
                print("(a few minutes of training on a CPU are not enough here: train longer with --minutes)")
        print(f"total {results['total_seconds'] / 60:.1f} min; outputs in {out}/ (model.samlearn, "
              f"landmarks.csv, results.json{', demo.png' if results.get('figure') else ''})")
        print(f"next: samlearn detect --model {model_path} --template YOUR_TEMPLATE.nii.gz --points "
              f"points.csv YOUR_SCANS/")
    return results


def _figure(path, emb, det, test, truth, pred, reg_pred, used, err, say):
    try:
        import matplotlib
        if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no figure (pip install 'samlearn[plot]')")
        return None

    i = 0
    im = test.images[i]
    j = used.index(_FIGURE_LANDMARK) if _FIGURE_LANDMARK in used else int(np.argsort(err[i])[len(used) // 2])
    fig, axs = plt.subplots(2, 2, figsize=(13, 12))
    plot_landmarks(im, true=truth[i], predicted=pred[i], view="coronal", ax=axs[0, 0],
                   names=[n.replace("_", " ") for n in used],
                   title=f"held-out phantom {i}, {len(used)} landmarks: one-shot detector")
    plot_landmarks(im, true=truth[i], predicted=reg_pred[i], view="coronal", ax=axs[0, 1], legend=False,
                   title="SAM-affine + SAM-coarse (green: true, red: found)")
    e = emb.transform([im])[0]
    sim = similarity_map(e, det.template_global_[j], det.template_local_[j])
    plot_similarity(im, sim, point=pred[i, j], true=truth[i, j], view="axial", ax=axs[1, 0],
                    title=f"similarity to the template's {used[j].replace('_', ' ')} "
                          f"(axial; error {err[i, j]:.1f} mm)")
    plot_loss(emb, ax=axs[1, 1], x="time", title=f"training loss ({emb.n_iter_} iterations, no labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    say(f"figure written to {path}")
    return path
