"""The part of the behaviour check that runs INSIDE one revision of samlearn.

:mod:`benchmarks.behaviour.compare_commits` runs this file as a script, by its path, in a fresh
subprocess whose ``PYTHONPATH`` starts with the checkout of the revision under test, so the
``samlearn`` imported here is that revision's (checked: :func:`check_checkout`). It never imports
the ``benchmarks`` package, which old revisions do not have, and it only uses public API present in
every revision compared: ``samlearn.load``, ``samlearn.SAMEmbedder`` (training only),
``samlearn.OneShotLandmarkDetector``, ``samlearn.SAMAffineRegistrar``,
``samlearn.SAMDeformableRegistrar``, ``samlearn.Image``, ``samlearn.datasets.load_cephalograms``,
``samlearn.datasets.load_ct_folder``, SimpleITK and numpy.

Two sub-commands:

``train``
    Train one model (``--kind xray``: preset "xray-lite" on cephalograms 001-050; ``--kind ct``:
    preset "ct-lite" on the CTs of ``<data>/ct``) with a fixed seed, one thread and a time budget,
    and save it. The comparison trains its models once, with the base revision, and both
    revisions then load the same files.
``probe``
    Run the fixed set of computations below on saved models and write every output array into one
    ``.npz`` (keys ``"ceph/<config>/points"`` ...) plus a JSON file of metadata (where samlearn was
    imported from, versions, timings, errors).

    * Landmarks: template 048 with its ground-truth landmarks (world units as the loader gives
      them), queries 051-070; ``OneShotLandmarkDetector(embedder=model, **config)`` for every
      config of :data:`DETECTOR_CONFIGS`; ``predict(queries, return_scores=True)`` -> points
      (20, 19, 2) and scores (20, 19).
    * CT registration, per case: fixed = the CT; moving = the CT resampled (``sitk.Resample``,
      linear, onto the CT's own grid, -1024 HU outside) through a known affine
      (:func:`known_affine`: rotation 3-6 degrees about a random axis through the image centre,
      isotropic scale 0.97-1.03, translation up to 5 mm per axis, seeded by the case name).
      ``SAMAffineRegistrar(embedder=model, random_state=0)``: ``transform_.matrix`` and the mapped
      grid points; ``SAMDeformableRegistrar(embedder=model, random_state=0)``: the mapped grid
      points. The grid: 4 x 4 x 4 points at 1/5 ... 4/5 of the fixed image along each index axis.
      The inputs are recorded too (the grid, the true fixed -> moving matrix, the moving image's
      mean HU), so that a change of the inputs themselves shows apart from one of the outputs.

    An exception in one computation is recorded (key ``".../error"``, the message as a string
    array; the traceback in the JSON) and the others go on, so that a failure that both revisions
    share compares equal and a new one shows as a difference.

Everything runs on one thread (torch, the embedder's ``n_threads`` and ``n_jobs``, and the BLAS /
OpenMP variables the caller sets), on the CPU, so that the outputs are deterministic.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np

#: id of the template cephalogram and the ids of the query cephalograms (development split).
CEPH_TEMPLATE = "048"
CEPH_QUERIES = tuple(f"{i:03d}" for i in range(51, 71))
#: ids of the cephalograms the X-ray model is trained on.
CEPH_TRAIN = tuple(f"{i:03d}" for i in range(1, 51))
#: detector configurations: name -> keyword arguments of OneShotLandmarkDetector besides embedder.
DETECTOR_CONFIGS = {
    "default": {},
    "ncc32": {"ncc_radius_mm": 32.0},
    "affine": {"consistency": "affine"},
    "affine_ncc32": {"consistency": "affine", "ncc_radius_mm": 32.0},
    "none": {"consistency": None},
    "none_ncc32": {"consistency": None, "ncc_radius_mm": 32.0},
}
#: presets of the trained models.
PRESETS = {"xray": "xray-lite", "ct": "ct-lite"}
#: grid of the registration check points, as fractions of the fixed image's index range.
GRID_FRACTIONS = (0.2, 0.4, 0.6, 0.8)
AIR_HU = -1024.0


# ------------------------------------------------------------------------------- set-up
def check_checkout(checkout):
    """Import samlearn and check that it comes from ``checkout``.

    The venv may have samlearn installed in editable mode from another folder; ``PYTHONPATH``
    must win over it, or the comparison would compare a revision with itself.

    Parameters
    ----------
    checkout : str or pathlib.Path
        Root of the revision's checkout.

    Returns
    -------
    module
        The imported ``samlearn`` package.
    """
    import samlearn
    import samlearn.datasets  # noqa: F401 - a sub-package the top level does not import

    root = Path(checkout).resolve()
    where = Path(samlearn.__file__).resolve()
    if root not in where.parents:
        raise SystemExit(f"probe: samlearn was imported from {where}, not from the checkout "
                         f"{root}: put the checkout first on PYTHONPATH")
    return samlearn


def single_thread():
    """Run torch on one thread (the caller also sets OMP/MKL/OpenBLAS to one thread)."""
    import torch

    torch.set_num_threads(1)


def single_thread_model(model):
    """Set the parameters of a loaded embedder that control parallelism to one thread.

    Only the parameters the revision's embedder has are set, so that the probe works on old and
    new revisions alike.

    Parameters
    ----------
    model : samlearn.SAMEmbedder
        A model returned by ``samlearn.load``.

    Returns
    -------
    samlearn.SAMEmbedder
        The same model.
    """
    wanted = {"n_threads": 1, "n_jobs": 1, "device": "cpu", "verbose": 0}
    present = model.get_params(deep=False)
    model.set_params(**{k: v for k, v in wanted.items() if k in present})
    return model


def ceph_ids(samlearn, data):
    """The cephalogram set and a map from image id to its index in it.

    Parameters
    ----------
    samlearn : module
    data : pathlib.Path
        The shared data folder (holding ``cephalograms/``).

    Returns
    -------
    bunch : sklearn.utils.Bunch
        ``samlearn.datasets.load_cephalograms`` of ``data / "cephalograms"``.
    index : dict
        Image id (``"001"`` ...) -> position in ``bunch.ids``.
    """
    bunch = samlearn.datasets.load_cephalograms(data / "cephalograms")
    return bunch, {image_id: k for k, image_id in enumerate(bunch.ids)}


# ------------------------------------------------------------------------------- training
def train(samlearn, kind, data, out, minutes, seed):
    """Train one model with a fixed seed on one thread and save it.

    The budget is wall time, so the number of iterations (and the weights) depend on the
    machine's load: a model is trained once and its file reused, never trained per revision.

    Parameters
    ----------
    samlearn : module
    kind : {"xray", "ct"}
        ``"xray"``: preset "xray-lite" on cephalograms :data:`CEPH_TRAIN`; ``"ct"``: preset
        "ct-lite" on every CT of ``data / "ct"``.
    data : pathlib.Path
        The shared data folder.
    out : pathlib.Path
        Model file to write.
    minutes : float
        Training time budget (``max_time``).
    seed : int
        ``random_state``.

    Returns
    -------
    dict
        Iterations, training time and the training images.
    """
    if kind == "xray":
        bunch, index = ceph_ids(samlearn, data)
        images = [bunch.image_paths[index[i]] for i in CEPH_TRAIN]
    else:
        bunch = samlearn.datasets.load_ct_folder(data / "ct")
        images = [bunch.paths[name] for name in bunch.names]
        del bunch
    model = samlearn.SAMEmbedder(preset=PRESETS[kind], max_time=60.0 * minutes, n_threads=1,
                                 random_state=seed, device="cpu")
    model.fit(images)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return {"kind": kind, "preset": PRESETS[kind], "n_iter": int(model.n_iter_),
            "train_time_s": float(model.train_time_), "minutes": minutes, "seed": seed,
            "images": [str(p) for p in images]}


# ------------------------------------------------------------------------------- probes
def probe_landmarks(samlearn, model_path, data, record):
    """Detector predictions on the development queries, for every detector configuration.

    Parameters
    ----------
    samlearn : module
    model_path : pathlib.Path
        The saved X-ray model.
    data : pathlib.Path
        The shared data folder.
    record : callable
        ``record(key, fn)`` stores the arrays ``fn()`` returns under ``key`` (see
        :class:`Recorder`).
    """
    model = single_thread_model(samlearn.load(model_path))
    bunch, index = ceph_ids(samlearn, data)
    template = bunch.image_paths[index[CEPH_TEMPLATE]]
    template_points = np.asarray(bunch.landmarks[index[CEPH_TEMPLATE]], dtype=np.float64)
    queries = [bunch.image_paths[index[i]] for i in CEPH_QUERIES]
    record("ceph/template_points", lambda: {"": template_points})

    for name, params in DETECTOR_CONFIGS.items():
        def run(params=params):
            detector = samlearn.OneShotLandmarkDetector(embedder=model, **params)
            detector.fit(template, template_points)
            points, scores = detector.predict(queries, return_scores=True)
            return {"points": points, "scores": scores}

        record(f"ceph/{name}", run)


def known_affine(image, case, seed):
    """The known affine a CT is warped by, built with SimpleITK.

    Rotation of 3-6 degrees about a random axis through the centre of the image, isotropic scale
    0.97-1.03 and a translation of up to 5 mm per axis, drawn from a generator seeded by ``seed``
    and the case name (so a case gets the same warp whatever other cases run).

    Parameters
    ----------
    image : samlearn.Image
        The CT (3D).
    case : str
        Case name (seeds the draw).
    seed : int

    Returns
    -------
    SimpleITK.AffineTransform
        Maps points of the moving (warped) image to the fixed image, as ``sitk.Resample`` wants.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng([seed, zlib.crc32(case.encode())])
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(3.0, 6.0)) * rng.choice([-1.0, 1.0])
    scale = rng.uniform(0.97, 1.03)
    translation = rng.uniform(-5.0, 5.0, size=3)
    rotation = np.asarray(sitk.VersorTransform(tuple(axis), float(angle)).GetMatrix()).reshape(3, 3)
    size = np.asarray(image.geometry.size, dtype=np.float64)
    centre = image.index_to_world((size - 1.0) / 2.0)
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(float(c) for c in centre))
    transform.SetMatrix(tuple(float(v) for v in (scale * rotation).ravel()))
    transform.SetTranslation(tuple(float(t) for t in translation))
    return transform


