"""Tests for loading torchvision-format ResNet-18 weights (learner.models.pretrained).

torchvision cannot be imported here, so the test writes a synthetic state dict with
torchvision's resnet18 key names and shapes, every tensor holding distinct random values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from learner.config import build_config
from learner.errors import ConfigError
from learner.models import ResNet3D18, TSMResNet18, load_torchvision_resnet18
from learner.train.module import build_encoder_from_config


def torchvision_resnet18_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision.models.resnet18().state_dict() key names and shapes, random values."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def batchnorm(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    batchnorm("bn1", 64)
    in_ch = 64
    for stage, ch in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (ch, in_ch if block == 0 else ch, 3, 3)
            batchnorm(f"{prefix}.bn1", ch)
            shapes[f"{prefix}.conv2.weight"] = (ch, ch, 3, 3)
            batchnorm(f"{prefix}.bn2", ch)
            if block == 0 and stage > 1:
                shapes[f"{prefix}.downsample.0.weight"] = (ch, in_ch, 1, 1)
                batchnorm(f"{prefix}.downsample.1", ch)
        in_ch = ch
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def expected_key(tv_key: str) -> str:
    """Where a torchvision key must land in TSMResNet18's state dict."""
    if tv_key.startswith("layer") and ".conv1." in tv_key:
        tv_key = tv_key.replace(".conv1.", ".conv1.conv.")
    return f"backbone.{tv_key}"


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    return torchvision_resnet18_state_dict()


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory: pytest.TempPathFactory, tv_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(tv_state, path)
    return path


def save(state: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    return path


def test_synthetic_state_dict_has_torchvision_size(tv_state: dict[str, torch.Tensor]) -> None:
    # Guards the key list above: torchvision resnet18 has 11,689,512 parameters.
    n = sum(
        v.numel()
        for k, v in tv_state.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert n == 11_689_512


def test_every_tensor_lands_in_place(tv_state: dict[str, torch.Tensor], tv_file: Path) -> None:
    enc = TSMResNet18(in_channels=3, n_segment=2, width=64)
    mapping = load_torchvision_resnet18(enc, tv_file)
    loaded = enc.state_dict()
    non_fc = [k for k in tv_state if not k.startswith("fc.")]
    assert len(mapping) == len(non_fc)
    for key in non_fc:
        assert torch.equal(loaded[expected_key(key)], tv_state[key]), key
    # Every backbone entry was filled (no key of the encoder is left out of the mapping).
    assert sorted(f"backbone.{v}" for v in mapping.values()) == sorted(loaded)
    assert not any("fc" in k for k in loaded)
    assert torch.isfinite(enc.eval()(torch.randn(1, 2, 3, 32, 32))).all()


def test_grey_input_sums_rgb_filters(tv_state: dict[str, torch.Tensor], tv_file: Path) -> None:
    enc = TSMResNet18(in_channels=1, n_segment=2, width=64)
    load_torchvision_resnet18(enc, tv_file)
    conv1 = enc.backbone.conv1.weight
    assert conv1.shape == (64, 1, 7, 7)
    torch.testing.assert_close(conv1, tv_state["conv1.weight"].sum(dim=1, keepdim=True))
    # Equivalent to feeding the grey image as three identical RGB channels.
    grey = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(grey, conv1),
        torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), tv_state["conv1.weight"]),
        rtol=1e-4,
        atol=1e-4,
    )


