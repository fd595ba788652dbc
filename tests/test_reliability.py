"""Reliability: bad input fails loudly with a named, documented error; model files never run code;
checkpoints are atomic; training survives SIGKILL / SIGTERM; same seed, same result on the CPU.

``MATRIX`` is the bad-input matrix: one row per case, with the exact exception type and a message
pattern that names the offending argument (or file). ``python -m benchmarks.reliability.reliability_matrix`` prints it
as the table recorded in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from sklearn.exceptions import NotFittedError

import samlearn
from samlearn import Image, ImageGeometry, OneShotLandmarkDetector, check_points, read_image
from samlearn.datasets import load_ct_folder
from samlearn.embedding.model_file import ModelFileError, load_payload, save_payload
from samlearn.exceptions import InvalidParameterError
from helpers import smooth_images, tiny_embedder

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# ===================================================================================== fixtures


class Context:
    """Lazily built objects shared by the matrix rows (each is built once per module)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.rng = np.random.default_rng(0)

    @cached_property
    def img2(self):
        return smooth_images(1, ndim=2, seed=5)[0]

    @cached_property
    def img3(self):
        return smooth_images(1, ndim=3, seed=6)[0]

    @cached_property
    def emb2(self):
        return tiny_embedder(random_state=0).fit(smooth_images(2, ndim=2, seed=0))

    @cached_property
    def emb3(self):
        return tiny_embedder(ndim=3, random_state=0).fit(smooth_images(2, ndim=3, seed=1))

    @cached_property
    def points2(self):
        return self.img2.geometry.array_index_to_world(np.array([[20.0, 30.0], [40.0, 10.0]]))

    @cached_property
    def det(self):
        return OneShotLandmarkDetector(embedder=self.emb2).fit(self.img2, self.points2)

    @cached_property
    def const2(self):
        return Image.from_array(np.full((40, 50), 7.0, np.float32), spacing=(1.0, 1.0))

    @cached_property
    def model_path(self):
        return self.emb2.save(self.tmp / "model.samlearn")

    # ---------------------------------------------------------------- files
    def path(self, name):
        return self.tmp / name

    def volume_file(self, suffix, array=None, **geom):
        arr = self.rng.normal(0, 300, (12, 14, 16)).astype(np.float32) if array is None else array
        p = self.tmp / f"vol_{len(list(self.tmp.iterdir()))}{suffix}"
        sitk.WriteImage(Image.from_array(arr, **geom).to_sitk(), str(p))
        return p

    def truncated(self, suffix, fraction=0.6, raster=False):
        if raster:
            arr = (self.rng.random((60, 80)) * 255).astype(np.uint8)
            src = self.tmp / f"raster_{len(list(self.tmp.iterdir()))}{suffix}"
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(src))
        else:
            src = self.volume_file(suffix)
        data = src.read_bytes()
        out = src.with_name("trunc_" + src.name)
        out.write_bytes(data[: int(len(data) * fraction)])
        return out

    def nifti_with_pixdim(self, value):
        src = self.volume_file(".nii", spacing=(2.5, 1.5, 3.0))
        raw = bytearray(src.read_bytes())
        pixdim = list(struct.unpack("<8f", raw[76:108]))
        pixdim[1] = value
        raw[76:108] = struct.pack("<8f", *pixdim)
        out = src.with_name(f"pixdim_{value}_{src.name}")
        out.write_bytes(bytes(raw))
        return out

    def nifti_nonfinite(self, suffix, value):
        arr = self.rng.normal(0, 1, (6, 7, 8)).astype(np.float32)
        arr[2, 3, 4] = value
        p = self.tmp / f"nonfinite_{len(list(self.tmp.iterdir()))}{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
        return p

    def mha_with(self, key, value):
        src = self.volume_file(".mha")
        raw = src.read_bytes()
        i = raw.index(key.encode())
        j = raw.index(b"\n", i)
        out = src.with_name(f"edited_{src.name}")
        out.write_bytes(raw[:i] + f"{key} = {value}".encode() + raw[j:])
        return out

    def corrupt_gzip(self):
        src = self.volume_file(".nii.gz")
        raw = bytearray(src.read_bytes())
        mid = len(raw) // 2
        raw[mid:mid + 8] = bytes(b ^ 0x5A for b in raw[mid:mid + 8])
        out = src.with_name("corrupt_" + src.name)
        out.write_bytes(bytes(raw))
        return out

    def vector_nifti(self, ncomp):
        arr = self.rng.random((5, 6, 7, ncomp)).astype(np.float32)
        p = self.tmp / f"vec{ncomp}_{len(list(self.tmp.iterdir()))}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(p))
        return p

    def dicom_series(self, drop_middle):
        folder = self.tmp / f"dicom_{len(list(self.tmp.iterdir()))}"
        folder.mkdir()
        vol = (self.rng.random((5, 32, 32)) * 1000).astype(np.int16)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(vol.shape[0]):
            s = sitk.GetImageFromArray(vol[k])
            s.SetSpacing((0.7, 0.7))
            for tag, val in (("0020|000e", "1.2.826.0.1.3680043.2.1125.99.1"), ("0008|0060", "CT"),
                             ("0020|0032", f"0\\0\\{k * 2.5}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                             ("0020|0013", str(k)), ("0018|0050", "2.5")):
                s.SetMetaData(tag, val)
            writer.SetFileName(str(folder / f"slice{k}.dcm"))
            writer.Execute(s)
        if drop_middle:
            p = folder / "slice2.dcm"
            p.write_bytes(p.read_bytes()[:200])  # an unreadable (truncated) slice in the middle
        return folder

    def empty_folder(self):
        p = self.tmp / f"empty_{len(list(self.tmp.iterdir()))}"
        p.mkdir()
        return p

    # ---------------------------------------------------------------- model files
    @cached_property
    def checkpoint(self):
        path = self.tmp / "checkpoint.samlearn"
        tiny_embedder(random_state=0, max_iter=1, checkpoint_path=str(path)).fit(smooth_images(2, ndim=2, seed=0))
        return path

    def tampered_model(self, edit, rehash=True, source=None):
        """The saved model (or ``source``), edited by ``edit(payload)`` and rewritten; with ``rehash``
        the checksum is recomputed (as a careless or malicious writer would), so the edit itself is
        what fails."""
        from samlearn.embedding import model_file as persistence
        payload = read_raw_payload(source or self.model_path)
        edit(payload)
        if rehash and isinstance(payload.get("meta_json"), str):
            payload["sha256"] = persistence.payload_digest(payload["meta_json"], payload["tensors"])
        p = self.tmp / f"tampered_{len(list(self.tmp.iterdir()))}.samlearn"
        write_raw_payload(p, payload)
        return p

    def model_bytes(self, transform):
        data = bytearray(Path(self.model_path).read_bytes())
        p = self.tmp / f"damaged_{len(list(self.tmp.iterdir()))}.samlearn"
        p.write_bytes(bytes(transform(data)))
        return p


def read_raw_payload(path):
    """The header fields and nested ``tensors`` of a (format 2, safetensors) model file, unchecked."""
    from samlearn.embedding import model_file as persistence
    header, flat = persistence._read_file(Path(path))
    return dict(header, tensors=persistence._unflatten(json.loads(header["layout_json"]), flat))


def write_raw_payload(path, payload):
    """Write ``payload`` (as :func:`read_raw_payload` gives it) as a safetensors model file, as is."""
    from safetensors.torch import save_file
    from samlearn.embedding import model_file as persistence
    payload = dict(payload)
    flat, layout = persistence._flatten(payload.pop("tensors"))
    payload["layout_json"] = json.dumps(layout)
    save_file(flat, str(path), metadata={k: str(v) for k, v in payload.items()})


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context(tmp_path_factory.mktemp("reliability"))


# ===================================================================================== the matrix


@dataclass(frozen=True)
class Row:
    case: str
    area: str
    exc: type
    match: str
    call: Callable


def _edit_meta(key, value=None, delete=False):
    def edit(payload):
        meta = json.loads(payload["meta_json"])
        if delete:
            del meta[key]
        else:
            meta[key] = value
        payload["meta_json"] = json.dumps(meta)
    return edit


def _swap_weight(payload):
    net = payload["tensors"]["network"]
    k = next(k for k, v in net.items() if v.dim() == 4)
    net[k] = torch.zeros(3, 3)


def _nan_weight(payload):
    net = payload["tensors"]["network"]
    k = next(k for k, v in net.items() if v.is_floating_point() and v.numel() > 1)
    net[k] = net[k].clone()
    net[k].view(-1)[0] = float("nan")


def _other_optimizer(payload):
    payload["tensors"]["optimizer"]["param_groups"][0]["params"] = [0]


def _flip_middle(data):
    data[len(data) * 2 // 3] ^= 0xFF
    return data


def _nan_pixels(value):
    arr = np.ones((10, 12), np.float32)
    arr[3, 4] = value
    return arr


def _sitk_with_direction(d):
    im = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 9)).astype(np.float32))
    im.SetDirection(d)
    return im


