"""Registration peers for the side-by-side benchmarks: map template points into a query image with
ANTs, elastix or SimpleITK. Not part of the library (needs the ``bench`` extra: ``antspyx``,
``itk-elastix``).

One function does the work::

    result = map_points(fixed=template, moving=query, points_world=template_landmarks,
                        method="ants-syn", threads=1)
    result.points    # (n, ndim) world mm in the QUERY image
    result.seconds   # wall time of registration + point mapping

Conventions (checked by benchmarks/registration/test_peers.py against a known affine, 2D and 3D,
with anisotropic spacing, non-zero origin and a rotated direction):

* Register with ``fixed = template`` and ``moving = query``. Every toolkit then returns a transform
  that maps **fixed (template) world points to moving (query) world points** (the transform used to
  pull the moving image onto the fixed grid), so it is applied *directly* to the template points:
  ANTs ``apply_transforms_to_points(fwdtransforms)``, elastix ``transformix`` with a fixed point
  set, SimpleITK ``transform.TransformPoint``. Swapping the roles without inverting is the classic
  bug (PEERS.md: 24 mm instead of 2 mm).
* Images cross over with their full geometry (spacing, origin, direction). ANTs numpy arrays are
  ``(x, y, z)``, i.e. the transpose of samlearn's ``(z, y, x)``; world points are the same ITK/LPS
  millimetres in all three toolkits.
* Threads: ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, so call
  :func:`configure_threads` **before** the first registration (the benchmark scripts do it at
  start-up). elastix gets ``MaximumNumberOfThreads`` in its parameter maps; calling
  ``SetNumberOfThreads(n > 1)`` on its registration object segfaults on B-spline maps in
  itk-elastix 0.25 (ITKElastix #160), so it is never called. SimpleITK gets
  ``SetNumberOfThreads`` on the registration method.
* elastix's first use costs 10-20 s of start-up (loading its many ITK modules): call
  :func:`warm_up` before timing anything.

Methods (``METHODS``):

``ants-affine``     ANTs ``type_of_transform="Affine"`` (Mattes MI, 4 levels).
``ants-syn``        ANTs ``"SyN"``: affine then symmetric diffeomorphic (Mattes MI), ANTsPy defaults.
``elastix-affine``  elastix default affine map (Mattes MI, ASGD, 4 levels) with centre initialisation.
``elastix-bspline`` elastix affine map followed by its default B-spline map (bending-energy
                    penalty); ``bspline_grid_spacing`` (world units) sets the final control-point
                    spacing (default: 1/8 of the smallest image extent, at least elastix's 10 mm).
``sitk-affine``     SimpleITK ``ImageRegistrationMethod``: Mattes MI, regular-step gradient descent
                    (converged where plain gradient descent stopped early, PEERS.md), centred
                    geometric initialisation, 3 levels (shrink 4, 2, 1).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from samlearn.image import Image, check_points

METHODS = ("ants-affine", "ants-syn", "elastix-affine", "elastix-bspline", "sitk-affine")

__all__ = ["METHODS", "PeerResult", "map_points", "configure_threads", "warm_up", "peer_versions"]


@dataclass
class PeerResult:
    """Template points mapped into the query image by one peer."""

    method: str
    points: np.ndarray            # (n_points, ndim) world mm, query (moving) image frame
    seconds: float                # wall time: registration + point mapping (image conversion included)
    info: dict = field(default_factory=dict)


def configure_threads(n: int) -> None:
    """Set the ITK thread count for every toolkit. Call before the first registration: ITK reads
    the environment variable once, when it first creates a thread pool."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(n))
    os.environ["ITK_NUMBER_OF_THREADS"] = str(int(n))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))
    if "itk" in sys.modules:
        import itk
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(n))


def peer_versions() -> dict:
    """Versions of the peer toolkits that are importable (for benchmark records)."""
    out = {"SimpleITK": sitk.Version_VersionString(), "numpy": np.__version__}
    try:
        import ants
        out["antspyx"] = ants.__version__
    except ImportError:
        pass
    try:
        import itk
        out["itk"] = itk.Version.GetITKVersion()
        from importlib.metadata import version
        out["itk-elastix"] = version("itk-elastix")
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


# ----------------------------------------------------------------------------------- helpers
def _check_inputs(fixed, moving, points_world, method):
    if not isinstance(fixed, Image):
        raise TypeError(f"fixed must be a samlearn Image, got {type(fixed).__name__}")
    if not isinstance(moving, Image):
        raise TypeError(f"moving must be a samlearn Image, got {type(moving).__name__}")
    if fixed.ndim != moving.ndim:
        raise ValueError(f"fixed is {fixed.ndim}D but moving is {moving.ndim}D")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return check_points(points_world, fixed.ndim, name="points_world")


