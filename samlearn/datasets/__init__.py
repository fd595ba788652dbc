"""Datasets: synthetic phantoms with exact ground truth (landmarks, organ labels, lesion boxes,
contrast phase) for tests, demos and benchmarks."""

from ._phantoms import LANDMARK_NAMES, ORGAN_NAMES, PHASES, make_phantom_pair, make_phantoms

__all__ = ["make_phantoms", "make_phantom_pair", "LANDMARK_NAMES", "ORGAN_NAMES", "PHASES"]
