"""Load torchvision-format ResNet-18 weights (e.g. ImageNet) from a local file.

ImageNet weights cannot be downloaded by this package; a user who has torchvision's
``resnet18`` state dict on disk (``torch.save(model.state_dict(), path)``) can start the 2D
encoder from it. The MONAI ResNet-18 built by :mod:`learner.models.encoders` has the
torchvision layout, so torchvision keys map one to one onto it, with one exception: the
residual temporal shift wraps each block's ``conv1``, so torchvision's
``layer1.0.conv1.weight`` lives at ``layer1.0.conv1.conv.weight``. The mapping is derived by
inspecting the model, not written down, so it follows the model's actual key names.

torchvision's classifier (``fc.*``) is ignored: the encoder has none.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

from learner.errors import ConfigError
from learner.models.encoders import ResNet2D18, TSMResNet18
from learner.models.tsm import ShiftedConv

_IGNORED_PREFIX = "fc."
# BatchNorm's step counter is bookkeeping, not a weight: older torchvision files lack it.
_OPTIONAL_SUFFIX = "num_batches_tracked"
_MAX_NAMED = 5


def _name_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown if len(keys) <= _MAX_NAMED else f"{shown} and {len(keys) - _MAX_NAMED} more"


def torchvision_key_map(backbone: nn.Module) -> dict[str, str]:
    """Map torchvision-style key names onto ``backbone``'s state-dict keys.

    A key inside a :class:`ShiftedConv` (``<block>.conv1.conv.weight``) is reached by the
    name it has without the wrapper (``<block>.conv1.weight``); every other key is its own
    torchvision name.

    Args:
        backbone: the MONAI ResNet (with or without temporal shifts).

    Returns:
        ``{torchvision_key: backbone_state_dict_key}`` for every entry of the state dict.
    """
    wrapped = {name for name, m in backbone.named_modules() if isinstance(m, ShiftedConv)}
    mapping: dict[str, str] = {}
    for key in backbone.state_dict():
        module_path, _, leaf = key.rpartition(".")
        parent, _, last = module_path.rpartition(".")
        if last == "conv" and parent in wrapped:
            mapping[f"{parent}.{leaf}"] = key
        else:
            mapping[key] = key
    return mapping


def _backbone_of(encoder: nn.Module) -> nn.Module:
    if isinstance(encoder, TSMResNet18 | ResNet2D18):
        return encoder.backbone
    if isinstance(encoder, ResNet) and isinstance(encoder.conv1, nn.Conv2d):
        return encoder
    raise ConfigError(
        f"torchvision resnet18 weights fit only the 2D encoders (tsm_resnet18, tsm_slices, "
        f"resnet2d_18), "
        f"not {type(encoder).__name__}; remove the pretrained weights option or change "
        f"model.encoder"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"{path}: pretrained weights file not found; check the path")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same user problem
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{path}: cannot read as a PyTorch state dict ({reason}); save the weights with "
            f"torch.save(model.state_dict(), path)"
        ) from err
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ConfigError(
            f"{path}: not a state dict of tensors; save the weights with "
            f"torch.save(model.state_dict(), path)"
        )
    return loaded


def _adapt(key: str, source: torch.Tensor, target: torch.Tensor, path: Path) -> torch.Tensor:
    """Return ``source`` shaped like ``target``, or raise ``ConfigError`` naming ``key``."""
    if source.shape == target.shape:
        return source
    if (
        key == "conv1.weight"
        and source.ndim == 4
        and source.shape[1] == 3
        and target.shape[1] == 1
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
    ):
        # Grey input: a grey frame fed as 3 identical RGB channels gives
        # sum_c W_c * g = (sum_c W_c) * g, so summing the RGB filters is exact.
        return source.sum(dim=1, keepdim=True)
    raise ConfigError(
        f"{path}: key {key} has shape {tuple(source.shape)} but the encoder expects "
        f"{tuple(target.shape)}; torchvision resnet18 weights need width=64 and in_channels 1 or 3"
    )


def load_torchvision_resnet18(
    encoder: nn.Module, state_dict_path: str | Path, *, strict: bool = True
) -> dict[str, str]:
    """Copy a torchvision ``resnet18`` state dict into a 2D encoder's MONAI backbone, in place.

    Args:
        encoder: a :class:`TSMResNet18` (width 64) or a MONAI 2D ``ResNet`` built like it.
        state_dict_path: a file written by ``torch.save(torchvision_resnet18.state_dict(), p)``;
            read with ``weights_only=True``.
        strict: if True, every torchvision key except ``fc.*`` must map onto the encoder and
            every backbone parameter and BatchNorm running statistic must be filled.

    Returns:
        ``{torchvision_key: encoder_backbone_key}`` for every tensor copied.

    Raises:
        ConfigError: file missing or unreadable; the encoder is not a 2D ResNet; a shape
            that does not fit (other than ``conv1`` with ``in_channels=1``, where the RGB
            filters are summed); in strict mode, unmapped or unfilled keys. Each message names
            the key(s).

    Example:
        >>> enc = TSMResNet18(in_channels=1, n_segment=8)           # doctest: +SKIP
        >>> load_torchvision_resnet18(enc, "resnet18-f37072fd.pth")  # doctest: +SKIP
    """
    path = Path(state_dict_path)
    backbone = _backbone_of(encoder)
    source = _read_state_dict(path)
    key_map = torchvision_key_map(backbone)
    targets = backbone.state_dict()

    candidates = {k: v for k, v in source.items() if not k.startswith(_IGNORED_PREFIX)}
    unmapped = sorted(k for k in candidates if k not in key_map)
    if strict and unmapped:
        raise ConfigError(
            f"{path}: key(s) {_name_keys(unmapped)} do not exist in the encoder; use a "
            f"torchvision resnet18 state dict (or strict=False to skip them)",
            problems=[f"{path}: key {k} does not exist in the encoder" for k in unmapped],
        )
    mapped = {k: key_map[k] for k in candidates if k in key_map}
    unfilled = sorted(
        tv_key
        for tv_key, key in key_map.items()
        if tv_key not in mapped and not key.endswith(_OPTIONAL_SUFFIX)
    )
    if strict and unfilled:
        raise ConfigError(
            f"{path}: key(s) {_name_keys(unfilled)} missing from the weights file; use a "
            f"torchvision resnet18 state dict (or strict=False to keep them randomly initialised)",
            problems=[f"{path}: key {k} missing from the weights file" for k in unfilled],
        )
    # Check every shape before copying anything, so a failed load leaves the encoder intact.
    adapted = {
        tv_key: _adapt(tv_key, candidates[tv_key], targets[key], path)
        for tv_key, key in mapped.items()
    }
    with torch.no_grad():
        for tv_key, key in mapped.items():
            # state_dict() tensors share storage with the parameters and buffers.
            targets[key].copy_(adapted[tv_key])
    return mapped
