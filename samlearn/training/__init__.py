"""Self-supervised training of SAM (paper §III-B, §IV-B): patch pairs with exact voxel
correspondences, the stream of training samples, the optimisation loop and data-parallel runs.

Works on preprocessed arrays (numpy order) and torch networks; knows nothing of estimators.
:class:`~samlearn.SAMEmbedder` drives it.

* :mod:`~samlearn.training.patch_transform`, :mod:`~samlearn.training.elastic` -- the transform
  from patch to source indices (affine + smooth elastic), exactly invertible.
* :mod:`~samlearn.training.patch_pairs`, :mod:`~samlearn.training.sampler` -- drawing pairs of
  overlapping patches and their positives (the paper's crop logic, never a flip).
* :mod:`~samlearn.training.stream` -- the endless, seeded stream of samples and its DataLoader.
* :mod:`~samlearn.training.heatmaps` -- training a landmark heatmap network on (pseudo-)labels.
* :mod:`~samlearn.training.loop` -- the optimisation loop; :mod:`~samlearn.training.distributed`
  -- data-parallel training under ``torchrun``; :mod:`~samlearn.training.run` -- one run put
  together (stream, loader, wrappers, progress, clean stops).
"""
from .distributed import DistributedContext, setup_distributed, sync_buffers, torchrun_env
from .heatmaps import HeatmapTraining, train_heatmap_net
from .loop import TrainState, lr_at, train
from .patch_pairs import CrossPatchPair, PatchPair, estimate_overlap
from .patch_transform import PatchTransform, feature_grid_positions, patch_to_feature_index
from .run import run_training, sigterm_as_interrupt
from .sampler import PatchPairSampler, sampler_for_preset, sampler_from_config
from .stream import PairStream, make_loader

__all__ = ["PatchTransform", "PatchPair", "CrossPatchPair", "PatchPairSampler", "sampler_for_preset",
           "sampler_from_config", "estimate_overlap", "feature_grid_positions", "patch_to_feature_index",
           "PairStream", "make_loader", "train", "TrainState", "lr_at", "DistributedContext",
           "setup_distributed", "torchrun_env", "sync_buffers", "run_training", "sigterm_as_interrupt",
           "HeatmapTraining", "train_heatmap_net"]
