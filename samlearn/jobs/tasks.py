"""The per-image work of the batch jobs, as small picklable task objects.

A task holds only plain settings and file paths (never arrays or models), so it travels cheaply to
a worker process. :meth:`BatchTask.run` does one image and returns its result rows (strings, so a
result is the same bytes whichever process made it). What a task needs once per process (the
model, a fitted detector) is prepared on first use and kept in that process (:func:`prepared`):
a Dask worker loads the model once, however many images it is given.
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..apps import LesionMatcher, OneShotLandmarkDetector, SAMAffineRegistrar
from ..embedding import load, save_embedding
from ..exceptions import RegistrationError, RegistrationQualityWarning
from ..image import read_image

__all__ = ["BatchTask", "DetectTask", "LesionTask", "EmbedTask", "RegisterTask", "prepared", "model_identity",
           "load_model"]

_PREPARED = {}
_LOCK = threading.RLock()


def prepared(task: "BatchTask"):
    """What ``task`` needs once per process (a loaded model, a fitted detector), made on first use.

    Parameters
    ----------
    task : BatchTask
        The task.

    Returns
    -------
    object
        The result of ``task.prepare()``, shared by every later call with equal settings.
    """
    key = repr(sorted(task.settings().items()))
    with _LOCK:
        if key not in _PREPARED:
            _PREPARED.clear()  # one job per process at a time: do not hold old models
            _PREPARED[key] = task.prepare()
        return _PREPARED[key]


_MODELS = {}


def load_model(path):
    """Load a model file once per process (later calls with the same unchanged file share it).

    Parameters
    ----------
    path : str or path
        The model file.

    Returns
    -------
    SAMEmbedder
        The fitted embedder.
    """
    key = repr(sorted(model_identity(path).items()))
    with _LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load(path)
        return _MODELS[key]


def model_identity(path) -> dict:
    """The identity of a model file recorded in a job's settings: a resumed run must use the same.

    Parameters
    ----------
    path : str or path
        The model file.

    Returns
    -------
    dict
        Its absolute path, size and modification time.
    """
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _fmt(v) -> str:
    return f"{float(v):.3f}"


@dataclass(frozen=True)
class BatchTask:
    """Base of the per-image tasks: a model file, a thread count, and what to do with one image.

    Parameters
    ----------
    model : str
        The model file (``SAMEmbedder.save``).
    threads : int or None
        Torch threads in the process that runs the task (None: torch's choice).
    """

    model: str
    threads: int | None = None

    #: the header of the job's result table
    header = ()

    def settings(self) -> dict:
        """The settings that define the task's results (recorded in the job's journal).

        Returns
        -------
        dict
            JSON-serialisable settings, with the model file's identity.
        """
        s = asdict(self)
        s.pop("threads", None)
        s["model"] = model_identity(self.model)
        s["task"] = type(self).__name__
        return s

    def prepare(self):
        """Load what the task needs once per process.

        Returns
        -------
        object
            Here the loaded model; subclasses return what their :meth:`run` needs.
        """
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        return load_model(self.model)

    def run(self, image: str) -> list:  # pragma: no cover - abstract
        """Do one image.

        Parameters
        ----------
        image : str
            The image file (or DICOM folder).

        Returns
        -------
        list of list of str
            Its result rows.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class DetectTask(BatchTask):
    """One-shot landmark detection of the points marked on a template.

    Parameters
    ----------
    model : str
        The model file.
    threads : int or None
        Torch threads.
    template : str
        The template image.
    names : tuple of str
        The point names.
    points : tuple of tuple of float
        The template points, world mm (LPS).
    detector : tuple of (str, object)
        Keyword arguments of :class:`~samlearn.apps.OneShotLandmarkDetector`.
    """

    template: str = ""
    names: tuple = ()
    points: tuple = ()
    detector: tuple = field(default_factory=tuple)

    @property
    def header(self):
        """The columns of the result table: image, name, x, y[, z], score[, cycle_mm]."""
        axes = ["x", "y", "z"][: len(self.points[0])]
        cyc = ["cycle_mm"] if dict(self.detector).get("cycle_check") else []
        return ["image", "name", *axes, "score", *cyc]

    def prepare(self):
        """Load the model and fit the detector on the template.

        Returns
        -------
        OneShotLandmarkDetector
            The fitted detector.
        """
        model = super().prepare()
        det = OneShotLandmarkDetector(embedder=model, **dict(self.detector))
        return det.fit(self.template, np.asarray(self.points, dtype=np.float64))

    def run(self, image: str) -> list:
        """Find the points in one image.

        Parameters
        ----------
        image : str
            The image.

        Returns
        -------
        list of list of str
            One row per point: image, name, coordinates, score[, cycle distance].
        """
        res = prepared(self).predict([image], return_scores=True)
        pts, scores = res[0][0], res[1][0]
        cyc = res[2][0] if len(res) > 2 else None
        rows = []
        for j, name in enumerate(self.names):
            row = [image, name, *(_fmt(v) for v in pts[j]), _fmt(scores[j])]
            if cyc is not None:
                row.append(_fmt(cyc[j]))
            rows.append(row)
        return rows


