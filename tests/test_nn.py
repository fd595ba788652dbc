"""The network, the loss and its negative sampling, and I3D inflation."""
import math

import pytest
import torch
import torch.nn.functional as F

from samlearn.nn import LossConfig, NetworkConfig, SAMNet, sam_loss
from samlearn.nn.loss import (diverse_local_negative_indices, hard_negative_indices, info_nce_from_logits,
                              random_negative_indices, sample_vectors)
from samlearn.nn.pretrained import load_torchvision_resnet, torchvision_key_map


def tiny_cfg(ndim):
    if ndim == 2:
        return NetworkConfig(ndim=2, depth="resnet10", width=0.125, stem_stride=2, stem_kernel=3,
                             stage_strides=(2, 2, 2), n_stages=3, fpn_channels=16, embed_dim=8)
    return NetworkConfig(ndim=3, depth="resnet10", width=0.125, stem_stride=(1, 2, 2), stem_kernel=3,
                         stage_strides=((2, 2, 2), (1, 2, 2), (1, 2, 2)), n_stages=3, fpn_channels=16, embed_dim=8)


@pytest.mark.parametrize("ndim", [2, 3])
def test_network_shapes_strides_and_normalisation(ndim):
    cfg = tiny_cfg(ndim)
    net = SAMNet(cfg).eval()
    shape = (37, 50) if ndim == 2 else (9, 30, 41)
    x = torch.randn(2, 1, *shape)
    g, l = net(x)
    assert g.shape[2:] == tuple(math.ceil(n / s) for n, s in zip(shape, cfg.global_stride))
    assert l.shape[2:] == tuple(math.ceil(n / s) for n, s in zip(shape, cfg.local_stride))
    assert g.shape[1] == l.shape[1] == 8
    torch.testing.assert_close(g.norm(dim=1), torch.ones_like(g[:, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(l.norm(dim=1), torch.ones_like(l[:, 0]), atol=1e-5, rtol=0)


def test_paper_strides():
    ct = NetworkConfig(ndim=3)
    assert ct.global_stride == (4, 16, 16) and ct.local_stride == (2, 2, 2)
    xr = NetworkConfig(ndim=2, depth="resnet34", stage_strides=(2, 2, 2, 2))
    assert xr.global_stride == (16, 16) and xr.local_stride == (2, 2)
    with pytest.raises(ValueError, match="depth"):
        NetworkConfig(depth="resnet50")


@pytest.mark.parametrize("depth, blocks", [("resnet10", (1, 1, 1, 1)), ("resnet14", (1, 1, 2, 2)),
                                           ("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
def test_depth_sets_the_residual_blocks_per_stage(depth, blocks):
    from samlearn.nn.network import BasicBlock
    net = SAMNet(NetworkConfig(ndim=2, depth=depth, width=0.125, stage_strides=(2, 2, 2, 2)))
    assert tuple(sum(isinstance(m, BasicBlock) for m in stage) for stage in net.stages) == blocks


def test_shifting_the_input_by_one_stride_shifts_the_maps_by_one_voxel():
    torch.manual_seed(0)
    cfg = tiny_cfg(2)
    net = SAMNet(cfg).eval()
    x = torch.randn(1, 1, 384, 384)
    s = cfg.global_stride[0]
    g0, l0 = net(x)
    g1, l1 = net(torch.roll(x, shifts=(s, s), dims=(2, 3)))
    # interior voxels (beyond the receptive field of the wrap-around border) move by one voxel
    torch.testing.assert_close(g1[..., 9:-8, 9:-8], g0[..., 8:-9, 8:-9], atol=1e-4, rtol=0)
    ls = cfg.local_stride[0]
    k = s // ls
    torch.testing.assert_close(l1[..., 36 + k:-36, 36 + k:-36], l0[..., 36:-36 - k, 36:-36 - k], atol=1e-4, rtol=0)


def test_global_and_local_heads_are_cut_apart():
    """The coarsest level feeds the global head only: changing the global head's lateral output
    must not change the local map (top-down connection cut)."""
    net = SAMNet(tiny_cfg(2)).eval()
    x = torch.randn(1, 1, 64, 64)
    _, l0 = net(x)
    with torch.no_grad():
        net.lateral[-1].weight.add_(1.0)
    g1, l1 = net(x)
    torch.testing.assert_close(l0, l1)


# ----------------------------------------------------------------------------- loss


def test_info_nce_by_hand():
    pos = torch.tensor([2.0])
    neg = torch.tensor([[0.0, 1.0, float("-inf")]])
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(1)))
    assert info_nce_from_logits(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_sam_loss_tiny_example_by_hand():
    """Two pairs, 2-voxel maps, explicit vectors: compare sam_loss with a hand computation."""
    torch.manual_seed(0)
    C = 3
    vec = lambda *v: F.normalize(torch.tensor(v, dtype=torch.float32), dim=0)  # noqa: E731
    a, b, c = vec(1, 0, 0), vec(0, 1, 0), vec(1, 1, 0)
    # maps (B=1, C, 1, 2): patch1 = [a, b], patch2 = [a, c]; positive: voxel 0 of each
    g1 = torch.stack([a, b], -1).view(1, C, 1, 2)
    g2 = torch.stack([a, c], -1).view(1, C, 1, 2)
    pos1 = torch.tensor([[[0.0, 0.0]]])
    pos2 = torch.tensor([[[0.0, 0.0]]])
    pos_mm = torch.tensor([[[0.0, 0.0]]])
    # voxel 1 of each patch is 10 mm away, voxel 0 at the positive
    coords = torch.tensor([[0.0, 0.0], [0.0, 10.0]]).t().reshape(1, 2, 1, 2)
    cfgl = LossConfig(tau=0.5, delta_mm=3.0, n_hard=5, n_random=5, n_candidates=5, n_local=5)
    ids = torch.tensor([0])
    loss, stats = sam_loss(g1, g2, g1, g2, pos1, pos2, pos_mm, coords, coords, coords, coords, ids,
                           (1, 1), (1, 1), cfgl, torch.Generator().manual_seed(0))
    tau = 0.5
    # anchor a (patch1) vs positive a (patch2); negatives: b and c (far voxels); no other image
    direction = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(float(a @ b) / tau) + math.exp(float(a @ c) / tau)))
    expected = 2 * direction  # global + local, both directions identical here
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["loss_global"].item() == pytest.approx(direction, rel=1e-5)


def test_hard_negatives_exclude_the_neighbourhood_of_the_positive():
    g = torch.Generator().manual_seed(1)
    B, n, N = 2, 7, 300
    sim = torch.rand(B, n, N, generator=g)
    cand_mm = torch.rand(B, N, 3, generator=g) * 20
    pos_mm = torch.rand(B, n, 3, generator=g) * 20
    # make the closest candidates the most similar: they must still be excluded
    d = torch.cdist(pos_mm, cand_mm)
    sim = sim + 10 * (d < 3)
    idx, valid = hard_negative_indices(sim, cand_mm, pos_mm, k=50, delta_mm=3.0)
    chosen_d = d.gather(-1, idx)
    assert torch.all(chosen_d[valid] > 3.0)
    # and they are the most similar among the allowed ones
    allowed = sim.masked_fill(d <= 3, float("-inf"))
    best = allowed.topk(50, dim=-1).values
    torch.testing.assert_close(sim.gather(-1, idx).masked_fill(~valid, float("-inf")), best)


def test_random_negatives_never_come_from_the_anchor_image():
    ids = torch.tensor([0, 1, 0, 2, 1])
    n_per_map = 11
    owner = ids.repeat_interleave(2 * n_per_map)
    idx, valid = random_negative_indices(ids, n_per_map, k=30, generator=torch.Generator().manual_seed(0))
    for b in range(len(ids)):
        assert torch.all(owner[idx[b][valid[b]]] != ids[b])
    # a batch from a single image has no valid random negative at all
    idx, valid = random_negative_indices(torch.tensor([3, 3]), 4, k=5, generator=torch.Generator().manual_seed(0))
    assert not valid.any()


def test_diverse_local_negatives_come_from_the_top_candidates_outside_delta():
    g = torch.Generator().manual_seed(2)
    B, n, N = 1, 4, 400
    rank = torch.rand(B, n, N, generator=g)
    cand_mm = torch.rand(B, N, 2, generator=g) * 30
    pos_mm = torch.rand(B, n, 2, generator=g) * 30
    idx, valid = diverse_local_negative_indices(rank, cand_mm, pos_mm, n_candidates=60, k=20,
                                                delta_mm=3.0, generator=torch.Generator().manual_seed(0))
    d = torch.cdist(pos_mm, cand_mm)
    allowed = rank.masked_fill(d <= 3, float("-inf"))
    top = allowed.topk(60, dim=-1).indices
    for i in range(n):
        chosen = set(idx[0, i][valid[0, i]].tolist())
        assert chosen <= set(top[0, i].tolist())
        assert len(chosen) == 20
    assert torch.all(d.gather(-1, idx)[valid] > 3)


def test_sample_vectors_alignment_convention():
    """Patch pixel u sits at feature index (u + 0.5) / s - 0.5 of a stride-s map."""
    S = (6, 5)
    ramp = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="ij"))
    maps = torch.cat([ramp, torch.full((1, *S), 100.0)])[None]  # constant third channel
    u = torch.tensor([[[4 * 2 + 1.5, 4 * 3 + 1.5]]])  # centre of feature voxel (2, 3) for s=4
    v = sample_vectors(maps, u, (4, 4))[0, 0]
    ratio = v[:2] / v[2]
    torch.testing.assert_close(ratio * 100, torch.tensor([2.0, 3.0]), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- I3D inflation


def test_i3d_inflation_from_a_torchvision_state_dict(tmp_path):
    cfg3 = NetworkConfig(ndim=3, depth="resnet18", width=1.0, n_stages=4)
    net3 = SAMNet(cfg3)
    # fabricate a torchvision-style 2D ResNet-18 state dict (names and shapes as torchvision's)
    gen = torch.Generator().manual_seed(0)
    sd = {}
    own = net3.state_dict()
    for ours, theirs in torchvision_key_map(net3).items():
        for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            key = f"{ours}.{suffix}"
            if key not in own:
                continue
            shape = list(own[key].shape)
            if suffix == "weight" and len(shape) == 5:
                shape = shape[:2] + shape[3:]
                if ours == "stem.1":
                    shape[1] = 3
            sd[f"{theirs}.{suffix}"] = (torch.randint(0, 5, shape, generator=gen) if suffix == "num_batches_tracked"
                                        else torch.randn(shape, generator=gen))
    sd["fc.weight"] = torch.randn(1000, 512)
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    load_torchvision_resnet(net3, path)
    w3 = net3.stem[1].weight  # (64, 1, 7, 7, 7)
    w2 = sd["conv1.weight"].sum(1, keepdim=True)  # grey input: RGB summed
    # a volume of identical slices gives the 2D response on the middle slice
    img = torch.randn(1, 1, 20, 20)
    vol = img.unsqueeze(2).repeat(1, 1, 9, 1, 1)
    out3 = F.conv3d(vol, w3, padding=3)[:, :, 4]
    out2 = F.conv2d(img, w2, padding=3)
    torch.testing.assert_close(out3, out2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(net3.state_dict()["stages.1.0.conv1.weight"].sum(2),
                               sd["layer2.0.conv1.weight"], atol=1e-5, rtol=1e-5)

    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_torchvision_resnet(net3, tmp_path / "none.pth")
    small = SAMNet(NetworkConfig(ndim=3, width=0.5))
    with pytest.raises(ValueError, match="do not fit"):
        load_torchvision_resnet(small, path)
