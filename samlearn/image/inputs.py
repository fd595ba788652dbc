"""What samlearn accepts where it asks for images: one image or a list of them, each an
:class:`~samlearn.image.Image`, a ``SimpleITK.Image`` or a path (file or DICOM folder).

:func:`image_items` checks the types without reading anything (the lazy paths read one image at a
time with :func:`load_item`); :func:`check_images` reads them all. Raw numpy arrays are refused:
their spacing and origin would be guessed.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .image import Image, _from_sitk_named, read_image

__all__ = ["image_items", "read_item", "load_item", "check_images"]


def read_item(item, what: str) -> Image:
    """One item of :func:`image_items` as an :class:`Image` (read from disk when a path).

    Parameters
    ----------
    item : Image, SimpleITK.Image, str or path
        The item.
    what : str
        Its name in error messages (e.g. ``"images[3]"``).

    Returns
    -------
    Image
        The image (an ``Image`` passes through unchanged).
    """
    if isinstance(item, Image):
        return item
    if isinstance(item, sitk.Image):
        return _from_sitk_named(item, None, what)
    return read_image(item)


def image_items(images, name: str = "images") -> list:
    """The items of one image or a list of images, types checked, without reading any file.

    :func:`check_images` reads them all at once, the lazy paths (:func:`load_item`) one at a time.

    Parameters
    ----------
    images : Image, SimpleITK.Image, str, path or sequence of these
        One image or a list of images.
    name : str, default "images"
        The argument's name in error messages.

    Returns
    -------
    list
        The items, unread.

    Raises
    ------
    TypeError
        For numpy arrays (their spacing and origin are unknown: wrap them with
        ``Image.from_array``) and other types.
    ValueError
        For an empty list.
    """
    if isinstance(images, np.ndarray):
        raise TypeError(
            f"{name} must be an Image, a SimpleITK.Image, a path or a list of these; got a numpy "
            f"array, whose spacing and origin are unknown. Wrap it with "
            f"samlearn.Image.from_array(array, spacing=..., origin=...)")
    if isinstance(images, (Image, sitk.Image, str, os.PathLike)):
        items = [images]
    elif isinstance(images, (list, tuple)) or _is_sequence(images):
        items = list(images)
    else:
        raise TypeError(f"{name} must be an Image, a SimpleITK.Image, a path or a list of these, "
                        f"got {type(images).__name__}")
    if not items:
        raise ValueError(f"{name} is empty: give at least one image")
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            raise TypeError(f"{name}[{i}] is a numpy array, whose geometry is unknown; wrap it with "
                            f"samlearn.Image.from_array(array, spacing=..., origin=...)")
        if not isinstance(item, (Image, sitk.Image, str, os.PathLike)):
            raise TypeError(f"{name}[{i}] must be an Image, a SimpleITK.Image or a path, "
                            f"got {type(item).__name__}")
    return items


def check_images(images, *, ndim: int | None = None, name: str = "images") -> list:
    """Turn one image or a list of images into a list of :class:`Image`.

    Idempotent (Images pass through unchanged). Rejects raw numpy arrays (their geometry would be
    guessed: use ``Image.from_array``), empty lists, and lists that mix 2D and 3D.

    Parameters
    ----------
    images : Image, SimpleITK.Image, str, path or list / tuple of these
        The images; a path is a file or a DICOM folder.
    ndim : {2, 3} or None, default None
        When given, the dimensionality every image must have.
    name : str, default "images"
        The argument's name in error messages.

    Returns
    -------
    list of Image
        The images, read.
    """
    out = [read_item(item, f"{name}[{i}]") for i, item in enumerate(image_items(images, name=name))]
    dims = [im.ndim for im in out]
    if len(set(dims)) > 1:
        first3 = dims.index(3)
        first2 = dims.index(2)
        raise ValueError(f"{name} mixes 2D and 3D images ({name}[{first2}] is 2D, {name}[{first3}] is 3D); "
                         f"give images of one dimensionality")
    if ndim is not None and dims[0] != ndim:
        raise ValueError(f"{name} must be {ndim}D images, got {dims[0]}D")
    return out


def _is_sequence(obj) -> bool:
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not isinstance(obj, (bytes, dict))


def load_item(item, ndim: Optional[int], name: str, index: int, why: Optional[str] = None) -> Image:
    """Read one item of :func:`image_items` into an :class:`Image`, checking its dimensionality.

    Parameters
    ----------
    item : Image, SimpleITK.Image, str or path
        The item.
    ndim : {2, 3} or None
        When given, the dimensionality it must have.
    name : str
        The name of the list it comes from, for error messages.
    index : int
        Its position in that list, for error messages.
    why : str or None, default None
        Why ``ndim`` is required, for the error message (default: the list mixes 2D and 3D).

    Returns
    -------
    Image
        The image.
    """
    im = read_item(item, f"{name}[{index}]")
    if ndim is not None and im.ndim != ndim:
        why = why or f"{name} mixes 2D and 3D images ({name}[0] is {ndim}D)"
        raise ValueError(f"{why}; got {im.ndim}D images ({name}[{index}] is {im.ndim}D)")
    return im
