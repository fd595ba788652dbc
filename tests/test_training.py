"""The training loop at scale: no host-device synchronisation in the step, data-parallel training
under torchrun (Gloo, 2 CPU processes), and the `samlearn train` command."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import samlearn
from samlearn import training
from samlearn.cli import main as cli_main
from helpers import TINY_2D, smooth_images, tiny_embedder

ROOT = Path(__file__).resolve().parents[1]
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def forbid_host_sync():
    """Make every host-device synchronisation a Python code path could cause raise: reading a tensor
    on the host, branching on it, or building a tensor from host data (a blocking copy on CUDA)."""
    saved = {n: getattr(torch.Tensor, n) for n in SYNC_METHODS}
    saved_factories = (torch.tensor, torch.as_tensor)

    def forbidden(name):
        def f(*args, **kwargs):
            raise AssertionError(f"host-device synchronisation in the training step: {name}")
        return f

    for n in SYNC_METHODS:
        setattr(torch.Tensor, n, forbidden(f"Tensor.{n}"))
    torch.tensor, torch.as_tensor = forbidden("torch.tensor"), forbidden("torch.as_tensor")
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        torch.tensor, torch.as_tensor = saved_factories


@pytest.mark.parametrize("ndim", [2, 3])
def test_training_step_never_syncs_host_and_device(ndim, monkeypatch):
    """Forward pass and loss under the guard for whole training steps; statistics are read only at
    the flush (log_every), outside it."""
    from samlearn.training import loop
    orig_loss = loop.sam_loss
    calls = {"n": 0}

    def guarded_loss(*args, **kwargs):
        calls["n"] += 1
        with forbid_host_sync():
            return orig_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "sam_loss", guarded_loss)
    from samlearn.nn.network import SAMNet
    orig_forward = SAMNet.forward

    def guarded_forward(self, x, pad_value=None):
        with forbid_host_sync():
            return orig_forward(self, x, pad_value)

    monkeypatch.setattr(SAMNet, "forward", guarded_forward)
    est = tiny_embedder(ndim=ndim, random_state=0, max_iter=3)
    est.fit(smooth_images(2, ndim=ndim, seed=1))
    assert calls["n"] == 3 and len(est.history_) == 3
    with pytest.raises(AssertionError, match="synchronisation"):  # the guard does catch a sync
        with forbid_host_sync():
            torch.ones(2).sum().item()


def test_torchrun_env_and_single_process_defaults(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(v, raising=False)
    assert training.torchrun_env() is None
    ctx = training.setup_distributed("auto", torch.device("cpu"))
    assert not ctx.enabled and ctx.is_main
    with pytest.raises(ValueError, match="not launched by torchrun"):
        training.setup_distributed(True, torch.device("cpu"))
    with pytest.raises(ValueError, match="distributed must be"):
        tiny_embedder(distributed="yes").fit(smooth_images(2, seed=0))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="inconsistent torchrun"):
        training.torchrun_env()


def _torchrun(args, cwd, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"] + args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # two ranks under torchrun: slow
def test_data_parallel_two_ranks_gloo(tmp_path):
    res = _torchrun([str(ROOT / "tests" / "_ddp_worker.py"), str(tmp_path)], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    facts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [f["rank"] for f in facts] == [0, 1] and all(f["world_size"] == 2 for f in facts)
    assert all(f["n_iter_first"] == 4 and f["n_iter_resumed"] == 6 for f in facts)
    # the resumed run continued the checkpoint's history (iterations 1-4) with 5 and 6
    assert facts[0]["history_resumed"] == [1, 2, 3, 4, 5, 6]
    # statistics are averaged over the ranks: both record the same losses
    np.testing.assert_allclose(facts[0]["loss_first"], facts[1]["loss_first"])
    # only rank 0 wrote checkpoints (every 2 iterations and at the end)
    assert facts[0]["checkpoint_writes"] >= 3 and facts[1]["checkpoint_writes"] == 0
    for stage in ("first", "resumed"):
        w0 = torch.load(tmp_path / f"rank0_{stage}.pt", weights_only=True)
        w1 = torch.load(tmp_path / f"rank1_{stage}.pt", weights_only=True)
        assert w0.keys() == w1.keys()
        for k in w0:  # weights and BatchNorm statistics identical on both ranks
            assert torch.equal(w0[k], w1[k]), k
    a = torch.load(tmp_path / "rank0_first.pt", weights_only=True)
    b = torch.load(tmp_path / "rank0_resumed.pt", weights_only=True)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the resumed run trained further
    ck = samlearn.load(tmp_path / "ckpt.samlearn")
    assert ck.n_iter_ == 6


def _cli_params(ndim=2):
    params = dict(TINY_2D)
    for k in ("preset", "max_iter", "device"):
        params.pop(k)
    out = []
    for k, v in params.items():
        out += ["--param", f"{k}={json.dumps(v)}"]
    return out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, im in enumerate(smooth_images(3, ndim=2, seed=4)):
        im.save(folder / f"img{i}.mha")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_collect_images_reads_folders_globs_and_dicom_series(image_folder, tmp_path):
    from samlearn.cli import collect_images
    files = collect_images([str(image_folder)])
    assert [Path(f).name for f in files] == ["img0.mha", "img1.mha", "img2.mha"]
    assert collect_images([str(image_folder / "img1.mha"), str(image_folder / "img*.mha")]) == \
        [files[1], files[0], files[2]]
    series = tmp_path / "patients"
    for name in ("b", "a"):
        (series / name).mkdir(parents=True)
        (series / name / "1.dcm").write_bytes(b"")
    assert collect_images([str(series)]) == [str(series / "a"), str(series / "b")]
    assert collect_images([str(series / "a")]) == [str(series / "a")]


def test_cli_train_writes_a_model(image_folder, tmp_path, capsys):
    out = tmp_path / "model.samlearn"
    code = cli_main(["train", str(image_folder), "--out", str(out), "--preset", "xray-lite", "--device", "cpu",
                     "--max-iter", "2", "--seed", "0"] + _cli_params())
    assert code == 0
    est = samlearn.load(out)
    assert est.n_iter_ == 2 and est.preset_ == "xray-lite" and est.config_["width"] == 0.125
    # the same with a glob pattern, a checkpoint, and resumed to a larger budget
    ck = tmp_path / "ck.samlearn"
    code = cli_main(["train", str(image_folder / "img*.mha"), "-o", str(out), "--preset", "xray-lite",
                     "--device", "cpu", "--max-iter", "3", "--seed", "0", "--checkpoint", str(ck)] + _cli_params())
    assert code == 0 and ck.exists()
    code = cli_main(["train", str(image_folder), "-o", str(out), "--preset", "xray-lite", "--device", "cpu",
                     "--max-iter", "4", "--seed", "0", "--checkpoint", str(ck), "--resume"] + _cli_params())
    assert code == 0 and samlearn.load(out).n_iter_ == 4


@pytest.mark.parametrize("args, message", [
    (["train", "{missing}", "--out", "{out}"], "is not a file, a folder or a glob"),
    (["train", "{empty}", "--out", "{out}"], "holds no image files"),
    (["train", "{empty}/*.nii.gz", "--out", "{out}"], "matches no files"),
    (["train", "{images}", "--out", "{tmp}"], "is a folder"),
    (["train", "{images}", "--out", "{out}", "--resume"], "--resume needs --checkpoint"),
    (["train", "{images}", "--out", "{out}", "--max-iter", "0"], "--max-iter must be"),
    (["train", "{images}", "--out", "{out}", "--nproc-per-node", "0"], "--nproc-per-node must be"),
    (["train", "{images}", "--out", "{out}", "--param", "nonsense"], "KEY=VALUE"),
    (["train", "{images}", "--out", "{out}", "--param", "colour=3"], "colour"),
    (["train", "{images}", "--out", "{out}", "--preset", "mri"], "preset must be"),
])
def test_cli_train_errors_exit_2(args, message, image_folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    fmt = dict(missing=str(tmp_path / "nope"), empty=str(empty), images=str(image_folder),
               out=str(tmp_path / "m.samlearn"), tmp=str(tmp_path))
    code = cli_main([a.format(**fmt) for a in args] + ["--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.startswith("samlearn train: error:")


def test_cli_nproc_per_node_launches_torch_distributed_run(image_folder, tmp_path, monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(v, raising=False)
    seen = {}

    def fake_call(cmd):
        seen["cmd"] = cmd
        return 7

    import samlearn.cli.commands as cli
    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    args = ["train", str(image_folder), "--out", str(tmp_path / "m"), "--nproc-per-node", "3", "--seed", "1"]
    assert cli_main(args) == 7  # the launcher's exit code is passed on
    cmd = seen["cmd"]
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in cmd and cmd[cmd.index("-m", 3) + 1] == "samlearn.cli"
    worker_args = cmd[cmd.index("samlearn.cli") + 1:]
    assert worker_args == ["train", str(image_folder), "--out", str(tmp_path / "m"), "--seed", "1"]


@pytest.mark.slow
def test_cli_train_data_parallel(image_folder, tmp_path):
    out = tmp_path / "ddp.samlearn"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "samlearn", "train", str(image_folder), "--out", str(out),
           "--nproc-per-node", "2", "--preset", "xray-lite", "--device", "cpu", "--max-iter", "3",
           "--seed", "0"] + _cli_params()
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    est = samlearn.load(out)
    assert est.n_iter_ == 3 and len(est.history_) == 3


def test_fit_threads_and_channels_last():
    imgs = smooth_images(3, ndim=2, seed=6)
    a = tiny_embedder(random_state=3, max_iter=2).fit(imgs)
    b = tiny_embedder(random_state=3, max_iter=2, n_jobs=2).fit(imgs)  # preprocessing in 2 threads
    wa, wb = a.network_.state_dict(), b.network_.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = tiny_embedder(random_state=3, max_iter=2, channels_last=True).fit(imgs)
    wc = c.network_.state_dict()
    assert all(torch.allclose(wa[k].float(), wc[k].float(), atol=1e-4) for k in wa)
    torch.testing.assert_close(c.transform(imgs[0])[0].local_map.data, a.transform(imgs[0])[0].local_map.data,
                               atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="channels_last must be"):
        tiny_embedder(channels_last="yes").fit(imgs)
    # "auto": the CPU inference copy is channels-last in 2D and 3D (measured faster,
    # benchmarks/speed/memory_format.py) and gives the maps of the default format
    im3 = smooth_images(1, ndim=3, seed=9)[0]
    est3 = tiny_embedder(ndim=3, random_state=3, max_iter=1).fit([im3, im3])
    for est, im, mf in ((a, imgs[0], torch.channels_last), (est3, im3, torch.channels_last_3d)):
        assert est.channels_last == "auto" and est._network_for_inference()[1]
        convs = [m for m in est._network_for_inference()[0].modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        assert convs and any(c.weight.is_contiguous(memory_format=mf) and not c.weight.is_contiguous()
                             for c in convs)
        auto = est.transform(im)[0].local_map.data
        plain = est.set_params(channels_last=False).transform(im)[0].local_map.data
        assert not est._network_for_inference()[1]
        est.set_params(channels_last="auto")
        torch.testing.assert_close(auto, plain, atol=1e-4, rtol=0)
