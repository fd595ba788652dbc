"""Registration peers (benchmarks/registration/peers.py): every method carries template (fixed)
points to the right place in a query (moving) image related by a known affine, in 2D and 3D, with
anisotropic spacing, non-zero origins and rotated directions. Skipped unless the ``bench`` extra
is installed (antspyx, itk-elastix); run in the bench environment, from the repository root::

    python -m pytest -q benchmarks/registration/test_peers.py
"""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.linalg import expm

from samlearn import Image, ImageGeometry
from samlearn.datasets.synthetic import random_direction as random_rotation

pytest.importorskip("ants")
pytest.importorskip("itk")
from benchmarks.registration import peers  # noqa: E402


def _phantom(geom: ImageGeometry, rng) -> Image:
    """Smooth, asymmetric sum of Gaussian blobs defined in world coordinates."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geom.shape], indexing="ij"), -1).reshape(-1, geom.ndim)
    w = geom.array_index_to_world(idx.astype(float))
    lo, hi = w.min(0), w.max(0)
    val = np.zeros(len(w))
    for _ in range(14):
        c = lo + (hi - lo) * rng.uniform(0.2, 0.8, geom.ndim)
        s = (hi - lo).min() * rng.uniform(0.05, 0.14)
        val += rng.uniform(0.5, 1.5) * np.exp(-((w - c) ** 2).sum(1) / (2 * s * s))
    return Image(val.reshape(geom.shape).astype(np.float32), geom)


def _known_affine_pair(ndim: int, seed: int = 0):
    """fixed, moving, template points, and where they truly are in moving: q = A p + t."""
    rng = np.random.default_rng(seed)
    size = (90, 80) if ndim == 2 else (44, 40, 36)
    spacing = (1.1, 0.9) if ndim == 2 else (1.2, 1.0, 1.5)
    fg = ImageGeometry(size, spacing, origin=rng.uniform(-40, 40, ndim),
                       direction=random_rotation(rng, ndim, allow_reflection=False))
    fixed = _phantom(fg, rng)
    skew = rng.normal(size=(ndim, ndim))
    skew = (skew - skew.T) / 2
    rot = expm(skew / np.linalg.norm(skew) * np.deg2rad(9))
    A = rot @ np.diag(rng.uniform(0.94, 1.06, ndim))
    center = fg.index_to_world((np.asarray(size) - 1) / 2)
    shift = rng.normal(size=ndim)
    t = center - A @ center + 8.0 * shift / np.linalg.norm(shift)
    mg = ImageGeometry(size, np.asarray(spacing) * 1.05, origin=fg.origin + 3.0, direction=fg.direction)
    Ai = np.linalg.inv(A)
    pull = sitk.AffineTransform(ndim)  # moving grid point q -> fixed point A^-1 (q - t)
    pull.SetMatrix(Ai.ravel().tolist())
    pull.SetTranslation((-Ai @ t).tolist())
    ref = Image(np.zeros(mg.shape, np.float32), mg).to_sitk()
    moving = Image(sitk.GetArrayFromImage(sitk.Resample(fixed.to_sitk(), ref, pull, sitk.sitkLinear, 0.0)), mg)
    pts = fg.array_index_to_world(rng.uniform(0.3, 0.7, size=(10, ndim)) * (np.asarray(fg.shape) - 1))
    return fixed, moving, pts, pts @ A.T + t


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    peers.configure_threads(1)


# The phantom is a few blobs on an empty background: a B-spline grid much finer than the blobs'
# spacing drifts in the empty space (10 mm: up to 3 mm mean error here), so the test uses a 30 mm
# grid; in 3D also fewer levels and iterations (the default schedule takes ~70 s on 2 cores).
OPTIONS = {(2, "elastix-bspline"): {"bspline_grid_spacing": 30.0},
           (3, "elastix-bspline"): {"bspline_grid_spacing": 30.0,
                                    "parameters": {"NumberOfResolutions": 2, "MaximumNumberOfIterations": 60,
                                                   "GridSpacingSchedule": [2, 1]}}}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("method", peers.METHODS)
def test_peer_recovers_known_affine(method, ndim):
    fixed, moving, pts, true = _known_affine_pair(ndim)
    before = np.linalg.norm(pts - true, axis=1).mean()
    assert before > 6.0  # points move by several mm: a swapped direction could not pass below
    options = OPTIONS.get((ndim, method))
    res = peers.map_points(fixed, moving, pts, method, threads=1, options=options)
    assert res.method == method and res.points.shape == pts.shape and res.seconds > 0
    err = np.linalg.norm(res.points - true, axis=1)
    assert err.mean() < 1.0 and err.max() < 2.0, (method, ndim, err.round(2))


@pytest.mark.slow
def test_elastix_bspline_default_schedule_3d():
    fixed, moving, pts, true = _known_affine_pair(3, seed=1)
    res = peers.map_points(fixed, moving, pts, "elastix-bspline", options={"bspline_grid_spacing": 30.0})
    assert np.linalg.norm(res.points - true, axis=1).mean() < 1.0


def test_swapping_roles_maps_back():
    """Registering the other way round carries the query points back onto the template points."""
    fixed, moving, pts, true = _known_affine_pair(2, seed=2)
    back = peers.map_points(moving, fixed, true, "ants-affine").points
    assert np.linalg.norm(back - pts, axis=1).mean() < 1.0


def test_map_points_validates_input():
    fixed, moving, pts, _ = _known_affine_pair(2)
    with pytest.raises(ValueError, match="method must be one of"):
        peers.map_points(fixed, moving, pts, "voxelmorph")
    with pytest.raises(TypeError, match="fixed must be a samlearn Image"):
        peers.map_points(fixed.array, moving, pts, "ants-affine")
    with pytest.raises(ValueError, match="points_world must have shape"):
        peers.map_points(fixed, moving, np.zeros((3, 3)), "ants-affine")
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        peers.map_points(fixed, moving, pts, "sitk-affine", threads=0)
    vol = Image.from_array(np.zeros((4, 5, 6), np.float32))
    with pytest.raises(ValueError, match="fixed is 2D but moving is 3D"):
        peers.map_points(fixed, vol, pts, "ants-affine")
