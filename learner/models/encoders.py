"""Encoders mapping one scan to an embedding ``u`` of size ``.embed_dim``.

- ``tsm_resnet18``: clips ``(B, T, C, H, W)``, a 2D ResNet-18 with residual temporal shifts,
  per-frame features averaged over the ``T`` segments (TSN consensus).
- ``tsm_slices``: the same class for volumes read as ``T`` slices (the data side slices).
- ``resnet2d_18``: stills ``(B, C, H, W)``, the same 2D ResNet-18 without temporal shift.
- ``resnet3d_18``: volumes ``(B, C, D, H, W)``, a 3D ResNet-18.
- ``mlp``: tabular rows ``(B, F)``.

The ResNets are MONAI's, built with the torchvision layout (7x7 stride-2 stem, 1x1-conv
shortcuts without bias) so that torchvision ``resnet18`` weights map one to one
(see :mod:`learner.models.pretrained`). ``width`` is the stem width (64 = standard); the
stages use ``width * (1, 2, 4, 8)`` channels and ``embed_dim = 8 * width``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from monai.networks.nets import resnet18
from monai.networks.nets.resnet import ResNet
from torch import nn

from learner.errors import ConfigError
from learner.models.tsm import insert_residual_shift

_STANDARD_WIDTH = 64


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an ``int`` >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _monai_resnet18(spatial_dims: int, in_channels: int, width: int) -> ResNet:
    """MONAI ResNet-18 without classifier, torchvision layout, stage widths ``width*(1,2,4,8)``."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("width", width)
    return resnet18(
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
        # Exact: width / 64 is a dyadic fraction, so int(64 * factor) == width.
        widen_factor=width / _STANDARD_WIDTH,
    )


class TSMResNet18(nn.Module):
    """2D ResNet-18 with a temporal shift at the start of every residual branch.

    Each frame goes through the 2D backbone; the shifts let frames exchange channels with
    their neighbours inside every block; the clip embedding is the mean of the ``T``
    per-frame features.

    Args:
        in_channels: channels per frame ``C`` (1 grey, 3 RGB).
        n_segment: frames per clip ``T``; inputs must have exactly this many.
        fold_div: ``C_block // fold_div`` channels shifted each way in each block.
        width: stem width; 64 is the standard ResNet-18 (``embed_dim`` 512), 16 gives 128.

    Shape:
        input ``(B, T, C, H, W)`` float -> output ``(B, embed_dim)``.

    Example:
        >>> enc = TSMResNet18(in_channels=1, n_segment=4, width=16)
        >>> enc(torch.randn(2, 4, 1, 32, 32)).shape
        torch.Size([2, 128])
    """

    def __init__(
        self, in_channels: int = 3, n_segment: int = 8, fold_div: int = 8, width: int = 64
    ) -> None:
        super().__init__()
        check_positive_int("n_segment", n_segment)
        check_positive_int("fold_div", fold_div)
        check_positive_int("width", width)
        if width // fold_div < 1:
            # Otherwise the first blocks would shift zero channels and TSM would silently be off.
            raise ValueError(
                f"width={width} is smaller than fold_div={fold_div}: no channel would be shifted; "
                f"use width >= fold_div"
            )
        self.in_channels = in_channels
        self.n_segment = n_segment
        self.fold_div = fold_div
        self.width = width
        self.backbone = _monai_resnet18(spatial_dims=2, in_channels=in_channels, width=width)
        insert_residual_shift(self.backbone, n_segment, fold_div)
        self.embed_dim = 8 * width

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.n_segment or x.shape[2] != self.in_channels:
            raise ValueError(
                f"TSMResNet18 expects (B, T={self.n_segment}, C={self.in_channels}, H, W), got "
                f"shape {tuple(x.shape)}; T must equal n_segment and C in_channels"
            )

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame features before the temporal mean.

        Args:
            x: ``(B, T, C, H, W)``.

        Returns:
            ``(B, T, embed_dim)``.
        """
        self._check_input(x)
        b, t = x.shape[:2]
        feats = self.backbone(x.reshape(b * t, *x.shape[2:]))
        return feats.view(b, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed clips: ``(B, T, C, H, W)`` -> ``(B, embed_dim)``."""
        return self.frame_features(x).mean(dim=1)


