"""File plumbing of the command-line tool: collect image paths from folders and glob patterns, read
lesion CSV files and write result tables (world millimetres; point files are
:func:`samlearn.image.read_points`'s), one-line error messages. No estimators here.

Lesion files are CSV with a header row: ``name,x,y[,z]`` (centres) or
``name,x0,y0[,z0],x1,y1[,z1]`` (boxes: minimum corner, then maximum corner), world mm in the
(x, y[, z]) order SimpleITK reports.
"""
from __future__ import annotations

import csv
import glob
import io
import math
import sys
from pathlib import Path

import numpy as np

from .._utils.messages import one_line

__all__ = ["CLIError", "IMAGE_SUFFIXES", "collect_images", "read_lesions_csv",
           "write_csv", "image_stem", "one_line"]

# files a folder given on the command line is searched for (DICOM: see collect_images)
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                  ".tif", ".tiff", ".bmp")


class CLIError(Exception):
    """A problem with the command line or its inputs, reported as one line (exit code 2)."""


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(IMAGE_SUFFIXES)


def _is_dicom_series(folder: Path) -> bool:
    return any(f.is_file() and f.name.lower().endswith(".dcm") for f in folder.iterdir())


def _images_in_folder(folder: Path) -> list:
    """A folder's images: its image files (sorted, not recursive); a folder of ``.dcm`` files is
    one DICOM series; otherwise its sub-folders that are DICOM series."""
    files = sorted(str(f) for f in folder.iterdir() if _is_image_file(f))
    if files:
        return files
    if _is_dicom_series(folder):
        return [str(folder)]
    return sorted(str(d) for d in folder.iterdir() if d.is_dir() and _is_dicom_series(d))


def collect_images(sources) -> list:
    """Image paths from folders, glob patterns and file paths, in order, without duplicates.

    Parameters
    ----------
    sources : iterable of str or path
        Each one a file, a folder (its image files, sorted, not recursive; a folder of ``.dcm``
        files is one DICOM series; otherwise its sub-folders that are DICOM series) or a glob
        pattern (its matches, sorted).

    Returns
    -------
    list of str
        The image paths (a DICOM series as its folder).

    Raises
    ------
    CLIError
        For a source that is none of these, or a folder or pattern without images.
    """
    out, seen = [], set()
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = _images_in_folder(p)
            if not found:
                raise CLIError(f"folder '{src}' holds no image files ({', '.join(IMAGE_SUFFIXES)}) "
                               f"and no DICOM series (.dcm files)")
        elif p.is_file():
            found = [str(p)]
        elif glob.has_magic(str(src)):
            found = sorted(f for f in glob.glob(str(src)) if Path(f).is_file())
            if not found:
                raise CLIError(f"pattern '{src}' matches no files")
        else:
            raise CLIError(f"'{src}' is not a file, a folder or a glob pattern that matches files "
                           f"(quote patterns such as 'scans/*.nii.gz')")
        for f in found:
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


def image_stem(path) -> str:
    """File name without its image suffix.

    Parameters
    ----------
    path : str or path
        An image path.

    Returns
    -------
    str
        Its name without a known image suffix (``a/b/ct_01.nii.gz`` gives ``ct_01``).
    """
    name = Path(path).name
    low = name.lower()
    for suf in sorted(IMAGE_SUFFIXES + (".dcm",), key=len, reverse=True):
        if low.endswith(suf):
            return name[: -len(suf)] or name
    return name


def _read_rows(path, what: str):
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{what} file does not exist: '{path}'")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"{what} file '{path}' cannot be read as UTF-8 text ({one_line(exc)})") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise CLIError(f"{what} file '{path}' is empty (expected a header row such as name,x,y,z)")
    header = [c.strip().lower() for c in rows[0]]
    return header, rows[1:]


def _numbers(row, cols, lineno, path, what):
    vals = []
    for c in cols:
        raw = row[c].strip() if c < len(row) else ""
        try:
            v = float(raw)
        except ValueError:
            raise CLIError(f"{what} file '{path}' line {lineno}: '{raw}' is not a number") from None
        if not math.isfinite(v):
            raise CLIError(f"{what} file '{path}' line {lineno}: coordinate '{raw}' is not finite")
        vals.append(v)
    return vals


def read_lesions_csv(path):
    """Read a lesion file: a CSV of centres or of boxes, world mm.

    Parameters
    ----------
    path : str or path
        The CSV file, with header ``name,x,y[,z]`` (centres) or ``name,x0,y0[,z0],x1,y1[,z1]``
        (boxes: minimum corner, then maximum corner).

    Returns
    -------
    names : list of str
        Lesion names (``lesion<i>`` for empty ones).
    lesions : ndarray of shape (n, ndim) or (n, 2 * ndim), float64
        The centres, or the boxes (min corner, max corner).

    Raises
    ------
    CLIError
        For a missing or unreadable file, a wrong header, no rows, or a value that is not a
        finite number.
    """
    header, rows = _read_rows(path, "lesions")
    box3 = ["x0", "y0", "z0", "x1", "y1", "z1"]
    box2 = ["x0", "y0", "x1", "y1"]
    if all(c in header for c in box3):
        cols_names = box3
    elif all(c in header for c in box2):
        cols_names = box2
    elif all(c in header for c in ("x", "y")):
        cols_names = [a for a in ("x", "y", "z") if a in header]
    else:
        raise CLIError(f"lesions file '{path}' must have the header name,x,y[,z] (centres) or "
                       f"name,x0,y0[,z0],x1,y1[,z1] (boxes), got {','.join(header)}")
    if not rows:
        raise CLIError(f"lesions file '{path}' holds a header but no lesions")
    ni = header.index("name") if "name" in header else None
    cols = [header.index(c) for c in cols_names]
    names, vals = [], []
    for k, row in enumerate(rows, start=2):
        name = row[ni].strip() if ni is not None and ni < len(row) else ""
        names.append(name or f"lesion{len(names)}")
        vals.append(_numbers(row, cols, k, path, "lesions"))
    return names, np.asarray(vals, dtype=np.float64)


def write_csv(path, header, rows) -> None:
    """Write rows as CSV to a file or to standard output.

    A file is written to a temporary name first, then renamed (no half-written file).

    Parameters
    ----------
    path : str, path or None
        The output file (its folder is created), or standard output when None or ``"-"``.
    header : sequence of str
        The header row.
    rows : iterable of sequences
        The rows.

    Raises
    ------
    CLIError
        When ``path`` is a folder.
    """
    if path in (None, "-"):
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        sys.stdout.flush()
        return
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"--out '{path}' is a folder; give a CSV file name")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(p)
