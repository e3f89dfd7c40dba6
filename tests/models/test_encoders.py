"""Tests for the encoders, their registry and the heads (learner.models.encoders / heads)."""

from __future__ import annotations

import pytest
import torch

from learner.errors import ConfigError
from learner.models import (
    ENCODERS,
    FeatureMLP,
    ProjectionHead,
    RegressionHead,
    ResNet2D18,
    ResNet3D18,
    ShiftedConv,
    TSMResNet18,
    build_encoder,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_tsm_resnet18_shape_and_backward() -> None:
    enc = TSMResNet18(in_channels=3, n_segment=4, width=8)
    assert enc.embed_dim == 64
    x = torch.randn(2, 4, 3, 32, 32, requires_grad=True)
    u = enc(x)
    assert u.shape == (2, 64)
    u.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())


def test_tsm_embedding_is_mean_of_frame_features() -> None:
    enc = TSMResNet18(in_channels=1, n_segment=3, width=8).eval()
    x = torch.randn(2, 3, 1, 32, 32)
    with torch.no_grad():
        frames = enc.frame_features(x)
        assert frames.shape == (2, 3, 64)
        torch.testing.assert_close(enc(x), frames.mean(dim=1))


def test_tsm_mixes_time_within_a_clip_only() -> None:
    # Eval mode: BatchNorm uses running stats, so any cross-frame effect comes from the shift.
    enc = TSMResNet18(in_channels=1, n_segment=4, width=8).eval()
    x = torch.randn(2, 4, 1, 32, 32)
    x2 = x.clone()
    x2[0, 0] += 1.0  # change frame 0 of clip 0
    with torch.no_grad():
        f1, f2 = enc.frame_features(x), enc.frame_features(x2)
    assert not torch.allclose(f1[0, 1], f2[0, 1])  # frame 1 sees frame 0 through the shift
    assert not torch.allclose(f1[0, 3], f2[0, 3])  # 8 shifted blocks reach 3 frames away
    torch.testing.assert_close(f1[1], f2[1], rtol=0, atol=0)  # the other clip is unaffected


def test_plain_backbone_would_not_mix_time() -> None:
    # Control for the test above: without the wrappers' shift, frames are independent.
    enc = TSMResNet18(in_channels=1, n_segment=4, width=8).eval()
    for m in enc.modules():
        if isinstance(m, ShiftedConv):
            m.shift = torch.nn.Identity()
    x = torch.randn(1, 4, 1, 32, 32)
    x2 = x.clone()
    x2[0, 0] += 1.0
    with torch.no_grad():
        f1, f2 = enc.frame_features(x), enc.frame_features(x2)
    torch.testing.assert_close(f1[0, 1:], f2[0, 1:], rtol=0, atol=0)


def test_tsm_deterministic_under_seed() -> None:
    x = torch.randn(1, 2, 3, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(TSMResNet18(n_segment=2, width=8).eval()(x))
    torch.manual_seed(124)
    other = TSMResNet18(n_segment=2, width=8).eval()(x)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], other)


def test_param_counts_match_torchvision_layout() -> None:
    # torchvision resnet18 has 11,689,512 parameters, of which fc holds 512*1000 + 1000.
    assert n_params(TSMResNet18(width=64)) == 11_689_512 - 513_000
    assert TSMResNet18(width=64).embed_dim == 512
    assert TSMResNet18(width=16).embed_dim == 128
    assert ResNet3D18(width=16).embed_dim == 128


@pytest.mark.parametrize(
    "shape", [(2, 4, 3, 32), (2, 3, 3, 32, 32), (2, 4, 1, 32, 32), (8, 3, 32, 32)]
)
def test_tsm_bad_input_names_shape(shape: tuple[int, ...]) -> None:
    enc = TSMResNet18(in_channels=3, n_segment=4, width=8)
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        enc(torch.zeros(*shape))


