"""Loading any samlearn model file (:func:`samlearn.load`)."""
from __future__ import annotations

from ..exceptions import ModelFileError
from .config import loading_device
from .estimator import SAMEmbedder
from .model_file import load_payload, network_from_state, read_embedder_meta

__all__ = ["load", "embedder_from_payload"]


def load(path):
    """Load a samlearn model file, never running code from it.

    Parameters
    ----------
    path : str or path
        A file written by ``SAMEmbedder.save`` (or a training checkpoint).

    Returns
    -------
    SAMEmbedder
        The fitted model, on the GPU when its ``device`` asks for one and there is one, else on
        the CPU.

    Raises
    ------
    ModelFileError
        For a file that is not an intact samlearn model file (damaged, truncated, unsafe, or of
        an unknown kind).
    """
    file_kind, meta, tensors, _ = load_payload(path)
    if file_kind == "SAMEmbedder":
        return embedder_from_payload(meta, tensors, source=str(path))
    if file_kind == "SelfTrainedLandmarkDetector":
        raise ModelFileError(f"model file '{path}' holds a SelfTrainedLandmarkDetector, not an embedder; "
                             f"load it with samlearn.SelfTrainedLandmarkDetector.load(path)")
    raise ModelFileError(f"model file '{path}' holds an unknown kind of model: {file_kind!r}")


def embedder_from_payload(meta: dict, tensors: dict, source=None) -> SAMEmbedder:
    """A fitted :class:`SAMEmbedder` from the metadata and tensors of a model file.

    Parameters
    ----------
    meta, tensors : dict
        As :func:`~samlearn.embedding.model_file.load_payload` returns them.
    source : str, optional
        Names the file in error messages.

    Returns
    -------
    SAMEmbedder
        On the device its parameters ask for when there is one, else on the CPU; with the
        optimiser state when the file holds one (a checkpoint), so training can continue.
    """
    params, fitted, net_cfg = read_embedder_meta(meta, SAMEmbedder._get_param_names(), source)
    net = network_from_state(net_cfg, tensors, f"model file {source!r}")
    est = SAMEmbedder(**params)
    device = loading_device(est.device)
    est.network_ = net.to(device).eval()
    est.device_ = device
    for name, value in fitted.items():
        setattr(est, name, value)
    if isinstance(tensors, dict) and "optimizer" in tensors:
        est._optimizer_state = tensors["optimizer"]
    return est
