"""Every objective of the registry, tested from the registry and the hyperparameter table.

A new objective (one file plus one line in ``OBJECTIVES``, see :mod:`learner.losses.modules`)
is picked up here: it must build from its defaults, give a finite loss and gradient, and
reject every out-of-range value of each of its hyperparameters both in the module
(``ValueError``) and in the config (``ConfigError`` naming ``objective.<hparam>``).
"""

from __future__ import annotations

import math
from typing import Any, get_args

import pytest
import torch

from learner.config import ObjectiveConfig, build_config
from learner.errors import ConfigError
from learner.losses import OBJECTIVES, build_objective, objective_hparam_names
from learner.objective_hparams import HYPERPARAMETERS, Hyperparameter, ObjectiveName
from learner.train.module import objective_from_config

NAMES = list(OBJECTIVES)
TAKEN = {h for name in NAMES for h in objective_hparam_names(name)}


def _bad_values(spec: Hyperparameter) -> list[Any]:
    """Values outside ``spec``: each end crossed (an open end itself), non-finite numbers,
    a boolean and a string; for a choice, a string and a number that are not among them."""
    if spec.choices:
        return [f"not-{spec.choices[0]}", 1]
    bad: list[Any] = [math.nan, math.inf, -math.inf, True, "abc"]
    if spec.low is not None:
        bad += [spec.low - 1.0] + ([spec.low] if spec.low_open else [])
    if spec.high is not None:
        bad += [spec.high + 1.0] + ([spec.high] if spec.high_open else [])
    return bad


def _edge_values(spec: Hyperparameter) -> list[Any]:
    """The allowed values nearest each end (the end itself where it is closed), or every
    choice."""
    if spec.choices:
        return list(spec.choices)
    edges = []
    if spec.low is not None:
        edges.append(math.nextafter(spec.low, math.inf) if spec.low_open else spec.low)
    if spec.high is not None:
        edges.append(math.nextafter(spec.high, -math.inf) if spec.high_open else spec.high)
    return edges


def _cases(values: Any) -> list[Any]:
    """(objective, hyperparameter, value) for each hyperparameter each objective takes."""
    return [
        pytest.param(name, h, v, id=f"{name}-{h}={v!r}")
        for name in NAMES
        for h in objective_hparam_names(name)
        for v in values(HYPERPARAMETERS[h])
    ]


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six scans of four patients with spread scores (one unlabelled): positives and negatives
    under the defaults."""
    u = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([0.10, 0.15, 0.50, 0.90, float("nan"), 0.55])
    pid = torch.tensor([0, 1, 1, 2, 2, 3])
    return u, y, pid


def test_config_names_the_registered_objectives() -> None:
    assert set(get_args(ObjectiveName)) == set(OBJECTIVES)


def test_every_hyperparameter_is_declared_once_and_is_a_config_key() -> None:
    assert set(ObjectiveConfig.model_fields) == {"name", *HYPERPARAMETERS}
    assert TAKEN <= set(HYPERPARAMETERS)


@pytest.mark.parametrize("name", NAMES)
def test_builds_from_defaults_with_a_finite_loss_and_gradient(name: str) -> None:
    module = build_objective(name)
    for h, value in module.hparams.items():
        declared = HYPERPARAMETERS[h].default
        if declared is not None:  # None: the objective's own default, in its signature
            assert value == declared
        assert HYPERPARAMETERS[h].check(value) == value
    # The config's defaults build the same module.
    from_config = objective_from_config(build_config({"objective": {"name": name}}))
    assert type(from_config) is type(module) and from_config.hparams == module.hparams
    u, y, pid = _batch()
    out = module(u, y, pid)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    if name != "mse":
        assert int(out.n_pos) + int(out.n_neg) > 0
        out.loss.backward()
        assert u.grad is not None and torch.isfinite(u.grad).all()


@pytest.mark.parametrize(("name", "hparam", "value"), _cases(_bad_values))
def test_out_of_range_fails_the_module_and_the_config(name: str, hparam: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{hparam} must be "):
        OBJECTIVES[name](**{hparam: value})
    with pytest.raises(ConfigError) as info:
        build_config({"objective": {"name": name, hparam: value}})
    assert f"'objective.{hparam}'" in info.value.problems[0]


@pytest.mark.parametrize(("name", "hparam", "value"), _cases(_edge_values))
def test_the_allowed_edges_pass_the_module_and_the_config(
    name: str, hparam: str, value: Any
) -> None:
    assert OBJECTIVES[name](**{hparam: value}).hparams[hparam] == value
    cfg = build_config({"objective": {"name": name, hparam: value}})
    assert getattr(cfg.objective, hparam) == value


@pytest.mark.parametrize("hparam", sorted(set(HYPERPARAMETERS) - TAKEN))
def test_a_config_only_hyperparameter_is_checked_by_the_config(hparam: str) -> None:
    spec = HYPERPARAMETERS[hparam]
    for value in _bad_values(spec):
        with pytest.raises(ConfigError, match=rf"'objective\.{hparam}'"):
            build_config({"objective": {hparam: value}})
    for value in _edge_values(spec):
        assert getattr(build_config({"objective": {hparam: value}}).objective, hparam) == value


@pytest.mark.parametrize(
    ("hparam", "allowed"),
    [
        ("lam", ">= 0"),
        ("tau", "in [0, 1]"),
        ("margin", "in (0, 2]"),
        ("alpha", "> 0"),
        ("partition", "one of threshold, soft"),
    ],
)
def test_the_declared_ranges_read_as_before(hparam: str, allowed: str) -> None:
    assert HYPERPARAMETERS[hparam].allowed() == allowed
