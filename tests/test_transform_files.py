"""Transform files: samlearn transforms written to ITK transform files and displacement-field
images map points exactly as samlearn does once SimpleITK reads them back (fixed -> moving, as
``sitk.Resample`` uses them), and read back into samlearn transforms."""
import os
import stat
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from samlearn import ImageGeometry
from samlearn.exceptions import InvalidParameterError
from samlearn.transforms import AffineTransform, CompositeTransform, DisplacementField, read_transform, write_transform


def _geometry(ndim, seed=0):
    """A grid with non-unit spacing, a far origin and a rotated, flipped direction."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    direction = q @ np.diag([1.0] * (ndim - 1) + [-1.0]) if np.linalg.det(q) > 0 else q
    size = (13, 11, 9)[:ndim]
    spacing = (2.5, 3.5, 4.0)[:ndim]
    return ImageGeometry(size, spacing, rng.uniform(-120, 120, ndim), direction)


def _field(ndim, seed=0, amp=4.0):
    geom = _geometry(ndim, seed)
    rng = np.random.default_rng(seed + 1)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geom.shape], indexing="ij"), -1)
    w = geom.array_index_to_world(idx.reshape(-1, ndim))
    k = rng.normal(0, 1 / 25.0, (ndim, ndim))
    u = amp * np.sin(w @ k.T + rng.uniform(0, 6, ndim))
    return DisplacementField(u.reshape(geom.shape + (ndim,)), geom)


def _affine(ndim, seed=0):
    rng = np.random.default_rng(seed)
    a = np.eye(ndim) * 1.07 + rng.normal(0, 0.08, (ndim, ndim))
    return AffineTransform.from_linear(a, rng.uniform(-20, 20, ndim))


def _points(geom, n=400, seed=3):
    """Points inside the field's domain (continuous indices between the outer voxel centres)."""
    rng = np.random.default_rng(seed)
    return geom.index_to_world(rng.uniform(0, np.asarray(geom.size) - 1, (n, geom.ndim)))


def _sitk_map(tx, pts):
    return np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in pts])


# ---------------------------------------------------------------------------- affine
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".mat", ".h5", ".hdf5"])
def test_affine_files(tmp_path, ndim, suffix):
    aff = _affine(ndim)
    path = tmp_path / f"a{suffix}"
    assert aff.save(path) == path
    pts = np.random.default_rng(1).uniform(-100, 100, (200, ndim))
    np.testing.assert_allclose(_sitk_map(sitk.ReadTransform(str(path)), pts), aff.transform_points(pts),
                               atol=1e-6)
    back = read_transform(path)
    assert isinstance(back, AffineTransform)
    np.testing.assert_allclose(back.matrix, aff.matrix, atol=1e-12)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left


# ---------------------------------------------------------------------------- displacement field
@pytest.mark.parametrize("ndim", [2, 3])
def test_field_as_hdf5_transform(tmp_path, ndim):
    fld = _field(ndim)
    path = write_transform(fld, tmp_path / "f.h5")
    tx = sitk.ReadTransform(str(path))
    assert tx.Downcast().GetName() == "DisplacementFieldTransform"
    pts = _points(fld.geometry)
    assert np.abs(fld.displacement_at(pts)).max() > 1.0  # a real deformation
    np.testing.assert_allclose(_sitk_map(tx, pts), fld.transform_points(pts), atol=1e-4)
    back = read_transform(path)
    assert isinstance(back, DisplacementField) and back.geometry.allclose(fld.geometry, atol=1e-9)
    np.testing.assert_allclose(back.displacements, fld.displacements, atol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_field_as_vector_image(tmp_path, ndim, suffix):
    fld = _field(ndim, seed=ndim)
    path = fld.save(tmp_path / f"warp{suffix}")
    img = sitk.ReadImage(str(path))
    assert img.GetNumberOfComponentsPerPixel() == ndim and img.GetSize() == fld.geometry.size
    tx = sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))
    pts = _points(fld.geometry)
    np.testing.assert_allclose(_sitk_map(tx, pts), fld.transform_points(pts), atol=1e-4)
    back = read_transform(path)
    np.testing.assert_allclose(back.transform_points(pts), fld.transform_points(pts), atol=1e-4)


def test_nifti_field_holds_lps_vectors_like_itk_and_ants(tmp_path):
    """On disk: NIfTI vector intent, float64, the first voxel's vector in LPS (not negated to RAS),
    while the header's origin is RAS as NIfTI wants."""
    fld = _field(3, seed=5)
    path = fld.save(tmp_path / "warp.nii")
    raw = path.read_bytes()
    dims = struct.unpack("<8h", raw[40:56])
    intent, datatype = struct.unpack("<hh", raw[68:72])
    offset = int(struct.unpack("<f", raw[108:112])[0])
    assert dims[:6] == (5, *fld.geometry.size, 1, 3) and intent == 1007 and datatype == 64
    data = np.frombuffer(raw[offset:], dtype="<f8")
    n = int(np.prod(fld.geometry.size))
    first = data[[0, n, 2 * n]]  # components are the slowest axis
    np.testing.assert_allclose(first, fld.displacements[0, 0, 0], atol=1e-12)
    qoffset = struct.unpack("<3f", raw[268:280])
    np.testing.assert_allclose(qoffset, fld.geometry.origin * [-1, -1, 1], atol=1e-3)


