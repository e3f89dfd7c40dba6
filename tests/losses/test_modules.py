"""The objective modules: hyperparameter validation, the registry, and the factory."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from learner.errors import ConfigError
from learner.losses import (
    OBJECTIVES,
    ContrastiveLoss,
    NoPairLoss,
    PairObjective,
    RnCLoss,
    WeightedContrastiveLoss,
    YAwareLoss,
    build_objective,
    objective_hparam_names,
)
from learner.losses import functional as fn


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(9, 6, generator=g, dtype=torch.float64)
    y = torch.rand(9, generator=g, dtype=torch.float64)
    y[4] = float("nan")
    pid = torch.tensor([0, 0, 1, 2, 3, 4, 4, 5, 6])
    return u, y, pid


def test_registry_holds_the_five_objectives() -> None:
    assert set(OBJECTIVES) == {"mse", "contrastive", "weighted", "yaware", "rnc"}
    assert all(issubclass(cls, PairObjective) for cls in OBJECTIVES.values())


@pytest.mark.parametrize(
    ("name", "hparams", "func", "defaults"),
    [
        ("contrastive", {"tau": 0.2, "margin": 0.8}, fn.contrastive_loss, {}),
        (
            "weighted",
            {"tau": 0.15, "margin": 0.6, "weighting": "log", "alpha": 2.0, "partition": "soft"},
            fn.weighted_contrastive_loss,
            {},
        ),
        ("yaware", {"temperature": 0.2, "sigma": 0.3}, fn.yaware_loss, {}),
        ("rnc", {"temperature": 1.5}, fn.rnc_loss, {}),
        # Defaults (DESIGN: tau 0.1, m 0.5, partition threshold; paper defaults for the peers).
        ("contrastive", {}, fn.contrastive_loss, {"tau": 0.1, "margin": 0.5}),
        (
            "weighted",
            {},
            fn.weighted_contrastive_loss,
            {"tau": 0.1, "margin": 0.5, "weighting": "linear", "partition": "threshold"},
        ),
        ("yaware", {}, fn.yaware_loss, {"temperature": 0.1, "sigma": 0.1}),
        ("rnc", {}, fn.rnc_loss, {"temperature": 2.0}),
    ],
)
def test_module_forward_equals_the_pure_function(
    name: str, hparams: dict[str, Any], func: Any, defaults: dict[str, Any]
) -> None:
    module = build_objective(name, **hparams)
    u, y, pid = _batch()
    out = module(u, y, pid)
    expected = func(u, y, pid, **hparams, **defaults)
    assert out.loss.item() == expected.loss.item()
    assert (out.n_pos.item(), out.n_neg.item()) == (expected.n_pos.item(), expected.n_neg.item())
    for key, value in {**hparams, **defaults}.items():
        assert module.hparams[key] == value
        assert f"{key}=" in repr(module)


def test_mse_objective_has_no_pair_term() -> None:
    module = build_objective("mse")
    assert isinstance(module, NoPairLoss)
    out = module(*_batch())
    assert out.loss.item() == 0.0 and out.n_pos.item() == 0 and out.n_neg.item() == 0
    assert objective_hparam_names("mse") == []


def test_gradients_flow_through_the_module() -> None:
    u, y, pid = _batch()
    u.requires_grad_(True)
    build_objective("weighted")(u, y, pid).loss.backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (ContrastiveLoss, {"tau": -0.1}, r"tau must be in \[0, 1\]"),
        (ContrastiveLoss, {"tau": 1.5}, r"tau must be in \[0, 1\]"),
        (ContrastiveLoss, {"margin": 0.0}, r"margin must be in \(0, 2\]"),
        (ContrastiveLoss, {"margin": 2.5}, r"margin must be in \(0, 2\]"),
        (ContrastiveLoss, {"margin": float("nan")}, "margin must be a finite number"),
        (ContrastiveLoss, {"tau": "0.1"}, "tau must be a finite number"),
        (ContrastiveLoss, {"tau": True}, "tau must be a finite number"),
        (
            WeightedContrastiveLoss,
            {"partition": "hard"},
            "partition must be one of threshold, soft",
        ),
        (WeightedContrastiveLoss, {"weighting": "cubic"}, "weighting must be one of linear"),
        (WeightedContrastiveLoss, {"alpha": 0.0}, "alpha must be > 0"),
        (WeightedContrastiveLoss, {"margin": -1.0}, "margin"),
        (YAwareLoss, {"temperature": 0.0}, "temperature must be > 0"),
        (YAwareLoss, {"sigma": -0.1}, "sigma must be > 0"),
        (RnCLoss, {"temperature": -2.0}, "temperature must be > 0"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(
    cls: type[PairObjective], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_interval_ends_are_accepted() -> None:
    assert ContrastiveLoss(tau=0.0, margin=2.0).hparams == {
        "tau": 0.0,
        "margin": 2.0,
        "pairs": "inter",
        "score_noise": 0.0,
    }
    assert ContrastiveLoss(tau=1, margin=1e-6).tau == 1.0


def test_unknown_name_is_a_config_error_listing_the_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_objective("triplet")
    message = str(info.value)
    assert "\n" not in message
    assert "'triplet'" in message
    for name in OBJECTIVES:
        assert name in message


def test_unknown_hyperparameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"objective\.sigma: .*'contrastive'.*tau, margin"):
        build_objective("contrastive", sigma=0.2)
    with pytest.raises(ConfigError, match=r"objective\.tau: .*'mse'.*none"):
        build_objective("mse", tau=0.1)


def test_bad_value_through_the_factory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'weighted': tau must be in \[0, 1\], got 2") as info:
        build_objective("weighted", tau=2)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_hparam_names_follow_the_constructor_signature() -> None:
    assert objective_hparam_names("weighted") == [
        "tau",
        "margin",
        "weighting",
        "alpha",
        "partition",
        "pairs",
        "score_noise",
    ]
    assert objective_hparam_names("yaware") == ["temperature", "sigma", "pairs"]
