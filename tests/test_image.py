"""Geometry, I/O, resampling and input checking of samlearn.image."""

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings, strategies as st

from samlearn import Image, ImageGeometry, check_images, check_points, normalize_intensity, read_image
from helpers import random_rotation

# ----------------------------------------------------------------------------- strategies


@st.composite
def geometries(draw, ndim=None):
    ndim = ndim or draw(st.sampled_from([2, 3]))
    size = draw(st.lists(st.integers(4, 40), min_size=ndim, max_size=ndim))
    spacing = draw(st.lists(st.floats(0.1, 5.0), min_size=ndim, max_size=ndim))
    origin = draw(st.lists(st.floats(-500, 500), min_size=ndim, max_size=ndim))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    direction = random_rotation(rng, ndim, allow_reflection=True)
    return ImageGeometry(size, spacing, origin, direction)


# ----------------------------------------------------------------------------- world <-> index


@settings(max_examples=200, deadline=None)
@given(geom=geometries(), data=st.data())
def test_world_index_round_trip(geom, data):
    n = data.draw(st.integers(1, 20))
    seed = data.draw(st.integers(0, 2**32 - 1))
    pts = np.random.default_rng(seed).uniform(-1000, 1000, size=(n, geom.ndim))
    back = geom.index_to_world(geom.world_to_index(pts))
    assert np.abs(back - pts).max() < 1e-6
    idx = np.random.default_rng(seed + 1).uniform(-50, 50, size=(n, geom.ndim))
    assert np.abs(geom.world_to_index(geom.index_to_world(idx)) - idx).max() < 1e-6
    # array order is the reverse of index order, both ways
    aidx = geom.world_to_array_index(pts)
    np.testing.assert_allclose(aidx, geom.world_to_index(pts)[:, ::-1])
    assert np.abs(geom.array_index_to_world(aidx) - pts).max() < 1e-6


@settings(max_examples=60, deadline=None)
@given(geom=geometries(), seed=st.integers(0, 2**32 - 1))
def test_matches_simpleitk_both_ways(geom, seed):
    img = Image(np.zeros(geom.shape, np.float32), geom)
    s = img.to_sitk()
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-300, 300, size=(5, geom.ndim))
    ours = geom.world_to_index(pts)
    ref = np.array([s.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in pts])
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    idx = rng.uniform(-5, 45, size=(5, geom.ndim))
    ref_w = np.array([s.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in idx])
    np.testing.assert_allclose(geom.index_to_world(idx), ref_w, atol=1e-6)
    # and the geometry survives the trip through SimpleITK
    assert ImageGeometry.from_sitk(s).allclose(geom, atol=1e-9)


def test_array_order_is_zyx():
    arr = np.zeros((5, 6, 7), np.float32)  # z, y, x
    arr[1, 2, 3] = 1.0
    img = Image.from_array(arr, spacing=(0.5, 2.0, 3.0), origin=(10, 20, 30))
    assert img.size == (7, 6, 5)
    world = img.index_to_world([3, 2, 1])  # x, y, z index
    np.testing.assert_allclose(world, [10 + 1.5, 20 + 4.0, 30 + 3.0])
    np.testing.assert_allclose(img.world_to_array_index(world), [1, 2, 3])
    assert img.sample(world, order=0)[0] == 1.0
    s = img.to_sitk()
    assert s.GetPixel(3, 2, 1) == 1.0  # SimpleITK indexes x, y, z


def test_single_point_shapes_and_contains():
    g = ImageGeometry((10, 20), spacing=(2, 1), origin=(-5, 3))
    assert g.world_to_index([-5, 3]).shape == (2,)
    np.testing.assert_allclose(g.world_to_index([-5, 3]), [0, 0])
    assert g.contains([[-5, 3], [-7, 3], [13.9, 22.4], [100, 0]]).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="points"):
        g.world_to_index(np.zeros((4, 3)))


# ----------------------------------------------------------------------------- resampling


def _blob_image(ndim, spacing, origin, direction, centre_idx, shape_xyz):
    arr = np.zeros(tuple(reversed(shape_xyz)), np.float32)
    arr[tuple(reversed(centre_idx))] = 1000.0
    return Image.from_array(arr, spacing=spacing, origin=origin, direction=direction)


def _weighted_centroid(img: Image):
    w = np.clip(img.array, 0, None).astype(np.float64)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in img.shape], indexing="ij"), -1).reshape(-1, img.ndim)
    c_arr = (idx * w.reshape(-1, 1)).sum(0) / w.sum()
    return img.array_index_to_world(c_arr)


