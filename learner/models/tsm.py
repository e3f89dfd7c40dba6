"""Temporal Shift Module (TSM, Lin, Gan & Han, ICCV 2019).

A 2D CNN applied frame by frame sees no time. TSM shifts a few channels of each frame's
feature map to its neighbouring frames, so the next convolution mixes information across
time at zero parameter and almost zero compute cost.

The shift is a pure function on frame-major batches ``(B*T, C, ...)``:

- channels ``[0, fold)`` move one step backward in time (frame ``t`` reads frame ``t + 1``),
- channels ``[fold, 2*fold)`` move one step forward (frame ``t`` reads frame ``t - 1``),
- the remaining channels stay, with ``fold = C // fold_div``;

the frames that would read past either end of the clip get zeros (no wrap-around, so the
first and last frames do not see each other).

``ShiftedConv`` and ``insert_residual_shift`` put the shift at the start of the residual
branch of every ResNet basic block ("residual shift" in the paper), leaving the identity
path untouched so each block can still pass its input through unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets.resnet import ResNetBlock
from torch import nn


def _check_shift_args(n_segment: int, fold_div: int) -> None:
    if not isinstance(n_segment, int) or n_segment < 1:
        raise ValueError(f"n_segment must be a positive integer, got {n_segment!r}")
    # fold_div >= 2 keeps both shifted groups (2 * fold channels) inside C.
    if not isinstance(fold_div, int) or fold_div < 2:
        raise ValueError(f"fold_div must be an integer >= 2, got {fold_div!r}")


def temporal_shift(x: torch.Tensor, n_segment: int, fold_div: int = 8) -> torch.Tensor:
    """Shift a fraction of the channels one frame backward and one frame forward in time.

    Args:
        x: frame-major batch, shape ``(B*T, C)`` or ``(B*T, C, *spatial)`` such as
            ``(B*T, C, H, W)``; the ``T = n_segment`` frames of each clip are consecutive
            along dim 0.
        n_segment: frames per clip ``T``.
        fold_div: ``C // fold_div`` channels are shifted each way (8 in the paper, i.e. 1/4 of
            the channels move in total). With ``C < fold_div`` nothing is shifted.

    Returns:
        Tensor of the same shape, dtype and device as ``x``.

    Raises:
        ValueError: if ``x`` has fewer than 2 dimensions, ``x.shape[0]`` is not a multiple of
            ``n_segment``, or ``n_segment`` / ``fold_div`` are invalid.

    Example:
        >>> x = torch.arange(4.0).repeat_interleave(8).view(4, 8)  # T=4 frames, C=8, value = t
        >>> temporal_shift(x, n_segment=4, fold_div=8)[:, :2]
        tensor([[1., 0.],
                [2., 0.],
                [3., 1.],
                [0., 2.]])
    """
    _check_shift_args(n_segment, fold_div)
    if x.ndim < 2:
        raise ValueError(
            f"temporal_shift expects (B*T, C, ...) with at least 2 dimensions, got shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[0] % n_segment != 0:
        raise ValueError(
            f"temporal_shift: input of shape {tuple(x.shape)} has {x.shape[0]} frames along "
            f"dim 0, which is not a multiple of n_segment={n_segment}"
        )
    out: torch.Tensor = _TemporalShiftFunction.apply(x, n_segment, fold_div, False)
    return out


def _shift_frames(x: torch.Tensor, n_segment: int, fold_div: int, swapped: bool) -> torch.Tensor:
    """The shift itself, unchecked; ``swapped`` exchanges the two groups' directions."""
    n_clips = x.shape[0] // n_segment
    fold = x.shape[1] // fold_div
    first, second = slice(0, fold), slice(fold, 2 * fold)
    # `back` reads frame t + 1, `fwd` reads frame t - 1.
    back, fwd = (second, first) if swapped else (first, second)
    clips = x.reshape(n_clips, n_segment, *x.shape[1:])
    out = torch.empty_like(clips)
    out[:, :-1, back] = clips[:, 1:, back]
    out[:, -1, back] = 0
    out[:, 1:, fwd] = clips[:, :-1, fwd]
    out[:, 0, fwd] = 0
    out[:, :, 2 * fold :] = clips[:, :, 2 * fold :]
    return out.reshape(x.shape)


class _TemporalShiftFunction(torch.autograd.Function):
    """Shift with an explicit backward: the adjoint of a shift is the opposite shift.

    Letting autograd trace the slice assignments instead costs several times the forward
    (one scatter per slice); the explicit adjoint is one more shift. The backward calls
    this Function again, so higher-order gradients work too.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, n_segment: int, fold_div: int, swapped: bool
    ) -> torch.Tensor:
        ctx.shift_args = (n_segment, fold_div, swapped)
        return _shift_frames(x, n_segment, fold_div, swapped)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        n_segment, fold_div, swapped = ctx.shift_args
        grad_x = _TemporalShiftFunction.apply(grad, n_segment, fold_div, not swapped)
        return grad_x, None, None, None


class TemporalShift(nn.Module):
    """``nn.Module`` form of :func:`temporal_shift` (no parameters).

    Args:
        n_segment: frames per clip ``T``.
        fold_div: ``C // fold_div`` channels are shifted each way.

    Shape:
        input ``(B*T, C, ...)`` -> output of the same shape.
    """

    def __init__(self, n_segment: int, fold_div: int = 8) -> None:
        super().__init__()
        _check_shift_args(n_segment, fold_div)
        self.n_segment = n_segment
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.n_segment, self.fold_div)

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, fold_div={self.fold_div}"


class ShiftedConv(nn.Module):
    """A layer preceded by a temporal shift: ``conv(temporal_shift(x))``.

    Used to replace ``conv1`` of a residual block, so the shift acts on the residual branch
    only. The wrapped layer stays reachable as ``.conv`` (its state-dict keys gain a
    ``.conv`` segment, e.g. ``layer1.0.conv1.conv.weight``).

    Args:
        conv: the layer to wrap (any module taking ``(B*T, C, ...)``).
        n_segment: frames per clip ``T``.
        fold_div: ``C // fold_div`` channels are shifted each way.
    """

    def __init__(self, conv: nn.Module, n_segment: int, fold_div: int = 8) -> None:
        super().__init__()
        self.shift = TemporalShift(n_segment, fold_div)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.shift(x))


def insert_residual_shift(backbone: nn.Module, n_segment: int, fold_div: int = 8) -> int:
    """Wrap ``conv1`` of every MONAI basic block of ``backbone`` in a :class:`ShiftedConv`.

    The surgery is in place; the parameters are the same tensors as before (no copy).

    Args:
        backbone: a module containing ``monai.networks.nets.resnet.ResNetBlock`` blocks.
        n_segment: frames per clip ``T``.
        fold_div: ``C // fold_div`` channels are shifted each way.

    Returns:
        The number of blocks wrapped.

    Raises:
        ValueError: if the backbone has no basic block, or a block was already wrapped.
    """
    _check_shift_args(n_segment, fold_div)
    blocks = [m for m in backbone.modules() if isinstance(m, ResNetBlock)]
    if not blocks:
        raise ValueError("insert_residual_shift: the backbone contains no MONAI ResNetBlock")
    for block in blocks:
        if isinstance(block.conv1, ShiftedConv):
            raise ValueError("insert_residual_shift: the backbone already has temporal shifts")
        block.conv1 = ShiftedConv(block.conv1, n_segment, fold_div)
    return len(blocks)