def _to_ants(image: Image):
    import ants
    # samlearn arrays are (z, y, x); ANTs numpy arrays are (x, y, z): transpose.
    return ants.from_numpy(np.ascontiguousarray(image.array.T, dtype=np.float32),
                           origin=[float(v) for v in image.origin],
                           spacing=[float(v) for v in image.spacing],
                           direction=np.array(image.direction, dtype=np.float64, copy=True))


def _to_itk(image: Image):
    import itk
    img = itk.image_from_array(np.ascontiguousarray(image.array, dtype=np.float32))  # (z, y, x) like SimpleITK
    img.SetSpacing([float(v) for v in image.spacing])
    img.SetOrigin([float(v) for v in image.origin])
    # a writeable copy: itk.matrix_from_array segfaults on samlearn's read-only geometry arrays
    img.SetDirection(itk.matrix_from_array(np.array(image.direction, dtype=np.float64, copy=True)))
    return img


def _ants_map(fixed, moving, pts, type_of_transform, threads, random_state, options):
    import ants
    import pandas as pd
    ants.config._random_seed = int(random_state)  # ANTsPy's only seed hook (adds --random-seed)
    f, m = _to_ants(fixed), _to_ants(moving)
    with tempfile.TemporaryDirectory(prefix="samlearn-ants-") as tmp:
        reg = ants.registration(fixed=f, moving=m, type_of_transform=type_of_transform,
                                outprefix=str(Path(tmp) / "reg_"), verbose=False, **options)
        cols = ["x", "y", "z"][: fixed.ndim]
        df = pd.DataFrame(pts, columns=cols)
        out = ants.apply_transforms_to_points(fixed.ndim, df, reg["fwdtransforms"])
        mapped = out[cols].to_numpy(dtype=np.float64)
    return mapped, {"type_of_transform": type_of_transform, "n_transforms": len(reg["fwdtransforms"])}


def _elastix_maps(fixed: Image, method: str, threads: int, random_state: int, options: dict):
    import itk
    po = itk.ParameterObject.New()
    affine = po.GetDefaultParameterMap("affine")
    affine["AutomaticTransformInitialization"] = ["true"]
    affine["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
    maps = [affine]
    if method == "elastix-bspline":
        bspline = po.GetDefaultParameterMap("bspline")
        grid = options.get("bspline_grid_spacing")
        if grid is None:
            grid = max(10.0, float(np.min(fixed.geometry.extent_mm)) / 8.0)
        bspline["FinalGridSpacingInPhysicalUnits"] = [f"{float(grid):.6f}"]
        maps.append(bspline)
    for pm in maps:
        pm["MaximumNumberOfThreads"] = [str(int(threads))]
        pm["RandomSeed"] = [str(int(random_state))]
        pm["WriteResultImage"] = ["false"]
        for k, v in options.get("parameters", {}).items():
            pm[k] = [str(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        po.AddParameterMap(pm)
    return po


def _elastix_map(fixed, moving, pts, method, threads, random_state, options):
    import itk
    f, m = _to_itk(fixed), _to_itk(moving)
    po = _elastix_maps(fixed, method, threads, random_state, options)
    reg = itk.ElastixRegistrationMethod.New(f, m)  # never SetNumberOfThreads (ITKElastix #160)
    reg.SetParameterObject(po)
    reg.SetLogToConsole(False)
    reg.UpdateLargestPossibleRegion()
    tpo = reg.GetTransformParameterObject()
    with tempfile.TemporaryDirectory(prefix="samlearn-elastix-") as tmp:
        pfile = Path(tmp) / "points.txt"
        with open(pfile, "w") as fh:  # physical ("point") coordinates of the FIXED image
            fh.write(f"point\n{len(pts)}\n")
            for p in pts:
                fh.write(" ".join(f"{v:.6f}" for v in p) + "\n")
        tfx = itk.TransformixFilter.New(m)
        tfx.SetTransformParameterObject(tpo)
        tfx.SetFixedPointSetFileName(str(pfile))
        tfx.SetOutputDirectory(tmp)
        tfx.SetLogToConsole(False)
        tfx.UpdateLargestPossibleRegion()
        mapped = _read_transformix_points(Path(tmp) / "outputpoints.txt", fixed.ndim)
    if mapped.shape != pts.shape:
        raise RuntimeError(f"transformix returned {mapped.shape[0]} points for {pts.shape[0]}")
    return mapped, {"n_parameter_maps": tpo.GetNumberOfParameterMaps()}


_OUTPUT_POINT = re.compile(r"OutputPoint\s*=\s*\[([^\]]*)\]")


def _read_transformix_points(path: Path, ndim: int) -> np.ndarray:
    rows = []
    for line in path.read_text().splitlines():
        mt = _OUTPUT_POINT.search(line)
        if mt:
            rows.append([float(v) for v in mt.group(1).split()])
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, ndim)
    return arr


def _sitk_affine_map(fixed, moving, pts, threads, random_state, options):
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(fixed.ndim),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(options.get("bins", 32)))
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(options.get("sampling", 0.2)), int(random_state))
    reg.SetInterpolator(sitk.sitkLinear)
    spacing = float(np.min(fixed.spacing))
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(options.get("learning_rate", 4.0 * spacing)),
        minStep=float(options.get("min_step", 1e-3 * spacing)),
        numberOfIterations=int(options.get("iterations", 300)),
        relaxationFactor=0.7, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(options.get("shrink", (4, 2, 1))))
    reg.SetSmoothingSigmasPerLevel(list(options.get("sigmas", (2, 1, 0))))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    tx = reg.Execute(f, m)
    mapped = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in pts], dtype=np.float64)
    return mapped, {"iterations": reg.GetOptimizerIteration(),
                    "stop": reg.GetOptimizerStopConditionDescription()[:120]}