@dataclass(frozen=True)
class LesionTask(BatchTask):
    """Follow-up lesion matching of the lesions marked on a template.

    Parameters
    ----------
    model : str
        The model file.
    threads : int or None
        Torch threads.
    template : str
        The template image.
    names : tuple of str
        The lesion names.
    lesions : tuple of tuple of float
        Centres or boxes, world mm.
    matcher : tuple of (str, object)
        Keyword arguments of :class:`~samlearn.apps.LesionMatcher`.
    """

    template: str = ""
    names: tuple = ()
    lesions: tuple = ()
    matcher: tuple = field(default_factory=tuple)

    def _ndim(self) -> int:
        return lesion_ndim(self.lesions)

    @property
    def header(self):
        """The columns of the result table: image, name, found, x, y[, z], score, cycle_mm."""
        return ["image", "name", "found", *["x", "y", "z"][: self._ndim()], "score", "cycle_mm"]

    def prepare(self):
        """Load the model and fit the matcher on the template.

        Returns
        -------
        LesionMatcher
            The fitted matcher.
        """
        model = super().prepare()
        return LesionMatcher(embedder=model, **dict(self.matcher)).fit(
            self.template, np.asarray(self.lesions, dtype=np.float64))

    def run(self, image: str) -> list:
        """Match the lesions in one image.

        Parameters
        ----------
        image : str
            The image.

        Returns
        -------
        list of list of str
            One row per lesion: image, name, found, coordinates, score, cycle distance.
        """
        res = prepared(self).match([image])
        return [[image, name, str(int(bool(res["found"][0, j]))), *(_fmt(v) for v in res["raw_points"][0, j]),
                 _fmt(res["scores"][0, j]), _fmt(res["cycle_mm"][0, j])] for j, name in enumerate(self.names)]


def lesion_ndim(lesions) -> int:
    """The dimension of lesion centres or boxes given as rows of 2, 3, 4 or 6 values.

    Parameters
    ----------
    lesions : sequence of sequence of float
        The lesions.

    Returns
    -------
    int
        2 or 3.
    """
    n = len(lesions[0])
    return {2: 2, 3: 3, 4: 2, 6: 3}[n]


@dataclass(frozen=True)
class EmbedTask(BatchTask):
    """Embed each image and save its maps as ``<folder>/<name>.<format>``.

    Parameters
    ----------
    model : str
        The model file.
    threads : int or None
        Torch threads.
    folder : str
        The output folder.
    file_names : tuple of (str, str)
        Image -> output name (without suffix), fixed before the job starts so that a resumed run
        names every file as the first one did.
    format : {"npz", "pt"}
        The file format.
    """

    folder: str = ""
    file_names: tuple = ()
    format: str = "npz"

    header = ("image", "file", "global_shape", "local_shape")

    def run(self, image: str) -> list:
        """Embed one image and save its file.

        Parameters
        ----------
        image : str
            The image.

        Returns
        -------
        list of list of str
            One row: image, file written, shapes of the global and local maps.
        """
        emb = prepared(self).transform([image])[0]
        path = save_embedding(emb, Path(self.folder) / f"{dict(self.file_names)[image]}.{self.format}")
        shape = lambda m: "x".join(str(s) for s in m.data.shape)  # noqa: E731
        return [[image, str(path), shape(emb.global_map), shape(emb.local_map)]]


@dataclass(frozen=True)
class RegisterTask(BatchTask):
    """SAM-affine registration of each moving image to one fixed image; one transform file each.

    Parameters
    ----------
    model : str
        The model file.
    threads : int or None
        Torch threads.
    fixed : str
        The fixed image.
    folder : str
        The output folder (``<name>.tfm`` per moving image).
    file_names : tuple of (str, str)
        Moving image -> transform file name (without suffix).
    registrar : tuple of (str, object)
        Keyword arguments of :class:`~samlearn.apps.SAMAffineRegistrar`.
    """

    fixed: str = ""
    folder: str = ""
    file_names: tuple = ()
    registrar: tuple = field(default_factory=tuple)

    header = ("moving", "transform", "matches", "inliers")

    def prepare(self):
        """Load the model and read the fixed image once.

        Returns
        -------
        tuple
            The model and the fixed image.
        """
        return super().prepare(), read_image(self.fixed)

    def run(self, image: str) -> list:
        """Register one moving image and write its transform (fixed -> moving world points).

        Parameters
        ----------
        image : str
            The moving image.

        Returns
        -------
        list of list of str
            One row: moving image, transform file, confident matches, inliers.

        Raises
        ------
        RegistrationError
            When the registration fails, or its own evidence flags it (``quality_.ok`` False): the
            image goes to the failures file and no transform is written.
        """
        model, fixed = prepared(self)
        with warnings.catch_warnings():  # a flagged result is reported as this image's failure
            warnings.simplefilter("ignore", RegistrationQualityWarning)
            reg = SAMAffineRegistrar(embedder=model, **dict(self.registrar)).fit(fixed, image)
        if not reg.quality_.ok:
            raise RegistrationError("flagged as likely wrong, no transform written: " + "; ".join(reg.quality_.reasons))
        out = reg.transform_.save(Path(self.folder) / f"{dict(self.file_names)[image]}.tfm")
        inl = getattr(reg, "inlier_mask_", None)
        n_inl = len(reg.matches_) if inl is None else int(sum(bool(v) for v in inl))
        return [[image, str(out), str(len(reg.matches_)), str(n_inl)]]
