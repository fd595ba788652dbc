"""Images with exact world geometry: the :class:`Image` type, its :class:`ImageGeometry`, readers,
input checks and integrity checks, and point files (samlearn CSV, 3D Slicer markups:
:mod:`samlearn.image.points_io`). Every other layer of samlearn builds on this one.

Points are world millimetres ``(x, y[, z])`` as SimpleITK reports them (LPS); arrays are in numpy
order ``(z, y, x)`` as ``SimpleITK.GetArrayFromImage`` returns them (see
:mod:`samlearn.image.geometry`).
"""
from .geometry import ImageGeometry, check_points
from .image import INTENSITY_PRESETS, RASTER_SUFFIXES, Image, normalize_intensity, read_image
from .inputs import check_images, image_items, load_item, read_item
from .points_io import POINT_SUFFIXES, lps_to_ras, ras_to_lps, read_points, write_points

__all__ = ["Image", "ImageGeometry", "read_image", "check_images", "check_points",
           "normalize_intensity", "image_items", "read_item", "load_item", "INTENSITY_PRESETS",
           "RASTER_SUFFIXES", "read_points", "write_points", "ras_to_lps", "lps_to_ras",
           "POINT_SUFFIXES"]
