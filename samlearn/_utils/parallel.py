"""Threads for per-image work: thread counts, ordered thread maps and progress bars.

torch and numpy release the GIL in their kernels, so images embedded and matched in threads run in
parallel without copying a model or an image into other processes. :func:`limit_threads` bounds
torch's and the BLAS libraries' threads during a block; :func:`thread_map` computes an ordered map
ahead in a bounded pool, :func:`thread_map_list` collects it under a progress bar;
:func:`progress_bar` is a tqdm bar when ``verbose``.
"""
from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from typing import Optional

import joblib
import torch

from .validation import Interval, check_param

__all__ = ["N_JOBS_CONSTRAINT", "effective_n_jobs", "limit_threads", "thread_map", "thread_map_list",
           "progress_bar"]


#: the declared constraint of every ``n_jobs`` parameter: None, or a non-zero int (-1: all cores)
N_JOBS_CONSTRAINT = [None, Interval(Integral, 1, None), Interval(Integral, None, -1)]


def effective_n_jobs(n_jobs) -> int:
    """The number of workers ``n_jobs`` means, as joblib reads it.

    Parameters
    ----------
    n_jobs : int or None
        None: 1; a positive count; -1: all cores, -2: all but one, ...

    Returns
    -------
    int
        The worker count.
    """
    check_param(n_jobs, N_JOBS_CONSTRAINT, "n_jobs")
    if n_jobs is None:
        return 1
    return int(joblib.effective_n_jobs(int(n_jobs)))


_THREADPOOLS = None


def _threadpool_controller():
    """threadpoolctl's view of the loaded BLAS libraries (numpy's and scipy's OpenBLAS / MKL), made
    once: building one scans the whole process, limiting through it is cheap."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        try:
            from threadpoolctl import ThreadpoolController  # a scikit-learn dependency
            _THREADPOOLS = ThreadpoolController()
        except ImportError:  # pragma: no cover
            _THREADPOOLS = False
    return _THREADPOOLS or None


@contextlib.contextmanager
def limit_threads(n: Optional[int]):
    """Limit torch's CPU threads and the BLAS threads of numpy / scipy during a block.

    Per-image work (embedding one image, matching, RANSAC, small matrix products) runs faster on
    one thread than on two competing pools, so a thread setting applies to all of it, not to the
    network only.

    Parameters
    ----------
    n : int or None
        Threads during the block; None leaves the settings alone. torch's count is restored
        afterwards.
    """
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    ctl = _threadpool_controller()
    try:
        with (ctl.limit(limits=int(n), user_api="blas") if ctl is not None else contextlib.nullcontext()):
            yield
    finally:
        torch.set_num_threads(old)


def thread_map(fn, n: int, n_jobs: int, *, torch_threads: Optional[int] = None):
    """Yield ``fn(0), ..., fn(n - 1)`` in order, computed ahead by a pool of threads.

    Parameters
    ----------
    fn : callable
        Called with each index.
    n : int
        Number of calls.
    n_jobs : int
        Threads; serial when ``n_jobs <= 0`` or ``n == 1``. At most ``2 * n_jobs`` results wait,
        so memory stays bounded.
    torch_threads : int, optional
        Each task runs with that many torch (and BLAS) threads, the process's count restored
        afterwards; None leaves the thread settings alone (for light work such as reading images).

    Yields
    ------
    object
        The results, in index order.
    """
    if n_jobs <= 0 or n == 1:
        for i in range(n):
            yield fn(i)
        return
    task = fn
    if torch_threads is not None:
        def task(i):
            torch.set_num_threads(int(torch_threads))  # per thread: its OpenMP team size
            return fn(i)
    with limit_threads(torch_threads), ThreadPoolExecutor(max_workers=n_jobs) as pool:
        pending = deque()
        nxt = 0
        try:
            while nxt < n or pending:
                while nxt < n and len(pending) < 2 * n_jobs:
                    pending.append(pool.submit(task, nxt))
                    nxt += 1
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def thread_map_list(fn, n: int, n_jobs: int, *, torch_threads: Optional[int] = None, verbose=False,
                    desc: str = "") -> list:
    """``[fn(0), ..., fn(n - 1)]`` computed by :func:`thread_map`, under a progress bar.

    Parameters
    ----------
    fn, n, n_jobs, torch_threads
        As in :func:`thread_map`.
    verbose : bool or int, default False
        A progress bar over the calls (:func:`progress_bar`).
    desc : str, default ""
        The bar's label.

    Returns
    -------
    list
        The results, in index order.
    """
    bar = progress_bar(verbose, n, desc)
    out = []
    try:
        for result in thread_map(fn, n, n_jobs, torch_threads=torch_threads):
            out.append(result)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def progress_bar(verbose, total: int, desc: str, unit: str = "image"):
    """A tqdm progress bar when ``verbose``.

    Parameters
    ----------
    verbose : bool or int
        Whether to show one.
    total : int
        Number of steps.
    desc, unit : str
        Label and unit of the bar.

    Returns
    -------
    tqdm.tqdm or None
        The bar (close it when done), or None when not ``verbose``.
    """
    if not verbose:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
