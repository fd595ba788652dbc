"""Point files: samlearn's CSV and 3D Slicer's markups JSON and fiducial CSV, in LPS world mm,
against hand-written files in Slicer's published layouts and SimpleITK's own geometry."""
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samlearn.exceptions import InvalidParameterError
from samlearn.image import lps_to_ras, ras_to_lps, read_points, write_points
from samlearn.image.points_io import MARKUPS_SCHEMA

NAMES = ["nasion", "sella, turcica", 'gonion "left"', "menton"]
PTS3 = np.array([[-12.5, 30.25, 7.0], [0.0, -1e-7, 123456.789], [3.3, 4.4, -5.5], [-0.1, 0.2, 0.3]])


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- conversions
def test_ras_lps_conversion_negates_x_and_y():
    assert np.array_equal(ras_to_lps([1.0, -2.0, 3.0]), [-1.0, 2.0, 3.0])
    assert np.array_equal(lps_to_ras([[1.0, -2.0]]), [[-1.0, 2.0]])
    a = np.array([[1.0, 2.0, 3.0]])
    ras_to_lps(a)
    assert np.array_equal(a, [[1.0, 2.0, 3.0]])  # a copy, the input is untouched
    with pytest.raises(InvalidParameterError, match="shape"):
        ras_to_lps(np.zeros((2, 4)))


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ndim", [2, 3])
def test_csv_round_trip(tmp_path, ndim):
    path = tmp_path / "p.csv"
    write_points(path, NAMES, PTS3[:, :ndim])
    names, pts = read_points(path)
    assert names == NAMES and pts.shape == (4, ndim)
    assert np.array_equal(pts, PTS3[:, :ndim])
    assert path.read_text().splitlines()[0] == ("name,x,y,z" if ndim == 3 else "name,x,y")


@pytest.mark.parametrize("suffix", [".mrk.json", ".fcsv"])
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_slicer_round_trip(tmp_path, suffix, system):
    path = tmp_path / f"p{suffix}"
    write_points(path, NAMES, PTS3, coordinate_system=system)
    names, pts = read_points(path)
    assert names == NAMES and np.array_equal(pts, PTS3)
    if suffix == ".mrk.json":
        doc = json.loads(path.read_text())
        assert doc["@schema"] == MARKUPS_SCHEMA
        m = doc["markups"][0]
        assert m["type"] == "Fiducial" and m["coordinateSystem"] == system and m["coordinateUnits"] == "mm"
        first = m["controlPoints"][0]
        assert first["positionStatus"] == "defined" and first["label"] == NAMES[0]
        sign = -1.0 if system == "RAS" else 1.0
        assert first["position"] == [sign * -12.5, sign * 30.25, 7.0]
    else:
        lines = path.read_text().splitlines()
        assert lines[:3] == ["# Markups fiducial file version = 4.11", f"# CoordinateSystem = {system}",
                             "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"]
        assert lines[3].startswith("1,12.5,-30.25,7.0," if system == "RAS" else "1,-12.5,30.25,7.0,")


def test_2d_points_are_written_on_the_plane_z0(tmp_path):
    for suffix in (".mrk.json", ".fcsv"):
        path = tmp_path / f"p{suffix}"
        write_points(path, NAMES, PTS3[:, :2], coordinate_system="RAS")
        names, pts3 = read_points(path)
        assert pts3.shape == (4, 3) and np.all(pts3[:, 2] == 0)
        names, pts = read_points(path, ndim=2)
        assert names == NAMES and np.array_equal(pts, PTS3[:, :2])


_name = st.text(st.sampled_from(list("ab Z09,;\"'#=-_.é漢")), min_size=1, max_size=8).filter(
    lambda s: s == s.strip())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(_name, min_size=1, max_size=6, unique=True),
       data=st.data(), system=st.sampled_from(["LPS", "RAS"]),
       suffix=st.sampled_from([".mrk.json", ".fcsv", ".csv"]))