class ResNet2D18(nn.Module):
    """2D ResNet-18 for stills: the backbone of :class:`TSMResNet18` without temporal shift.

    Args:
        in_channels: channels per image ``C`` (1 grey, 3 RGB or three views stacked).
        width: stem width; 64 is standard (``embed_dim`` 512).

    Shape:
        input ``(B, C, H, W)`` float -> output ``(B, embed_dim)``.

    Example:
        >>> enc = ResNet2D18(in_channels=1, width=8)
        >>> enc(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 64])
    """

    def __init__(self, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        self.backbone = _monai_resnet18(spatial_dims=2, in_channels=in_channels, width=width)
        self.embed_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed images: ``(B, C, H, W)`` -> ``(B, embed_dim)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet2D18 expects (B, C={self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        out: torch.Tensor = self.backbone(x)
        return out


class ResNet3D18(nn.Module):
    """3D ResNet-18 for volumes.

    Args:
        in_channels: channels per volume ``C`` (1 for MRI).
        width: stem width; 64 is standard (``embed_dim`` 512).

    Shape:
        input ``(B, C, D, H, W)`` float -> output ``(B, embed_dim)``.

    Example:
        >>> enc = ResNet3D18(in_channels=1, width=8)
        >>> enc(torch.randn(2, 1, 16, 16, 16)).shape
        torch.Size([2, 64])
    """

    def __init__(self, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        self.backbone = _monai_resnet18(spatial_dims=3, in_channels=in_channels, width=width)
        self.embed_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed volumes: ``(B, C, D, H, W)`` -> ``(B, embed_dim)``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet3D18 expects (B, C={self.in_channels}, D, H, W), got shape {tuple(x.shape)}"
            )
        out: torch.Tensor = self.backbone(x)
        return out


class FeatureMLP(nn.Module):
    """MLP for tabular feature rows.

    Each hidden layer is Linear -> LayerNorm -> ReLU -> Dropout; LayerNorm rather than
    BatchNorm because it behaves the same for any batch size (pretraining batches hold one
    scan per patient and can be small) and in train and eval mode.

    Args:
        in_features: number of input features ``F``.
        hidden: widths of the hidden layers (may be empty: a single Linear).
        embed_dim: output size.
        dropout: dropout probability after each hidden layer.

    Shape:
        input ``(B, F)`` float -> output ``(B, embed_dim)``.

    Example:
        >>> FeatureMLP(in_features=5, embed_dim=16)(torch.randn(4, 5)).shape
        torch.Size([4, 16])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128, 128),
        embed_dim: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("embed_dim", embed_dim)
        for h in hidden:
            check_positive_int("hidden", h)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_features = in_features
        self.embed_dim = embed_dim
        layers: list[nn.Module] = []
        size = in_features
        for h in hidden:
            layers += [nn.Linear(size, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
            size = h
        layers.append(nn.Linear(size, embed_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed rows: ``(B, F)`` -> ``(B, embed_dim)``."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"FeatureMLP expects (B, F={self.in_features}), got shape {tuple(x.shape)}"
            )
        out: torch.Tensor = self.net(x)
        return out


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "tsm_resnet18": TSMResNet18,
    # Paper-faithful volume encoder: T slices of a volume read as the frames of a clip.
    "tsm_slices": TSMResNet18,
    "resnet2d_18": ResNet2D18,
    "resnet3d_18": ResNet3D18,
    "mlp": FeatureMLP,
}


def build_encoder(name: str, **kwargs: object) -> nn.Module:
    """Build a registered encoder from config values.

    Args:
        name: a key of :data:`ENCODERS`.
        **kwargs: constructor arguments of that encoder.

    Returns:
        The encoder; it has an ``embed_dim`` attribute.

    Raises:
        ConfigError: unknown name, unknown or missing argument, or an invalid value.

    Example:
        >>> build_encoder("mlp", in_features=5).embed_dim
        64
    """
    if name not in ENCODERS:
        raise ConfigError(
            f"model.encoder: unknown encoder {name!r}; choose one of {', '.join(sorted(ENCODERS))}"
        )
    factory = ENCODERS[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(
            f"model: unknown option(s) {', '.join(unknown)} for encoder {name!r}; valid options: "
            f"{', '.join(params)}"
        )
    missing = [
        p
        for p, spec in params.items()
        if spec.default is inspect.Parameter.empty and p not in kwargs
    ]
    if missing:
        raise ConfigError(
            f"model: encoder {name!r} needs option(s) {', '.join(missing)}; set them in the config"
        )
    try:
        return factory(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: invalid option for encoder {name!r}: {err}") from err
