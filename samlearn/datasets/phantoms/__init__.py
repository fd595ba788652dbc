"""Synthetic CT-like torso phantoms (3D) and AP radiograph-like projections (2D) with exact ground
truth: named landmarks in world millimetres, organ label maps, lesion boxes and contrast phase.

Every subject is drawn from its own random streams: anatomy (body habitus, organ shape and
position, breathing), pose, scan geometry (field of view, spacing, origin, direction), contrast
enhancement, noise and lesions each come from a separate child of ``numpy.random.SeedSequence``,
so the same ``random_state`` always gives identical images, and subject ``i`` does not depend on
``n_subjects``.

The anatomy is analytic: organs are ellipsoids, tubes and curved plates in a patient frame (x to
the patient's left, y posterior, z superior, millimetres: the LPS convention of SimpleITK),
painted directly on the output voxel grid through the exact world geometry. Landmarks are
computed from the same per-subject shapes (never from a template), then mapped to world
coordinates.

Modules, from the data up:

* :mod:`.tables`: phases, organ labels, landmark names, tissue intensities;
* :mod:`.shapes` and :mod:`.canvas`: geometry helpers, primitive painters and the painting
  target (a voxel grid or a list of points);
* :mod:`.anatomy`: :class:`~.anatomy.Torso`, one subject, one mixin per organ system;
* :mod:`.scan` and :mod:`.lesions`: pose, field of view, grid, intensities, CT and radiograph
  rendering; lesion placement;
* :mod:`.generate`: the random streams and the loop over subjects and scans;
* :mod:`.api`: :func:`make_phantoms` (independent subjects) and :func:`make_phantom_pair` (two
  scans of the same subjects with the exact rigid transform between them).
"""

from .api import make_phantom_pair, make_phantoms
from .tables import LANDMARK_NAMES, ORGAN_NAMES, PHASES

__all__ = ["make_phantoms", "make_phantom_pair", "PHASES", "LANDMARK_NAMES", "ORGAN_NAMES"]
