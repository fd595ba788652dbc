"""LesionMatcher on an analytic embedder: lesions found inside their boxes under known transforms,
and reported not found when the follow-up's field of view misses them."""
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from samlearn import Image, ImageGeometry, LesionMatcher
from samlearn.metrics import points_in_boxes
from helpers import random_rotation
from fake_embedder import AnalyticEmbedder


def rot(ndim, theta):
    r = np.eye(ndim)
    r[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return r


class FollowUps:
    """A template with lesion boxes, follow-ups whose anatomy moved by known affines (a = A w + t),
    and a follow-up cropped so that lesion 0 lies outside its field of view."""

    def __init__(self, ndim, seed=0):
        rng = np.random.default_rng(seed)
        size = np.array((70, 60) if ndim == 2 else (40, 36, 30))
        sp = np.array((1.2, 1.0) if ndim == 2 else (2.0, 1.8, 2.5))
        self.ndim = ndim
        self.template = Image(np.zeros(size[::-1], np.float32),
                              ImageGeometry(size, sp, rng.uniform(-40, 40, ndim), random_rotation(rng, ndim)),
                              source="template")
        g = self.template.geometry
        centres = g.index_to_world(np.array([[0.25, 0.3, 0.5][:ndim], [0.6, 0.55, 0.4][:ndim],
                                             [0.75, 0.7, 0.6][:ndim]]) * (size - 1))
        half = np.array([4.0, 5.0, 6.0][:ndim])
        self.centres = centres
        self.boxes = np.hstack([centres - half, centres + half])
        self.frames, self.follow_ups, self.true_boxes = {}, [], []
        for q in range(3):
            a = rot(ndim, rng.uniform(-0.12, 0.12)) * rng.uniform(0.96, 1.04)
            t = rng.uniform(-6, 6, ndim)
            name = f"fu{q}"
            self.frames[name] = (a, t)
            d = random_rotation(rng, ndim)
            # a grid that covers the mapped template with a margin
            mapped = self.to_follow_up(g.corners_world(), a, t)
            lo, hi = mapped.min(0) - 8, mapped.max(0) + 8
            sp_q = sp * rng.uniform(0.9, 1.1, ndim)
            geom = ImageGeometry(tuple(int(v) for v in np.ceil((hi - lo) / sp_q.min())), sp_q.min(),
                                 lo, np.eye(ndim))
            self.follow_ups.append(Image(np.zeros(geom.shape, np.float32), geom, source=name))
            corners = self.box_corners()
            mc = self.to_follow_up(corners.reshape(-1, ndim), a, t).reshape(corners.shape)
            self.true_boxes.append(np.hstack([mc.min(1), mc.max(1)]))
        self.true_boxes = np.stack(self.true_boxes)
        self.true_centres = np.stack([self.to_follow_up(centres, *self.frames[f"fu{q}"]) for q in range(3)])
        self.cropped = self.crop(None)  # lesion 0 far outside, half-way to the next lesion
        self.cropped_near = self.crop(4.0)  # lesion 0 just (4 mm) outside the field of view
        self.embedder = AnalyticEmbedder(frames=self.frames, n_channels=64).fit([self.template])

    def crop(self, outside_mm):
        """Follow-up 0 cropped along one index axis so that lesion 0 lies outside it (by
        ``outside_mm``, or half-way to the nearest other lesion) and the other lesions inside."""
        ndim = self.ndim
        fu = self.follow_ups[0]
        idx = fu.geometry.world_to_index(self.true_centres[0])
        gaps = np.r_[idx[1:].min(0) - idx[0], idx[0] - idx[1:].max(0)]
        k = int(np.argmax(gaps))
        axis, below = k % ndim, k < ndim
        other = idx[1:, axis].min() if below else idx[1:, axis].max()
        if outside_mm is None:
            cut = (idx[0, axis] + other) / 2
        else:
            cut = idx[0, axis] + (1 if below else -1) * outside_mm / fu.spacing[axis]
        start = np.zeros(ndim, int)
        size_c = list(fu.geometry.size)
        if below:
            start[axis] = int(np.ceil(cut))
            size_c[axis] -= start[axis]
        else:
            size_c[axis] = int(np.floor(cut)) + 1
        origin = fu.geometry.index_to_world(start.astype(float))
        return Image(np.zeros(tuple(size_c)[::-1], np.float32),
                     ImageGeometry(size_c, fu.spacing, origin, fu.direction), source="fu0")

    @staticmethod
    def to_follow_up(world, a, t):
        return np.linalg.solve(a, (np.asarray(world) - t).T).T

    def box_corners(self):
        d = self.ndim
        lo, hi = self.boxes[:, :d], self.boxes[:, d:]
        sel = np.stack(np.meshgrid(*[[0, 1]] * d, indexing="ij"), -1).reshape(-1, d)
        return np.where(sel[None] == 1, hi[:, None], lo[:, None])  # (n, 2**d, d)


@pytest.fixture(scope="module", params=[2, 3])
def scene(request):
    return FollowUps(request.param, seed=request.param)


def test_lesions_found_inside_their_boxes(scene):
    m = LesionMatcher(embedder=scene.embedder)
    assert m.fit(scene.template, scene.boxes) is m
    np.testing.assert_allclose(m.centers_, scene.centres)
    pts, scores, found = m.predict(scene.follow_ups, return_scores=True)
    assert pts.shape == (3, 3, scene.ndim) and scores.shape == found.shape == (3, 3)
    assert found.all()
    assert points_in_boxes(pts, scene.true_boxes).all()
    err = np.linalg.norm(pts - scene.true_centres, axis=-1)
    assert err.max() < 1.0
    assert m.score(scene.follow_ups, scene.true_boxes) == 1.0
    # centres instead of boxes give the same matches
    pts_c = LesionMatcher(embedder=scene.embedder).fit(scene.template, scene.centres).predict(scene.follow_ups)
    np.testing.assert_allclose(pts_c, pts)


def test_lesion_outside_field_of_view_is_not_found(scene):
    m = LesionMatcher(embedder=scene.embedder).fit(scene.template, scene.boxes)
    local = scene.embedder.transform([scene.template])[0].local_map.geometry.spacing.max()
    assert m.cycle_threshold_mm_ == pytest.approx(2.5 * local)  # "auto"
    det = m.match([scene.cropped, scene.follow_ups[1]])
    assert not det["found"][0, 0]
    assert np.all(np.isnan(det["points"][0, 0]))
    assert det["found"][0, 1:].all() and det["found"][1].all()
    assert points_in_boxes(det["points"][0, 1:], scene.true_boxes[0, 1:]).all()
    assert det["scores"][0, 0] < m.score_threshold  # far from any scanned anatomy: a low score
    # a lesion just outside the view: its best match is the nearest scanned anatomy, at the border
    # of the view, with a high score; the field-of-view check rejects it
    d_near = m.match([scene.cropped_near])
    assert d_near["scores"][0, 0] > m.score_threshold
    assert not d_near["in_fov"][0, 0] and not d_near["found"][0, 0]
    assert d_near["found"][0, 1:].all()
    # the field-of-view check alone (no score threshold at all) rejects it
    loose = LesionMatcher(embedder=scene.embedder, score_threshold=-1.0).fit(scene.template, scene.boxes)
    d2 = loose.match([scene.cropped_near])
    assert not d2["in_fov"][0, 0] and not d2["found"][0, 0]
    # the cycle check alone rejects it too (no field-of-view margin, no score threshold)
    cyc = LesionMatcher(embedder=scene.embedder, score_threshold=-1.0, fov_margin_mm=0.0,
                        cycle_threshold_mm=5.0).fit(scene.template, scene.boxes)
    d3 = cyc.match([scene.cropped, scene.follow_ups[1]])
    assert d3["cycle_mm"][0, 0] > 5.0 and not d3["found"][0, 0]
    assert d3["found"][0, 1:].all() and d3["found"][1].all() and np.nanmax(d3["cycle_mm"][1]) < 2.0
    # score() counts a correctly reported absence as correct
    truth = scene.true_boxes[[0]].copy()
    truth[0, 0] = np.nan
    assert m.score([scene.cropped], truth) == 1.0
    truth_wrong = scene.true_boxes[[0]]
    assert m.score([scene.cropped], truth_wrong) == pytest.approx(2 / 3)


def test_clone_pickle_and_path_embedder(scene, tmp_path):
    m = LesionMatcher(embedder=scene.embedder, score_threshold=0.7)
    c = clone(m)
    assert c.embedder is scene.embedder and c.score_threshold == 0.7
    m.fit(scene.template, scene.boxes)
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_allclose(m2.predict(scene.follow_ups[:1]), m.predict(scene.follow_ups[:1]))
    with pytest.raises(ValueError, match="frozen"):
        m.set_params(embedder__n_channels=4)


def test_path_to_saved_model_is_loaded(tmp_path):
    from helpers import smooth_images, tiny_embedder
    ims = smooth_images(2, ndim=2)
    emb = tiny_embedder(2, random_state=0).fit(ims)
    path = tmp_path / "m.samlearn"
    emb.save(path)
    centre = ims[0].index_to_world((np.asarray(ims[0].size) - 1) / 2)
    m = LesionMatcher(embedder=str(path), score_threshold=-1.0, fov_margin_mm=0.0).fit(ims[0], centre[None])
    assert m.embedder_ is not None and m.embedder == str(path)
    assert m.predict(ims[1]).shape == (1, 1, 2)


def test_bad_inputs_are_named(scene):
    e = scene.embedder
    d = scene.ndim
    with pytest.raises(ValueError, match="embedder is required"):
        LesionMatcher().fit(scene.template, scene.boxes)
    with pytest.raises(NotFittedError, match="embedder"):
        LesionMatcher(embedder=AnalyticEmbedder()).fit(scene.template, scene.boxes)
    with pytest.raises(NotFittedError):
        LesionMatcher(embedder=e).predict(scene.follow_ups)
    with pytest.raises(ValueError, match="lesions must be centres"):
        LesionMatcher(embedder=e).fit(scene.template, np.zeros((2, d + 1)))
    bad = scene.boxes.copy()
    bad[0, :d], bad[0, d:] = scene.boxes[0, d:], scene.boxes[0, :d]
    with pytest.raises(ValueError, match="minimum corner first"):
        LesionMatcher(embedder=e).fit(scene.template, bad)
    with pytest.raises(ValueError, match="outside template_image"):
        LesionMatcher(embedder=e).fit(scene.template, scene.centres + 1e4)
    with pytest.raises(ValueError, match="score_threshold"):
        LesionMatcher(embedder=e, score_threshold=1.5).fit(scene.template, scene.boxes)
    with pytest.raises(ValueError, match="fov_margin_mm"):
        LesionMatcher(embedder=e, fov_margin_mm="big").fit(scene.template, scene.boxes)
    with pytest.raises(ValueError, match="cycle_threshold_mm"):
        LesionMatcher(embedder=e, cycle_threshold_mm=-2).fit(scene.template, scene.boxes)
    with pytest.raises(TypeError, match="template_image must be one image"):
        LesionMatcher(embedder=e).fit([scene.template], scene.boxes)
    m = LesionMatcher(embedder=e).fit(scene.template, scene.boxes)
    with pytest.raises(ValueError, match="boxes must have shape"):
        m.score(scene.follow_ups, scene.true_boxes[:, :2])


def test_points_in_boxes():
    boxes = np.array([[0, 0, 2, 2], [0, 0, 1, 1.0]])
    pts = np.array([[1, 1], [1.5, 0.5]])
    np.testing.assert_array_equal(points_in_boxes(pts, boxes), [True, False])
    np.testing.assert_array_equal(points_in_boxes(pts, boxes, margin_mm=0.5), [True, True])
    np.testing.assert_array_equal(points_in_boxes([[np.nan, np.nan], [2, 2]], boxes), [False, False])
    with pytest.raises(ValueError, match="boxes must have shape"):
        points_in_boxes(pts, boxes[:, :3])
    with pytest.raises(ValueError, match="minimum corner first"):
        points_in_boxes(pts, boxes[:, [2, 3, 0, 1]] - [0, 0, 0.5, 0.5])
