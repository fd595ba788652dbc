"""An analytic stand-in for SAMEmbedder, for tests of matching and detectors.

Each image carries an "anatomical" frame ``a = A @ world + t`` (looked up by ``Image.source`` in the
``frames`` parameter; identity when absent; a callable ``world -> a`` for non-affine anatomy). Its embedding at a world position is a vector of random
Fourier features of ``a`` (L2-normalised), so the cosine similarity of two positions is close to a
Gaussian of their anatomical distance (scale ``global_scale_mm`` / ``local_scale_mm``) and exactly 1
for the same anatomy. Moving an image's frame by a known affine moves every correspondence by it.
"""
import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from samlearn import ImageGeometry, check_images
from samlearn.embedding import Embedding, EmbeddingMap


def fourier_features(world, frame, omega, phase):
    """(n, C) unit vectors: cos(omega @ a + phase) at anatomical positions a of world points.
    ``frame`` is ``(A, t)`` (a = A @ world + t) or a callable ``world (n, ndim) -> a (n, ndim)``
    (a non-affine anatomy, for deformable registration tests)."""
    if callable(frame):
        anat = np.asarray(frame(np.asarray(world, dtype=np.float64)), dtype=np.float64)
    else:
        a_mat, t = frame
        anat = np.asarray(world, dtype=np.float64) @ np.asarray(a_mat).T + np.asarray(t)
    f = np.cos(anat @ omega.T + phase)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def feature_map(geometry: ImageGeometry, frame, omega, phase, dtype=torch.float32) -> EmbeddingMap:
    """An EmbeddingMap on ``geometry`` whose voxel vectors are the features of their world centres."""
    shape = geometry.shape
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
    f = fourier_features(geometry.array_index_to_world(idx), frame, omega, phase)
    data = torch.as_tensor(f.T.reshape(-1, *shape).copy(), dtype=dtype)
    return EmbeddingMap(data, geometry)


def draw_features(rng, n_channels, ndim, scale_mm):
    omega = rng.normal(size=(n_channels, ndim)) / scale_mm
    phase = rng.uniform(0, 2 * np.pi, size=n_channels)
    return omega, phase


def identity_frame(ndim):
    return (np.eye(ndim), np.zeros(ndim))


class AnalyticEmbedder(BaseEstimator):
    """Fake SAMEmbedder: ``transform(images) -> list[Embedding]`` from known anatomical frames."""

    def __init__(self, *, frames=None, n_channels=64, global_stride=8, local_stride=2,
                 global_scale_mm=20.0, local_scale_mm=5.0, random_state=0):
        self.frames = frames
        self.n_channels = n_channels
        self.global_stride = global_stride
        self.local_stride = local_stride
        self.global_scale_mm = global_scale_mm
        self.local_scale_mm = local_scale_mm
        self.random_state = random_state

    def fit(self, images, y=None):
        ims = check_images(images)
        self.ndim_ = ims[0].ndim
        rng = np.random.default_rng(self.random_state)
        self.global_features_ = draw_features(rng, self.n_channels, self.ndim_, self.global_scale_mm)
        self.local_features_ = draw_features(rng, self.n_channels, self.ndim_, self.local_scale_mm)
        self.n_transforms_ = 0
        return self

    def frame_of(self, image):
        frames = self.frames or {}
        return frames.get(image.source, identity_frame(image.ndim))

    def transform(self, images):
        check_is_fitted(self)
        ims = check_images(images, ndim=self.ndim_)
        out = []
        for im in ims:
            frame = self.frame_of(im)
            geom = im.geometry
            g = feature_map(geom.strided(self.global_stride), frame, *self.global_features_)
            loc = feature_map(geom.strided(self.local_stride), frame, *self.local_features_)
            out.append(Embedding(g, loc, geom, geom))
        self.n_transforms_ += len(ims)
        return out


class PatchEmbedder(BaseEstimator):
    """Fake SAMEmbedder that reads its embeddings from the image *content*: the vector at a map
    voxel is the image sampled at ``n_channels`` fixed world offsets around the voxel (within
    ``local_radius_mm`` / ``global_radius_mm``), mean removed, L2-normalised. Unlike
    :class:`AnalyticEmbedder` it needs no frames, so it embeds resampled copies of images (what
    registration refinement does) correctly; matching is as good as patch correlation on the
    images' texture."""

    def __init__(self, *, n_channels=48, global_stride=8, local_stride=2, global_radius_mm=16.0,
                 local_radius_mm=5.0, random_state=0):
        self.n_channels = n_channels
        self.global_stride = global_stride
        self.local_stride = local_stride
        self.global_radius_mm = global_radius_mm
        self.local_radius_mm = local_radius_mm
        self.random_state = random_state

    def fit(self, images, y=None):
        ims = check_images(images)
        self.ndim_ = ims[0].ndim
        rng = np.random.default_rng(self.random_state)
        self.offsets_ = []
        for r in (self.global_radius_mm, self.local_radius_mm):
            d = rng.normal(size=(self.n_channels, self.ndim_))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            self.offsets_.append(d * r * rng.uniform(0, 1, (self.n_channels, 1)) ** (1 / self.ndim_))
        self.n_transforms_ = 0
        return self

    @staticmethod
    def _map(image, geometry, offsets):
        from scipy.ndimage import map_coordinates
        shape = geometry.shape
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
        world = geometry.array_index_to_world(idx)
        pos = (world[:, None, :] + offsets[None]).reshape(-1, len(shape))
        vals = map_coordinates(image.array, image.world_to_array_index(pos).T, order=1, mode="nearest")
        f = vals.reshape(len(world), -1)
        f = f - f.mean(1, keepdims=True)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-9)
        return EmbeddingMap(torch.as_tensor(f.T.reshape(-1, *shape).copy(), dtype=torch.float32), geometry)

    def transform(self, images):
        check_is_fitted(self)
        ims = check_images(images, ndim=self.ndim_)
        out = []
        for im in ims:
            geom = im.geometry
            g = self._map(im, geom.strided(self.global_stride), self.offsets_[0])
            loc = self._map(im, geom.strided(self.local_stride), self.offsets_[1])
            out.append(Embedding(g, loc, geom, geom))
        self.n_transforms_ += len(ims)
        return out
