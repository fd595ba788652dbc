"""LandmarkIntensityFeatures: HU around detected landmarks -> a contrast-phase classifier inside
scikit-learn pipelines (SAM §IV-D). The volumes are a small synthetic stand-in (known anatomy moved
by random affines, phase-dependent HU at the aorta, portal vein, kidney and liver)."""
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from samlearn import Image, ImageGeometry, LandmarkIntensityFeatures, OneShotLandmarkDetector
from fake_embedder import AnalyticEmbedder

PHASES = ("non-contrast", "arterial", "venous")
STRUCTURES = ("aorta", "portal_vein", "kidney", "liver")
# mean HU per phase and structure (typical values: enhancement peaks in the aorta when arterial,
# in the portal vein and liver when venous)
HU = {"non-contrast": (40, 40, 30, 55), "arterial": (280, 110, 170, 70), "venous": (160, 180, 150, 110)}
SIZE, SPACING = (26, 24, 16), (3.0, 3.0, 4.0)


def rot_z(theta):
    r = np.eye(3)
    r[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return r


class PhaseData:
    def __init__(self, n_per_phase=8, seed=0):
        rng = np.random.default_rng(seed)
        geom = ImageGeometry(SIZE, SPACING, (-39.0, -36.0, -30.0))
        c = np.array([[-12.0, 5.0, 0.0], [6.0, -8.0, 4.0], [20.0, 15.0, -6.0], [-18.0, -15.0, 8.0]])
        self.points = c  # anatomy = the template's world frame
        self.template = self.render("template", geom, np.eye(3), np.zeros(3), HU["venous"], rng)
        frames, self.images, self.y = {}, [], []
        for p, phase in enumerate(PHASES):
            for i in range(n_per_phase):
                a = rot_z(rng.uniform(-0.15, 0.15)) * rng.uniform(0.95, 1.05)
                t = rng.uniform(-6, 6, 3)
                name = f"{phase}-{i}"
                frames[name] = (a, t)
                hu = np.asarray(HU[phase], float) + rng.normal(0, 25, 4)
                self.images.append(self.render(name, geom, a, t, hu, rng))
                self.y.append(p)
        self.y = np.asarray(self.y)
        self.embedder = AnalyticEmbedder(frames=frames, n_channels=48).fit([self.template])
        self.detector = OneShotLandmarkDetector(embedder=self.embedder).fit(self.template, self.points)

    def render(self, name, geom, a, t, hu, rng):
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in geom.shape], indexing="ij"), -1)
        world = geom.array_index_to_world(idx.reshape(-1, 3))
        anat = world @ a.T + t
        arr = np.full(len(world), 45.0) + rng.normal(0, 10, len(world))
        for centre, value in zip(self.points, hu):
            arr[np.linalg.norm(anat - centre, axis=1) < 7.0] = value + rng.normal(0, 10)
        return Image(arr.reshape(geom.shape).astype(np.float32), geom, source=name)


@pytest.fixture(scope="module")
def data():
    return PhaseData()


def test_features_are_hu_statistics_at_the_landmarks(data):
    feat = LandmarkIntensityFeatures(detector=data.detector, radius_mm=4.0, stats=("mean", "median", "p90"),
                                     landmark_names=STRUCTURES)
    X = feat.fit(data.images).transform(data.images)
    assert X.shape == (len(data.images), 4 * 3)
    names = feat.get_feature_names_out()
    assert list(names[:3]) == ["aorta__mean", "aorta__median", "aorta__p90"] and len(names) == 12
    # aorta enhancement: arterial > venous > non-contrast on average
    aorta = X[:, 0]
    means = [aorta[data.y == p].mean() for p in range(3)]
    assert means[1] > means[2] > means[0] + 50
    # single images and fit_transform work; features are deterministic
    np.testing.assert_allclose(feat.transform(data.images[0]), X[:1])
    np.testing.assert_allclose(clone(feat).fit_transform(data.images), X)
    # a radius smaller than the voxels falls back to the value interpolated at the landmark
    tiny = LandmarkIntensityFeatures(detector=data.detector, radius_mm=0.1, stats=("mean", "std"))
    Xt = tiny.fit_transform(data.images[:3])
    assert np.all(Xt[:, 1::2] == 0) and np.all(np.isfinite(Xt))


def test_contrast_phase_pipeline_cross_validates(data):
    pipe = make_pipeline(LandmarkIntensityFeatures(detector=data.detector, radius_mm=4.0),
                         StandardScaler(), SVC())
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, data.images, data.y, cv=cv)
    assert scores.mean() > 0.85, scores  # chance is 1/3
    c = clone(pipe)
    assert c.steps[0][1].detector is data.detector  # the frozen detector is shared, not copied
    fitted = c.fit(data.images, data.y)
    assert fitted.score(data.images, data.y) > 0.9
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(data.images[:5]), fitted.predict(data.images[:5]))


def test_bad_inputs_are_named(data):
    with pytest.raises(ValueError, match="detector is required"):
        LandmarkIntensityFeatures().fit(data.images)
    with pytest.raises(NotFittedError, match="detector"):
        LandmarkIntensityFeatures(detector=OneShotLandmarkDetector(embedder=data.embedder)).fit(data.images)
    with pytest.raises(TypeError, match="detector must be"):
        LandmarkIntensityFeatures(detector=StandardScaler().fit([[0.0]])).fit(data.images)
    with pytest.raises(ValueError, match="stats entries"):
        LandmarkIntensityFeatures(detector=data.detector, stats=("mean", "mode")).fit(data.images)
    with pytest.raises(TypeError, match="stats must be a sequence"):
        LandmarkIntensityFeatures(detector=data.detector, stats="mean").fit(data.images)
    with pytest.raises(ValueError, match="radius_mm"):
        LandmarkIntensityFeatures(detector=data.detector, radius_mm=0).fit(data.images)
    with pytest.raises(ValueError, match="landmark_names has 2 names"):
        LandmarkIntensityFeatures(detector=data.detector, landmark_names=["a", "b"]).fit(data.images)
    with pytest.raises(NotFittedError):
        LandmarkIntensityFeatures(detector=data.detector).transform(data.images)
    with pytest.raises(TypeError, match="numpy array"):
        LandmarkIntensityFeatures(detector=data.detector).fit(np.zeros((3, 4, 5)))
    two_d = Image.from_array(np.zeros((8, 9)))
    with pytest.raises(ValueError, match="2D images"):
        LandmarkIntensityFeatures(detector=data.detector).fit([two_d])
    with pytest.raises(ValueError, match="frozen"):
        LandmarkIntensityFeatures(detector=data.detector).set_params(detector__mode="global")
