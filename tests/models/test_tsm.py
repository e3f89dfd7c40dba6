"""Tests for the temporal shift (learner.models.tsm)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learner.models.tsm import ShiftedConv, TemporalShift, insert_residual_shift, temporal_shift


def loop_shift(
    x: torch.Tensor, n_segment: int, fold_div: int, *, swap: bool = False
) -> torch.Tensor:
    """Frame-by-frame reference: group A reads frame t+1, group B reads t-1 (swapped if asked)."""
    fold = x.shape[1] // fold_div
    out = torch.zeros_like(x)
    for clip_start in range(0, x.shape[0], n_segment):
        for t in range(n_segment):
            i = clip_start + t
            src_a, src_b = (t - 1, t + 1) if swap else (t + 1, t - 1)
            if 0 <= src_a < n_segment:
                out[i, :fold] = x[clip_start + src_a, :fold]
            if 0 <= src_b < n_segment:
                out[i, fold : 2 * fold] = x[clip_start + src_b, fold : 2 * fold]
            out[i, 2 * fold :] = x[i, 2 * fold :]
    return out


@pytest.mark.parametrize(
    ("shape", "n_segment", "fold_div"),
    [((6, 16, 3, 2), 3, 8), ((8, 12, 2, 2), 4, 4), ((10, 9), 5, 4), ((4, 16, 2, 2, 2), 2, 2)],
)
def test_matches_loop_reference(shape: tuple[int, ...], n_segment: int, fold_div: int) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        temporal_shift(x, n_segment, fold_div), loop_shift(x, n_segment, fold_div), rtol=0, atol=0
    )


def test_direction_on_known_values() -> None:
    # Frame t is filled with the value t; C=8, fold=1: channel 0 reads t+1, channel 1 reads t-1.
    x = torch.arange(4.0).repeat_interleave(8).view(4, 8)
    out = temporal_shift(x, n_segment=4, fold_div=8)
    assert out[:, 0].tolist() == [1.0, 2.0, 3.0, 0.0]
    assert out[:, 1].tolist() == [0.0, 0.0, 1.0, 2.0]
    assert torch.equal(out[:, 2:], x[:, 2:])


def test_clips_do_not_leak_into_each_other() -> None:
    x = torch.zeros(6, 8, 2, 2)
    x[3:] = 1.0  # second clip of 3 frames is all ones, first clip all zeros
    out = temporal_shift(x, n_segment=3, fold_div=4)
    assert torch.all(out[:3] == 0)


def test_backward_is_the_opposite_shift() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(8, 16, 3, 3, generator=gen, dtype=torch.float64)
    (temporal_shift(x, n_segment=4, fold_div=8) * g).sum().backward()
    assert x.grad is not None
    expected = loop_shift(g, n_segment=4, fold_div=8, swap=True)
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)
    # And it is not the forward shift itself (the test would be vacuous otherwise).
    assert not torch.equal(expected, loop_shift(g, n_segment=4, fold_div=8))


def test_gradcheck_first_and_second_order() -> None:
    x = torch.randn(6, 8, 2, dtype=torch.float64, requires_grad=True)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return temporal_shift(t, n_segment=3, fold_div=4)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_input_left_untouched_and_not_aliased() -> None:
    x = torch.randn(4, 8, 2, 2)
    before = x.clone()
    out = temporal_shift(x, n_segment=2, fold_div=4)
    assert torch.equal(x, before)
    out += 1.0
    assert torch.equal(x, before)


def test_module_matches_function() -> None:
    x = torch.randn(6, 16, 4, 4)
    module = TemporalShift(n_segment=3, fold_div=4)
    assert torch.equal(module(x), temporal_shift(x, 3, 4))
    assert list(module.parameters()) == []


def test_not_divisible_names_shape() -> None:
    with pytest.raises(ValueError, match=r"\(7, 8, 2, 2\).*n_segment=3"):
        temporal_shift(torch.zeros(7, 8, 2, 2), n_segment=3)


@pytest.mark.parametrize(("n_segment", "fold_div"), [(0, 8), (4, 1), (4, 0)])
def test_bad_arguments(n_segment: int, fold_div: int) -> None:
    with pytest.raises(ValueError, match=r"n_segment|fold_div"):
        TemporalShift(n_segment, fold_div)


def test_rank_one_input_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(8,\)"):
        temporal_shift(torch.zeros(8), n_segment=4)


def test_shifted_conv_applies_shift_first() -> None:
    conv = nn.Conv2d(8, 4, kernel_size=1, bias=False)
    wrapped = ShiftedConv(conv, n_segment=2, fold_div=4)
    x = torch.randn(4, 8, 3, 3)
    torch.testing.assert_close(wrapped(x), conv(temporal_shift(x, 2, 4)))


def test_insert_residual_shift_wraps_only_block_conv1() -> None:
    from monai.networks.nets import resnet18

    net = resnet18(spatial_dims=2, n_input_channels=1, feed_forward=False, widen_factor=0.125)
    params_before = [p.data_ptr() for p in net.parameters()]
    assert insert_residual_shift(net, n_segment=2) == 8
    wrapped = [n for n, m in net.named_modules() if isinstance(m, ShiftedConv)]
    assert wrapped == [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    # Stem conv, conv2 and shortcuts untouched; parameters are the same tensors.
    assert isinstance(net.conv1, nn.Conv2d)
    assert [p.data_ptr() for p in net.parameters()] == params_before
    with pytest.raises(ValueError, match="already"):
        insert_residual_shift(net, n_segment=2)
    with pytest.raises(ValueError, match="no MONAI ResNetBlock"):
        insert_residual_shift(nn.Linear(2, 2), n_segment=2)