def test_file_without_batch_counters_loads(
    tv_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    old = {k: v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")}
    enc = TSMResNet18(n_segment=2, width=64)
    load_torchvision_resnet18(enc, save(old, tmp_path))
    assert torch.equal(enc.backbone.layer4[1].bn2.weight, tv_state["layer4.1.bn2.weight"])
    assert int(enc.backbone.bn1.num_batches_tracked) == 0


def test_strict_unknown_key(tv_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    extra = dict(tv_state, **{"layer5.0.conv1.weight": torch.zeros(3)})
    path = save(extra, tmp_path)
    enc = TSMResNet18(n_segment=2, width=64)
    with pytest.raises(ConfigError, match=r"layer5\.0\.conv1\.weight"):
        load_torchvision_resnet18(enc, path)
    mapping = load_torchvision_resnet18(enc, path, strict=False)
    assert "layer5.0.conv1.weight" not in mapping
    assert torch.equal(enc.backbone.conv1.weight, tv_state["conv1.weight"])


def test_strict_missing_key(tv_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    missing = {k: v for k, v in tv_state.items() if k != "layer2.0.downsample.0.weight"}
    path = save(missing, tmp_path)
    enc = TSMResNet18(n_segment=2, width=64)
    before = enc.backbone.layer2[0].downsample[0].weight.clone()
    with pytest.raises(ConfigError, match=r"layer2\.0\.downsample\.0\.weight"):
        load_torchvision_resnet18(enc, path)
    load_torchvision_resnet18(enc, path, strict=False)
    assert torch.equal(enc.backbone.layer2[0].downsample[0].weight, before)
    assert torch.equal(enc.backbone.layer2[0].conv1.conv.weight, tv_state["layer2.0.conv1.weight"])


def test_shape_mismatch_names_key_and_leaves_encoder_intact(tv_file: Path) -> None:
    enc = TSMResNet18(n_segment=2, width=32)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(ConfigError, match=r"conv1\.weight.*\(64, 3, 7, 7\).*\(32, 3, 7, 7\)"):
        load_torchvision_resnet18(enc, tv_file)
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    with pytest.raises(ConfigError, match=r"conv1\.weight"):
        load_torchvision_resnet18(TSMResNet18(in_channels=2, n_segment=2, width=64), tv_file)


def test_unusable_encoder_or_file(tv_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ResNet3D18"):
        load_torchvision_resnet18(ResNet3D18(width=8), tv_file)
    enc = TSMResNet18(n_segment=2, width=8)
    with pytest.raises(ConfigError, match="not found"):
        load_torchvision_resnet18(enc, tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"garbage\.pth: cannot read"):
        load_torchvision_resnet18(enc, garbage)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ConfigError, match="not a state dict"):
        load_torchvision_resnet18(enc, listing)
    # weights_only=True: arbitrary pickled objects are refused, not executed.
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": argparse.Namespace(a=1)}, unsafe)
    with pytest.raises(ConfigError, match=r"unsafe\.pth: cannot read"):
        load_torchvision_resnet18(enc, unsafe)


@pytest.mark.parametrize(
    ("encoder", "kind", "channels"),
    [
        ("tsm_resnet18", "video", 1),
        ("tsm_resnet18", "video", 3),
        ("tsm_slices", "slices", 1),
        ("resnet2d_18", "image", 3),
    ],
)
def test_the_documented_encoders_take_the_weights(
    encoder: str, kind: str, channels: int, tv_state: dict[str, torch.Tensor], tv_file: Path
) -> None:
    # docs/pretrained-weights.md: what `learner pretrain` builds from these settings loads them.
    cfg = build_config(
        {
            "model": {"encoder": encoder, "width": 64, "pretrained": str(tv_file)},
            "data": {"input": {"kind": kind, "channels": channels, "frames": 2}},
        }
    )
    enc = build_encoder_from_config(cfg)
    mapped = load_torchvision_resnet18(enc, cfg.model.pretrained)
    assert len(mapped) == len([k for k in tv_state if not k.startswith("fc.")])
    got = enc.state_dict()["backbone.layer4.1.bn2.running_var"]
    torch.testing.assert_close(got, tv_state["layer4.1.bn2.running_var"])


def test_the_documented_refusals(
    tv_state: dict[str, torch.Tensor], tv_file: Path, tmp_path: Path
) -> None:
    # 3-D (MedicalNet-style) and tabular encoders do not take torchvision weights; nor does a
    # 2-D one take a state dict wrapped under a key or with DataParallel's "module." prefix.
    enc = TSMResNet18(in_channels=3, n_segment=2, width=64)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": tv_state}, wrapped)
    with pytest.raises(ConfigError, match="not a state dict of tensors"):
        load_torchvision_resnet18(enc, wrapped)
    prefixed = save({f"module.{k}": v for k, v in tv_state.items()}, tmp_path)
    with pytest.raises(ConfigError, match=r"module\.bn1\.bias.* do not exist in the encoder"):
        load_torchvision_resnet18(enc, prefixed)
    cfg = build_config(
        {"model": {"encoder": "resnet3d_18", "width": 8}, "data": {"input": {"kind": "volume"}}}
    )
    with pytest.raises(ConfigError, match="fit only the 2D encoders"):
        load_torchvision_resnet18(build_encoder_from_config(cfg), tv_file)
    cfg = build_config(
        {
            "model": {"encoder": "mlp"},
            "data": {"input": {"kind": "tabular"}, "feature_columns": ["a", "b"]},
        }
    )
    with pytest.raises(ConfigError, match="fit only the 2D encoders"):
        load_torchvision_resnet18(build_encoder_from_config(cfg), tv_file)
