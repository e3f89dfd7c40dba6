"""train.drop_last: a one-scan last batch that batch norm cannot train on gets a clear error
naming the fix, the switch reaches the sampler, and its default stays out of the cache key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tabular_cohort import tabular_config, write_score_table

from learner.config import Config
from learner.data.samplers import PatientBatchSampler
from learner.errors import ConfigError
from learner.provenance import pretrain_key
from learner.train import pretrain as pretrain_module
from learner.train.module import LearnerModule


def _config(manifest: Path, *extra: str) -> Config:
    return tabular_config(manifest, *extra, ratios=(0.6, 0.2, 0.2), epochs=1, batch_size=8)


def test_drop_last_reaches_the_sampler_and_drops_the_short_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_score_table(tmp_path / "data", patients=15, visits=3)
    sizes: dict[bool, list[int]] = {}

    class Recording(PatientBatchSampler):
        def __iter__(self) -> Any:
            batches = list(super().__iter__())
            sizes[self.drop_last] = [len(b) for b in batches]
            return iter(batches)

    monkeypatch.setattr(pretrain_module, "PatientBatchSampler", Recording)
    pretrain_module.pretrain(_config(manifest), tmp_path / "keep", progress=False)
    pretrain_module.pretrain(
        _config(manifest, "train.drop_last=true"), tmp_path / "drop", progress=False
    )
    assert min(sizes[False]) < 8  # 27 training scans in batches of 8: a short last batch
    assert sizes[True] == [8] * (sum(sizes[False]) // 8)


def test_batch_norm_on_one_scan_is_a_one_line_error_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message torch gives when batch norm sees one value per channel in training."""
    manifest = write_score_table(tmp_path / "data", patients=15, visits=3)

    def one_scan(self: LearnerModule, batch: Any, batch_idx: int) -> Any:
        raise ValueError(
            "Expected more than 1 value per channel when training, got input size "
            "torch.Size([1, 128, 1, 1, 1])"
        )

    monkeypatch.setattr(LearnerModule, "training_step", one_scan)
    with pytest.raises(ConfigError, match=r"train\.batch_size 8: .*train\.drop_last: true") as info:
        pretrain_module.pretrain(_config(manifest), tmp_path / "run", progress=False)
    assert "\n" not in str(info.value)


def test_the_default_stays_out_of_the_cache_key() -> None:
    """Cells cached before train.drop_last existed kept their last batch, as the default
    does, so the default leaves their key as it was."""
    assert "train.drop_last" not in pretrain_key(Config(), "m", "s")
    dropped = Config.model_validate({"train": {"drop_last": True}})
    assert pretrain_key(dropped, "m", "s")["train.drop_last"] is True