def homogeneous(transform):
    """The 4 x 4 homogeneous matrix of a SimpleITK affine transform (world points)."""
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), dtype=np.float64)
    offset = centre + np.asarray(transform.GetTranslation(), dtype=np.float64) - matrix @ centre
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = matrix, offset
    return out


def warp_ct(samlearn, image, transform):
    """The CT resampled through ``transform`` onto its own grid (linear, air outside).

    Parameters
    ----------
    samlearn : module
    image : samlearn.Image
    transform : SimpleITK.Transform
        Maps output (moving) points to input (fixed) points.

    Returns
    -------
    samlearn.Image
    """
    import SimpleITK as sitk

    fixed = image.to_sitk()
    moving = sitk.Resample(fixed, fixed, transform, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    return samlearn.Image.from_sitk(moving)


def grid_points(image):
    """World points of a 4 x 4 x 4 grid inside ``image`` (see :data:`GRID_FRACTIONS`)."""
    size = np.asarray(image.geometry.size, dtype=np.float64)
    axes = [np.asarray(GRID_FRACTIONS) * (n - 1.0) for n in size]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(size))
    return np.asarray(image.index_to_world(index), dtype=np.float64)


def probe_registration(samlearn, model_path, data, cases, seed, record):
    """Affine and deformable registration of each CT to a known affine warp of itself.

    Parameters
    ----------
    samlearn : module
    model_path : pathlib.Path
        The saved CT model.
    data : pathlib.Path
        The shared data folder.
    cases : list of str
        CT case names (``samlearn.datasets.CT_CASES`` keys), probed in this order.
    seed : int
        Seed of the known warps.
    record : callable
        See :class:`Recorder`.
    """
    model = single_thread_model(samlearn.load(model_path))
    for case in cases:
        image = samlearn.datasets.load_ct_folder(data / "ct", names=[case]).images[case]
        probe_ct_case(samlearn, model, image, case, seed, record)


