"""Batch jobs over many images that lose nothing, on one machine or a cluster.

* :mod:`~samlearn.jobs.output` -- output checks, the exclusive lock, the per-image journal, atomic
  writes and the failures file;
* :mod:`~samlearn.jobs.tasks` -- the per-image work of ``embed``, ``detect``, ``match-lesions`` and
  batch ``register``, as small picklable settings;
* :mod:`~samlearn.jobs.engines` -- where the images are done: this process, a Dask cluster, or this
  rank's share under torchrun;
* :mod:`~samlearn.jobs.batch` -- :func:`run_batch`, which ties them together;
* :mod:`~samlearn.jobs.cluster` -- :func:`map_images`, any fitted estimator on a Dask cluster.
"""
from .batch import BatchResult, run_batch, state_paths
from .cluster import map_images
from .engines import dask_client, run_dask, run_serial, torchrun_shard
from .output import OutputBusyError, OutputLock, check_output_file, check_output_folder, failures_path
from .tasks import BatchTask, DetectTask, EmbedTask, LesionTask, RegisterTask, load_model, prepared

__all__ = ["run_batch", "BatchResult", "state_paths", "map_images", "dask_client", "run_dask", "run_serial",
           "torchrun_shard", "OutputBusyError", "OutputLock", "check_output_file", "check_output_folder",
           "failures_path", "BatchTask", "DetectTask", "EmbedTask", "LesionTask", "RegisterTask", "prepared",
           "load_model"]