@settings(max_examples=25, deadline=None)
@given(ndim=st.sampled_from([2, 3]), seed=st.integers(0, 2**32 - 1))
def test_resampling_keeps_a_bright_voxel_in_place(ndim, seed):
    rng = np.random.default_rng(seed)
    shape = rng.integers(14, 24, size=ndim)
    spacing = rng.uniform(0.4, 1.6, size=ndim)
    origin = rng.uniform(-200, 200, size=ndim)
    direction = random_rotation(rng, ndim)
    centre = rng.integers(5, shape - 5)
    img = _blob_image(ndim, spacing, origin, direction, centre, shape)
    truth = img.index_to_world(centre)

    for out in (img.resample_to_spacing(rng.uniform(0.9, 2.2, size=ndim)),
                img.resize(rng.integers(10, 30, size=ndim))):
        tol = 0.5 * out.spacing.max()
        c = _weighted_centroid(out)
        assert np.linalg.norm(c - truth) < tol, (c, truth, out.spacing)
        peak = np.array(np.unravel_index(np.argmax(out.array), out.shape))
        assert np.linalg.norm(out.array_index_to_world(peak) - truth) <= np.linalg.norm(out.spacing) * 0.75 + 1e-9
        # The physical field of view is kept.
        np.testing.assert_allclose(np.sort(out.geometry.corners_world(), 0),
                                   np.sort(img.geometry.corners_world(), 0), atol=np.max(out.spacing))


def test_resize_keeps_extent_exactly():
    img = Image.from_array(np.random.default_rng(0).random((835, 670)), spacing=(0.1, 0.1), origin=(5, -7))
    out = img.resize((512, 512))
    assert out.shape == (512, 512)
    np.testing.assert_allclose(out.geometry.corners_world(), img.geometry.corners_world(), atol=1e-9)
    np.testing.assert_allclose(out.spacing, [67.0 / 512, 83.5 / 512])


def test_resample_nearest_and_default_value():
    img = Image.from_array(np.full((4, 4), 5.0), spacing=1.0)
    target = ImageGeometry((8, 8), spacing=1.0, origin=(-2, -2))
    out = img.resample_to_geometry(target, interpolator="nearest", default_value=-1)
    assert out.array[0, 0] == -1 and out.array[3, 3] == 5.0
    with pytest.raises(ValueError, match="interpolator"):
        img.resample_to_geometry(target, interpolator="cubic")
    with pytest.raises(ValueError, match="geometry is 3D"):
        img.resample_to_geometry(ImageGeometry((2, 2, 2)))


def test_strided_geometry_matches_interpolate_convention():
    g = ImageGeometry((16, 12), spacing=(0.5, 2.0), origin=(3, 4), direction=[[0, 1], [1, 0]])
    f = g.strided(4)
    assert f.size == (4, 3)
    # feature voxel 0 sits at the centre of input voxels 0..3, i.e. input index 1.5
    np.testing.assert_allclose(f.index_to_world([0, 0]), g.index_to_world([1.5, 1.5]))
    np.testing.assert_allclose(f.index_to_world([1, 2]), g.index_to_world([5.5, 9.5]))


# ----------------------------------------------------------------------------- I/O


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_file_round_trip_keeps_geometry(tmp_path, suffix):
    rng = np.random.default_rng(1)
    direction = random_rotation(rng, 3)
    img = Image.from_array(rng.normal(size=(5, 6, 7)).astype(np.float32), spacing=(0.7, 1.3, 2.5),
                           origin=(-12.5, 40, 3), direction=direction)
    path = tmp_path / f"x{suffix}"
    img.save(path)
    back = read_image(path)
    assert back.geometry.allclose(img.geometry, atol=1e-5)
    np.testing.assert_allclose(back.array, img.array, atol=1e-6)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_png_and_rgb(tmp_path):
    arr = (np.arange(30 * 20).reshape(30, 20) % 256).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "g.png"))
    g = Image.from_file(tmp_path / "g.png")
    assert g.ndim == 2 and g.shape == (30, 20)
    np.testing.assert_array_equal(g.array, arr)
    rgb = np.stack([arr, arr, arr], -1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    c = Image.from_file(tmp_path / "c.png")
    assert c.ndim == 2
    np.testing.assert_allclose(c.array, arr, atol=0.01)


def test_dicom_series_folder(tmp_path):
    rng = np.random.default_rng(2)
    vol = (rng.random((4, 8, 9)) * 1000).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for z in range(vol.shape[0]):
        sl = img[:, :, z]
        pos = img.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, val in [("0020|000e", series_uid), ("0020|0032", "\\".join(f"{p:.4f}" for p in pos)),
                         ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(z)),
                         ("0008|0060", "CT"), ("0028|0030", "0.9\\0.8"), ("0018|0050", "2.5")]:
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(tmp_path / f"s{z:03d}.dcm"))
        writer.Execute(sl)
    back = Image.from_file(tmp_path)
    assert back.ndim == 3 and back.shape == (4, 8, 9)
    np.testing.assert_allclose(back.origin, [10, -20, 30], atol=1e-3)
    np.testing.assert_allclose(back.spacing, [0.8, 0.9, 2.5], atol=1e-3)
    np.testing.assert_allclose(back.array, vol, atol=1e-3)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("array, exc, match", [
    (np.zeros((0, 5)), ValueError, "empty"),
    (np.array([[1.0, np.nan], [0, 0]]), ValueError, "NaN"),
    (np.array([[1.0, np.inf], [0, 0]]), ValueError, "NaN or infinite"),
    (np.zeros(5), ValueError, "got 1D"),
    (np.zeros((2, 2, 2, 2)), ValueError, "got 4D"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "numbers"),
])
def test_bad_arrays(array, exc, match):
    with pytest.raises(exc, match=match):
        Image.from_array(array)


