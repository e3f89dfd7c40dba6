"""Siamese change fine-tuning (``eval.finetune``): the encoder learns the change classes end to end.

A pretrained encoder reads both visits of a pair; a linear change head on ``d = u_to - u_from``
gives the worsen / stable / improve logits, and cross-entropy on the training patients' own
consecutive pairs updates head and encoder together. The head starts as the balanced logistic
regression fitted on the frozen encoder's ``d`` (a linear probe first, then fine-tuning: a
random head's first gradients would otherwise tear at the pretrained features). Validation
patients pick the epoch: the head's balanced accuracy on their pairs is measured before the
first epoch and after each one, and the best epoch's encoder is kept (ties go to the earlier
epoch, so "0 epochs" - the pretrained encoder unchanged - wins whenever fine-tuning does not
help on validation). Test patients are never read.

Pairs are those the evaluation uses (:func:`learner.data.pairs.consecutive_pairs`: consecutive
visits, zone-matched where zones exist), a visit's embedding the mean over its scans, and the
labels come from the same stable band (``eval.delta`` resolved on training and validation
pairs), so the fine-tuned encoder is trained for exactly the question it is then asked; where
the manifest gives a clinician's ``change_label`` for a pair, that label is the pair's, here
as in the evaluation (:func:`learner.data.pairs.pair_labels`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from learner.data.dataset import SCAN_RANK
from learner.data.pairs import (
    CHANGE_LABEL,
    LABELS,
    consecutive_pairs,
    pair_labels,
    resolve_stable_band,
    source_counts,
    visit_table,
)
from learner.errors import DataError
from learner.evaluate.classifier import build_classifier, fit_classifier
from learner.evaluate.metrics import class_metrics, confusion_counts, label_codes
from learner.evaluate.probe import Probe
from learner.train.module import LearnerModule
from learner.train.prepared import PreparedData, make_dataset

# A class the training pairs lack gets this logit at the start (never predicted, finite
# so that the cross-entropy stays defined).
_ABSENT_LOGIT = -30.0


class ChangeHead(nn.Module):
    """Standardise ``d`` with fixed training statistics, then one linear layer to 3 logits."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        if len(probe.layers) != 1:
            raise ValueError("the change head starts from a linear probe")
        weight, bias = probe.layers[0]
        self.register_buffer("mean", torch.as_tensor(probe.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(probe.scale, dtype=torch.float32))
        self.linear = nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight.T, dtype=torch.float32))
            finite = np.where(np.isfinite(bias), bias, _ABSENT_LOGIT)
            self.linear.bias.copy_(torch.as_tensor(finite, dtype=torch.float32))

    def forward(self, d: Tensor) -> Tensor:
        mean, scale = self.get_buffer("mean"), self.get_buffer("scale")
        return self.linear((d - mean) / scale)


@dataclass
class FinetuneResult:
    """The fine-tuned model (its best epoch's encoder) and how it got there."""

    model: LearnerModule
    best_epoch: int
    band: float
    history: list[dict[str, float]] = field(default_factory=list)
    n_train_pairs: int = 0
    n_val_pairs: int = 0
    warnings: list[str] = field(default_factory=list)
    # With clinician labels: per split, {"clinician": n, "score": m} of the pairs' labels.
    labels: dict[str, dict[str, int]] | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "best_epoch": self.best_epoch,
            "band": self.band,
            "n_train_pairs": self.n_train_pairs,
            "n_val_pairs": self.n_val_pairs,
            "history": self.history,
            "warnings": self.warnings,
        }
        if self.labels is not None:
            out["label_sources"] = self.labels
        return out


@dataclass
class _Pairs:
    """Pairs of one split: the visit at each end (rows of the visit table, whose scans are
    ``members[visit]``), the label code and the patient of each pair."""

    start: np.ndarray
    end: np.ndarray
    members: list[np.ndarray]
    codes: np.ndarray
    patients: np.ndarray
    sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    def __len__(self) -> int:
        return len(self.codes)


