"""Where a batch job's images are done: in this process, on a Dask cluster, or as torchrun ranks.

Every engine yields ``(image, rows, error)`` for each image as it finishes (in any order): the
result rows on success, or the error message of a bad input, which never stops the others. The
tasks travel as small settings objects and the images as paths, never as arrays; each worker
process loads the model once (:func:`samlearn.jobs.tasks.prepared`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from .._utils.messages import one_line
from .._utils.parallel import progress_bar
from .tasks import BatchTask

__all__ = ["run_one", "run_serial", "run_dask", "torchrun_shard", "dask_client", "with_progress"]

logger = logging.getLogger(__name__)


def run_one(task: BatchTask, image: str) -> tuple:
    """Do one image, turning its error into a message instead of raising.

    Parameters
    ----------
    task : BatchTask
        The task.
    image : str
        The image.

    Returns
    -------
    rows : list or None
        The result rows, or None on failure.
    error : str or None
        The error message on failure (``Type: message``), or None.
    """
    try:
        return task.run(image), None
    except Exception as exc:  # noqa: BLE001 - one bad input must not stop the others
        return None, f"{type(exc).__name__}: {one_line(exc)}"


def run_serial(task: BatchTask, images):
    """Do the images one after the other in this process.

    Parameters
    ----------
    task : BatchTask
        The task.
    images : list of str
        The images.

    Yields
    ------
    tuple
        ``(image, rows, error)`` per image, in order.
    """
    for image in images:
        rows, error = run_one(task, image)
        yield image, rows, error


def _task_token(task: BatchTask) -> str:
    return hashlib.sha256(json.dumps(task.settings(), sort_keys=True).encode()).hexdigest()[:16]


def run_dask(task: BatchTask, images, client):
    """Do the images on a Dask distributed cluster.

    One task per image, submitted under a key derived from the job's settings and the image, so
    the cluster never runs the same image twice at once. When a worker dies, the scheduler gives its
    unfinished images to the other workers (Dask's ``allowed-failures`` decides how often an image
    that kills its worker is tried again); nothing is lost and, as results are recorded per image
    by the caller, nothing is counted twice.

    Parameters
    ----------
    task : BatchTask
        The task (sent to the workers; small).
    images : list of str
        The images, as paths the workers can read (a shared file system).
    client : distributed.Client
        The cluster's client.

    Yields
    ------
    tuple
        ``(image, rows, error)`` per image, as they finish.
    """
    from distributed import as_completed

    token = _task_token(task)
    futures = {}
    for image in images:
        key = f"samlearn-{token}-{hashlib.sha256(image.encode()).hexdigest()[:16]}"
        futures[client.submit(run_one, task, image, key=key, pure=False)] = image
    for fut in as_completed(list(futures)):
        image = futures[fut]
        try:
            rows, error = fut.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after repeated worker deaths
            rows, error = None, f"{type(exc).__name__}: {one_line(exc)}"
        yield image, rows, error


def dask_client(scheduler: str | None = None, n_workers: int | None = None, threads: int | None = None):
    """A Dask client: on an existing cluster, or on a cluster of local worker processes.

    Parameters
    ----------
    scheduler : str, optional
        The scheduler's address (``tcp://host:8786``) or a scheduler file (``.json``) of a running
        cluster.
    n_workers : int, optional
        Start a local cluster of this many worker processes instead.
    threads : int, optional
        Threads per local worker (default 1).

    Returns
    -------
    distributed.Client
        The client (close it, and its local cluster, when done).

    Raises
    ------
    ImportError
        When Dask's ``distributed`` package is not installed (``pip install samlearn[dask]``).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError("running on a Dask cluster needs the 'distributed' package: "
                          "pip install 'samlearn[dask]'") from exc
    if scheduler is not None:
        if scheduler.endswith(".json"):
            return Client(scheduler_file=scheduler)
        return Client(scheduler)
    cluster = LocalCluster(n_workers=n_workers or 2, threads_per_worker=threads or 1, processes=True,
                           dashboard_address=None)
    return Client(cluster)


def torchrun_shard(images):
    """This process's share of the images when it runs as one rank of ``torchrun``.

    Parameters
    ----------
    images : list of str
        All the images, in the same order in every rank.

    Returns
    -------
    shard : list of str
        ``images[rank::world_size]``.
    rank, world_size : int
        This rank and the number of ranks (0 and 1 outside torchrun).
    """
    if not all(v in os.environ for v in ("RANK", "WORLD_SIZE")):
        return list(images), 0, 1
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return list(images)[rank::world], rank, world


def with_progress(results, total: int, verbose):
    """Show a progress bar over the images while passing the results through.

    Parameters
    ----------
    results : iterable
        ``(image, rows, error)`` tuples.
    total : int
        The number of images.
    verbose : bool
        Whether to show the bar.

    Yields
    ------
    tuple
        The same tuples.
    """
    bar = progress_bar(verbose, total, "images")
    try:
        for item in results:
            if bar is not None:
                bar.update(1)
            yield item
    finally:
        if bar is not None:
            bar.close()
