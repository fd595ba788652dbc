"""Batch jobs that lose nothing: bad images recorded and skipped, killed runs resumed to the same
file, outputs checked before any work, one run per output, and the same results on a Dask cluster
and on torchrun ranks as in one process."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, smooth_images, tiny_embedder

from samlearn.cli import main
from samlearn.jobs import DetectTask, OutputBusyError, OutputLock, failures_path, run_batch, state_paths
from samlearn._utils.files import atomic_write_text

N_IMAGES = 12


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A tiny 2D model, N_IMAGES query images (one of them corrupt), a template and its points."""
    d = tmp_path_factory.mktemp("jobs")
    images = smooth_images(N_IMAGES + 1, ndim=2, seed=3)
    model = tiny_embedder(2, random_state=0).fit(images[:3])
    model.save(d / "model.samlearn")
    images[0].save(d / "template.nrrd")
    q = d / "queries"
    q.mkdir()
    for i, im in enumerate(images[1:]):
        im.save(q / f"q{i:03d}.nrrd")
    (q / "q005.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")  # one corrupt image
    c = images[0].geometry.index_to_world(np.array([[20.0, 25.0], [40.0, 30.0], [30.0, 45.0]]))
    with open(d / "points.csv", "w") as fh:
        fh.write("name,x,y\n" + "".join(f"p{k},{p[0]:.4f},{p[1]:.4f}\n" for k, p in enumerate(c)))
    return d


def _detect_args(d, out, *extra):
    return ["detect", "-m", str(d / "model.samlearn"), "-t", str(d / "template.nrrd"), "-p",
            str(d / "points.csv"), str(d / "queries"), "-o", str(out), "--threads", "1", "-q",
            "--consistency", "affine", *extra]


def _rows(path):
    with open(path) as fh:
        return list(csv.reader(fh))


def test_bad_image_recorded_others_finish(batch, tmp_path, capsys):
    out = tmp_path / "out.csv"
    assert main(_detect_args(batch, out)) == 3
    rows = _rows(out)
    assert rows[0] == ["image", "name", "x", "y", "score"]
    images = [r[0] for r in rows[1:]]
    assert len(images) == 3 * (N_IMAGES - 1) and not any("q005" in im for im in images)
    assert images == sorted(images)  # input order
    fails = _rows(failures_path(out))
    assert fails[0] == ["image", "error"] and len(fails) == 2 and fails[1][0].endswith("q005.nrrd")
    assert fails[1][1]  # the reason is given
    journal, lock = state_paths(out)
    assert not journal.exists() and not lock.exists()
    assert "1 image(s) failed" in capsys.readouterr().err


def test_resume_after_an_interruption_writes_the_same_file(batch, tmp_path):
    ref = tmp_path / "ref.csv"
    assert main(_detect_args(batch, ref)) == 3
    out = tmp_path / "out.csv"
    task_calls = []
    orig = DetectTask.run

    def run_then_die(self, image):  # the process "dies" after four images
        if len(task_calls) == 4:
            raise KeyboardInterrupt
        task_calls.append(image)
        return orig(self, image)

    DetectTask.run = run_then_die
    try:
        assert main(_detect_args(batch, out)) == 130
    finally:
        DetectTask.run = orig
    journal, lock = state_paths(out)
    assert journal.exists() and not out.exists() and not lock.exists()
    assert len(journal.read_text().splitlines()) == 1 + 4
    # without --resume the journal is not thrown away
    assert main(_detect_args(batch, out)) == 2
    # a last line cut by a kill is ignored: that image is redone
    with open(journal, "a") as fh:
        fh.write('{"image": "cut')
    assert main(_detect_args(batch, out, "--resume")) == 3
    assert out.read_bytes() == ref.read_bytes()
    assert failures_path(out).read_bytes() == failures_path(ref).read_bytes()
    assert not journal.exists()


def test_resume_refuses_other_settings(batch, tmp_path, capsys):
    out = tmp_path / "out.csv"
    journal, _ = state_paths(out)
    journal.write_text(json.dumps({"settings": {"task": "something else"}}) + "\n")
    assert main(_detect_args(batch, out, "--resume")) == 2
    assert "other settings" in capsys.readouterr().err


