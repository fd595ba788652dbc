"""GPU decisions checked on the CPU with the GPU's properties mocked: which GPU each torchrun rank
trains on, which autocast precision ``amp`` resolves to for a GPU's compute capability, and the
gradient scaler of fp16 training (the step logic runs for real on the CPU with a CPU scaler).
benchmarks/gpu/gpu.py checks the same decisions on a real GPU."""
import itertools
import warnings

import numpy as np
import pytest
import torch

from samlearn.embedding import estimator as estimator_module
from samlearn.embedding.config import amp_dtype, loss_config, network_config, resolve_config, resolve_device
from samlearn.embedding.fitting import checkpoint_tensors, make_optimizer, new_network, resumed_network
from samlearn.embedding.model_file import embedder_meta, read_checkpoint, save_payload
from samlearn.exceptions import InvalidParameterError
from samlearn.training import PairStream, TrainState, make_loader, sampler_from_config, train
from samlearn.training.distributed import rank_device
from samlearn.training.loop import make_grad_scaler
from helpers import TINY_2D, smooth_images, tiny_embedder

CUDA = torch.device("cuda")


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n, capability)``: torch believes it sees ``n`` GPUs of that compute capability
    (a dict {index: capability} for mixed cards)."""
    def install(n=2, capability=(8, 0)):
        caps = capability if isinstance(capability, dict) else {i: capability for i in range(n)}

        def get_capability(device=None):
            d = torch.device(device) if device is not None else CUDA
            return caps[d.index or 0]

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_capability", get_capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: caps[0] >= (8, 0))
    return install


def torchrun(monkeypatch, rank, world_size, local_rank):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))


def no_torchrun(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(v, raising=False)


# ------------------------------------------------------------------ one GPU per torchrun rank
@pytest.mark.parametrize("local_rank", [0, 1])
@pytest.mark.parametrize("asked", ["auto", "cuda", "cuda:0", "cuda:1", torch.device("cuda", 1)])
def test_each_torchrun_rank_trains_on_cuda_local_rank(asked, local_rank, fake_gpus, monkeypatch):
    fake_gpus(2)
    torchrun(monkeypatch, rank=local_rank, world_size=2, local_rank=local_rank)
    index = torch.device(asked).index if asked != "auto" else None
    if index is not None and index != local_rank:  # an explicit other GPU: remapped, with a warning
        with pytest.warns(UserWarning, match=f"remapped to 'cuda:{local_rank}'"):
            dev = resolve_device(asked, "auto")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dev = resolve_device(asked, "auto")
    assert dev == torch.device("cuda", local_rank)


def test_ranks_are_numbered_per_machine(fake_gpus, monkeypatch):
    fake_gpus(4)
    torchrun(monkeypatch, rank=6, world_size=8, local_rank=2)  # second machine, its third GPU
    assert resolve_device("cuda", True) == torch.device("cuda", 2)


def test_single_process_and_cpu_keep_the_device_asked_for(fake_gpus, monkeypatch):
    fake_gpus(2)
    no_torchrun(monkeypatch)
    assert resolve_device("cuda:1", "auto") == torch.device("cuda", 1)
    assert resolve_device("auto", "auto") == CUDA
    torchrun(monkeypatch, rank=0, world_size=1, local_rank=0)          # WORLD_SIZE=1: one process
    assert resolve_device("cuda:1", "auto") == torch.device("cuda", 1)
    torchrun(monkeypatch, rank=1, world_size=2, local_rank=1)
    assert resolve_device("cuda:0", False) == torch.device("cuda", 0)  # distributed=False: as asked
    assert resolve_device("cuda:0") == torch.device("cuda", 0)         # the default: as asked
    assert resolve_device("cpu", "auto") == torch.device("cpu")         # Gloo ranks on the CPU
    assert rank_device(torch.device("cpu"), True) == torch.device("cpu")


@pytest.mark.parametrize("asked", ["auto", "cuda", "cuda:0"])
def test_more_ranks_than_gpus_is_refused(asked, fake_gpus, monkeypatch):
    fake_gpus(2)
    torchrun(monkeypatch, rank=2, world_size=3, local_rank=2)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=2 but this process sees 2 GPU\(s\)"):
        resolve_device(asked, "auto")


def test_fit_puts_each_rank_on_its_gpu_and_picks_amp_for_that_gpu(fake_gpus, monkeypatch):
    """The estimator's fit: the device given to the process group and the one amp is decided for
    are cuda:LOCAL_RANK (mixed cards: GPU 0 has bf16, GPU 1 has not)."""
    fake_gpus(2, {0: (8, 0), 1: (7, 0)})
    torchrun(monkeypatch, rank=1, world_size=2, local_rank=1)
    seen = {}

    def fake_setup(mode, device):
        seen["device"] = device
        raise RuntimeError("stop before training")

    def recording_amp(amp, device):
        seen["amp"] = amp_dtype(amp, device)
        return seen["amp"]

    monkeypatch.setattr(estimator_module, "setup_distributed", fake_setup)
    monkeypatch.setattr(estimator_module, "amp_dtype", recording_amp)
    with pytest.warns(UserWarning, match="remapped"), pytest.raises(RuntimeError, match="stop before"):
        tiny_embedder(device="cuda:0", amp="auto").fit(smooth_images(2, seed=0))
    assert seen == {"device": torch.device("cuda", 1), "amp": torch.float16}


# ------------------------------------------------------------------ amp for the GPU's capability
@pytest.mark.parametrize("capability, expected", [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                                  ((8, 6), torch.bfloat16), ((7, 0), torch.float16),
                                                  ((7, 5), torch.float16), ((6, 1), torch.float16)])
def test_amp_auto_follows_the_compute_capability(capability, expected, fake_gpus):
    fake_gpus(1, capability)
    assert amp_dtype("auto", CUDA) == expected
    assert amp_dtype("auto", torch.device("cuda", 0)) == expected


def test_amp_auto_asks_the_given_gpu(fake_gpus):
    fake_gpus(2, {0: (7, 0), 1: (9, 0)})
    assert amp_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert amp_dtype("auto", torch.device("cuda", 1)) == torch.bfloat16


def test_amp_on_the_cpu_and_explicit_settings(fake_gpus):
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    for off in ("none", None, False):
        assert amp_dtype(off, cpu) is None
    with pytest.raises(InvalidParameterError, match="amp='fp16' needs a CUDA device"):
        amp_dtype("fp16", cpu)
    fake_gpus(1, (7, 0))
    assert amp_dtype("fp16", CUDA) == torch.float16
    assert amp_dtype("none", CUDA) is None


def test_explicit_bf16_on_a_gpu_without_bf16_is_refused(fake_gpus):
    fake_gpus(1, (7, 0))
    with pytest.raises(InvalidParameterError, match=r"amp='bf16' needs .*compute capability 7\.0"):
        amp_dtype("bf16", CUDA)
    fake_gpus(1, (8, 0))
    assert amp_dtype("bf16", CUDA) == torch.bfloat16


# ------------------------------------------------------------------ the gradient scaler of fp16
def test_only_fp16_on_cuda_gets_a_scaler(fake_gpus):
    for dtype, device in [(None, "cuda"), (torch.bfloat16, "cuda"), (torch.float16, "cpu"),
                          (None, "cpu"), (torch.bfloat16, "cpu")]:
        assert make_grad_scaler(dtype, device) is None
    fake_gpus(1, (7, 0))
    scaler = make_grad_scaler(torch.float16, torch.device("cuda", 0))
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    restored = make_grad_scaler(torch.float16, "cuda", {"scale": 1024.0, "growth_factor": 2.0,
                                                        "backoff_factor": 0.5, "growth_interval": 2000,
                                                        "_growth_tracker": 7})
    assert restored.get_scale() == 1024.0 and restored.state_dict()["_growth_tracker"] == 7
    assert make_grad_scaler(torch.float16, "cuda", {}).get_scale() == 2.0 ** 16


class SpyScaler(torch.amp.GradScaler):
    """A real CPU gradient scaler that counts its calls."""

    def __init__(self, **kwargs):
        super().__init__("cpu", **kwargs)
        self.calls = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        return super().update(new_scale)


@pytest.fixture(scope="module")
def tiny_setup():
    """A tiny configuration, network seed and one fixed batch of patch pairs."""
    over = {k: v for k, v in TINY_2D.items() if k not in ("preset", "num_workers", "n_threads", "device")}
    _, cfg = resolve_config("xray-lite", 2, False, over)
    net_cfg = network_config(cfg)
    images = smooth_images(2, ndim=2, seed=3, shape=(64, 64))
    stream = PairStream([im.array for im in images], [np.ones(2)] * 2, sampler_from_config(cfg), cfg["n_pos"],
                        net_cfg.global_stride, net_cfg.local_stride, np.random.SeedSequence(0))
    batch = next(iter(make_loader(stream, cfg["batch_size"], 0, pin_memory=False)))
    return cfg, batch


def _train_steps(tiny_setup, n, grad_scaler, amp=None, state=None):
    cfg, batch = tiny_setup
    net = new_network(network_config(cfg), np.random.SeedSequence(0))
    opt = make_optimizer(net, cfg)
    state = state if state is not None else TrainState()
    train(net, opt, itertools.repeat(batch), state, loss_config=loss_config(cfg), device="cpu", amp_dtype=amp,
          max_iter=n, max_time=None, lr=1e-3, warmup=0, schedule="constant",
          generator=torch.Generator().manual_seed(0), config=net.config, grad_scaler=grad_scaler)
    return net, state


def test_scaled_steps_update_the_weights_as_unscaled_ones(tiny_setup):
    """The optimiser sees unscaled gradients: with a power-of-two scale and no overflow the weights
    after two steps are those of training without a scaler (float32, so exactly)."""
    plain, plain_state = _train_steps(tiny_setup, 2, None)
    spy = SpyScaler(init_scale=2.0 ** 12)
    scaled, state = _train_steps(tiny_setup, 2, spy)
    assert spy.calls == ["scale", "step", "update"] * 2
    assert plain_state.scaler_state is None
    assert state.scaler_state["scale"] == 2.0 ** 12 and state.scaler_state["_growth_tracker"] == 2
    start = new_network(network_config(tiny_setup[0]), np.random.SeedSequence(0)).state_dict()
    moved = False
    for (name, a), b in zip(plain.state_dict().items(), scaled.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
        moved = moved or not torch.equal(a, start[name])
    assert moved
    assert [h["loss"] for h in plain_state.history] == pytest.approx([h["loss"] for h in state.history])


def test_a_step_with_overflowing_gradients_is_skipped(tiny_setup):
    """A scale that overflows the gradients: the step is skipped (weights unchanged) and the scale
    backs off, as torch's GradScaler does."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    net, state = _train_steps(tiny_setup, 1, scaler)
    start = new_network(network_config(tiny_setup[0]), np.random.SeedSequence(0))
    for (name, a), b in zip(net.named_parameters(), start.parameters()):
        assert torch.equal(a.detach(), b.detach()), name
    assert state.scaler_state["scale"] == 2.0 ** 126 and state.iteration == 1


