"""Backbone export (paper §IV-G): ``SAMEmbedder.backbone_state_dict()`` loads strictly into a fresh
:class:`samlearn.nn.SAMBackbone`, computes the same features as the trained network's encoder, and
the segmentation example runs end to end on a tiny budget."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import smooth_images, tiny_embedder
from samlearn.embedding.config import PRESET_KEYS, network_config, resolve_config
from samlearn.nn import SAMBackbone, SAMNet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fitted():
    return tiny_embedder(random_state=0, max_iter=2).fit(smooth_images(2, 2, seed=1))


def test_backbone_state_dict_loads_strictly_and_is_a_cpu_copy(fitted):
    state = fitted.backbone_state_dict()
    assert state and all(k.startswith(("stem.", "stages.")) for k in state)
    assert "stem.1.weight" in state and "stages.0.1.conv1.weight" in state
    assert all(v.device.type == "cpu" and not v.requires_grad for v in state.values())
    fresh = SAMBackbone(fitted.network_.config)
    fresh.load_state_dict(state, strict=True)          # no missing or unexpected keys
    net_state = fitted.network_.state_dict()
    for k, v in state.items():
        assert torch.equal(v, net_state[k])
    # everything of the network that is not FPN or head is in it
    assert {k for k in net_state if not k.startswith(("lateral.", "global_head.", "local_head."))} == set(state)
    # a copy: changing it leaves the model alone
    state["stem.1.weight"].zero_()
    assert not torch.equal(fitted.network_.state_dict()["stem.1.weight"], state["stem.1.weight"])


def test_backbone_features_equal_the_networks_encoder(fitted):
    bb = fitted.backbone().eval()
    net = fitted.network_.eval()
    x = torch.from_numpy(fitted.preprocess(smooth_images(1, 2, seed=2)[0]).array)[None, None]
    with torch.no_grad():
        feats = bb(x)
        h = net.stem(x)
        for f, stage in zip(feats, net.stages):
            h = stage(h)
            torch.testing.assert_close(f, h, rtol=0, atol=0)
    cfg = net.config
    for f, c, s in zip(feats, cfg.channels, cfg.level_strides()):
        assert f.shape[1] == c and tuple(f.shape[2:]) == tuple(n // st for n, st in zip(x.shape[2:], s))
    with pytest.raises(ValueError, match="multiple of the total stride"):
        bb(torch.zeros(1, 1, 30, 30))


def test_random_backbone_matches_samnet_initialisation_scheme():
    est = tiny_embedder()
    overrides = {k: getattr(est, k) for k in PRESET_KEYS}
    cfg = network_config(resolve_config(est.preset, 2, False, overrides)[1])
    torch.manual_seed(0)
    a = SAMBackbone(cfg).state_dict()
    torch.manual_seed(0)
    b = SAMBackbone(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # same keys and shapes as the encoder part of SAMNet
    net = SAMNet(cfg).state_dict()
    assert all(net[k].shape == v.shape for k, v in a.items())
    # residual branches start as identities, as in SAMNet
    assert all(not v.any() for k, v in a.items() if k.endswith("bn2.weight"))


def test_unfitted_embedder_has_no_backbone():
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        tiny_embedder().backbone_state_dict()


@pytest.mark.slow  # an example script in a subprocess: slow
def test_segmentation_example_runs_on_a_tiny_budget(tmp_path):
    spec = importlib.util.spec_from_file_location("segmentation_finetune",
                                                  ROOT / "examples" / "segmentation_finetune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "seg.json"
    res = mod.main(["--n-unlabelled", "2", "--n-pool", "2", "--n-train", "2", "--n-test", "2",
                    "--sam-iter", "2", "--iters", "4", "--seeds", "0", "--quiet", "--out", str(out)])
    assert out.exists()
    assert res["sam"]["n_iter"] == 2
    for init in ("sam", "random"):
        d = res["summary"][init]["dice_mean_over_seeds"]
        assert 0.0 <= d <= 1.0
    runs = res["runs"]
    assert [r["init"] for r in runs] == ["sam", "random"] and runs[0]["train_ids"] == runs[1]["train_ids"]
    # the two arms differ only by the encoder's initial weights
    assert np.isfinite([r["final_loss"] for r in runs]).all()


def test_example_dice_and_loss():
    spec = importlib.util.spec_from_file_location("segmentation_finetune",
                                                  ROOT / "examples" / "segmentation_finetune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True       # 8 pixels
    b[0, :1] = True       # 4 pixels, all inside a: Dice 2*4/12
    np.testing.assert_allclose(mod.dice_scores(a, b), [8 / 12, 1.0])
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, :2] = 1
    perfect = torch.stack([(1 - t).float(), t.float()], 1) * 50.0
    assert float(mod.seg_loss(perfect, t)) < 1e-3
    assert float(mod.seg_loss(-perfect, t)) > 1.0