def _visit_members(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The visit table and, for each of its rows, the positions of its scans in ``frame``."""
    visits = visit_table(frame, value_cols=["score"])
    keys = [c for c in ("patient_id", "zone", "visit_order") if c in visits.columns]
    rows = frame.assign(_row=np.arange(len(frame)))
    members = rows.groupby(keys, sort=True, dropna=False)["_row"].agg(list)
    if len(members) != len(visits):  # both come from the same sorted groupby
        raise RuntimeError("visit table and scan groups disagree")
    return visits, [np.asarray(m, dtype=np.int64) for m in members]


def _split_pairs(
    pairs: pd.DataFrame, members: list[np.ndarray], split: str, band: float, higher: bool
) -> _Pairs:
    chosen = pairs[pairs["split"].astype(str) == split]
    labels, sources = pair_labels(chosen, band, higher_is_better=higher)
    return _Pairs(
        start=chosen["index_from"].to_numpy(dtype=np.int64),
        end=chosen["index_to"].to_numpy(dtype=np.int64),
        members=members,
        codes=label_codes(labels),
        patients=chosen["patient_id"].astype(str).to_numpy(),
        sources=sources,
    )


def _encode_visits(
    encoder: nn.Module,
    dataset: Any,
    visits: Sequence[np.ndarray],
    device: torch.device,
    rank: int,
) -> Tensor:
    """(len(visits), D): each visit's mean scan embedding (one forward pass for all scans)."""
    rows = np.concatenate(list(visits))
    x = torch.stack([dataset[int(r)]["x"] for r in rows]).to(device)
    if x.ndim == rank + 2:  # several clips per scan (evaluation): (N, K, ...) -> mean over K
        n, k = x.shape[:2]
        u = encoder(x.flatten(0, 1)).view(n, k, -1).mean(1)
    else:
        u = encoder(x)
    owner = torch.as_tensor(np.repeat(np.arange(len(visits)), [len(v) for v in visits]))
    total = torch.zeros(len(visits), u.shape[1], dtype=u.dtype, device=device)
    total.index_add_(0, owner.to(device), u)
    counts = torch.as_tensor([len(v) for v in visits], dtype=u.dtype, device=device)
    return total / counts[:, None]


def _differences(
    encoder: nn.Module, dataset: Any, pairs: _Pairs, idx: np.ndarray, device: torch.device
) -> Tensor:
    visits = [pairs.members[v] for v in (*pairs.start[idx], *pairs.end[idx])]
    u = _encode_visits(encoder, dataset, visits, device, SCAN_RANK[dataset.input.kind])
    return u[len(idx) :] - u[: len(idx)]


@torch.no_grad()
def _frozen_differences(
    encoder: nn.Module, dataset: Any, pairs: _Pairs, batch: int, device: torch.device
) -> Tensor:
    """(P, D) ``d`` of every pair in evaluation mode, each visit encoded once (a middle visit
    ends two pairs), ``2 * batch`` visits per forward pass."""
    encoder.eval()
    rank = SCAN_RANK[dataset.input.kind]
    visits = np.unique(np.concatenate([pairs.start, pairs.end]))
    chunks = [
        _encode_visits(
            encoder, dataset, [pairs.members[v] for v in visits[i : i + 2 * batch]], device, rank
        )
        for i in range(0, len(visits), 2 * batch)
    ]
    u = torch.cat(chunks).float()
    return u[np.searchsorted(visits, pairs.end)] - u[np.searchsorted(visits, pairs.start)]


def _train_mode(encoder: nn.Module) -> None:
    """Training mode with batch-norm statistics frozen: a batch of a few visits would give
    noisy statistics, and the head was fitted on features normalised by the running ones."""
    encoder.train()
    for module in encoder.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _balanced_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    return class_metrics(confusion_counts(true, pred))[1]


def finetune_change(
    model: LearnerModule,
    data: PreparedData,
    *,
    epochs: int,
    lr: float,
    delta: float | str,
    higher_is_better: bool,
    seed: int,
    batch_pairs: int = 16,
    weight_decay: float = 1e-4,
    grad_clip: float | None = 1.0,
    head_start: str = "logreg-cv",
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model``'s encoder on the training patients' change pairs (a copy; the
    argument is left as it was).

    Args:
        model: a pretrained (or untrained) :class:`LearnerModule`.
        data: the prepared data with its patient split (``split`` column: train / val / test,
            pool patients ``pretrain``).
        epochs: the most epochs to train; validation patients choose among 0..epochs.
        lr: AdamW learning rate of encoder and head (low: the encoder is pretrained).
        delta: the stable band, as ``eval.delta`` (``"tertiles"`` is resolved on training
            and validation pairs, as the evaluation resolves it).
        higher_is_better: whether a rising score means improvement.
        seed: seeds the pair order, the augmentations and the head's start.
        batch_pairs: pairs per optimisation step (each reads both visits' scans).
        weight_decay, grad_clip: as ``train.weight_decay`` and ``train.grad_clip``.
        log: receives one line per epoch.

    Returns:
        A :class:`FinetuneResult`; its model is in eval mode with the best epoch's weights.

    Raises:
        DataError: no training or no validation pairs, or one class only among training pairs.
    """
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    frame = data.frame.reset_index(drop=True)
    visits, members = _visit_members(frame)
    pairs = consecutive_pairs(visits)
    fitting = pairs[pairs["split"].astype(str).isin(["train", "val"])]
    band = resolve_stable_band(fitting["change"].to_numpy(), delta)
    train = _split_pairs(pairs, members, "train", band, higher_is_better)
    val = _split_pairs(pairs, members, "val", band, higher_is_better)
    if len(train) == 0 or len(val) == 0:
        which = "training" if len(train) == 0 else "validation"
        raise DataError(
            f"eval.finetune needs {which} patients with two consecutive labelled visits "
            "(scores at both, or a change_label; found none); set eval.finetune: 0 or change "
            "data.split.ratios"
        )
    if len(np.unique(train.codes)) < 2:
        raise DataError(
            f"eval.finetune: only one change class among the {len(train)} training pairs "
            f"(stable band {band:.4g}); change eval.delta or add training patients"
        )

    train_ds = make_dataset(data, frame, train=True, seed=seed)
    eval_ds = make_dataset(data, frame, train=False, seed=seed)
    encoder = model.encoder

    # Linear probe first: the head starts as the frozen encoder's balanced logistic regression.
    d_train = _frozen_differences(encoder, eval_ds, train, batch_pairs, device)
    frozen = d_train.cpu().numpy().astype(np.float64)
    labels = np.asarray(LABELS)[train.codes]  # the probe reads class names
    notes: list[str] = []
    start_probe = build_classifier(head_start, seed, groups=train.patients)
    probe = Probe.from_pipeline(fit_classifier(start_probe, frozen, labels, notes))
    head = ChangeHead(probe).to(device)

    counts = np.bincount(train.codes, minlength=3).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (3.0 * np.maximum(counts, 1.0)), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(weights, dtype=torch.float32).to(device))
    params = [*encoder.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def validate() -> float:
        encoder.eval()
        head.eval()
        with torch.no_grad():
            d = _frozen_differences(encoder, eval_ds, val, batch_pairs, device)
            pred = head(d).argmax(1).cpu().numpy()
        return _balanced_accuracy(val.codes, pred)

    history = [{"epoch": 0, "train_loss": math.nan, "val_balanced_accuracy": validate()}]
    best_epoch, best_score = 0, history[0]["val_balanced_accuracy"]
    best_state = copy.deepcopy(encoder.state_dict())
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        train_ds.set_epoch(epoch)
        _train_mode(encoder)
        order = rng.permutation(len(train))
        losses = []
        for start in range(0, len(order), batch_pairs):
            idx = order[start : start + batch_pairs]
            d = _differences(encoder, train_ds, train, idx, device)
            target = torch.as_tensor(train.codes[idx], device=device)
            loss = loss_fn(head(d), target)
            optimiser.zero_grad()
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimiser.step()
            losses.append(float(loss.detach()))
        score = validate()
        history.append(
            {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_balanced_accuracy": score}
        )
        if log is not None:
            log(f"fine-tune epoch {epoch}: loss {np.mean(losses):.3f}, val bal. acc. {score:.3f}")
        if score > best_score:
            best_epoch, best_score = epoch, score
            best_state = copy.deepcopy(encoder.state_dict())
    encoder.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(
        model=model,
        best_epoch=best_epoch,
        band=band,
        history=history,
        n_train_pairs=len(train),
        n_val_pairs=len(val),
        warnings=notes,
        labels=(
            {"train": source_counts(train.sources), "val": source_counts(val.sources)}
            if CHANGE_LABEL in pairs.columns
            else None
        ),
    )


def save_finetuned(result: FinetuneResult, path: Path, info: dict[str, Any]) -> Path:
    """Write the fine-tuned model as a learner checkpoint (``learner embed``, ``fit-change``
    and ``predict`` read it as any other); ``info`` joins its metadata."""
    from learner.io import atomic_path

    model = result.model
    meta = {
        "config": model.hparams["config"],
        "score_range": list(model.score_range),
        **model.run_info,
        "finetune": {**info, "best_epoch": result.best_epoch, "band": result.band},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "learner": meta}, tmp)
    return path