def test_round_trip_property(names, data, system, suffix):
    coord = st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False)
    pts = np.array(data.draw(st.lists(st.lists(coord, min_size=3, max_size=3), min_size=len(names),
                                      max_size=len(names))))
    if suffix == ".csv":
        system = "LPS"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"p{suffix}"
        write_points(path, names, pts, coordinate_system=system)
        got_names, got = read_points(path)
        assert os.listdir(folder) == [path.name]  # no temporary file left behind
    assert got_names == names
    assert np.array_equal(got, pts)  # exact: repr of floats, negation is exact


# ---------------------------------------------------------------------------- Slicer's own files
SLICER5_RAS = """{
    "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
    "markups": [
        {
            "type": "Fiducial",
            "coordinateSystem": "RAS",
            "coordinateUnits": "mm",
            "locked": false,
            "fixedNumberOfControlPoints": false,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": 2,
            "controlPoints": [
                {
                    "id": "1",
                    "label": "F-1",
                    "description": "",
                    "associatedNodeID": "vtkMRMLScalarVolumeNode1",
                    "position": [12.5, -30.25, 7.0],
                    "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                    "selected": true,
                    "locked": false,
                    "visibility": true,
                    "positionStatus": "defined"
                },
                {
                    "id": "2",
                    "label": "F-2",
                    "description": "",
                    "associatedNodeID": "vtkMRMLScalarVolumeNode1",
                    "position": [-4.0, 5.0, -6.0],
                    "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                    "selected": true,
                    "locked": false,
                    "visibility": true,
                    "positionStatus": "defined"
                }
            ],
            "measurements": [],
            "display": {"visibility": true, "opacity": 1.0, "color": [0.4, 1.0, 1.0],
                        "glyphType": "Sphere3D", "glyphScale": 1.0}
        }
    ]
}
"""


def test_reads_a_slicer5_markups_file_in_ras(tmp_path):
    names, pts = read_points(_write(tmp_path / "F.mrk.json", SLICER5_RAS))
    assert names == ["F-1", "F-2"]
    assert np.array_equal(pts, [[-12.5, 30.25, 7.0], [4.0, -5.0, -6.0]])


def test_markups_concatenates_point_lists_and_skips_other_types(tmp_path):
    doc = {"@schema": MARKUPS_SCHEMA, "markups": [
        {"type": "Line", "coordinateSystem": "LPS",
         "controlPoints": [{"label": "L-1", "position": [0, 0, 0]}, {"label": "L-2", "position": [1, 0, 0]}]},
        {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{"label": "a", "position": [1, 2, 3]}]},
        {"type": "Fiducial", "coordinateSystem": "RAS",
         "controlPoints": [{"label": "", "position": [1, 2, 3]}, {"position": [4, 5, 6]}]},
        # no coordinateSystem: LPS, as Slicer's reader and the schema's default
        {"type": "Fiducial", "controlPoints": [{"label": "d", "position": [7, 8, 9]}]},
    ]}
    names, pts = read_points(_write(tmp_path / "m.json", json.dumps(doc)))
    assert names == ["a", "point1", "point2", "d"]
    assert np.array_equal(pts, [[1, 2, 3], [-1, -2, 3], [-4, -5, 6], [7, 8, 9]])


FCSV_410 = '''# Markups fiducial file version = 4.10
# CoordinateSystem = 0
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
vtkMRMLMarkupsFiducialNode_0,12.5,-30.25,7,0,0,0,1,1,1,0,F-1,,vtkMRMLScalarVolumeNode1
vtkMRMLMarkupsFiducialNode_1,-4,5,-6,0,0,0,1,1,1,0,"nasion, soft ""tissue""",a description,
'''

FCSV_5_LPS = """# Markups fiducial file version = 5.6
# CoordinateSystem = LPS
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
1,-12.5,30.25,7,0,0,0,1,1,1,0,F-1,,
2,4,-5,-6,0,0,0,1,1,1,0,F-2,,
"""

FCSV_44 = """# Markups fiducial file version = 4.4
# CoordinateSystem = 0
vtkMRMLMarkupsFiducialNode_0,12.5,-30.25,7,0,0,0,1,1,1,0,F-1,,
"""