MATRIX = [
    # ---------------------------------------------------------------- pixel values
    Row("NaN pixel in an array", "pixels", ValueError, r"array contains NaN",
        lambda c: Image.from_array(_nan_pixels(np.nan))),
    Row("inf pixel in an array", "pixels", ValueError, r"array contains NaN or infinite",
        lambda c: Image.from_array(_nan_pixels(np.inf))),
    Row("NaN pixel in a SimpleITK image in a list", "pixels", ValueError, r"images\[1\].*NaN",
        lambda c: c.emb2.transform([c.img2, sitk.GetImageFromArray(_nan_pixels(np.nan))])),
    Row("NaN voxel in a .nii.gz (SimpleITK reads 0)", "pixels", ValueError, r"nonfinite_.*\.nii\.gz' contains 1 NaN",
        lambda c: read_image(c.nifti_nonfinite(".nii.gz", np.nan))),
    Row("inf voxel in a .nii (SimpleITK reads 0)", "pixels", ValueError, r"nonfinite_.*\.nii' contains 1 NaN or inf",
        lambda c: read_image(c.nifti_nonfinite(".nii", -np.inf))),
    Row("empty array", "pixels", ValueError, r"array is empty",
        lambda c: Image.from_array(np.zeros((0, 5)))),
    Row("complex pixels", "pixels", TypeError, r"array must be real-valued",
        lambda c: Image.from_array(np.zeros((4, 4), complex))),
    Row("constant images in fit", "pixels", ValueError, r"images\[0\] is constant",
        lambda c: tiny_embedder().fit([c.const2, c.const2])),
    Row("constant image in transform", "pixels", ValueError, r"images\[1\] is constant",
        lambda c: c.emb2.transform([c.img2, c.const2])),
    Row("constant query image in detector.predict", "pixels", ValueError, r"images\[0\] is constant",
        lambda c: c.det.predict([c.const2])),
    Row("constant template image", "pixels", ValueError, r"images\[0\] is constant",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit(c.const2, [[10.0, 10.0]])),
    # ---------------------------------------------------------------- dimensionality
    Row("1D array", "ndim", ValueError, r"array must be 2D \(y, x\) or 3D",
        lambda c: Image.from_array(np.zeros(7))),
    Row("4D array", "ndim", ValueError, r"array must be 2D \(y, x\) or 3D",
        lambda c: Image.from_array(np.zeros((2, 3, 4, 5)))),
    Row("4D / vector NIfTI (was: silently 'luminance')", "ndim", ValueError, r"vec3_.*has 3 components per pixel",
        lambda c: read_image(c.vector_nifti(3))),
    Row("3D image into a 2D model", "ndim", ValueError, r"images are 3D but this model was trained on 2D",
        lambda c: c.emb2.transform(c.img3)),
    Row("2D image into a 3D model", "ndim", ValueError, r"images are 2D but this model was trained on 3D",
        lambda c: c.emb3.transform(c.img2)),
    Row("3D images into partial_fit of a 2D model", "ndim", ValueError, r"images are 3D but the model was trained on 2D",
        lambda c: pickle.loads(pickle.dumps(c.emb2)).partial_fit(c.img3, n_iter=1)),
    Row("3D template for a 2D embedder", "ndim", ValueError, r"template_image is 3D but the embedder was fitted on 2D",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit(c.img3, [[0.0, 0.0, 0.0]])),
    Row("3D query for a 2D detector", "ndim", ValueError, r"images are 3D but the detector was fitted on 2D",
        lambda c: c.det.predict(c.img3)),
    Row("2D and 3D images mixed", "ndim", ValueError, r"images mixes 2D and 3D",
        lambda c: tiny_embedder().fit([c.img2, c.img3])),
    # ---------------------------------------------------------------- points
    Row("template point outside the image", "points", ValueError, r"template_points rows \[1\] lie outside the template",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit(c.img2, c.points2 + [[0, 0], [1e4, 0]])),
    Row("NaN template point", "points", ValueError, r"template_points contains non-finite coordinates \(rows \[0\]\)",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit(c.img2, [[np.nan, 1.0]])),
    Row("inf template point", "points", ValueError, r"template_points contains non-finite",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit(c.img2, [[1.0, np.inf]])),
    Row("3D points for a 2D template", "points", ValueError, r"template_points must have shape \(n_points, 2\)",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit(c.img2, np.zeros((2, 3)))),
    Row("no template points", "points", ValueError, r"template_points must have shape \(n_points, 2\)",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit(c.img2, np.zeros((0, 2)))),
    Row("non-numeric points", "points", TypeError, r"points must be a numeric array",
        lambda c: check_points([["a", "b"]], 2)),
    Row("inf truth point in score", "points", ValueError, r"points contains infinite",
        lambda c: c.det.score(c.img2, np.full((1, 2, 2), np.inf))),
    Row("truth of the wrong shape in score", "points", ValueError, r"points must have shape \(n_images, n_points, ndim\)",
        lambda c: c.det.score(c.img2, np.zeros((1, 3, 2)))),
    # ---------------------------------------------------------------- geometry
    Row("zero spacing", "geometry", ValueError, r"spacing must be positive",
        lambda c: Image.from_array(np.ones((4, 4)), spacing=(0.0, 1.0))),
    Row("negative spacing", "geometry", ValueError, r"spacing must be positive",
        lambda c: Image.from_array(np.ones((4, 4)), spacing=(-1.0, 1.0))),
    Row("NaN spacing", "geometry", ValueError, r"spacing must be finite",
        lambda c: Image.from_array(np.ones((4, 4)), spacing=np.nan)),
    Row("spacing None", "geometry", TypeError, r"spacing must be a number",
        lambda c: Image.from_array(np.ones((4, 4)), spacing=None)),
    Row("spacing of the wrong length", "geometry", ValueError, r"spacing must have 2 values",
        lambda c: Image.from_array(np.ones((4, 4)), spacing=(1.0, 1.0, 1.0))),
    Row("spacing overflowing world coordinates", "geometry", ValueError, r"beyond representable world",
        lambda c: Image.from_array(np.ones((4, 4)), spacing=1e300)),
    Row("zero pixdim in a NIfTI (SimpleITK reads 1 mm)", "geometry", ValueError, r"pixdim_0.0_.*invalid voxel spacing.*pixdim",
        lambda c: read_image(c.nifti_with_pixdim(0.0))),
    Row("negative pixdim in a NIfTI (SimpleITK mirrors)", "geometry", ValueError, r"pixdim_-2.5_.*invalid voxel spacing",
        lambda c: read_image(c.nifti_with_pixdim(-2.5))),
    Row("NaN pixdim in a NIfTI (SimpleITK reads 1 mm)", "geometry", ValueError, r"pixdim_nan_.*invalid voxel spacing",
        lambda c: read_image(c.nifti_with_pixdim(float("nan")))),
    Row("zero spacing in an MHA", "geometry", ValueError, r"could not read image file '.*edited_.*\.mha'",
        lambda c: read_image(c.mha_with("ElementSpacing", "0 1 1"))),
    Row("non-orthonormal direction (array)", "geometry", ValueError, r"direction must be orthonormal",
        lambda c: Image.from_array(np.ones((4, 4)), direction=[[1.0, 0.3], [0.0, 1.0]])),
    Row("non-orthonormal direction in an MHA", "geometry", ValueError, r"edited_.*\.mha': direction must be orthonormal",
        lambda c: read_image(c.mha_with("TransformMatrix", "1 0.5 0 0 1 0 0 0 1"))),
    Row("non-orthonormal SimpleITK image in a list", "geometry", ValueError, r"images\[0\]: direction must be orthonormal",
        lambda c: c.emb2.transform([_sitk_with_direction((1.0, 0.5, 0.0, 1.0))])),
    Row("direction of the wrong size", "geometry", ValueError, r"direction must be a 2x2 matrix",
        lambda c: Image.from_array(np.ones((4, 4)), direction=np.eye(3))),
    Row("geometry needing a huge working grid", "geometry", ValueError, r"images\[0\] would need a working grid",
        lambda c: c.emb3.transform(Image.from_array(np.arange(64.0).reshape(4, 4, 4), spacing=2e4))),
    # ---------------------------------------------------------------- files
    Row("missing file", "files", FileNotFoundError, r"image path does not exist: '.*nope\.nii\.gz'",
        lambda c: read_image(c.path("nope.nii.gz"))),
    Row("truncated .nii.gz (SimpleITK reads zeros)", "files", ValueError, r"trunc_.*\.nii\.gz'.*truncated",
        lambda c: read_image(c.truncated(".nii.gz"))),
    Row("truncated .nii (SimpleITK reads zeros)", "files", ValueError, r"trunc_.*\.nii'.*truncated",
        lambda c: read_image(c.truncated(".nii"))),
    Row("corrupt gzip in a .nii.gz", "files", ValueError, r"corrupt_.*\.nii\.gz'.*(corrupt|damaged)",
        lambda c: read_image(c.corrupt_gzip())),
    Row("truncated .mha", "files", ValueError, r"could not read image file '.*trunc_.*\.mha'",
        lambda c: read_image(c.truncated(".mha"))),
    Row("truncated .nrrd", "files", ValueError, r"could not read image file '.*trunc_.*\.nrrd'",
        lambda c: read_image(c.truncated(".nrrd"))),
    Row("truncated .png", "files", ValueError, r"could not read image file '.*trunc_.*\.png'",
        lambda c: read_image(c.truncated(".png", raster=True))),
    Row("truncated .jpg (SimpleITK fills grey)", "files", ValueError, r"trunc_.*\.jpg'.*no end-of-image marker",
        lambda c: read_image(c.truncated(".jpg", raster=True))),
    Row("truncated .bmp (SimpleITK fills zeros)", "files", ValueError, r"trunc_.*\.bmp'.*truncated",
        lambda c: read_image(c.truncated(".bmp", raster=True))),
    Row("random bytes named .nii.gz", "files", ValueError, r"could not read image file '.*junk\.nii\.gz'",
        lambda c: read_image(_write(c.path("junk.nii.gz"), np.random.default_rng(1).bytes(3000)))),
    Row("empty file", "files", ValueError, r"could not read image file '.*empty\.mha'",
        lambda c: read_image(_write(c.path("empty.mha"), b""))),
    Row("DICOM series with an unreadable middle slice (SimpleITK: uniform spacing)", "files", ValueError,
        r"DICOM series in '.*dicom_.*' is not evenly spaced",
        lambda c: read_image(c.dicom_series(drop_middle=True))),
    Row("folder with no images (read_image)", "files", ValueError, r"folder '.*empty_.*' holds no DICOM series",
        lambda c: read_image(c.empty_folder())),
    Row("folder with no images (fit)", "files", ValueError, r"folder '.*empty_.*' holds no DICOM series",
        lambda c: tiny_embedder().fit(c.empty_folder())),
    Row("folder with no images (load_ct_folder)", "files", FileNotFoundError, r"CT folder '.*empty_.*' holds none",
        lambda c: load_ct_folder(c.empty_folder())),
    Row("empty list of images", "files", ValueError, r"images is empty",
        lambda c: tiny_embedder().fit([])),
    Row("numpy array instead of an image", "files", TypeError, r"images must be .*numpy array.*Image\.from_array",
        lambda c: c.emb2.transform(np.zeros((10, 10)))),
    # ---------------------------------------------------------------- estimator state and parameters
    Row("transform with an unfitted embedder", "state", NotFittedError, r"SAMEmbedder.*not fitted",
        lambda c: tiny_embedder().transform(c.img2)),
    Row("save an unfitted embedder", "state", NotFittedError, r"SAMEmbedder.*not fitted",
        lambda c: tiny_embedder().save(c.path("never.samlearn"))),
    Row("predict with an unfitted detector", "state", NotFittedError, r"OneShotLandmarkDetector.*not fitted",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).predict(c.img2)),
    Row("detector over an unfitted embedder", "state", NotFittedError, r"embedder \(SAMEmbedder\) is not fitted",
        lambda c: OneShotLandmarkDetector(embedder=tiny_embedder()).fit(c.img2, c.points2)),
    Row("detector without an embedder", "state", ValueError, r"embedder is required",
        lambda c: OneShotLandmarkDetector().fit(c.img2, c.points2)),
    Row("3 template images, 2 point arrays", "state", ValueError, r"template_points holds 2 point arrays but 3 template images",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit([c.img2] * 3, [c.points2] * 2)),
    Row("templates marking different numbers of points", "state", ValueError, r"every template must mark the same points",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit([c.img2] * 2, [c.points2, c.points2[:1]])),
    Row("one point array for two templates", "state", ValueError, r"template_points must be a list of 2 point arrays",
        lambda c: OneShotLandmarkDetector(embedder=c.emb2).fit([c.img2] * 2, c.points2)),
    Row("checkpoint_every without checkpoint_path", "state", ValueError, r"checkpoint_every=5 but checkpoint_path is None",
        lambda c: tiny_embedder(checkpoint_every=5).fit(c.img2)),
    Row("resume without checkpoint_path", "state", ValueError, r"resume=True but checkpoint_path is None",
        lambda c: tiny_embedder(resume=True).fit(c.img2)),
    Row("checkpoint_every = 0", "state", InvalidParameterError, r"checkpoint_every must be a positive integer",
        lambda c: tiny_embedder(checkpoint_every=0, checkpoint_path=str(c.path("x.ckpt"))).fit(c.img2)),
    Row("checkpoint_path is a folder", "state", ValueError, r"checkpoint_path '.*' is a folder",
        lambda c: tiny_embedder(checkpoint_path=str(c.tmp)).fit(c.img2)),
    # ---------------------------------------------------------------- model files
    Row("model file missing", "model file", FileNotFoundError, r"model file does not exist: '.*absent\.samlearn'",
        lambda c: samlearn.load(c.path("absent.samlearn"))),
    Row("model path is a folder", "model file", IsADirectoryError, r"is a folder, not a model file",
        lambda c: samlearn.load(c.tmp)),
    Row("model file of random bytes", "model file", ModelFileError, r"corrupt, truncated or not a samlearn model",
        lambda c: samlearn.load(_write(c.path("random.samlearn"), np.random.default_rng(2).bytes(5000)))),
    Row("empty model file", "model file", ModelFileError, r"corrupt, truncated or not a samlearn model",
        lambda c: samlearn.load(_write(c.path("empty.samlearn"), b""))),
    Row("truncated model file", "model file", ModelFileError, r"damaged_.*corrupt, truncated",
        lambda c: samlearn.load(c.model_bytes(lambda d: d[: len(d) // 2]))),
    Row("one flipped byte in the weights", "model file", ModelFileError, r"damaged_.*(checksum does not match|corrupt)",
        lambda c: samlearn.load(c.model_bytes(_flip_middle))),
    Row("wrong magic", "model file", ModelFileError, r"tampered_.*not a samlearn model file \(no samlearn header\)",
        lambda c: samlearn.load(c.tampered_model(lambda p: p.update(magic="other")))),
    Row("metadata that is not JSON", "model file", ModelFileError, r"tampered_.*is damaged",
        lambda c: samlearn.load(c.tampered_model(lambda p: p.update(meta_json="{not json"), rehash=False))),
    Row("metadata missing a key", "model file", ModelFileError, r"tampered_.*damaged or incompatible metadata \(KeyError",
        lambda c: samlearn.load(c.tampered_model(_edit_meta("config", delete=True)))),
    Row("weights of the wrong shape", "model file", ModelFileError, r"tampered_.*weights do not match the architecture",
        lambda c: samlearn.load(c.tampered_model(_swap_weight))),
    Row("NaN weights", "model file", ModelFileError, r"tampered_.*hold NaN or infinite values",
        lambda c: samlearn.load(c.tampered_model(_nan_weight))),
    Row("newer file format", "model file", ModelFileError, r"tampered_.*format version 99",
        lambda c: samlearn.load(c.tampered_model(lambda p: p.update(format_version=99)))),
    Row("checksum of other content", "model file", ModelFileError, r"tampered_.*checksum does not match",
        lambda c: samlearn.load(c.tampered_model(lambda p: p.update(sha256="0" * 64), rehash=False))),
    Row("detector given a damaged model path", "model file", ModelFileError, r"damaged_.*corrupt, truncated",
        lambda c: OneShotLandmarkDetector(embedder=c.model_bytes(lambda d: d[:1000])).fit(c.img2, c.points2)),
    Row("resume from a damaged checkpoint", "model file", ModelFileError, r"damaged_.*(checksum|corrupt)",
        lambda c: tiny_embedder(checkpoint_path=str(c.model_bytes(_flip_middle)), resume=True).fit(c.img2)),
    Row("checkpoint whose optimiser state is for another network", "model file", ModelFileError,
        r"optimiser state of checkpoint '.*tampered_.*' does not fit the network",
        lambda c: tiny_embedder(max_iter=2, resume=True, checkpoint_path=str(c.tampered_model(
            _other_optimizer, source=c.checkpoint))).fit(c.img2)),
    Row("resume from a checkpoint of another architecture", "model file", ValueError,
        r"checkpoint '.*model\.samlearn' was written by a different network architecture",
        lambda c: tiny_embedder(embed_dim=8, checkpoint_path=str(c.model_path), resume=True).fit(c.img2)),
]


def _write(path, data):
    Path(path).write_bytes(data)
    return path


@pytest.mark.parametrize("row", MATRIX, ids=[r.case for r in MATRIX])
def test_bad_input_matrix(row, ctx):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SimpleITK / ITK chatter is not under test here
        with pytest.raises(Exception) as info:
            row.call(ctx)
    assert type(info.value) is row.exc, f"expected {row.exc.__name__}, got {type(info.value).__name__}: {info.value}"
    assert info.match(row.match)


def test_matrix_covers_every_area():
    areas = {r.area for r in MATRIX}
    assert areas == {"pixels", "ndim", "points", "geometry", "files", "state", "model file"}
    assert len({r.case for r in MATRIX}) == len(MATRIX)


def test_intact_files_still_read(ctx):
    """The integrity checks accept what they should: intact files of every checked format, an
    evenly spaced DICOM series, a float NIfTI without NaN, a multi-member gzip."""
    for suffix in (".nii", ".nii.gz", ".mha", ".nrrd"):
        p = ctx.volume_file(suffix, spacing=(0.8, 1.1, 2.5), origin=(3.0, -4.0, 5.0))
        im = read_image(p)
        np.testing.assert_allclose(im.spacing, (0.8, 1.1, 2.5), rtol=1e-6)
    for suffix in (".png", ".jpg", ".bmp", ".tif"):
        arr = (ctx.rng.random((30, 40)) * 255).astype(np.uint8)
        p = ctx.path(f"ok{suffix}")
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
        assert read_image(p).shape == (30, 40)
    dicom = read_image(ctx.dicom_series(drop_middle=False))
    assert dicom.shape == (5, 32, 32) and dicom.spacing[2] == pytest.approx(2.5)
    # a .nii.gz written as two gzip members (concatenated streams are valid gzip)
    import gzip
    p = ctx.volume_file(".nii")
    raw = p.read_bytes()
    two = ctx.path("two_members.nii.gz")
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(read_image(two).array, read_image(p).array)
    # an RGB PNG is still converted to luminance (2D, 8-bit colour)
    rgb = (ctx.rng.random((20, 30, 3)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(ctx.path("rgb.png")))
    assert read_image(ctx.path("rgb.png")).shape == (20, 30)


# ===================================================================================== model files


class _Marker:
    """Pickled, calls ``os.system`` to create a marker file when unpickled (a code-execution
    payload)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


class _OpenMarker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload_kind", ["torch_archive", "inside_tensors", "raw_pickle", "open_builtin"])
def test_malicious_model_file_is_refused_and_never_runs(payload_kind, tmp_path, monkeypatch, ctx):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.samlearn"
    # the payload does run under plain pickle: proof that it is live
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Marker(probe)))
    assert probe.exists()
    if payload_kind == "torch_archive":
        torch.save({"magic": "samlearn-model", "kind": "SAMEmbedder", "x": _Marker(marker)}, evil)
    elif payload_kind == "inside_tensors":
        good = dict(read_raw_payload(ctx.model_path), format_version=1)  # a format-1 archive
        good["tensors"]["network"]["evil"] = _Marker(marker)
        torch.save(good, evil)
    elif payload_kind == "raw_pickle":
        evil.write_bytes(pickle.dumps({"magic": "samlearn-model", "x": _Marker(marker)}))
    else:
        torch.save({"magic": "samlearn-model", "x": _OpenMarker(marker)}, evil)
    # even if the user's environment asks torch to allow arbitrary pickles
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    expected = "not plain data" if payload_kind != "raw_pickle" else "refusing to load it"
    with pytest.raises(ModelFileError, match=expected):
        samlearn.load(evil)
    with pytest.raises(ModelFileError):
        OneShotLandmarkDetector(embedder=str(evil)).fit(ctx.img2, ctx.points2)
    with pytest.raises(ModelFileError):
        tiny_embedder(checkpoint_path=str(evil), resume=True).fit(ctx.img2)
    assert not marker.exists(), "loading the model file executed code"


def test_model_from_a_newer_samlearn_warns(ctx, monkeypatch):
    p = ctx.tampered_model(lambda pl: pl.update(samlearn_version="99.0.0"))
    with pytest.warns(UserWarning, match=r"written by samlearn 99\.0\.0, newer than this samlearn"):
        est = samlearn.load(p)
    assert est.n_iter_ == ctx.emb2.n_iter_


def test_model_file_round_trip_is_exact_and_checksummed(ctx):
    back = samlearn.load(ctx.model_path)
    a, b = ctx.emb2.network_.state_dict(), back.network_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    payload = read_raw_payload(ctx.model_path)
    assert len(payload["sha256"]) == 64
    # the checksum is mandatory: a file without one is refused
    p = ctx.tampered_model(lambda pl: pl.pop("sha256"), rehash=False)
    with pytest.raises(ModelFileError, match="checksum is missing"):
        samlearn.load(p)


# ===================================================================================== atomic checkpoints


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    """A write that dies half-way (disk full, Ctrl-C) leaves the previous file under the final name,
    complete, and no temporary file behind."""
    from samlearn.embedding import model_file as persistence
    path = tmp_path / "ckpt.samlearn"
    save_payload(path, "SAMEmbedder", {"n_iter": 1}, {"w": torch.ones(1000)})
    real_fsync = os.fsync

    def dying_fsync(fd):  # the write got half-way, then the disk filled up
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence.os, "fsync", dying_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_payload(path, "SAMEmbedder", {"n_iter": 2}, {"w": torch.zeros(1000)})
    monkeypatch.setattr(persistence.os, "fsync", real_fsync)
    _, meta, tensors, _ = load_payload(path)
    assert meta == {"n_iter": 1} and torch.equal(tensors["w"], torch.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.samlearn"]


def test_temporary_file_is_renamed_within_the_same_folder(tmp_path, monkeypatch):
    """os.replace is atomic only within one file system: the temporary file must sit beside the
    target, and be complete (flushed and fsynced) before the rename."""
    from samlearn.embedding import model_file as persistence
    seen = []
    real_replace, real_fsync = os.replace, os.fsync
    synced = []
    monkeypatch.setattr(persistence.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    def spy(src, dst):
        seen.append((Path(src), Path(dst), len(synced)))
        _, meta, _, _ = load_payload(src)  # the temporary file is already a complete model file
        assert meta == {"a": 1}
        real_replace(src, dst)

    monkeypatch.setattr(persistence.os, "replace", spy)
    save_payload(tmp_path / "sub" / "m.samlearn", "SAMEmbedder", {"a": 1}, {"w": torch.ones(3)})
    (src, dst, n_synced), = seen
    assert src.parent == dst.parent == tmp_path / "sub" and src.name.endswith(".tmp")
    assert n_synced >= 1


def test_no_partial_checkpoint_is_ever_observable(ctx, tmp_path):
    """A reader polling the checkpoint path while training writes a checkpoint every iteration sees
    either no file or a complete, loadable one whose n_iter never goes back."""
    path = tmp_path / "ckpt.samlearn"
    observed, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            if path.exists():
                try:
                    observed.append(load_payload(path)[1]["n_iter"])
                except FileNotFoundError:
                    pass
                except Exception as exc:  # any partial file would land here
                    errors.append(repr(exc))
            time.sleep(0.001)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        tiny_embedder(random_state=0, max_iter=12, checkpoint_path=str(path), checkpoint_every=1).fit(
            smooth_images(2, ndim=2, seed=0))
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert len(observed) >= 3 and observed == sorted(observed) and observed[-1] <= 12
    assert load_payload(path)[1]["n_iter"] == 12
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.samlearn"]


# ===================================================================================== interruption

_TRAIN_SCRIPT = """
import json, sys, warnings
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from helpers import smooth_images, tiny_embedder
est = tiny_embedder(random_state=0, max_iter={max_iter}, checkpoint_path={ckpt!r},
                    checkpoint_every={every}, resume=True)
print("started", flush=True)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    est.fit(smooth_images(3, ndim=2, seed=0))
print(json.dumps({{"n_iter": est.n_iter_, "iterations": [h["iteration"] for h in est.history_],
                  "interrupted": est.interrupted_, "warnings": [str(x.message) for x in w]}}), flush=True)
"""


def _train_process(ckpt, max_iter, every):
    code = _TRAIN_SCRIPT.format(tests=str(TESTS), max_iter=max_iter, ckpt=str(ckpt), every=every)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(ROOT))


def _checkpoint_iter(path):
    try:
        return load_payload(path)[1]["n_iter"]
    except FileNotFoundError:
        return None


def _wait_for_checkpoint(proc, path, at_least, timeout=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        n = _checkpoint_iter(path) if path.exists() else None
        if n is not None and n >= at_least:
            return n
        if proc.poll() is not None:
            raise AssertionError(f"training ended before a checkpoint: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


@pytest.mark.slow  # a training process killed with SIGKILL: slow
def test_sigkill_mid_training_resumes_to_the_full_budget(tmp_path):
    """A run killed with SIGKILL (no chance to clean up) resumes from its last checkpoint, in another
    process with the same parameters (this test's own process: the killed run and the resumed one
    share nothing but the file on disk), and finishes exactly max_iter iterations with a continuous
    history; the checkpoint on disk is intact whenever the kill lands (even mid-write)."""
    ckpt, max_iter = tmp_path / "run.samlearn", 16
    proc = _train_process(ckpt, max_iter, every=1)
    _wait_for_checkpoint(proc, ckpt, at_least=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _checkpoint_iter(ckpt)  # must load: no partial file under the final name
    assert 2 <= killed_at < max_iter
    before = load_payload(ckpt)[1]["history"]

    est = tiny_embedder(random_state=0, max_iter=max_iter, checkpoint_path=str(ckpt), checkpoint_every=1,
                        resume=True).fit(smooth_images(3, ndim=2, seed=0))  # the killed run's parameters
    assert est.n_iter_ == max_iter and not est.interrupted_
    assert [h["iteration"] for h in est.history_] == list(range(1, max_iter + 1))
    assert est.history_[:killed_at] == before[:killed_at]
    final = load_payload(ckpt)[1]
    assert final["n_iter"] == max_iter and final["history"] == est.history_


def test_sigterm_stops_cleanly_with_a_final_checkpoint(tmp_path, monkeypatch):
    """SIGTERM (a batch scheduler's warning before SIGKILL) ends training after the current step
    like Ctrl-C: a usable partial model, a warning, and a checkpoint at the exact iteration reached,
    from which resume=True finishes the budget."""
    from samlearn import training
    orig = training.PairStream.sample
    calls = {"n": 0}

    def sample(self, rng):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 1:  # after three batches of two pairs
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(self, rng)

    monkeypatch.setattr(training.PairStream, "sample", sample)
    ckpt = tmp_path / "term.samlearn"
    images = smooth_images(3, ndim=2, seed=0)
    old_handler = signal.getsignal(signal.SIGTERM)
    with pytest.warns(UserWarning, match="interrupted after 3 iterations"):
        est = tiny_embedder(random_state=0, max_iter=30, checkpoint_path=str(ckpt), checkpoint_every=100).fit(images)
    assert signal.getsignal(signal.SIGTERM) is old_handler  # the handler is restored
    assert est.interrupted_ and est.n_iter_ == 3
    assert load_payload(ckpt)[1]["n_iter"] == 3
    monkeypatch.setattr(training.PairStream, "sample", orig)
    done = tiny_embedder(random_state=0, max_iter=6, checkpoint_path=str(ckpt), resume=True).fit(images)
    assert done.n_iter_ == 6 and [h["iteration"] for h in done.history_] == list(range(1, 7))


# ===================================================================================== determinism


def _state(est):
    return {k: v.clone() for k, v in est.network_.state_dict().items()}


def test_same_seed_same_weights_embeddings_and_landmarks_on_cpu():
    images = smooth_images(3, ndim=2, seed=0)
    a = tiny_embedder(random_state=11, max_iter=6).fit(images)
    b = tiny_embedder(random_state=11, max_iter=6).fit(images)
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ea, eb = a.embed(images[1]), b.embed(images[1])
    assert torch.equal(ea.global_map.data, eb.global_map.data) and torch.equal(ea.local_map.data, eb.local_map.data)
    pts = images[0].geometry.array_index_to_world(np.array([[10.0, 12.0], [45.0, 50.0], [30.0, 33.0]]))
    pa = OneShotLandmarkDetector(embedder=a).fit(images[0], pts).predict(images[1:])
    pb = OneShotLandmarkDetector(embedder=b).fit(images[0], pts).predict(images[1:])
    np.testing.assert_array_equal(pa, pb)


def test_resume_from_one_checkpoint_is_deterministic(tmp_path):
    images = smooth_images(3, ndim=2, seed=0)
    first = tmp_path / "a.samlearn"
    tiny_embedder(random_state=3, max_iter=3, checkpoint_path=str(first)).fit(images)
    second = tmp_path / "b.samlearn"
    second.write_bytes(first.read_bytes())
    r1 = tiny_embedder(random_state=3, max_iter=6, checkpoint_path=str(first), resume=True).fit(images)
    r2 = tiny_embedder(random_state=3, max_iter=6, checkpoint_path=str(second), resume=True).fit(images)
    s1, s2 = _state(r1), _state(r2)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [h["loss"] for h in r1.history_] == [h["loss"] for h in r2.history_]


# ===================================================================================== field of view


@pytest.mark.parametrize("mode, radius", [("sum", None), ("sum", "auto"), ("local", None), ("global", None)])
def test_landmarks_are_never_reported_outside_the_image(mode, radius):
    """The working grid of a rotated image is its axis-aligned bounding box; its corners are
    padding. A template point whose anatomy falls in such a corner (outside the query's field of
    view) must not be matched there: the answer stays inside the query image (found by fuzzing:
    the detector returned a point 45 mm outside a thin rotated image)."""
    from fake_embedder import draw_features, feature_map, identity_frame
    from samlearn.embedding import Embedding
    from samlearn.matching import match_points, template_vectors

    theta = np.deg2rad(35)
    d = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    source = ImageGeometry((40, 24), (1.0, 1.0), (0.0, 0.0), d)
    work = source.canonical(spacing=1.0)
    rng = np.random.default_rng(0)
    feats_g, feats_l = draw_features(rng, 32, 2, 20.0), draw_features(rng, 32, 2, 5.0)
    frame = identity_frame(2)
    query = Embedding(feature_map(work.strided(4), frame, *feats_g), feature_map(work.strided(2), frame, *feats_l),
                      work, source)
    corner = work.corners_world()
    target = corner[np.argmax(~source.contains(corner, margin=0.5))]  # a bounding-box corner outside the image
    target = target + (work.origin + work.extent_mm / 2 - target) * 0.05  # slightly inwards, still outside
    assert not source.contains(target[None])[0] and work.contains(target[None])[0]
    gv, lv = template_vectors(query, target[None])  # the anatomy at that corner
    res = match_points(gv, lv, query, mode=mode, search_radius_mm=radius)
    assert np.all(np.isfinite(res.points))
    assert source.contains(res.points, margin=0.5 + 1e-9)[0], "a landmark was placed outside the image"
    if mode != "local":  # the smooth global similarity leads to the image region nearest the target
        assert np.linalg.norm(res.points[0] - target) < 12.0
