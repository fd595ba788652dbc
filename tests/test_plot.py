"""samlearn.plot: figures are drawn in world mm, whatever the images' spacing, origin and direction."""
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from helpers import tiny_embedder  # noqa: E402

from samlearn import Image  # noqa: E402
from samlearn import plot as splot  # noqa: E402

# a permuted, mirrored direction: index axes point along world -y, z, -x
DIRECTION = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def blob_image(centre, shape=(30, 36, 40), spacing=(1.5, 2.0, 3.0), origin=(33.5, 34.25, 45.0),
               direction=DIRECTION, width=4.0):
    """A bright Gaussian blob at world point ``centre`` on a grid with the given geometry (by
    default the grid spans x -55..35, y -25..35, z 44..116 mm)."""
    geom_img = Image.from_array(np.zeros(shape, np.float32), spacing=spacing, origin=origin,
                                direction=direction)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = geom_img.geometry.array_index_to_world(idx.astype(float))
    d2 = np.sum((world - np.asarray(centre)) ** 2, axis=1)
    arr = (1000.0 * np.exp(-d2 / (2 * width ** 2))).reshape(shape).astype(np.float32)
    return geom_img.with_array(arr)


def displayed_peak(ax, k=0):
    """World (horizontal, vertical) position of the brightest displayed pixel of image k of ax."""
    im = ax.images[k]
    a = np.asarray(im.get_array(), dtype=float)
    left, right, bottom, top = im.get_extent()
    r, c = np.unravel_index(np.nanargmax(a), a.shape)
    h = left + (c + 0.5) * (right - left) / a.shape[1]
    if im.origin == "upper":   # row 0 at the top
        v = top + (r + 0.5) * (bottom - top) / a.shape[0]
    else:
        v = bottom + (r + 0.5) * (top - bottom) / a.shape[0]
    return np.array([h, v])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("view, axes", [("axial", (0, 1)), ("coronal", (0, 2)), ("sagittal", (1, 2))])
def test_views_are_in_world_mm(view, axes):
    img = blob_image(centre=(-10.0, 5.0, 80.0))
    centre = np.array([-10.0, 5.0, 80.0])
    const = ({0, 1, 2} - set(axes)).pop()
    ax = splot.plot_image(img, view=view, position_mm=centre[const])
    np.testing.assert_allclose(displayed_peak(ax), centre[list(axes)], atol=2.5)
    assert ax.get_xlabel().endswith("(mm)")


def test_axial_radiological_orientation():
    img = blob_image(centre=(-10.0, 5.0, 80.0))
    ax = splot.plot_image(img, view="axial", position_mm=80.0)
    left, right, bottom, top = ax.images[0].get_extent()
    assert left < right and top < bottom  # x to the right, anterior (small y) at the top


def test_2d_image_keeps_its_row_direction():
    arr = np.zeros((40, 50), np.float32)
    arr[5, 30] = 1000.0
    img = Image.from_array(arr, spacing=(0.5, 0.8), origin=(10.0, 20.0), direction=np.diag([1.0, -1.0]))
    true = img.geometry.array_index_to_world(np.array([5.0, 30.0]))
    ax = splot.plot_image(img)
    np.testing.assert_allclose(displayed_peak(ax), true, atol=0.9)
    # head-up radiograph (row index runs towards -y): larger y is displayed higher
    assert ax.images[0].origin == "lower"


def test_landmarks_true_and_predicted():
    img = blob_image(centre=(-10.0, 5.0, 80.0))
    true = np.array([[-10.0, 5.0, 80.0], [0.0, 0.0, 70.0], [np.nan, np.nan, np.nan]])
    pred = true + [[2.0, 0.0, 0.0], [0.0, 1.0, -3.0], [0.0, 0.0, 0.0]]
    ax = splot.plot_landmarks(img, true=true, predicted=pred, names=["a", "b", "c"], view="coronal")
    tl = next(line for line in ax.get_lines() if line.get_label() == "true")
    pl = next(line for line in ax.get_lines() if line.get_label() == "predicted")
    np.testing.assert_allclose(tl.get_xdata()[:2], true[:2, 0])
    np.testing.assert_allclose(tl.get_ydata()[:2], true[:2, 2])  # coronal: vertical axis is z
    np.testing.assert_allclose(pl.get_xdata()[:2], pred[:2, 0])
    with pytest.raises(ValueError, match="same shape"):
        splot.plot_landmarks(img, true=true, predicted=pred[:2])


