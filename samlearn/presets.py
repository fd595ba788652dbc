"""Named configurations of :class:`~samlearn.SAMEmbedder`.

* ``"ct"`` and ``"xray"`` follow the paper (§IV-B): CT resampled to isotropic 2 mm,
  32 x 96 x 96 patches, batch 8, 3D ResNet-18; X-ray resized to 512 x 512, 400 x 400 patches,
  batch 16, 2D ResNet-34; both with stem stride 1, global stride 16 in-plane and local stride 2,
  RAdam at 1e-4 for 25k iterations. They want a GPU. One difference: like every preset they warm
  the learning rate up and decay it along a cosine (samlearn's schedule); the paper keeps it
  constant (``lr_schedule="constant", warmup_iter=0``).
* ``"ct-lite"`` and ``"xray-lite"`` are samlearn's lighter variants that learn something useful in
  minutes on a 2-core CPU: half / quarter width, a strided stem, smaller patches and batches, local
  stride 4, depthwise-separable heads and a larger learning rate (a short budget wants it). The
  xray-lite settings (a fourth ResNet stage for a receptive field covering most of the skull, lr
  3e-3, and embedding at ``transform_scale`` 0.75 of its 512 x 512 training size) were chosen on
  the cephalometric development split only (``benchmarks/gpu/tune_xray.py``; the measurements are
  in benchmarks/RESULTS.md).

``"auto"`` picks ``"ct"`` / ``"xray"`` on a GPU and the lite variants on a CPU, by the images'
dimensionality. Every key can be overridden by the estimator parameter of the same name.
"""
from __future__ import annotations

import copy

__all__ = ["PRESETS", "get_preset", "resolve_preset_name"]

_COMMON = dict(
    embed_dim=128,
    head="conv",
    n_pos=100,
    n_hard=500,
    n_random=1000,
    n_local=500,
    tau=0.5,
    delta_mm=3.0,
    overlap=(0.2, 1.0),
    lr_schedule="cosine",
    weight_decay=0.0,
    # augmentation (paper Table VI): crop + scaling + intensity jitter; X-ray adds rotation and mild
    # elastic deformation (+-15 degrees per crop, i.e. relative rotations within 30 degrees)
    scale_anisotropy=0.0,
    rotation_axes="axial",
    elastic_magnitude=0.02,
    elastic_grid=4,
    noise_std=0.0,
    transform_scale=1.0,   # transform at the training resolution
)

#: preset name -> estimator parameters (use :func:`get_preset` for a copy)
PRESETS = {
    "ct": dict(
        _COMMON, ndim=3, spacing_mm=2.0, image_size=None, intensity="ct",
        patch_shape=(32, 96, 96), batch_size=8,
        depth="resnet18", width=1.0, stem_stride=(1, 1, 1), stem_kernel=7,
        stage_strides=((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)), n_stages=4, local_level=0,
        fpn_channels=128, n_candidates=20000,
        lr=1e-4, warmup_iter=500, max_iter=25000, max_time=None,
        scale=(0.8, 1.25), rotation_deg=0.0, elastic=False, intensity_jitter=0.1,
    ),
    "xray": dict(
        _COMMON, ndim=2, spacing_mm=None, image_size=(512, 512), intensity="xray",
        patch_shape=(400, 400), batch_size=16,
        depth="resnet34", width=1.0, stem_stride=(1, 1), stem_kernel=7,
        stage_strides=((2, 2), (2, 2), (2, 2), (2, 2)), n_stages=4, local_level=0,
        fpn_channels=128, n_candidates=5000,
        lr=1e-4, warmup_iter=500, max_iter=25000, max_time=None,
        scale=(0.8, 1.25), rotation_deg=15.0, elastic=True, intensity_jitter=0.1,
    ),
    "ct-lite": dict(
        _COMMON, ndim=3, spacing_mm=2.0, image_size=None, intensity="ct",
        patch_shape=(32, 64, 64), batch_size=4,
        depth="resnet18", width=0.25, stem_stride=(1, 2, 2), stem_kernel=3,
        stage_strides=((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)), n_stages=4, local_level=0,
        fpn_channels=64, n_candidates=20000,
        lr=1e-3, warmup_iter=100, max_iter=3000, max_time=None,
        scale=(0.8, 1.25), rotation_deg=0.0, elastic=False, intensity_jitter=0.1,
    ),
    "xray-lite": dict(
        _COMMON, ndim=2, spacing_mm=None, image_size=(512, 512), intensity="xray",
        patch_shape=(256, 256), batch_size=4,
        depth="resnet18", width=0.5, stem_stride=(2, 2), stem_kernel=7,
        stage_strides=((2, 2), (2, 2), (2, 2), (2, 2)), n_stages=4, local_level=0,
        fpn_channels=64, head="separable", n_candidates=5000,
        lr=3e-3, warmup_iter=100, max_iter=6000, max_time=None,
        scale=(0.8, 1.25), rotation_deg=15.0, elastic=True, intensity_jitter=0.1,
        transform_scale=0.75,
    ),
}


def resolve_preset_name(preset: str, ndim: int, cuda: bool) -> str:
    """The preset that ``preset`` names for images of dimension ``ndim``.

    Parameters
    ----------
    preset : str
        ``"auto"`` or a key of :data:`PRESETS`.
    ndim : {2, 3}
        The images' dimension (3: CT, 2: X-ray), used by ``"auto"``.
    cuda : bool
        Whether a GPU trains: ``"auto"`` then picks ``"ct"`` / ``"xray"``, else the lite variants.

    Returns
    -------
    str
        A key of :data:`PRESETS`.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if preset == "auto":
        base = "ct" if ndim == 3 else "xray"
        return base if cuda else base + "-lite"
    if preset not in PRESETS:
        raise ValueError(f"preset must be 'auto' or one of {sorted(PRESETS)}, got {preset!r}")
    return preset


def get_preset(name: str) -> dict:
    """A copy of a named configuration.

    Parameters
    ----------
    name : str
        A key of :data:`PRESETS` (``"auto"`` is resolved by :func:`resolve_preset_name` first).

    Returns
    -------
    dict
        Estimator parameter name -> value, a deep copy (safe to modify).

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return copy.deepcopy(PRESETS[name])
