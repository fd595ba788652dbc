"""What is the paper's method and what is samlearn's, default by default.

samlearn implements SAM (Yan et al., IEEE TMI 2022) and adds steps of its own that were chosen on
development data (benchmarks/RESULTS.md). :data:`DIFFERENCES` lists every default that is not the
paper's, with the value that gives the paper's behaviour; :func:`paper_params` collects them per
estimator::

    det = OneShotLandmarkDetector(embedder=emb, **paper_params("OneShotLandmarkDetector"))

The documentation's "paper vs samlearn" page is generated from this table, and
``tests/test_paper.py`` checks each paper configuration against the paper's rule.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Difference", "DIFFERENCES", "paper_params"]


@dataclass(frozen=True)
class Difference:
    """One samlearn default that is not the paper's.

    Parameters
    ----------
    estimator : str
        The estimator's class name.
    parameter : str or None
        The parameter that switches it; None when the step cannot be switched off.
    default : object
        samlearn's default (a description when it depends on the preset).
    paper : object
        The value that gives the paper's behaviour (None with ``parameter`` None).
    what : str
        What samlearn's default does beyond the paper.
    """

    estimator: str
    parameter: str | None
    default: object
    paper: object
    what: str


_DETECTOR, _LESIONS = "OneShotLandmarkDetector", "LesionMatcher"
_AFFINE, _DEFORMABLE = "SAMAffineRegistrar", "SAMDeformableRegistrar"

_REGISTRATION = [
    ("robust", "ransac", None, "fits the affine robustly (RANSAC) against wrong matches; the paper fits "
                               "plain least squares"),
    ("n_refinements", 1, 0, "a refinement pass: the moving image resampled through the first affine, "
                            "embedded again and matched near each point (points mapped outside the moving "
                            "image, or near its faces, left out)"),
    ("search_radius_mm", "auto", None, "searches the local map only near the global map's peak; the paper "
                                       "searches the whole image"),
]

#: every samlearn default that is not the paper's
DIFFERENCES = (
    Difference("SAMEmbedder", "lr_schedule", "cosine", "constant",
               "decays the learning rate along a cosine over the budget; the paper keeps it constant"),
    Difference("SAMEmbedder", "warmup_iter", "100 or 500 (preset)", 0,
               "warms the learning rate up linearly over the first iterations"),
    Difference("SAMEmbedder", "preset", "auto", "ct or xray",
               "on a CPU, 'auto' picks samlearn's lighter ct-lite / xray-lite networks, which learn in "
               "minutes; on a GPU it picks the paper's ct / xray"),
    Difference("SAMEmbedder", "transform_scale", "0.75 (xray-lite), 1.0 (others)", 1.0,
               "xray-lite embeds X-rays at 0.75 of its training size"),
    Difference(_DETECTOR, "search_radius_mm", "auto", None,
               "coarse-to-fine: searches the local map only near the global map's peak"),
    Difference(_DETECTOR, "consistency", "coarse", None,
               "checks all points of a query jointly (a SAM-coarse prior) and searches disagreeing "
               "points again"),
    Difference(_DETECTOR, "refine", True, False, "sub-voxel (parabola) peak positions"),
    Difference(_LESIONS, "search_radius_mm", "auto", None,
               "coarse-to-fine: searches the local map only near the global map's peak"),
    Difference(_LESIONS, "cycle_threshold_mm", "auto", None,
               "a lesion is found only when its match maps back near the template lesion"),
    Difference(_LESIONS, "fov_margin_mm", "auto", 0.0,
               "a lesion matched at the border of the follow-up's field of view is not found"),
    Difference(_LESIONS, None, "always", None, "sub-voxel (parabola) peak positions"),
    *(Difference(_AFFINE, p, d, v, w) for p, d, v, w in _REGISTRATION),
    Difference(_AFFINE, None, "always", None, "sub-voxel (parabola) peak positions of the matches"),
    *(Difference(_DEFORMABLE, p, d, v, w) for p, d, v, w in _REGISTRATION),
    Difference(_DEFORMABLE, None, "always", None,
               "matches that disagree with the smoothed field (outlier_factor) or move more than "
               "max_displacement_mm are dropped before the field is estimated again; large values "
               "keep almost every match"),
)


def paper_params(estimator) -> dict:
    """The parameters that give an estimator the paper's behaviour where samlearn's differs.

    Parameters
    ----------
    estimator : str or type
        An estimator class or its name, e.g. ``"OneShotLandmarkDetector"``.

    Returns
    -------
    dict
        Parameter name to the paper's value (empty when no default differs). Steps that cannot be
        switched off (see :data:`DIFFERENCES`) are not in it.

    Raises
    ------
    ValueError
        For an estimator samlearn does not have.
    """
    name = estimator if isinstance(estimator, str) else getattr(estimator, "__name__", repr(estimator))
    known = {d.estimator for d in DIFFERENCES}
    if name not in known:
        raise ValueError(f"estimator must be one of {sorted(known)}, got {name!r}")
    out = {d.parameter: d.paper for d in DIFFERENCES if d.estimator == name and d.parameter is not None}
    if name == "SAMEmbedder":
        out.pop("preset")  # "ct" or "xray": the caller chooses by modality
        out.pop("transform_scale")  # the paper's presets use 1.0 already
    return out