FCSV_SLICER3 = """# Fiducial List file /data/L.fcsv
# version = 2
# name = L
# numPoints = 1
# symbolScale = 5
# visibility = 1
# color = 0.4,1,1
# columns = label,x,y,z,sel,vis
L-P1,12.5,-30.25,7,1,1
"""


def test_reads_a_slicer_410_fcsv_in_ras(tmp_path):
    names, pts = read_points(_write(tmp_path / "F.fcsv", FCSV_410))
    assert names == ["F-1", 'nasion, soft "tissue"']
    assert np.array_equal(pts, [[-12.5, 30.25, 7.0], [4.0, -5.0, -6.0]])


def test_reads_a_slicer5_fcsv_in_lps(tmp_path):
    names, pts = read_points(_write(tmp_path / "F.fcsv", FCSV_5_LPS))
    assert names == ["F-1", "F-2"]
    assert np.array_equal(pts, [[-12.5, 30.25, 7.0], [4.0, -5.0, -6.0]])


@pytest.mark.parametrize("text", [FCSV_44, FCSV_SLICER3], ids=["4.4-no-columns", "slicer3"])
def test_reads_old_fcsv_layouts(tmp_path, text):
    names, pts = read_points(_write(tmp_path / "F.fcsv", text))
    assert len(names) == 1 and names[0] in ("F-1", "L-P1")
    assert np.array_equal(pts, [[-12.5, 30.25, 7.0]])


def test_fcsv_coordinate_system_spellings(tmp_path):
    body = "# Markups fiducial file version = 4.11\n# CoordinateSystem = {}\n1,1,2,3,0,0,0,1,1,1,0,a,,\n"
    for value, sign in [("0", -1), ("RAS", -1), ("1", 1), ("LPS", 1)]:
        _, pts = read_points(_write(tmp_path / "a.fcsv", body.format(value)))
        assert np.array_equal(pts, [[sign * 1.0, sign * 2.0, 3.0]])
    _, pts = read_points(_write(tmp_path / "a.fcsv", "# Markups fiducial file version = 4.6\n"
                                                     "1,1,2,3,0,0,0,1,1,1,0,a,,\n"))
    assert np.array_equal(pts, [[-1.0, -2.0, 3.0]])  # no CoordinateSystem line: RAS
    with pytest.raises(ValueError, match=r"a\.fcsv' line 2: CoordinateSystem = 'IJK'"):
        read_points(_write(tmp_path / "a.fcsv", body.format("IJK")))


# ---------------------------------------------------------------------------- geometry
def test_voxel_indices_survive_a_ras_markups_round_trip(tmp_path):
    img = sitk.Image([20, 30, 40], sitk.sitkFloat32)
    img.SetSpacing((0.7, 1.3, 2.5))
    img.SetOrigin((-100.5, 42.0, 310.25))
    rot = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.5, 1.1)
    direction = np.asarray(rot.GetMatrix()).reshape(3, 3) @ np.diag([1.0, -1.0, 1.0])  # with a flip
    img.SetDirection(direction.ravel().tolist())
    idx = np.array([[0, 0, 0], [19, 29, 39], [3, 7, 11], [5.5, 12.25, 20.75]])
    lps = np.array([img.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in idx])
    names = [f"v{i}" for i in range(len(idx))]
    path = tmp_path / "v.mrk.json"
    write_points(path, names, lps, coordinate_system="RAS")
    stored = np.array([cp["position"] for cp in json.loads(path.read_text())["markups"][0]["controlPoints"]])
    assert np.array_equal(stored, lps * [-1, -1, 1])  # the file holds RAS
    got_names, got = read_points(path)
    assert got_names == names
    back = np.array([img.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in got])
    np.testing.assert_allclose(back, idx, atol=1e-9)


# ---------------------------------------------------------------------------- 2D and ndim
def _markups(points, system="LPS", **cp_extra):
    cps = [dict({"label": f"P{i}", "position": list(p)}, **cp_extra) for i, p in enumerate(points)]
    return json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [
        {"type": "Fiducial", "coordinateSystem": system, "controlPoints": cps}]})


