"""Datasets: synthetic phantoms with exact ground truth (landmarks, organ labels, lesion boxes,
contrast phase) for tests, demos and benchmarks."""

from ._phantoms import LANDMARK_NAMES, ORGAN_NAMES, PHASES, make_phantoms

__all__ = ["make_phantoms", "LANDMARK_NAMES", "ORGAN_NAMES", "PHASES"]