@pytest.mark.parametrize("kwargs, match", [
    (dict(spacing=0.0), "spacing must be positive"),
    (dict(spacing=(1.0, -2.0)), "spacing must be positive"),
    (dict(spacing=(1.0, np.nan)), "spacing must be finite"),
    (dict(spacing=(1.0, 1.0, 1.0)), "spacing must have 2 values"),
    (dict(direction=[[1, 0.2], [0, 1]]), "direction must be orthonormal"),
    (dict(direction=np.eye(3)), "direction must be a 2x2"),
    (dict(origin=(np.inf, 0)), "origin must be finite"),
])
def test_bad_geometry(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Image.from_array(np.zeros((3, 4)), **kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError, match="could not read image file"):
        read_image(junk)
    img = Image.from_array(np.zeros((4, 5, 6), np.float32))
    good = tmp_path / "t.nrrd"
    img.save(good)
    trunc = tmp_path / "trunc.nrrd"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match="could not read image file"):
        read_image(trunc)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no DICOM series"):
        read_image(empty_dir)


def test_check_images():
    a = Image.from_array(np.zeros((4, 4)))
    b = Image.from_array(np.zeros((4, 4, 4)))
    out = check_images(a)
    assert out == [a]
    assert check_images(out) == out and check_images(out)[0] is a  # idempotent
    assert check_images([a.to_sitk()])[0].geometry == a.geometry
    with pytest.raises(ValueError, match="mixes 2D and 3D.*images\\[0\\] is 2D, images\\[1\\] is 3D"):
        check_images([a, b])
    with pytest.raises(ValueError, match="empty"):
        check_images([])
    with pytest.raises(TypeError, match="numpy array"):
        check_images(np.zeros((4, 4)))
    with pytest.raises(TypeError, match=r"images\[1\]"):
        check_images([a, 3])
    with pytest.raises(ValueError, match="must be 3D"):
        check_images(a, ndim=3)
    with pytest.raises(FileNotFoundError):
        check_images(["/nonexistent/x.nii.gz"])


def test_check_points():
    np.testing.assert_array_equal(check_points([1, 2, 3], 3), [[1, 2, 3]])
    with pytest.raises(ValueError, match="template_points must have shape"):
        check_points(np.zeros((2, 2)), 3, name="template_points")
    with pytest.raises(ValueError, match="non-finite"):
        check_points([[1, np.nan]], 2)
    assert np.isnan(check_points([[1, np.nan]], 2, allow_nan=True)).any()


def test_normalize_presets():
    ct = Image.from_array(np.array([[-3000, -1024, 0], [1024, 2048, 5000]], np.float32))
    np.testing.assert_allclose(normalize_intensity(ct, "ct").array, [[-1, -1, 0], [1, 2, 2]])
    xr = Image.from_array(np.linspace(0, 255, 1000).reshape(25, 40))
    out = normalize_intensity(xr, "xray").array
    assert out.min() >= -1.5 and out.max() <= 1.5
    assert abs(np.median(out)) < 0.05
    with pytest.raises(ValueError, match="constant"):
        normalize_intensity(Image.from_array(np.ones((4, 4))), "xray")
    with pytest.raises(ValueError, match="preset"):
        normalize_intensity(xr, "mri")


def test_pickle_round_trip():
    import pickle
    img = Image.from_array(np.ones((3, 4, 5)), spacing=(1, 2, 3), direction=random_rotation(np.random.default_rng(3), 3))
    back = pickle.loads(pickle.dumps(img))
    assert back.geometry == img.geometry
    np.testing.assert_array_equal(back.array, img.array)


@settings(max_examples=30, deadline=None)
@given(geom=geometries())
def test_canonical_grid_covers_the_image_with_identity_direction(geom):
    c = geom.canonical(spacing=1.7)
    np.testing.assert_allclose(c.direction, np.eye(geom.ndim))
    corners = geom.corners_world()
    lo, hi = c.corners_world().min(0), c.corners_world().max(0)
    assert np.all(lo <= corners.min(0) + 0.86) and np.all(hi >= corners.max(0) - 0.86)
    s = geom.canonical(size=(8,) * geom.ndim)
    np.testing.assert_allclose(s.corners_world().min(0), corners.min(0), atol=1e-9)
    np.testing.assert_allclose(s.corners_world().max(0), corners.max(0), atol=1e-9)
    with pytest.raises(ValueError, match="exactly one"):
        geom.canonical()


def test_canonical_resampling_unflips_a_mirrored_image():
    arr = np.zeros((6, 8), np.float32)
    arr[1, 2] = 1.0
    flipped = Image.from_array(arr, spacing=(1.0, 1.0), origin=(7, 5), direction=[[-1, 0], [0, -1]])
    world = flipped.index_to_world([2, 1])
    can = flipped.resample_to_geometry(flipped.geometry.canonical(spacing=1.0), antialias=False)
    peak = np.unravel_index(np.argmax(can.array), can.shape)
    np.testing.assert_allclose(can.array_index_to_world(peak), world, atol=1e-9)