def test_2d_reads_points_on_the_plane_and_refuses_others(tmp_path):
    path = _write(tmp_path / "x.mrk.json", _markups([[10.0, 20.0, 0.0], [-3.0, 4.0, 0.0005]], "RAS"))
    names, pts = read_points(path, ndim=2)
    assert names == ["P0", "P1"] and np.array_equal(pts, [[-10.0, -20.0], [3.0, -4.0]])
    with pytest.raises(ValueError, match="x.mrk.json' markup 1 control point 2: point 'P1' lies at z"):
        read_points(path, ndim=2, plane_tol=0.0)
    path = _write(tmp_path / "y.mrk.json", _markups([[10.0, 20.0, 0.0], [1.0, 2.0, 5.0]]))
    with pytest.raises(ValueError, match=r"y.mrk.json' .*'P1' lies at z = 5 mm, off the plane z = 0"):
        read_points(path, ndim=2)
    assert read_points(path, ndim=3)[1].shape == (2, 3)


def test_ndim_against_a_csv(tmp_path):
    path = _write(tmp_path / "p.csv", "name,x,y\na,1,2\n")
    assert read_points(path, ndim=2)[1].shape == (1, 2)
    with pytest.raises(ValueError, match="p.csv' holds 2D points"):
        read_points(path, ndim=3)
    with pytest.raises(InvalidParameterError, match="ndim must be 2, 3 or None"):
        read_points(path, ndim=4)
    with pytest.raises(InvalidParameterError, match="plane_tol"):
        read_points(path, plane_tol=-1.0)


# ---------------------------------------------------------------------------- CSV rules
def test_csv_follows_the_command_line_rules(tmp_path):
    text = "\ufeffName, X ,y,z\n\n,1,2,3\nb,4,5,6\n , , , \nc,7,8,9\n"
    names, pts = read_points(_write(tmp_path / "p.csv", text))
    assert names == ["point0", "b", "c"] and np.array_equal(pts[2], [7, 8, 9])
    with pytest.raises(ValueError, match=r"p.csv' line 3: coordinate y = 'nan' is not finite"):
        read_points(_write(tmp_path / "p.csv", "name,x,y\na,1,2\nb,1,nan\n"))
    with pytest.raises(ValueError, match=r"p.csv' line 2: x = 'abc' is not a number"):
        read_points(_write(tmp_path / "p.csv", "name,x,y\nb,abc,2\n"))
    with pytest.raises(ValueError, match="header must be name,x,y or name,x,y,z"):
        read_points(_write(tmp_path / "p.csv", "label,x,y\nb,1,2\n"))
    with pytest.raises(ValueError, match="holds a header but no points"):
        read_points(_write(tmp_path / "p.csv", "name,x,y\n"))
    with pytest.raises(ValueError, match="is empty"):
        read_points(_write(tmp_path / "p.csv", "\n\n"))


# ---------------------------------------------------------------------------- errors
def test_missing_file_and_wrong_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.mrk.json"):
        read_points(tmp_path / "nothere.mrk.json")
    with pytest.raises(InvalidParameterError, match=r"\.csv, \.mrk\.json, \.json, \.fcsv"):
        read_points(_write(tmp_path / "p.txt", "name,x,y\n"))
    with pytest.raises(InvalidParameterError, match=r"p\.xyz' is not a point file"):
        write_points(tmp_path / "p.xyz", ["a"], [[1.0, 2.0]])


