"""model.head_dropout: dropout on u before the score head, in training only."""

from __future__ import annotations

import torch

from learner.config import Config
from learner.train.module import LearnerModule


def module(dropout: float) -> LearnerModule:
    cfg = Config.model_validate(
        {
            "data": {"feature_columns": ["a", "b", "c"], "input": {"kind": "tabular"}},
            "model": {
                "encoder": "mlp",
                "mlp_hidden": [8],
                "mlp_embed_dim": 6,
                "head_dropout": dropout,
            },
        }
    )
    torch.manual_seed(0)
    return LearnerModule(cfg.to_plain(), (0.0, 1.0))


def test_dropout_perturbs_training_predictions_only() -> None:
    x = torch.randn(16, 3)
    model = module(0.5)
    model.train()
    first, second = model(x)[1], model(x)[1]
    assert not torch.allclose(first, second)
    model.eval()
    u, pred = model(x)
    torch.testing.assert_close(pred, model.head(u), rtol=0, atol=0)
    torch.testing.assert_close(model(x)[1], pred, rtol=0, atol=0)


def test_zero_dropout_leaves_the_model_as_before() -> None:
    x = torch.randn(16, 3)
    model = module(0.0)
    model.train()
    u, pred = model(x)
    torch.testing.assert_close(pred, model.head(u), rtol=0, atol=0)
