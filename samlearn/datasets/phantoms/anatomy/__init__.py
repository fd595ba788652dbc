"""Analytic anatomy of the torso phantoms: :class:`Torso` (one subject) and one module per organ
system (spine, body wall, lungs and airways, heart and vessels, solid abdominal organs,
digestive tube, rest of the skeleton, landmarks)."""

from .torso import Torso

__all__ = ["Torso"]