def test_bad_markups_files(tmp_path):
    with pytest.raises(ValueError, match=r"b.mrk.json' line 3 column \d+: not valid JSON"):
        read_points(_write(tmp_path / "b.mrk.json", '{"markups": [\n{"type": "Fiducial",\n,]}'))
    with pytest.raises(ValueError, match="b.mrk.json' holds no control points"):
        read_points(_write(tmp_path / "b.mrk.json", _markups([])))
    with pytest.raises(ValueError, match=r"holds no point list .*\['Line'\]"):
        read_points(_write(tmp_path / "b.mrk.json", '{"markups": [{"type": "Line", "controlPoints": []}]}'))
    with pytest.raises(ValueError, match="needs a top-level object with a 'markups' list"):
        read_points(_write(tmp_path / "b.mrk.json", "[1, 2]"))
    with pytest.raises(ValueError, match="not a 3D Slicer markups schema"):
        read_points(_write(tmp_path / "b.mrk.json", '{"@schema": "https://x/other.json", "markups": []}'))
    undefined = _markups([[1.0, 2.0, 3.0], [0, 0, 0]]).replace(
        '"position": [0, 0, 0]', '"position": "", "positionStatus": "undefined"')
    with pytest.raises(ValueError, match="control point 2: control point 'P1' has no position"):
        read_points(_write(tmp_path / "b.mrk.json", undefined))
    with pytest.raises(ValueError, match="'P0' is a preview"):
        read_points(_write(tmp_path / "b.mrk.json", _markups([[1, 2, 3]], positionStatus="preview")))
    with pytest.raises(ValueError, match="coordinateSystem must be 'LPS' or 'RAS'"):
        read_points(_write(tmp_path / "b.mrk.json", _markups([[1, 2, 3]], "IJK")))
    with pytest.raises(ValueError, match="position of 3 numbers"):
        read_points(_write(tmp_path / "b.mrk.json", _markups([[1, 2]])))
    um = json.loads(_markups([[1, 2, 3]]))
    um["markups"][0]["coordinateUnits"] = "um"
    with pytest.raises(ValueError, match="coordinateUnits must be 'mm'"):
        read_points(_write(tmp_path / "b.mrk.json", json.dumps(um)))


def test_repeated_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"r.csv' repeats the names \['a'\] \('a' at line 2 and line 4\)"):
        read_points(_write(tmp_path / "r.csv", "name,x,y\na,1,2\nb,1,2\na,3,4\n"))
    with pytest.raises(ValueError, match=r"r.mrk.json' repeats the names \['P0'\]"):
        read_points(_write(tmp_path / "r.mrk.json", _markups([[1, 2, 3], [4, 5, 6]]).replace('"P1"', '"P0"')))
    with pytest.raises(ValueError, match=r"r.fcsv' repeats the names \['F-1'\]"):
        read_points(_write(tmp_path / "r.fcsv", FCSV_5_LPS.replace("F-2", "F-1")))


def test_write_validates_its_arguments(tmp_path):
    path = tmp_path / "w.mrk.json"
    with pytest.raises(InvalidParameterError, match="names repeats"):
        write_points(path, ["a", "a"], [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(InvalidParameterError, match="names has 1 entries but points has 2 rows"):
        write_points(path, ["a"], [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(InvalidParameterError, match="shape"):
        write_points(path, ["a"], [[1, 2, 3, 4]])
    with pytest.raises(InvalidParameterError, match="non-finite"):
        write_points(path, ["a"], [[1, np.nan, 3]])
    with pytest.raises(InvalidParameterError, match=r"names\[0\] must be a non-empty str"):
        write_points(path, [" a"], [[1, 2, 3]])
    with pytest.raises(InvalidParameterError, match="names must be a list of str"):
        write_points(path, "a", [[1, 2, 3]])
    with pytest.raises(InvalidParameterError, match="coordinate_system"):
        write_points(path, ["a"], [[1, 2, 3]], coordinate_system="ras")
    with pytest.raises(InvalidParameterError, match="must be 'LPS' for a .csv"):
        write_points(tmp_path / "w.csv", ["a"], [[1, 2, 3]], coordinate_system="RAS")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_points(tmp_path / "no" / "w.csv", ["a"], [[1, 2, 3]])
    assert not path.exists()


# ---------------------------------------------------------------------------- the written file
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask_and_replace_atomically(tmp_path, mask, mode):
    path = tmp_path / "u.fcsv"
    path.write_text("old")
    old = os.umask(mask)
    try:
        write_points(path, ["a"], [[1.0, 2.0, 3.0]])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert sorted(os.listdir(tmp_path)) == ["u.fcsv"]
    assert read_points(path)[0] == ["a"]
