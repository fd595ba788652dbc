"""Run a per-image task over many images so that nothing is lost.

:func:`run_batch` takes the output's lock, opens its journal (resuming it on request), runs the
images that are not done yet on an engine (this process, a Dask cluster, or this rank's share under
torchrun), records each result durably as it arrives, and when all are done writes the final table
in input order, the failures file (``<output stem>.failures.csv``: ``image,error``), and removes the
journal. A kill loses at most the images in flight; ``resume=True`` then finishes the job and writes
exactly the table an uninterrupted run would have written.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from .engines import run_dask, run_serial, torchrun_shard, with_progress
from .output import Journal, OutputLock, csv_text, read_journal, write_failures, write_text
from .tasks import BatchTask

__all__ = ["BatchResult", "run_batch", "state_paths"]

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What a batch job did.

    Parameters
    ----------
    n_images : int
        Images in the job.
    rows : list of list of str
        The result rows of the finished images, in input order.
    failures : list of (str, str)
        (image, error) of the images that failed, in input order.
    resumed : int
        Images found done in the journal of an earlier run.
    failures_file : pathlib.Path or None
        The failures file written (None when nothing failed or nothing was written).
    """

    n_images: int
    rows: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    resumed: int = 0
    failures_file: Path | None = None

    @property
    def exit_code(self) -> int:
        """0 when every image is done, 3 when some failed."""
        return 3 if self.failures else 0


def state_paths(output) -> tuple:
    """The journal and lock files of a job writing ``output``.

    Parameters
    ----------
    output : str or path
        The output file, or folder (its state files go inside it).

    Returns
    -------
    journal, lock : pathlib.Path
        ``<output>.journal`` and ``<output>.lock`` beside a file; ``.samlearn.journal`` and
        ``.samlearn.lock`` inside a folder.
    """
    p = Path(output)
    if p.is_dir():
        return p / ".samlearn.journal", p / ".samlearn.lock"
    return p.with_name(p.name + ".journal"), p.with_name(p.name + ".lock")


def _write_table(path, header, rows) -> None:
    write_text(path, csv_text(header, rows))


def _collect(images, done: dict, failed: dict) -> tuple:
    rows, failures = [], []
    for image in images:
        if image in done:
            rows.extend(done[image]["rows"])
        else:
            failures.append((image, failed.get(image, "not done")))
    return rows, failures


def _barrier() -> None:
    """Wait for every torchrun rank (a Gloo process group made for the purpose when none exists)."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    try:
        dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def run_batch(task: BatchTask, images, output, *, table=None, resume: bool = False, client=None,
              verbose: bool = False, write=None) -> BatchResult:
    """Run ``task`` on every image, durably.

    Parameters
    ----------
    task : BatchTask
        The per-image task.
    images : list of str
        The images, in the order of the final table. Duplicates are not allowed.
    output : str or path
        The job's output (a file, or a folder made beforehand): its lock and journal sit beside or
        inside it, and its failures file beside it.
    table : str or path, optional
        The final table's file (default ``output``).
    resume : bool, default False
        Continue an interrupted run from its journal (skipping the images it holds).
    client : distributed.Client, optional
        Run the images on this Dask cluster instead of in this process.
    verbose : bool, default False
        Show a progress bar over the images.
    write : callable, optional
        ``write(table, header, rows)`` writes the final table (default: an atomic CSV file).

    Returns
    -------
    BatchResult
        The rows, the failures and the exit code. Under torchrun, every rank does its share
        (``images[rank::world_size]``) and rank 0 writes the final table and failures file once all
        ranks are done.
    """
    images = list(images)
    if len(set(images)) != len(images):
        raise ValueError("images: each image may appear only once in a job")
    write = write or _write_table
    table = Path(output if table is None else table)
    base, lock_path = state_paths(output)
    shard, rank, world = torchrun_shard(images)
    journals = [base] if world == 1 else [base.with_name(f"{base.name}.rank{r}-of-{world}") for r in range(world)]
    if world > 1:
        lock_path = lock_path.with_name(f"{lock_path.name}.rank{rank}-of-{world}")
    settings = task.settings()
    result = BatchResult(n_images=len(images))
    with OutputLock(lock_path):
        journal = Journal(journals[rank], settings).open(resume)
        try:
            todo = [im for im in shard if im not in journal.done]
            result.resumed = len(shard) - len(todo)
            if result.resumed:
                logger.info("resuming: %d of %d images already done", result.resumed, len(shard))
            engine = run_dask(task, todo, client) if client is not None else run_serial(task, todo)
            for image, rows, error in with_progress(engine, len(todo), verbose):
                journal.record(image, rows, error)
                if error is not None:
                    logger.warning("%s: failed: %s", image, error)
                else:
                    logger.debug("%s: done", image)
        finally:
            journal.close()
        done, failed = journal.done, journal.failed
        if world > 1:
            _barrier()
            if rank != 0:
                return result
            for other in journals[1:]:  # rank 0 gathers the other ranks' records
                d, f = read_journal(other, settings)
                done.update(d)
                failed.update(f)
        result.rows, result.failures = _collect(images, done, failed)
        write(table, list(task.header), result.rows)
        result.failures_file = write_failures(output, result.failures)
        for path in journals:
            path.unlink(missing_ok=True)
    return result