def test_fp16_autocast_step_with_a_scaler_on_the_cpu(tiny_setup):
    """A real fp16 autocast step with the scaler (on the CPU: GradScaler("cpu")): finite loss,
    weights moved, scale recorded in the state."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    net, state = _train_steps(tiny_setup, 2, scaler, amp=torch.float16)
    assert all(np.isfinite(h["loss"]) for h in state.history)
    assert state.scaler_state is not None and state.scaler_state["scale"] > 0


def test_the_scaler_state_goes_into_checkpoints_and_comes_back(tiny_setup, tmp_path):
    cfg, _ = tiny_setup
    net = new_network(network_config(cfg), np.random.SeedSequence(0))
    opt = make_optimizer(net, cfg)
    scaler_state = {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                    "_growth_tracker": 3}
    state = TrainState(5, 1.5, [], scaler_state=scaler_state)
    tensors = checkpoint_tensors(net, opt, state)
    assert tensors["grad_scaler"] == scaler_state
    assert "grad_scaler" not in checkpoint_tensors(net, opt, TrainState())
    path = tmp_path / "ckpt.samlearn"
    meta = embedder_meta({}, cfg, "xray-lite", 5, 1.5, False, [], checkpoint=True)
    save_payload(path, "SAMEmbedder", meta, tensors)
    _, restored, _ = resumed_network(network_config(cfg), read_checkpoint(path), path)
    assert restored.scaler_state == scaler_state and restored.iteration == 5


def test_a_run_without_a_scaler_drops_an_old_scaler_state(tiny_setup):
    state = TrainState(scaler_state={"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 0})
    _, state = _train_steps(tiny_setup, 1, "auto", state=state)  # float32 on the CPU: no scaler
    assert state.scaler_state is None


def test_train_rejects_an_unknown_grad_scaler_setting(tiny_setup):
    with pytest.raises(ValueError, match="grad_scaler must be"):
        _train_steps(tiny_setup, 1, "yes")
