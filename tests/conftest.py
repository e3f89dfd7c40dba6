"""Shared fixtures: a tiny synthetic LUS cohort written once per test session, and the
config that trains on it in seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from learner.config import Config, build_config

TINY_OVERRIDES = [
    "model.width=8",
    "data.input.size=32",
    "data.input.frames=4",
    "train.epochs=2",
    "train.batch_size=8",
    "train.lr=0.003",
    "eval.n_boot=50",
    "run.seeds=[0]",
]


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-patient synthetic LUS cohort (tiny preset): returns its manifest path."""
    from learner.data.synthetic import write_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    files = write_cohort("lus", out, patients=16, seed=0, preset="tiny")
    return Path(files.manifest)


@pytest.fixture()
def tiny_config(tiny_cohort: Path) -> Config:
    demo = Path(__file__).resolve().parents[1] / "learner" / "configs" / "demo.yaml"
    import yaml

    tree = yaml.safe_load(demo.read_text())
    return build_config(tree, [f"data.manifest={tiny_cohort}", *TINY_OVERRIDES])


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: the machine is shared, and in-process runs match subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
