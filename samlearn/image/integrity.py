"""Integrity checks for image files that SimpleITK would otherwise read *silently wrong*.

Measured with SimpleITK 2.x / ITK 5.4 (tests/test_reliability.py keeps each case honest):

* NIfTI (``.nii``, ``.nii.gz``): a truncated file is read without error, the missing voxels set to
  0; NaN and infinite voxels are read as 0; a zero, negative or NaN ``pixdim`` spacing is replaced
  by 1 mm or turned into a mirror, even when the sform says otherwise.
* JPEG: a truncated file is read without error (libjpeg only prints "Premature end of JPEG file")
  and the missing rows are filled with grey.
* BMP: a truncated file is read without error, the missing rows filled with zeros.

:func:`verify_image_file` raises ``ValueError`` naming the file for each of these, before
SimpleITK reads it. The NIfTI check reads the header (348 or 540 bytes); a ``.nii.gz`` file is
decompressed once more to verify its gzip CRC and length (and, for float data, that every voxel is
finite); a plain ``.nii`` file is checked by size (float data: memory-mapped scan). DICOM series
are checked for missing slices by :func:`check_slice_positions`.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["verify_image_file", "check_slice_positions"]

_CHUNK = 1 << 24  # bytes per read when streaming a file

# NIfTI datatype code -> numpy dtype character for the float types whose voxels may be NaN / inf
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def verify_image_file(path: Path) -> None:
    """Raise ``ValueError`` if ``path`` is an image file that SimpleITK would read silently wrong.

    NIfTI, JPEG and BMP files are checked (see the module docstring). Files of other formats pass
    unchecked (SimpleITK itself raises on their damage: MHA, NRRD, PNG, TIFF were measured).

    Parameters
    ----------
    path : pathlib.Path
        The image file.

    Raises
    ------
    ValueError
        Naming the file and the damage.
    """
    name = path.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        _verify_nifti(path, gz=name.endswith(".gz"))
    elif name.endswith((".jpg", ".jpeg")):
        _verify_jpeg(path)
    elif name.endswith(".bmp"):
        _verify_bmp(path)


def _damaged(path, why):
    return ValueError(f"could not read image file '{path}': it is damaged ({why}); samlearn "
                      f"refuses it rather than reading it silently wrong")


# ---------------------------------------------------------------------------------------- NIfTI

def _nifti_header(path: Path, raw: bytes) -> dict:
    if len(raw) < 348:
        raise _damaged(path, f"the NIfTI header is truncated ({len(raw)} bytes)")
    for endian in "<>":
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size in (348, 540):
            break
    else:
        raise ValueError(f"could not read image file '{path}': not a NIfTI file (header size field "
                         f"{struct.unpack('<i', raw[:4])[0]}, expected 348 or 540)")
    if size == 348:
        dim = struct.unpack(endian + "8h", raw[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
        pixdim = struct.unpack(endian + "8f", raw[76:108])
        vox_offset = struct.unpack(endian + "f", raw[108:112])[0]
        magic = raw[344:348]
    else:
        if len(raw) < 540:
            raise _damaged(path, f"the NIfTI-2 header is truncated ({len(raw)} bytes)")
        magic = raw[4:12]
        datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
        dim = struct.unpack(endian + "8q", raw[16:80])
        pixdim = struct.unpack(endian + "8d", raw[104:168])
        vox_offset = struct.unpack(endian + "q", raw[168:176])[0]
    return dict(endian=endian, dim=dim, datatype=datatype, bitpix=bitpix, pixdim=pixdim,
                vox_offset=vox_offset, magic=magic, pair=magic[:3] in (b"ni1", b"ni2"))


def _verify_nifti(path: Path, gz: bool) -> None:
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, f"cannot read its header ({type(exc).__name__}: {exc})") from None
    hdr = _nifti_header(path, raw)
    if hdr["pair"]:
        return  # a .hdr/.img style header in a .nii name: leave it to SimpleITK
    dim = hdr["dim"]
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1:ndim + 1]):
        raise _damaged(path, f"the NIfTI header has invalid dimensions dim={list(dim)}")
    n_spatial = min(ndim, 3)
    spacing = np.asarray(hdr["pixdim"][1:n_spatial + 1], dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(
            f"image file '{path}' has an invalid voxel spacing in its NIfTI header: pixdim[1:{n_spatial + 1}]"
            f" = {spacing.tolist()} (must be finite and positive). SimpleITK would silently read it as "
            f"1 mm or as a mirror image; fix the header (e.g. set pixdim to the true spacing)")
    vox_offset = int(hdr["vox_offset"]) if np.isfinite(hdr["vox_offset"]) else -1
    if vox_offset < 0:
        raise _damaged(path, f"the NIfTI header has an invalid vox_offset {hdr['vox_offset']}")
    n_vox = int(np.prod([int(d) for d in dim[1:ndim + 1]], dtype=np.int64))
    if hdr["bitpix"] <= 0 or hdr["bitpix"] % 8:
        raise _damaged(path, f"the NIfTI header has an invalid bitpix {hdr['bitpix']}")
    expected = vox_offset + n_vox * (hdr["bitpix"] // 8)
    float_dtype = _NIFTI_FLOATS.get(int(hdr["datatype"]))
    dtype = np.dtype(hdr["endian"] + float_dtype) if float_dtype else None
    if gz:
        _verify_nifti_gz(path, vox_offset, expected, dtype)
    else:
        _verify_nifti_plain(path, vox_offset, expected, dtype)


def _truncated(path, have, expected):
    return _damaged(path, f"it is truncated: {have} bytes of image data and header, the header "
                          f"announces {expected}")


def _nonfinite(path, count):
    return ValueError(f"image file '{path}' contains {count} NaN or infinite voxel value(s); "
                      f"SimpleITK would silently read them as 0. Replace them (e.g. with the "
                      f"background value) before using the image")


def _verify_nifti_plain(path: Path, vox_offset: int, expected: int, dtype) -> None:
    size = path.stat().st_size
    if size < expected:
        raise _truncated(path, size, expected)
    if dtype is not None:
        n = (expected - vox_offset) // dtype.itemsize
        data = np.memmap(path, dtype=dtype, mode="r", offset=vox_offset, shape=(n,))
        step = _CHUNK // dtype.itemsize
        bad = sum(int(np.count_nonzero(~np.isfinite(data[i:i + step]))) for i in range(0, n, step))
        del data
        if bad:
            raise _nonfinite(path, bad)


def _gunzip_blocks(path: Path):
    """Yield the decompressed blocks of a gzip file (every member), verifying each member's CRC-32
    and length; raise ``ValueError`` if the stream is truncated or corrupt."""
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = False  # True while a member has been started but not finished
    try:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(1 << 20)
                if not chunk:
                    break
                while chunk:
                    pending = True
                    yield dec.decompress(chunk)
                    chunk = b""
                    if dec.eof:  # a complete member, CRC and length verified by zlib
                        pending = False
                        chunk = dec.unused_data
                        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                        if not chunk.strip(b"\0"):
                            chunk = b""  # zero padding after the last member
    except zlib.error as exc:
        raise _damaged(path, f"the gzip stream is corrupt (zlib: {exc})") from None
    if pending:
        raise _damaged(path, "the gzip stream ends before its end marker (a truncated file)")


def _verify_nifti_gz(path: Path, vox_offset: int, expected: int, dtype) -> None:
    total, bad, carry = 0, 0, b""
    for block in _gunzip_blocks(path):
        if dtype is not None and block:
            start = max(vox_offset - total, 0)
            stop = min(len(block), max(expected - total, 0))
            if stop > start:
                buf = carry + block[start:stop]
                k = len(buf) - len(buf) % dtype.itemsize
                bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf[:k], dtype=dtype))))
                carry = buf[k:]
        total += len(block)
    if total < expected:
        raise _truncated(path, total, expected)
    if bad:
        raise _nonfinite(path, bad)


# ---------------------------------------------------------------------------------------- JPEG / BMP

def _verify_jpeg(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(max(path.stat().st_size - 64, 0))
        tail = fh.read()
    if head != b"\xff\xd8":
        return  # not a JPEG stream: SimpleITK will refuse it itself
    # Entropy-coded JPEG data never holds FF D9 (0xFF is always stuffed), so the end-of-image
    # marker near the end of the file is proof the stream was written completely.
    if b"\xff\xd9" not in tail:
        raise _damaged(path, "the JPEG stream has no end-of-image marker (the file is truncated)")


def _verify_bmp(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(54)
    if len(head) < 26 or head[:2] != b"BM":
        return
    off_bits = struct.unpack("<I", head[10:14])[0]
    if len(head) < 34:
        raise _damaged(path, "the BMP header is truncated")
    width, height = struct.unpack("<ii", head[18:26])
    bit_count, compression = struct.unpack("<HI", head[28:34])
    if compression not in (0, 3):  # only uncompressed bitmaps have a fixed size
        return
    row = ((bit_count * abs(width) + 31) // 32) * 4
    expected = off_bits + row * abs(height)
    if size < expected:
        raise _truncated(path, size, expected)


# ---------------------------------------------------------------------------------------- DICOM

def check_slice_positions(folder, positions, normal, rtol: float = 0.05) -> None:
    """Raise ``ValueError`` if the slices of a DICOM series are not evenly spaced.

    Uneven gaps mean missing or duplicated slices. SimpleITK only prints a warning and builds a
    volume with a uniform spacing, which puts every slice after a gap at the wrong position.

    Parameters
    ----------
    folder : str or path
        The series folder, for the message.
    positions : array-like of shape (n_slices, 3)
        ImagePositionPatient of each file, in the reader's order.
    normal : array-like of shape (3,)
        The slice normal.
    rtol : float, default 0.05
        Largest accepted deviation of a gap from the smallest gap, relative to it.

    Raises
    ------
    ValueError
        For duplicated slices or uneven gaps.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if len(pos) < 3:
        return
    gaps = np.abs(np.diff(pos @ np.asarray(normal, dtype=np.float64)))
    ref = gaps.min()
    if ref <= 1e-6:
        k = int(np.argmin(gaps))
        raise ValueError(f"DICOM series in '{folder}' has slices {k} and {k + 1} at the same position "
                         f"(duplicated slices); cannot build a volume")
    dev = np.abs(gaps - ref)
    if np.any(dev > rtol * ref):
        k = int(np.argmax(dev))
        raise ValueError(
            f"DICOM series in '{folder}' is not evenly spaced: the gap between slices {k} and {k + 1} "
            f"is {gaps[k]:.4g} mm, the smallest gap {ref:.4g} mm (missing or unreadable slices?). "
            f"samlearn refuses it rather than placing slices at wrong positions")