# ---------------------------------------------------------------------------- composite
@pytest.mark.parametrize("ndim", [2, 3])
def test_composite_field_then_affine(tmp_path, ndim):
    """The chain SAMDeformableRegistrar.transform_ holds: a fixed point x goes to A (x + u(x)) + t."""
    fld, aff = _field(ndim, seed=2), _affine(ndim, seed=2)
    comp = CompositeTransform([fld, aff])
    path = comp.save(tmp_path / "deformable.h5")
    tx = sitk.ReadTransform(str(path)).Downcast()
    assert tx.GetName() == "CompositeTransform" and tx.GetNumberOfTransforms() == 2
    pts = _points(fld.geometry)
    expected = aff.transform_points(fld.transform_points(pts))
    np.testing.assert_allclose(comp.transform_points(pts), expected)
    np.testing.assert_allclose(_sitk_map(tx, pts), expected, atol=1e-4)
    back = read_transform(path)
    assert [type(t) for t in back.transforms] == [DisplacementField, AffineTransform]
    np.testing.assert_allclose(back.transform_points(pts), expected, atol=1e-6)


def test_nested_composites_are_flattened(tmp_path):
    f1, f2, aff = _field(3, seed=1, amp=2.0), _field(3, seed=1, amp=1.0), _affine(3, seed=4)
    comp = CompositeTransform([f2, CompositeTransform([f1, aff])])  # as n_coarse_passes > 1 builds
    path = comp.save(tmp_path / "c.hdf5")
    tx = sitk.ReadTransform(str(path)).Downcast()
    assert tx.GetNumberOfTransforms() == 3
    pts = _points(f1.geometry)
    np.testing.assert_allclose(_sitk_map(tx, pts), comp.transform_points(pts), atol=1e-4)


def test_resampling_with_the_file_equals_samlearn_resampling(tmp_path):
    """sitk.Resample with the transform read from the file pulls the moving image onto the fixed
    grid exactly as samlearn's resample does (same direction convention)."""
    fld, aff = _field(3, seed=6), _affine(3, seed=6)
    comp = CompositeTransform([fld, aff])
    fixed_geom = fld.geometry
    rng = np.random.default_rng(0)
    moving = sitk.GetImageFromArray(rng.normal(size=(30, 32, 34)).astype(np.float32))
    moving.SetSpacing((4.0, 4.0, 4.0))
    corners = comp.transform_points(fixed_geom.corners_world())
    moving.SetOrigin(tuple(corners.min(0) - 10))
    ref = fixed_geom.apply_to_sitk(sitk.Image(fixed_geom.size, sitk.sitkFloat32))
    tx = sitk.ReadTransform(str(comp.save(tmp_path / "c.h5")))
    ours = comp.resample(moving, reference=fixed_geom, default_value=0.0).array
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, ref, tx, sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# ---------------------------------------------------------------------------- errors and files
def test_wrong_suffixes_and_arguments(tmp_path):
    with pytest.raises(InvalidParameterError, match=r"a.nii.gz'.*\.h5, \.hdf5, \.tfm, \.txt, \.mat"):
        _affine(3).save(tmp_path / "a.nii.gz")
    with pytest.raises(InvalidParameterError, match=r"CompositeTransform to '.*c.tfm'.*\.h5, \.hdf5"):
        CompositeTransform([_affine(3)]).save(tmp_path / "c.tfm")
    with pytest.raises(InvalidParameterError, match=r"\.nii\.gz, \.nii, \.nrrd, \.mha"):
        _field(2).save(tmp_path / "f.mhd")  # a detached header would lose its data file
    with pytest.raises(TypeError, match="samlearn transform"):
        write_transform(sitk.AffineTransform(3), tmp_path / "a.h5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _affine(3).save(tmp_path / "no" / "a.h5")
    with pytest.raises(FileNotFoundError, match="nothere.h5"):
        read_transform(tmp_path / "nothere.h5")
    with pytest.raises(InvalidParameterError, match="not a transform file"):
        read_transform(tmp_path / "a.json")
    bsp = sitk.BSplineTransformInitializer(sitk.Image(8, 8, sitk.sitkFloat32), [2, 2])
    sitk.WriteTransform(bsp, str(tmp_path / "b.tfm"))
    with pytest.raises(ValueError, match="BSplineTransform"):
        read_transform(tmp_path / "b.tfm")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="bad.h5' cannot be read"):
        read_transform(tmp_path / "bad.h5")
    assert sorted(os.listdir(tmp_path)) == ["b.tfm", "bad.h5"]


@pytest.mark.parametrize("suffix", [".h5", ".nii.gz"])
def test_written_files_follow_the_umask(tmp_path, suffix):
    old = os.umask(0o022)
    try:
        path = _field(2).save(tmp_path / f"f{suffix}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
