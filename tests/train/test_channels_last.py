"""``train.channels_last`` (issue 29): the same model in channels-last memory layout computes
the same outputs and gradients (CPU, float32, within rounding), trains end to end, and its
default stays out of the cache key (every earlier cell trained in the default layout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.config import Config, build_config
from learner.provenance import pretrain_key
from learner.train.module import LearnerModule
from learner.train.pretrain import pretrain

CASES = {
    "tsm_resnet18": (["data.input.kind=video", "data.input.frames=4"], (3, 4, 1, 32, 32)),
    "resnet2d_18": (["data.input.kind=image"], (3, 1, 32, 32)),
    "resnet3d_18": (["data.input.kind=volume"], (3, 1, 16, 16, 16)),
}


@pytest.mark.parametrize("encoder", sorted(CASES))
def test_channels_last_computes_the_same_outputs_and_gradients(encoder: str) -> None:
    overrides, shape = CASES[encoder]
    base = [f"model.encoder={encoder}", "model.width=8", "data.input.size=32", *overrides]
    plain = build_config({}, base)
    fast = build_config({}, [*base, "train.channels_last=true"])
    torch.manual_seed(0)
    # Eval mode: batch norm on running statistics. In training mode it divides by the batch's
    # variance, which over 3 scans at the 3-D ResNet's 1^3 last stage magnifies rounding:
    # there the two layouts' embeddings differed by 3e-3 (of values up to 4), 2e-6 in eval.
    reference = LearnerModule(plain.to_plain(), (0.0, 1.0)).eval()
    module = LearnerModule(fast.to_plain(), (0.0, 1.0)).eval()
    module.load_state_dict(reference.state_dict())
    convs = [
        m.weight for m in module.encoder.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
    ]
    layout = torch.channels_last_3d if encoder == "resnet3d_18" else torch.channels_last
    assert convs and all(w.is_contiguous(memory_format=layout) for w in convs)
    x = torch.randn(*shape)
    outputs = []
    for model in (reference, module):
        u, pred = model(x)
        (u.square().mean() + pred.sum()).backward()
        grad = next(model.encoder.parameters()).grad
        assert grad is not None
        outputs.append((u.detach(), pred.detach(), grad.clone()))
    (u0, pred0, grad0), (u1, pred1, grad1) = outputs
    torch.testing.assert_close(u1, u0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred1, pred0, rtol=1e-4, atol=1e-5)
    # A gradient sums many products, in another order per layout: within 0.1% of its scale.
    torch.testing.assert_close(grad1, grad0, rtol=0, atol=1e-3 * float(grad0.abs().max()))


def test_channels_last_trains_and_its_checkpoint_loads_into_either_layout(
    tiny_config: Config, tmp_path: Path
) -> None:
    from learner.train.checkpoint import load_checkpoint

    cfg = build_config(tiny_config.to_plain(), ["train.channels_last=true", "train.epochs=1"])
    result = pretrain(cfg, tmp_path / "run", progress=False)
    model, _ = load_checkpoint(result.best)
    plain = LearnerModule(tiny_config.to_plain(), model.score_range)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 4, 1, 32, 32)
    model.eval()
    plain.eval()
    torch.testing.assert_close(plain(x)[0], model(x)[0], rtol=1e-4, atol=1e-5)


def test_the_default_stays_out_of_the_cache_key() -> None:
    assert "train.channels_last" not in pretrain_key(Config(), "m", "s")
    fast = build_config({}, ["train.channels_last=true"])
    assert pretrain_key(fast, "m", "s")["train.channels_last"] is True