def probe_ct_case(samlearn, model, image, case, seed, record):
    """Register one CT (fixed) to its known affine warp (moving); see :func:`probe_registration`.

    Records ``ct/<case>/inputs`` (grid points, the true fixed -> moving matrix, the moving image's
    mean), ``ct/<case>/affine`` (matrix, mapped grid points) and ``ct/<case>/deformable`` (mapped
    grid points).
    """
    transform = known_affine(image, case, seed)
    moving = warp_ct(samlearn, image, transform)
    points = grid_points(image)
    record(f"ct/{case}/inputs", lambda: {
        "grid_points": points,
        # fixed -> moving world points: what the registrars estimate
        "true_matrix": np.linalg.inv(homogeneous(transform)),
        "moving_mean_hu": np.float64(moving.array.mean(dtype=np.float64)),
    })

    def affine():
        reg = samlearn.SAMAffineRegistrar(embedder=model, random_state=0).fit(image, moving)
        return {"matrix": reg.transform_.matrix, "points": reg.transform_.transform_points(points)}

    def deformable():
        reg = samlearn.SAMDeformableRegistrar(embedder=model, random_state=0).fit(image, moving)
        return {"points": reg.transform_.transform_points(points)}

    record(f"ct/{case}/affine", affine)
    record(f"ct/{case}/deformable", deformable)