def test_tsm_rejects_width_below_fold_div() -> None:
    with pytest.raises(ValueError, match="fold_div"):
        TSMResNet18(width=4, fold_div=8)


def test_resnet3d18_shape_backward_and_errors() -> None:
    enc = ResNet3D18(in_channels=1, width=8)
    assert enc.embed_dim == 64
    x = torch.randn(2, 1, 16, 16, 16, requires_grad=True)
    u = enc(x)
    assert u.shape == (2, 64)
    u.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\)"):
        enc(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(1, 2, 8, 8, 8\)"):
        enc(torch.zeros(1, 2, 8, 8, 8))


def test_feature_mlp() -> None:
    mlp = FeatureMLP(in_features=5, hidden=(16, 16), embed_dim=8, dropout=0.0)
    assert mlp.embed_dim == 8
    assert any(isinstance(m, torch.nn.LayerNorm) for m in mlp.modules())
    x = torch.randn(3, 5, requires_grad=True)
    out = mlp(x)
    assert out.shape == (3, 8)
    out.sum().backward()
    assert x.grad is not None
    # LayerNorm: a batch of one works in train mode and rows do not influence each other.
    torch.testing.assert_close(mlp(x[:1]), out[:1])
    assert FeatureMLP(in_features=5, hidden=(), embed_dim=4)(x).shape == (3, 4)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        mlp(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="dropout"):
        FeatureMLP(in_features=5, dropout=1.0)


def test_heads() -> None:
    u = torch.randn(4, 16)
    assert RegressionHead(16)(u).shape == (4,)
    head = RegressionHead(16, hidden=8)
    assert head(u).shape == (4,)
    assert n_params(head) == 16 * 8 + 8 + 8 + 1
    assert ProjectionHead(16, out_dim=6)(u).shape == (4, 6)
    with pytest.raises(ValueError, match=r"\(4, 15\)"):
        RegressionHead(16)(torch.zeros(4, 15))
    with pytest.raises(ValueError, match="out_dim"):
        ProjectionHead(16, out_dim=0)


def test_registry_builds_each_encoder() -> None:
    assert set(ENCODERS) >= {"tsm_resnet18", "tsm_slices", "resnet3d_18", "mlp"}
    assert ENCODERS["tsm_slices"] is TSMResNet18
    enc = build_encoder("tsm_slices", in_channels=1, n_segment=2, width=8)
    assert isinstance(enc, TSMResNet18) and enc.n_segment == 2
    assert build_encoder("resnet3d_18", width=8).embed_dim == 64
    assert build_encoder("mlp", in_features=3, embed_dim=7).embed_dim == 7


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"resnet3d_18.*tsm_resnet18") as info:
        build_encoder("resnet50")
    assert "resnet50" in str(info.value)
    with pytest.raises(ConfigError, match="depth"):
        build_encoder("tsm_resnet18", depth=34)
    with pytest.raises(ConfigError, match="in_features"):
        build_encoder("mlp")
    with pytest.raises(ConfigError, match="width"):
        build_encoder("resnet3d_18", width=0)


def test_resnet2d18_is_the_tsm_backbone_without_shift() -> None:
    still = ResNet2D18(in_channels=3, width=8)
    assert build_encoder("resnet2d_18", in_channels=3, width=8).embed_dim == still.embed_dim == 64
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = still(x)
    assert out.shape == (2, 64)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # The same ResNet-18 as the clip encoder: its weights load one to one into a TSM encoder
    # (whose shifted convolutions sit one module deeper), strictly, shapes and all.
    clip = TSMResNet18(in_channels=3, n_segment=4, width=8)
    shifted = {k.replace(".conv.", "."): k for k in clip.state_dict()}
    clip.load_state_dict({shifted[k]: v for k, v in still.state_dict().items()}, strict=True)
    assert n_params(clip) == n_params(still)
    with pytest.raises(ValueError, match=r"ResNet2D18 expects \(B, C=3, H, W\)"):
        still(torch.randn(2, 1, 32, 32))
