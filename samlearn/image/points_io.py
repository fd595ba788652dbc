"""Point files: samlearn's CSV, and 3D Slicer's markups (``.mrk.json``) and legacy fiducial
(``.fcsv``) files, read to and written from LPS world millimetres.

Every point that :func:`read_points` returns and :func:`write_points` takes is in world mm
``(x, y[, z])``, LPS, as SimpleITK reports physical points. 3D Slicer works in RAS (x and y
negated) and writes either system, saying which in the file; the reader honours it and the writer
can produce both (:func:`ras_to_lps` / :func:`lps_to_ras` convert arrays).

Formats, chosen by the file name's extension (:data:`POINT_SUFFIXES`):

* ``.csv`` -- samlearn's own: a header ``name,x,y[,z]``, one point a row, LPS world mm.
* ``.mrk.json`` (or ``.json``) -- 3D Slicer markups JSON (schema ``markups-schema-v1.0.x``): the
  control points of every markup of type ``"Fiducial"`` (Slicer's point list; ``"PointList"``
  too), concatenated in file order; lines, curves, planes and other types are ignored. Each
  markup's ``coordinateSystem`` is ``"LPS"`` or ``"RAS"``; when it is absent, LPS, as Slicer's
  reader and the schema's default have it.
* ``.fcsv`` -- 3D Slicer's legacy fiducial CSV: ``#`` header lines
  (``# Markups fiducial file version = ...``, ``# CoordinateSystem = ...`` as ``0`` / ``RAS`` or
  ``1`` / ``LPS``, ``# columns = ...``), then one point a row; the ``label`` column is the name.
  Without a columns line, a versioned file has Slicer 4's fixed columns
  ``id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID`` and an unversioned one
  Slicer 3's ``label,x,y,z,sel,vis``; without a CoordinateSystem line, RAS (the only system of
  the Slicer versions that omitted it).

Slicer places a 2D image (PNG, X-ray) as a one-slice volume at z = 0, so its markups carry
``z = 0``: ``read_points(path, ndim=2)`` checks that and returns ``(x, y)``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from numbers import Real
from pathlib import Path

import numpy as np

from .._utils.files import atomic_write_text
from .._utils.validation import Interval, Options, check_param, is_int
from ..exceptions import InvalidParameterError

__all__ = ["POINT_SUFFIXES", "read_points", "write_points", "ras_to_lps", "lps_to_ras"]

#: the point-file extensions :func:`read_points` and :func:`write_points` accept
POINT_SUFFIXES = (".csv", ".mrk.json", ".json", ".fcsv")

#: the ``@schema`` 3D Slicer itself writes (it keeps the "master" URL for older Slicer versions)
MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                  "Resources/Schema/markups-schema-v1.0.3.json#")
_SCHEMA_RE = re.compile(r"markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$")
_POINT_LISTS = ("Fiducial", "PointList")
#: Slicer 4 / 5 fcsv columns, and Slicer 3's
FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc",
                "associatedNodeID")
_SLICER3_COLUMNS = ("label", "x", "y", "z", "sel", "vis")


# ---------------------------------------------------------------------------- conversions
def _flip_xy(points, name: str) -> np.ndarray:
    try:
        pts = np.array(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a numeric array of shape (n_points, 2 or 3), "
                                    f"got {type(points).__name__}") from None
    if pts.ndim not in (1, 2) or pts.shape[-1] not in (2, 3):
        raise InvalidParameterError(f"{name} must have shape (n_points, 2 or 3) or (2 or 3,), "
                                    f"got shape {pts.shape}")
    pts[..., :2] *= -1.0
    return pts


def ras_to_lps(points) -> np.ndarray:
    """Convert RAS points (3D Slicer) to LPS points (SimpleITK): negate x and y.

    Parameters
    ----------
    points : array-like of shape (n_points, ndim) or (ndim,)
        RAS world points (mm), ndim 2 or 3 (2D points: both coordinates negated).

    Returns
    -------
    ndarray
        A new float64 array of the same shape, LPS.

    Raises
    ------
    InvalidParameterError
        For a non-numeric array or a shape other than (n, 2 or 3) / (2 or 3,).
    """
    return _flip_xy(points, "points")


def lps_to_ras(points) -> np.ndarray:
    """Convert LPS points (SimpleITK) to RAS points (3D Slicer): negate x and y.

    The same operation as :func:`ras_to_lps` (it is its own inverse).

    Parameters
    ----------
    points : array-like of shape (n_points, ndim) or (ndim,)
        LPS world points (mm), ndim 2 or 3 (2D points: both coordinates negated).

    Returns
    -------
    ndarray
        A new float64 array of the same shape, RAS.

    Raises
    ------
    InvalidParameterError
        For a non-numeric array or a shape other than (n, 2 or 3) / (2 or 3,).
    """
    return _flip_xy(points, "points")


# ---------------------------------------------------------------------------- shared helpers
def _kind(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"path must be a str or path, got {type(path).__name__}")
    low = Path(path).name.lower()
    if low.endswith(".csv"):
        return "csv"
    if low.endswith(".json"):
        return "markups"
    if low.endswith(".fcsv"):
        return "fcsv"
    raise InvalidParameterError(f"path '{path}' is not a point file: its extension must be one of "
                                f"{', '.join(POINT_SUFFIXES)} (samlearn CSV, 3D Slicer markups "
                                f"JSON, 3D Slicer fiducial CSV)")


def _read_text(p: Path) -> str:
    if not p.exists():
        raise FileNotFoundError(f"points file does not exist: '{p}'")
    if not p.is_file():
        raise ValueError(f"points file '{p}' is not a file")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"points file '{p}' cannot be read as UTF-8 text ({exc})") from None


def _number(raw, p: Path, where: str, axis: str) -> float:
    text = raw.strip() if isinstance(raw, str) else raw
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"points file '{p}' {where}: {axis} = '{text}' is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"points file '{p}' {where}: coordinate {axis} = '{text}' is not finite")
    return v


def _check_unique(names, where, p: Path) -> None:
    seen = {}
    for n, w in zip(names, where):
        if n in seen:
            dup = sorted({m for m in names if names.count(m) > 1})
            raise ValueError(f"points file '{p}' repeats the names {dup} ('{n}' at {seen[n]} and "
                             f"{w}); every point needs its own name")
        seen[n] = w


def _to_ndim(names, pts, where, ndim, plane_tol, p: Path) -> np.ndarray:
    natural = pts.shape[1]
    if ndim is None or ndim == natural:
        return pts
    if ndim == 3:
        raise ValueError(f"points file '{p}' holds 2D points (x, y) but ndim=3 was asked")
    off = np.abs(pts[:, 2]) > plane_tol
    if np.any(off):
        i = int(np.argmax(off))
        raise ValueError(f"points file '{p}' {where[i]}: point '{names[i]}' lies at z = "
                         f"{pts[i, 2]:g} mm, off the plane z = 0 of a 2D image (plane_tol="
                         f"{plane_tol:g} mm); is it a point of a 3D image?")
    return pts[:, :2].copy()


# ---------------------------------------------------------------------------- readers
def _parse_csv(text: str, p: Path):
    reader = csv.reader(io.StringIO(text))
    header, names, pts, where = None, [], [], []
    try:
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            line = reader.line_num
            if header is None:
                header = [c.strip().lower() for c in row]
                axes = [a for a in ("x", "y", "z") if a in header]
                if "name" not in header or axes not in (["x", "y"], ["x", "y", "z"]):
                    raise ValueError(f"points file '{p}' line {line}: the header must be name,x,y or "
                                     f"name,x,y,z (LPS world mm), got {','.join(header)}")
                ni, cols = header.index("name"), [header.index(a) for a in axes]
                continue
            name = row[ni].strip() if ni < len(row) else ""
            names.append(name or f"point{len(names)}")
            pts.append([_number(row[c] if c < len(row) else "", p, f"line {line}", a)
                        for c, a in zip(cols, axes)])
            where.append(f"line {line}")
    except csv.Error as exc:
        raise ValueError(f"points file '{p}' line {reader.line_num}: not valid CSV ({exc})") from None
    if header is None:
        raise ValueError(f"points file '{p}' is empty (expected a header row such as name,x,y,z)")
    if not names:
        raise ValueError(f"points file '{p}' holds a header but no points")
    return names, np.asarray(pts, dtype=np.float64), where


def _markup_flip(m: dict, p: Path, where: str) -> bool:
    system = m.get("coordinateSystem", "LPS")
    if not isinstance(system, str) or system.strip().upper() not in ("LPS", "RAS"):
        raise ValueError(f"points file '{p}' {where}: coordinateSystem must be 'LPS' or 'RAS', "
                         f"got {system!r}")
    units = m.get("coordinateUnits", "mm")
    code = units[0] if isinstance(units, list) and units else units
    if code != "mm":
        raise ValueError(f"points file '{p}' {where}: coordinateUnits must be 'mm', got {units!r}")
    return system.strip().upper() == "RAS"


def _is_json_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_markups(text: str, p: Path):
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"points file '{p}' line {exc.lineno} column {exc.colno}: not valid JSON "
                         f"({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise ValueError(f"points file '{p}' is not a 3D Slicer markups file: it needs a top-level "
                         f"object with a 'markups' list")
    schema = doc.get("@schema")
    if schema is not None and not (isinstance(schema, str) and _SCHEMA_RE.search(schema.strip().lower())):
        raise ValueError(f"points file '{p}': '@schema' is {schema!r}, not a 3D Slicer markups "
                         f"schema (markups-schema-v1.x.y.json)")
    lists = [(i, m) for i, m in enumerate(doc["markups"], 1)
             if isinstance(m, dict) and m.get("type") in _POINT_LISTS]
    if not lists:
        types = sorted({str(m.get("type")) for m in doc["markups"] if isinstance(m, dict)})
        raise ValueError(f"points file '{p}' holds no point list (a markup of type 'Fiducial'); "
                         f"its markups are of types {types}")
    names, pts, where = [], [], []
    for i, m in lists:
        flip = _markup_flip(m, p, f"markup {i}")
        cps = m.get("controlPoints", [])
        if not isinstance(cps, list):
            raise ValueError(f"points file '{p}' markup {i}: controlPoints must be a list")
        for j, cp in enumerate(cps, 1):
            at = f"markup {i} control point {j}"
            if not isinstance(cp, dict):
                raise ValueError(f"points file '{p}' {at}: a control point must be an object")
            label = cp.get("label", "")
            if not isinstance(label, str):
                raise ValueError(f"points file '{p}' {at}: label must be a string, got {label!r}")
            label = label.strip()
            shown = label or f"#{j}"
            status = cp.get("positionStatus", "defined")
            pos = cp.get("position")
            if status not in ("defined", "preview", "undefined"):
                raise ValueError(f"points file '{p}' {at}: control point '{shown}' has positionStatus "
                                 f"{status!r}; expected 'defined', 'preview' or 'undefined'")
            if status == "undefined" or pos is None or pos == "":
                raise ValueError(f"points file '{p}' {at}: control point '{shown}' has no position "
                                 f"(positionStatus '{status}'); place it or delete it in 3D Slicer")
            if status == "preview":
                raise ValueError(f"points file '{p}' {at}: control point '{shown}' is a preview (it "
                                 f"was being placed when the file was saved); place it or delete it")
            if not (isinstance(pos, list) and len(pos) == 3 and all(_is_json_number(v) for v in pos)):
                raise ValueError(f"points file '{p}' {at}: control point '{shown}' needs a position of "
                                 f"3 numbers, got {pos!r}")
            xyz = [_number(v, p, at, a) for v, a in zip(pos, "xyz")]
            if flip:
                xyz[0], xyz[1] = -xyz[0], -xyz[1]
            names.append(label or f"point{len(names)}")
            pts.append(xyz)
            where.append(at)
    if not names:
        raise ValueError(f"points file '{p}' holds no control points")
    return names, np.asarray(pts, dtype=np.float64), where


def _fcsv_flip(value: str, p: Path, lineno: int) -> bool:
    v = value.strip().upper()
    if v in ("0", "RAS"):
        return True
    if v in ("1", "LPS"):
        return False
    raise ValueError(f"points file '{p}' line {lineno}: CoordinateSystem = {value.strip()!r} is not "
                     f"one samlearn reads (0 or RAS, 1 or LPS)")


def _parse_fcsv(text: str, p: Path):
    version, flip, columns, rows = None, True, None, []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("#"):
            key, eq, value = raw[1:].partition("=")
            key = key.strip().lower()
            if not eq:
                continue
            if key == "markups fiducial file version":
                version = value.strip()
            elif key == "coordinatesystem":
                flip = _fcsv_flip(value, p, lineno)
            elif key == "columns":
                columns = [c.strip().lower() for c in value.split(",")]
        elif raw.strip():
            rows.append((lineno, raw))
    if columns is None:
        columns = [c.lower() for c in (FCSV_COLUMNS if version else _SLICER3_COLUMNS)]
    if not all(a in columns for a in ("x", "y", "z")):
        raise ValueError(f"points file '{p}': the columns line must name x, y and z, got "
                         f"{','.join(columns)}")
    cols = [columns.index(a) for a in ("x", "y", "z")]
    li = columns.index("label") if "label" in columns else None
    names, pts, where = [], [], []
    for lineno, raw in rows:
        try:
            fields = next(csv.reader([raw]))
        except csv.Error as exc:
            raise ValueError(f"points file '{p}' line {lineno}: not valid CSV ({exc})") from None
        at = f"line {lineno}"
        xyz = [_number(fields[c] if c < len(fields) else "", p, at, a) for c, a in zip(cols, "xyz")]
        if flip:
            xyz[0], xyz[1] = -xyz[0], -xyz[1]
        label = fields[li].strip() if li is not None and li < len(fields) else ""
        names.append(label or f"point{len(names)}")
        pts.append(xyz)
        where.append(at)
    if not names:
        raise ValueError(f"points file '{p}' holds no points")
    return names, np.asarray(pts, dtype=np.float64), where


def read_points(path, ndim=None, *, plane_tol: float = 1e-3):
    """Read named points from a samlearn CSV or a 3D Slicer markups file, in LPS world mm.

    The format comes from the extension (see :mod:`samlearn.image.points_io`): ``.csv``
    (``name,x,y[,z]``, LPS), ``.mrk.json`` / ``.json`` (Slicer markups: the control points of all
    markups of type ``"Fiducial"``, concatenated in file order, each markup in its own
    ``coordinateSystem``, LPS when absent) or ``.fcsv`` (Slicer fiducial CSV, either coordinate
    system, RAS when the header does not say). RAS coordinates are converted to LPS.

    Parameters
    ----------
    path : str or path
        The file.
    ndim : {2, 3} or None, default None
        The dimension wanted: None is the file's own (2 or 3 columns of a CSV, always 3 for Slicer
        files). 2 reads ``(x, y)`` of points that lie on the plane z = 0 (how Slicer places a 2D
        image); 3 refuses a 2-column CSV.
    plane_tol : float, default 1e-3
        With ``ndim=2``, the largest ``|z|`` (mm) accepted.

    Returns
    -------
    names : list of str
        Point names (the CSV ``name`` column, Slicer's control point labels; ``point<i>`` for
        empty ones); every name is unique.
    points : ndarray of shape (n_points, ndim), float64
        The points, LPS world mm ``(x, y[, z])``.

    Raises
    ------
    FileNotFoundError
        For a missing file.
    InvalidParameterError
        For an unknown extension (the message names the accepted ones) or a bad ``ndim`` or
        ``plane_tol``.
    ValueError
        For bad content, naming the file and the line (or the markup and control point): a wrong
        header, no points, a value that is not a finite number, invalid JSON, a control point
        without a defined position, an unknown coordinate system or unit, repeated names, or,
        with ``ndim=2``, a point off the plane z = 0.
    """
    kind = _kind(path)
    if ndim is not None and not (is_int(ndim) and int(ndim) in (2, 3)):
        raise InvalidParameterError(f"ndim must be 2, 3 or None, got {ndim!r}")
    check_param(plane_tol, [Interval(Real, 0, None, closed="left", unit="mm")], "plane_tol")
    p = Path(path)
    text = _read_text(p)
    parse = {"csv": _parse_csv, "markups": _parse_markups, "fcsv": _parse_fcsv}[kind]
    names, pts, where = parse(text, p)
    _check_unique(names, where, p)
    return names, _to_ndim(names, pts, where, None if ndim is None else int(ndim), float(plane_tol), p)


# ---------------------------------------------------------------------------- writers
def _check_named_points(names, points):
    if isinstance(names, (str, bytes)) or not hasattr(names, "__len__"):
        raise InvalidParameterError(f"names must be a list of str, got {type(names).__name__}")
    names = list(names)
    try:
        pts = np.array(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"points must be a numeric array of shape (n_points, 2 or 3), "
                                    f"got {type(points).__name__}") from None
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or pts.shape[0] == 0:
        raise InvalidParameterError(f"points must have shape (n_points, 2 or 3) with n_points >= 1 "
                                    f"(LPS world mm), got shape {pts.shape}")
    if len(names) != len(pts):
        raise InvalidParameterError(f"names has {len(names)} entries but points has {len(pts)} rows")
    if not np.all(np.isfinite(pts)):
        rows = np.unique(np.nonzero(~np.isfinite(pts))[0])[:5].tolist()
        raise InvalidParameterError(f"points contains non-finite coordinates (rows {rows})")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip() or n != n.strip() or "\n" in n or "\r" in n:
            raise InvalidParameterError(f"names[{i}] must be a non-empty str without surrounding "
                                        f"spaces or line breaks, got {n!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidParameterError(f"names repeats {dup}; every point needs its own name")
    return names, pts


def _fmt(v) -> str:
    return repr(float(v))


def _csv_text(names, pts) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["name", "x", "y", "z"][: pts.shape[1] + 1])
    for n, row in zip(names, pts):
        w.writerow([n] + [_fmt(v) for v in row])
    return out.getvalue()


def _markups_text(names, pts, system: str) -> str:
    # Slicer writes a control point's orientation in the file's system: identity in RAS is
    # diag(-1, -1, 1) in LPS
    orient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0] if system == "RAS" else \
        [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]
    cps = [{"id": str(i), "label": n, "description": "", "associatedNodeID": "",
            "position": [float(v) for v in row], "orientation": orient, "selected": True,
            "locked": False, "visibility": True, "positionStatus": "defined"}
           for i, (n, row) in enumerate(zip(names, pts), 1)]
    doc = {"@schema": MARKUPS_SCHEMA,
           "markups": [{"type": "Fiducial", "coordinateSystem": system, "coordinateUnits": "mm",
                        "locked": False, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
                        "lastUsedControlPointNumber": len(cps), "controlPoints": cps,
                        "measurements": []}]}
    return json.dumps(doc, indent=4, ensure_ascii=False, allow_nan=False) + "\n"


def _fcsv_text(names, pts, system: str) -> str:
    out = io.StringIO()
    out.write("# Markups fiducial file version = 4.11\n")
    out.write(f"# CoordinateSystem = {system}\n")
    out.write(f"# columns = {','.join(FCSV_COLUMNS)}\n")
    w = csv.writer(out, lineterminator="\n")
    for i, (n, row) in enumerate(zip(names, pts), 1):
        w.writerow([str(i)] + [_fmt(v) for v in row] + ["0", "0", "0", "1", "1", "1", "0", n, "", ""])
    return out.getvalue()


def write_points(path, names, points, *, coordinate_system: str = "LPS") -> None:
    """Write named LPS points as a samlearn CSV or a 3D Slicer markups file, atomically.

    The format comes from the extension: ``.csv`` (header ``name,x,y[,z]``, LPS world mm),
    ``.mrk.json`` / ``.json`` (3D Slicer markups JSON: one point list, a markup of type
    ``"Fiducial"``, units mm, every control point defined, visible, unlocked) or ``.fcsv``
    (Slicer's fiducial CSV in the 4.11 layout: ``# Markups fiducial file version = 4.11``,
    ``# CoordinateSystem = LPS`` or ``RAS``, the columns line, one row a point; Slicer 4.11 or
    later reads it). Slicer files always hold three coordinates: 2D points get ``z = 0``, where
    Slicer places a 2D image. The file appears complete or not at all (a temporary file in the
    same folder, then a rename) with the usual permissions (``0o666`` less the umask).

    Parameters
    ----------
    path : str or path
        The output file; its folder must exist.
    names : sequence of str
        One unique, non-empty name per point (no surrounding spaces, no line breaks).
    points : array-like of shape (n_points, 2 or 3)
        LPS world points (mm), finite.
    coordinate_system : {"LPS", "RAS"}, default "LPS"
        The system of a Slicer file's coordinates: RAS negates x and y (Slicer reads both). A
        ``.csv`` file is always LPS.

    Raises
    ------
    InvalidParameterError
        For an unknown extension, a bad ``coordinate_system`` (or RAS for a ``.csv`` file),
        points of a wrong shape or non-finite, or names that are missing, empty or repeated.
    FileNotFoundError
        When the folder does not exist.
    """
    kind = _kind(path)
    check_param(coordinate_system, [Options("LPS", "RAS")], "coordinate_system")
    if kind == "csv" and coordinate_system != "LPS":
        raise InvalidParameterError("coordinate_system must be 'LPS' for a .csv file (samlearn's "
                                    "point files are LPS world mm); write .mrk.json or .fcsv for RAS")
    names, pts = _check_named_points(names, points)
    if kind == "csv":
        text = _csv_text(names, pts)
    else:
        if pts.shape[1] == 2:
            pts = np.column_stack([pts, np.zeros(len(pts))])
        if coordinate_system == "RAS":
            pts = lps_to_ras(pts)
        text = (_markups_text if kind == "markups" else _fcsv_text)(names, pts, coordinate_system)
    atomic_write_text(path, text)