class Recorder:
    """Collects output arrays, the time of each computation and the errors.

    ``recorder(key, fn)`` calls ``fn()``, which returns ``{name: array}``, and stores each array
    under ``key + "/" + name`` (``key`` alone for the name ``""``). An exception is stored as the
    string array ``key + "/error"`` (type and message) and its traceback kept in ``errors``.
    """

    def __init__(self):
        self.arrays = {}
        self.seconds = {}
        self.errors = {}

    def __call__(self, key, fn):
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - recorded, compared between the revisions
            self.arrays[f"{key}/error"] = np.array(f"{type(exc).__name__}: {exc}")
            self.errors[key] = traceback.format_exc()
            print(f"probe: {key} raised {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            for name, value in result.items():
                self.arrays[f"{key}/{name}" if name else key] = np.asarray(value)
        self.seconds[key] = time.perf_counter() - t0
        print(f"probe: {key}: {self.seconds[key]:.1f} s", file=sys.stderr, flush=True)


def environment(samlearn):
    """Versions and the compute capability torch dispatches to."""
    import SimpleITK as sitk
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.0
        capability = None
    return {"samlearn_file": str(Path(samlearn.__file__).resolve()),
            "samlearn_version": getattr(samlearn, "__version__", None),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_cpu_capability": capability, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "SimpleITK": sitk.Version_VersionString()}


# ------------------------------------------------------------------------------- command line
def build_parser():
    """The command-line parser (sub-commands ``train`` and ``probe``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "probe"):
        p = sub.add_parser(name)
        p.add_argument("--checkout", required=True, type=Path,
                       help="root of the revision's checkout (samlearn must be imported from it)")
        p.add_argument("--data", required=True, type=Path, help="the shared data folder")
        p.add_argument("--seed", type=int, default=0, help="training seed / warp seed (default 0)")
    tr = sub.choices["train"]
    tr.add_argument("--kind", choices=sorted(PRESETS), required=True)
    tr.add_argument("--out", required=True, type=Path, help="model file to write")
    tr.add_argument("--minutes", type=float, required=True, help="training time budget")
    pr = sub.choices["probe"]
    pr.add_argument("--ceph-model", type=Path, required=True)
    pr.add_argument("--ct-model", type=Path, required=True)
    pr.add_argument("--ct-cases", default="", help="comma-separated CT case names ('' for none)")
    pr.add_argument("--out", required=True, type=Path,
                    help="the .npz to write (and a .json beside it)")
    return parser


def main(argv=None):
    """Entry point: ``python benchmarks/behaviour/probe.py {train,probe} ...``."""
    args = build_parser().parse_args(argv)
    single_thread()
    samlearn = check_checkout(args.checkout)
    t0 = time.perf_counter()
    if args.command == "train":
        info = train(samlearn, args.kind, args.data, args.out, args.minutes, args.seed)
        info.update(environment(samlearn), wall_s=time.perf_counter() - t0)
        args.out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
        return 0

    recorder = Recorder()
    probe_landmarks(samlearn, args.ceph_model, args.data, recorder)
    cases = [c for c in args.ct_cases.split(",") if c]
    probe_registration(samlearn, args.ct_model, args.data, cases, args.seed, recorder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **recorder.arrays)
    meta = dict(environment(samlearn), wall_s=time.perf_counter() - t0, seconds=recorder.seconds,
                errors=recorder.errors, ct_cases=cases, detector_configs=DETECTOR_CONFIGS)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