# ----------------------------------------------------------------------------------- public
def map_points(fixed: Image, moving: Image, points_world, method: str, *, threads: int = 1,
               random_state: int = 0, options: dict | None = None) -> PeerResult:
    """Register ``fixed`` (the template) to ``moving`` (the query) with a peer toolkit and carry
    ``points_world`` (template world points, (n, ndim)) into the query's world frame.

    ``threads`` is passed where the toolkit takes it per call (elastix, SimpleITK); ANTs follows
    :func:`configure_threads`, which must have been called first for fair timing.
    ``random_state`` seeds each toolkit's metric sampling. ``options`` tunes a method (ANTs:
    keyword arguments of ``ants.registration``; elastix: ``bspline_grid_spacing`` and
    ``parameters`` (extra parameter-map entries); SimpleITK: ``iterations``, ``learning_rate``,
    ``shrink``, ``sigmas``, ``sampling``, ``bins``).
    Returns a :class:`PeerResult` whose ``points`` are in the moving (query) image's world frame.
    """
    pts = _check_inputs(fixed, moving, points_world, method)
    if not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    options = dict(options or {})
    t0 = time.perf_counter()
    if method == "ants-affine":
        mapped, info = _ants_map(fixed, moving, pts, "Affine", threads, random_state, options)
    elif method == "ants-syn":
        mapped, info = _ants_map(fixed, moving, pts, "SyN", threads, random_state, options)
    elif method in ("elastix-affine", "elastix-bspline"):
        mapped, info = _elastix_map(fixed, moving, pts, method, threads, random_state, options)
    else:
        mapped, info = _sitk_affine_map(fixed, moving, pts, threads, random_state, options)
    seconds = time.perf_counter() - t0
    if mapped.shape != pts.shape or not np.all(np.isfinite(mapped)):
        raise RuntimeError(f"{method} returned invalid points (shape {mapped.shape})")
    return PeerResult(method=method, points=mapped, seconds=seconds, info=info)


def warm_up(methods=METHODS, ndim: int = 2) -> dict:
    """Run each method once on a tiny synthetic pair so one-off start-up costs (elastix loads its
    ITK modules: 10-20 s) are not counted in later timings. Returns seconds per method."""
    rng = np.random.default_rng(0)
    shape = (24,) * ndim
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    arr = np.exp(-sum((g - c) ** 2 for g, c in zip(grids, rng.uniform(-0.3, 0.3, ndim))) / 0.2)
    img = Image.from_array(arr.astype(np.float32))
    out = {}
    for m in methods:
        t0 = time.perf_counter()
        map_points(img, img, np.full((1, ndim), 10.0), m,
                   options={"parameters": {"MaximumNumberOfIterations": "5"}} if m.startswith("elastix")
                   else ({"aff_iterations": (5, 5, 5, 5), "reg_iterations": (2, 0, 0)} if m.startswith("ants")
                         else {"iterations": 5}))
        out[m] = time.perf_counter() - t0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="The registration peers of the benchmarks: the methods and the "
                                             "versions of the toolkits this environment has.")
    ap.add_argument("--warm-up", action="store_true",
                    help="also run every method once on a tiny synthetic pair (checks that each works)")
    args = ap.parse_args(argv)
    versions = peer_versions()
    toolkit = {"ants": "antspyx", "elastix": "itk-elastix", "sitk": "SimpleITK"}
    usable = [m for m in METHODS if toolkit[m.split("-")[0]] in versions]
    print(json.dumps({"methods": METHODS, "usable here": usable, "versions": versions}, indent=1))
    if args.warm_up:
        print(json.dumps({"warm_up_seconds": warm_up(usable)}, indent=1))


if __name__ == "__main__":
    main()