def test_outputs_checked_before_any_work(batch, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(DetectTask, "run", lambda self, image: calls.append(image))
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    for out, needle in ((folder, "is a folder"), ("/proc/samlearn/x.csv", "cannot write"),
                        (tmp_path / "x.txt", ".csv")):
        assert main(_detect_args(batch, out)) == 2
        assert needle in capsys.readouterr().err
    assert calls == []


def test_a_live_run_holds_the_output(batch, tmp_path, capsys):
    out = tmp_path / "out.csv"
    _, lock_path = state_paths(out)
    with OutputLock(lock_path):
        with pytest.raises(OutputBusyError, match="another run"):
            OutputLock(lock_path).acquire()
        assert main(_detect_args(batch, out)) == 2
        assert "another run is writing this output" in capsys.readouterr().err
    # a lock left by a process that is gone is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock_path.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead)}))
    assert main(_detect_args(batch, out)) == 3
    assert not lock_path.exists()


def test_atomic_writes_have_unique_temporary_names_and_follow_the_umask(tmp_path):
    target = tmp_path / "same.csv"
    errors = []

    def write(k):
        try:
            for _ in range(10):
                atomic_write_text(target, f"writer {k}\n" * 100)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text().count("\n") == 100 and len(set(target.read_text().splitlines())) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["same.csv"]  # no temporary file left
    old = os.umask(0o022)
    try:
        os.umask(old)
        assert (target.stat().st_mode & 0o777) == (0o666 & ~old)
    finally:
        os.umask(old)


def test_markups_output_per_image(batch, tmp_path):
    from samlearn.image import read_points

    ref = tmp_path / "ref.csv"
    assert main(_detect_args(batch, ref)) == 3
    pattern = tmp_path / "marks" / "{image}.mrk.json"
    assert main(_detect_args(batch, pattern)) == 3
    rows = _rows(ref)[1:]
    names, pts = read_points(tmp_path / "marks" / "q000.mrk.json", ndim=2)
    mine = [r for r in rows if r[0].endswith("q000.nrrd")]
    assert names == [r[1] for r in mine]
    np.testing.assert_allclose(pts, [[float(r[2]), float(r[3])] for r in mine], atol=1e-9)
    assert (tmp_path / "marks" / "detect.failures.csv").exists()
    # one file name for several images is refused before any work
    assert main(_detect_args(batch, tmp_path / "one.mrk.json")) == 2


def test_embed_and_register_batches(batch, tmp_path):
    emb = tmp_path / "emb"
    args = ["embed", "-m", str(batch / "model.samlearn"), "-o", str(emb), str(batch / "queries"), "-q"]
    assert main(args) == 3
    assert len(list(emb.glob("*.npz"))) == N_IMAGES - 1 and failures_path(emb).exists()
    reg = tmp_path / "reg"
    queries = sorted(str(p) for p in (batch / "queries").iterdir())[:3]
    args = ["register", "-m", str(batch / "model.samlearn"), "-o", str(reg), str(batch / "template.nrrd"),
            *queries, "-q", "--grid-spacing", "8"]
    assert main(args) == 0
    index = _rows(reg / "registrations.csv")
    assert index[0] == ["moving", "transform", "matches", "inliers"] and len(index) == 4
    import SimpleITK as sitk
    for row in index[1:]:
        assert sitk.ReadTransform(row[1]).GetDimension() == 2


@dataclass(frozen=True)
class KillerDetectTask(DetectTask):
    """Kills its worker process the first time it meets ``victim`` (a marker file remembers)."""

    victim: str = ""
    marker: str = ""

    def run(self, image):
        if image.endswith(self.victim) and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(image)


def _task(batch, cls=DetectTask, **extra):
    with open(batch / "points.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    return cls(model=str(batch / "model.samlearn"), threads=1, template=str(batch / "template.nrrd"),
               names=tuple(r[0] for r in rows), points=tuple((float(r[1]), float(r[2])) for r in rows),
               detector=(("consistency", "affine"),), **extra)


def test_dask_cluster_same_results_and_a_killed_worker_loses_nothing(batch, tmp_path):
    distributed = pytest.importorskip("distributed")
    images = sorted(str(p) for p in (batch / "queries").iterdir())
    serial = run_batch(_task(batch), images, tmp_path / "serial.csv")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        marker = tmp_path / "killed"
        task = _task(batch, KillerDetectTask, victim="q007.nrrd", marker=str(marker))
        res = run_batch(task, images, tmp_path / "dask.csv", client=client)
        assert marker.exists()  # a worker was killed mid-run
    finally:
        client.close()
        cluster.close()
    assert res.rows == serial.rows and res.failures == serial.failures
    assert (tmp_path / "dask.csv").read_bytes() == (tmp_path / "serial.csv").read_bytes()


def test_map_images_on_dask_matches_one_process(batch):
    distributed = pytest.importorskip("distributed")
    from samlearn import OneShotLandmarkDetector, load
    from samlearn.jobs import map_images

    task = _task(batch)
    det = OneShotLandmarkDetector(embedder=load(batch / "model.samlearn"), consistency="affine").fit(
        task.template, np.asarray(task.points))
    images = [str(batch / "queries" / f"q00{i}.nrrd") for i in range(3)]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = map_images(det, images, client=client, return_scores=True)
    for image, (pts, scores) in zip(images, remote):
        ref_pts, ref_scores = det.predict([image], return_scores=True)
        np.testing.assert_array_equal(pts, ref_pts)
        np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.slow
def test_torchrun_ranks_same_file_as_one_process(batch, tmp_path):
    ref = tmp_path / "ref.csv"
    assert main(_detect_args(batch, ref)) == 3
    out = tmp_path / "ranks.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "samlearn.cli", *_detect_args(batch, out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1, 3), res.stderr  # torchrun reports a rank's exit 3 as a failure
    assert out.read_bytes() == ref.read_bytes()
    assert failures_path(out).read_bytes() == failures_path(ref).read_bytes()
    assert not list(tmp_path.glob("ranks.csv.journal*"))


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_file(batch, tmp_path):
    ref = tmp_path / "ref.csv"
    assert main(_detect_args(batch, ref)) == 3
    out = tmp_path / "out.csv"
    journal, _ = state_paths(out)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "samlearn", *_detect_args(batch, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert journal.exists() and not out.exists()
    res = subprocess.run([sys.executable, "-m", "samlearn", *_detect_args(batch, out, "--resume")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stderr
    assert out.read_bytes() == ref.read_bytes()


def test_slicer_markups_as_template_points(batch, tmp_path):
    """-p takes 3D Slicer markups (RAS, three coordinates on a 2D image): same answers as the CSV."""
    from samlearn.image import lps_to_ras, read_points

    names, lps = read_points(batch / "points.csv")
    ras = lps_to_ras(np.column_stack([lps, np.zeros(len(lps))]))
    cps = [{"id": str(k), "label": n, "position": p.tolist(), "positionStatus": "defined"}
           for k, (n, p) in enumerate(zip(names, ras))]
    marks = tmp_path / "marks.mrk.json"
    marks.write_text(json.dumps({"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/"
                                            "Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
                                 "markups": [{"type": "Fiducial", "coordinateSystem": "RAS",
                                              "coordinateUnits": "mm", "controlPoints": cps}]}))
    ref, out = tmp_path / "ref.csv", tmp_path / "out.csv"
    assert main(_detect_args(batch, ref)) == 3
    args = _detect_args(batch, out)
    args[args.index("-p") + 1] = str(marks)
    assert main(args) == 3
    assert out.read_bytes() == ref.read_bytes()


def test_flagged_registrations_go_to_the_failures_file(batch, tmp_path, monkeypatch):
    """A registration its own evidence flags is a failure of that image: listed with the reason,
    no transform written, exit 3; the single-pair command writes it but exits 3."""
    import samlearn.apps.registration as registration

    real = registration.assess_affine
    monkeypatch.setattr(registration, "assess_affine", lambda *a, **k: real(*a, **dict(k, min_agreement=1.01)))
    reg = tmp_path / "reg"
    queries = sorted(str(p) for p in (batch / "queries").iterdir())[:2]
    args = ["register", "-m", str(batch / "model.samlearn"), "-o", str(reg), str(batch / "template.nrrd"),
            *queries, "-q", "--grid-spacing", "8"]
    assert main(args) == 3
    fails = _rows(failures_path(reg))[1:]
    assert [f[0] for f in fails] == queries and all("flagged as likely wrong" in f[1] for f in fails)
    assert not list(reg.glob("*.tfm"))
    one = tmp_path / "one.tfm"
    assert main(args[:4] + [str(one)] + args[5:7] + ["-q", "--grid-spacing", "8"]) == 3
    assert one.exists()