def test_similarity_map_and_overlay():
    from samlearn.datasets import make_phantoms
    d = make_phantoms(2, spacing=(7.0, 7.0, 9.0), field_of_view="full", random_state=1)
    emb = tiny_embedder(3, random_state=0).fit(d.images)
    e = emb.transform([d.images[1]])[0]
    gv = e.global_map.vectors_at(d.landmarks[1][4:5])[0]
    lv = e.local_map.vectors_at(d.landmarks[1][4:5])[0]
    sim = splot.similarity_map(e, gv, lv)
    assert sim.geometry.allclose(e.local_map.geometry)
    assert np.nanmax(sim.array) <= 1.0001
    # the local map of the vector of one local voxel peaks (value 1) exactly at that voxel
    k0 = tuple(s // 2 for s in e.local_map.data.shape[1:])
    own = e.local_map.data[(slice(None),) + k0]
    loc = splot.similarity_map(e, None, own, mode="local")
    assert np.unravel_index(int(np.argmax(loc.array)), loc.shape) == k0
    assert abs(float(loc.array[k0]) - 1.0) < 1e-4
    ax = splot.plot_similarity(d.images[1], sim, point=d.landmarks[1][4], true=d.landmarks[1][4])
    assert len(ax.images) == 2
    with pytest.raises(ValueError, match="channels"):
        splot.similarity_map(e, gv[:3], lv)


def test_checkerboard_with_a_known_shift():
    centre = np.array([-10.0, 5.0, 80.0])
    shift = np.array([6.0, -4.0, 3.0])
    fixed = blob_image(centre, direction=np.eye(3), origin=(-40.0, -30.0, 40.0))
    moving = blob_image(centre + shift)   # other grid and direction, anatomy moved by +shift
    ax = splot.plot_checkerboard(fixed, moving, transform=lambda p: p + shift, view="axial",
                                 position_mm=centre[2], n_squares=4)
    board = np.asarray(ax.images[0].get_array(), float)
    ax_f = splot.plot_image(fixed, view="axial", position_mm=centre[2], window=(-400, 600))
    ref = np.asarray(ax_f.images[0].get_array(), float)
    assert board.shape == ref.shape
    inner = np.abs(ref) > 50  # around the blob, away from the moving image's borders
    np.testing.assert_allclose(board[inner], ref[inner], rtol=0.1, atol=30)
    # without the transform the squares from the moving image disagree
    ax2 = splot.plot_checkerboard(fixed, moving, view="axial", position_mm=centre[2], n_squares=4)
    wrong = np.asarray(ax2.images[0].get_array(), float)
    assert np.abs(wrong[inner] - ref[inner]).max() > 200


def test_checkerboard_accepts_sitk_transforms():
    import SimpleITK as sitk
    img = blob_image((-10.0, 5.0, 80.0))
    tx = sitk.TranslationTransform(3, (0.0, 0.0, 0.0))
    ax = splot.plot_checkerboard(img, img, transform=tx, view="coronal", position_mm=5.0)
    assert len(ax.images) == 1
    with pytest.raises(TypeError, match="transform"):
        splot.plot_checkerboard(img, img, transform=3)


def test_loss_curves():
    hist = [{"iteration": i + 1, "loss": 10 - 0.01 * i, "loss_global": 5.0, "loss_local": 5 - 0.01 * i,
             "time": 0.5 * i} for i in range(100)]
    ax = splot.plot_loss(hist)
    assert ax.get_xlabel() == "iteration"
    assert len(ax.get_lines()) == 6
    ax = splot.plot_loss(hist, x="time")
    assert "min" in ax.get_xlabel()
    with pytest.raises(ValueError, match="history"):
        splot.plot_loss([])


def test_bad_view_names_the_argument():
    img = blob_image((-10.0, 5.0, 80.0))
    with pytest.raises(ValueError, match="view must be one of"):
        splot.plot_image(img, view="frontal")


def test_missing_matplotlib_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"samlearn\[plot\]"):
        splot.plot_image(blob_image((-10.0, 5.0, 80.0)))
