"""Any fitted estimator's per-image method on a Dask cluster, results identical to one process."""
from __future__ import annotations

__all__ = ["map_images"]


def _call(estimator, method: str, image, kwargs: dict):
    return getattr(estimator, method)([image], **kwargs)


def map_images(estimator, images, method: str = "predict", *, client, **kwargs) -> list:
    """Call ``estimator.<method>([image])`` for every image on a Dask cluster.

    The fitted estimator is sent once to every worker (``client.scatter(..., broadcast=True)``), and
    the images travel as what they are given as: pass file paths (on a file system the workers
    share) so that no pixel array is pickled. Each image is one task: a worker that dies has its
    images redone by the others.

    Parameters
    ----------
    estimator : estimator
        A fitted samlearn estimator (e.g. :class:`~samlearn.OneShotLandmarkDetector`,
        :class:`~samlearn.SAMEmbedder`).
    images : list of str
        Image paths.
    method : str, default "predict"
        The method to call (``predict``, ``transform``, ``match``, ...).
    client : distributed.Client
        The cluster's client (see :func:`samlearn.jobs.dask_client`).
    **kwargs
        Further keyword arguments of the method (e.g. ``return_scores=True``).

    Returns
    -------
    list
        Per image, in input order, what ``getattr(estimator, method)([image], **kwargs)`` returns
        in this process.
    """
    if not hasattr(estimator, method):
        raise ValueError(f"method: {type(estimator).__name__} has no method '{method}'")
    remote = client.scatter(estimator, broadcast=True)
    futures = [client.submit(_call, remote, method, image, kwargs, pure=False) for image in images]
    return client.gather(futures)
