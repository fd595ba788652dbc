"""Real CT volumes from ../shared/data/ct (skipped when absent): reading and 2 mm resampling keep
organ and tumour centroids in place."""
import numpy as np
import pytest

from samlearn import Image, read_image

pytestmark = pytest.mark.realdata


def _centroid(img: Image, mask: np.ndarray) -> np.ndarray:
    w = mask.astype(np.float64)
    idx = np.stack(np.nonzero(w > 0), -1)
    c_arr = (idx * w[w > 0][:, None]).sum(0) / w[w > 0].sum()
    return img.array_index_to_world(c_arr)


CASES = [
    ("lung1_image.nii.gz", "lung1_label.nii.gz"),
    ("lung2_image.nii.gz", "lung2_label.nii.gz"),
    ("totalseg_abdomen_ct.nii.gz", "totalseg_abdomen_seg.nii.gz"),
    ("totalseg_chest_ct.nii.gz", "totalseg_chest_aorta.nii.gz"),
    ("chest_ct_popi00.nii.gz", None),
]


@pytest.mark.parametrize("image_name, label_name", CASES)
def test_centroid_survives_2mm_resampling(ct_dir, image_name, label_name):
    img = read_image(ct_dir / image_name)
    assert img.ndim == 3 and np.isfinite(img.array).all()
    if label_name is not None:
        lab = read_image(ct_dir / label_name)
        assert lab.geometry.allclose(img.geometry, atol=1e-3)
        structure = lab.with_array((lab.array > 0).astype(np.float32))
    else:  # no label: the bony skeleton (> 300 HU) as a reference structure
        structure = img.with_array((img.array > 300).astype(np.float32))
    before = _centroid(structure, structure.array)
    res = structure.resample_to_spacing(2.0, default_value=0.0)
    np.testing.assert_allclose(res.spacing, 2.0, rtol=0.05)
    after = _centroid(res, res.array)
    assert np.linalg.norm(after - before) < 1.0, (before, after)  # half a 2 mm voxel
    # the image itself resamples onto the same grid, HU range kept
    ct2 = img.resample_to_spacing(2.0)
    assert ct2.geometry.allclose(res.geometry)
    assert ct2.array.min() >= img.array.min() - 1 and ct2.array.max() <= img.array.max() + 1
