"""The LightningModule: encoder -> embedding u -> (regression head, pair objective).

The paper's pretraining loss per batch: ``MSE(head(u), y) + lam * L_pair(u, y, patient)``,
scores normalised to [0, 1]. Validation logs the loss terms, the score MAE in raw units and the
Figure-1 Spearman (cosine distance against |score difference| over inter-patient pairs).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn

from learner import dist
from learner.config import Config
from learner.data.training_batch import finish_training_batch, is_raw
from learner.errors import ConfigError
from learner.losses import build_objective, objective_hparam_names
from learner.losses.modules import PairObjective
from learner.models import ProjectionHead, RegressionHead, build_encoder

# Validation pairs for the online Spearman are subsampled to bound the O(n^2) cost.
_MAX_VAL_SCANS_FOR_SPEARMAN = 1500


def build_encoder_from_config(cfg: Config) -> nn.Module:
    """The encoder named by ``model.encoder`` with the input geometry of ``data.input``."""
    m, inp = cfg.model, cfg.data.input
    if m.encoder in ("tsm_resnet18", "tsm_slices"):
        return build_encoder(
            m.encoder, in_channels=inp.channels, n_segment=inp.frames, width=m.width
        )
    if m.encoder == "resnet2d_18":
        return build_encoder(m.encoder, in_channels=inp.channels, width=m.width)
    if m.encoder == "resnet3d_18":
        return build_encoder(m.encoder, in_channels=1, width=m.width)
    # Feature columns, or (F,) vectors read from the path column (F recorded in input.features).
    n_features = len(cfg.data.feature_columns or []) or (inp.features or 0)
    if n_features == 0:
        raise ConfigError(
            "model.encoder mlp needs data.feature_columns, or (F,) .npy files in the path "
            "column (then data.input.features is filled in from them)"
        )
    return build_encoder(
        m.encoder, in_features=n_features, hidden=tuple(m.mlp_hidden), embed_dim=m.mlp_embed_dim
    )


def objective_from_config(cfg: Config) -> PairObjective:
    """Build the named objective, passing only the hyperparameters it accepts (a null one,
    such as ``temperature``, leaves the objective's own default)."""
    values = cfg.objective.model_dump()
    accepted = objective_hparam_names(cfg.objective.name)
    params = {k: values[k] for k in accepted if values[k] is not None}
    return build_objective(cfg.objective.name, **params)


def cosine_distance_spearman(u: Tensor, y: Tensor, pid: Tensor) -> float:
    """Spearman rho between 1 - cos(u_i, u_j) and |y_i - y_j| over inter-patient pairs."""
    keep = ~torch.isnan(y)
    u, y, pid = u[keep], y[keep], pid[keep]
    if u.shape[0] > _MAX_VAL_SCANS_FOR_SPEARMAN:
        idx = torch.randperm(u.shape[0], generator=torch.Generator().manual_seed(0))
        idx = idx[:_MAX_VAL_SCANS_FOR_SPEARMAN]
        u, y, pid = u[idx], y[idx], pid[idx]
    if u.shape[0] < 3:
        return math.nan
    z = F.normalize(u.double(), dim=1)
    dist = 1.0 - z @ z.T
    gap = (y[:, None] - y[None, :]).abs().double()
    iu = torch.triu_indices(u.shape[0], u.shape[0], offset=1)
    inter = pid[iu[0]] != pid[iu[1]]
    d = dist[iu[0], iu[1]][inter].numpy()
    g = gap[iu[0], iu[1]][inter].numpy()
    if d.size < 3 or np.ptp(g) == 0 or np.ptp(d) == 0:
        return math.nan
    return float(spearmanr(d, g).statistic)


# Encoders whose input takes the channels-last layout too (4-D stills, 5-D volumes).
_LAYOUT_INPUTS = ("resnet2d_18", "resnet3d_18")


def _memory_format(cfg: Config) -> torch.memory_format | None:
    """The channels-last layout of ``model.encoder``'s convolutions; None for the MLP."""
    if cfg.model.encoder == "mlp":
        return None
    return torch.channels_last_3d if cfg.model.encoder == "resnet3d_18" else torch.channels_last


class LearnerModule(L.LightningModule):
    """Encoder + regression head + pair objective.

    Args:
        config: the resolved config as a plain dict (``Config.to_plain()``), saved in checkpoints.
        score_range: (low, high) used to normalise scores; predictions are mapped back with it.
        run_info: JSON-safe facts recorded in every checkpoint (seed, split hash, split, versions).
    """

    def __init__(
        self,
        config: dict[str, Any],
        score_range: tuple[float, float],
        run_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config, "score_range": list(score_range)})
        self.cfg = Config.model_validate(config)
        self.score_range = (float(score_range[0]), float(score_range[1]))
        self.run_info = run_info or {}
        self.encoder = build_encoder_from_config(self.cfg)
        # channels_last (NHWC) lets cuDNN pick its faster kernels: on an H200 TSM-R18 trained
        # 1.6x faster, 2x with bf16 (benchmarks/reports/gpu-check.md). A 3-D encoder takes
        # its inputs in the same layout; the video encoders fold frames into the batch
        # inside, and cuDNN follows the weights' layout.
        layout = _memory_format(self.cfg) if self.cfg.train.channels_last else None
        if layout is not None:
            self.encoder = self.encoder.to(memory_format=layout)  # type: ignore[call-overload]
        # Inputs converted to the layout: volumes and stills; a clip's frames are folded into
        # the batch inside the video encoders.
        self._input_format = layout if self.cfg.model.encoder in _LAYOUT_INPUTS else None
        embed_dim = int(self.encoder.embed_dim)  # type: ignore[arg-type]
        self.head = RegressionHead(embed_dim)
        # Regularises the score head against memorising patients; identity at evaluation.
        self.head_dropout = nn.Dropout(self.cfg.model.head_dropout)
        self.projection: nn.Module | None = (
            ProjectionHead(embed_dim) if self.cfg.model.pair_on == "projection" else None
        )
        self.objective = objective_from_config(self.cfg)
        self.lam = 0.0 if self.cfg.objective.name == "mse" else self.cfg.objective.lam
        self._val_outputs: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self._pair_batches = 0
        self._no_pos_batches = 0
        self._no_neg_batches = 0

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (u (B, D), normalised score prediction (B,))."""
        if self._input_format is not None:
            x = x.contiguous(memory_format=self._input_format)
        u = self.encoder(x)
        return u, self.head(self.head_dropout(u))

    def to_raw_score(self, pred: Tensor) -> Tensor:
        lo, hi = self.score_range
        return pred * (hi - lo) + lo

    def _losses(self, batch: dict[str, Tensor], *, gather: bool) -> dict[str, Tensor]:
        """Loss terms of ``batch``; with ``gather`` (training under DDP) over the global batch.

        Training ranks hold disjoint slices of one global batch: the MSE and the pair term
        are computed on the gathered predictions and embeddings, so every rank's loss is
        the loss one process would compute on the whole batch (even when the slices differ
        in size) and DDP's gradient average gives that process's gradient (see
        :mod:`learner.dist`). Validation ranks all see the full validation set: no gather.
        """
        if is_raw(batch):
            batch = self.finish_batch(batch)
        x, y, pid = batch["x"], batch["y"].float(), batch["pid"].long()
        if x.ndim == 6:  # (B, K, T, C, H, W): K clip samplings per scan (input.clips_per_scan)
            # at validation, averaged per scan as `learner embed` does.
            b, k = x.shape[:2]
            u, pred = self(x.flatten(0, 1))
            u, pred = u.view(b, k, -1).mean(1), pred.view(b, k).mean(1)
        else:
            u, pred = self(x)
        gather = gather and dist.world_size() > 1
        pred_all, y_all, pid_all = pred, y, pid
        if gather:
            pred_all = dist.gather_with_grad(pred)
            y_all, pid_all = dist.gather_no_grad(y), dist.gather_no_grad(pid)
        labelled = ~torch.isnan(y_all)
        if labelled.any():
            mse = F.mse_loss(pred_all[labelled].float(), y_all[labelled])
        else:
            mse = pred_all.sum() * 0.0
        out = {"mse": mse, "u": u, "pred": pred, "n": torch.tensor(y_all.shape[0])}
        if self.lam > 0:
            z = self.projection(u) if self.projection is not None else u
            z = dist.gather_with_grad(z) if gather else z
            pair = self.objective.pair_loss(z.float(), y_all, pid_all)
            out.update(pair=pair.loss, n_pos=pair.n_pos, n_neg=pair.n_neg)
            out["loss"] = mse + self.lam * pair.loss
        else:
            out["loss"] = mse
        return out

    def finish_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """A batch of workers' raw training items as the encoder's input, on the batch's
        device (:mod:`learner.data.training_batch`), in float32 whatever the precision: the
        augmentation's resampling is not something to round to bf16."""
        inp = self.cfg.data.input
        with torch.autocast(batch["x"].device.type, enabled=False):
            return finish_training_batch(batch, kind=inp.kind, channels=inp.channels)

    # -- training --------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._pair_batches = 0
        self._no_pos_batches = 0
        self._no_neg_batches = 0

    def _log_terms(self, stage: str, out: dict[str, Tensor], batch_size: int) -> None:
        """Epoch means of the loss terms, averaged across ranks under DDP."""
        for term in ("loss", "mse", "pair"):
            if term in out:
                self.log(
                    f"{stage}/{term}",
                    out[term],
                    prog_bar=term == "loss",
                    on_step=False,
                    on_epoch=True,
                    batch_size=batch_size,
                    sync_dist=True,
                )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self._losses(batch, gather=True)
        # Weighted by the global batch size: the epoch means equal one process's.
        self._log_terms("train", out, int(out["n"]))
        if "pair" in out:
            self._pair_batches += 1
            self._no_pos_batches += int(out["n_pos"].item() == 0)
            self._no_neg_batches += int(out["n_neg"].item() == 0)
        return out["loss"]

    def on_train_epoch_end(self) -> None:
        if self.lam > 0:
            # The counts' denominator, so a report can say "no negative pair in 9 of 10 batches".
            self.log("train/pair_batches", float(self._pair_batches), sync_dist=True)
            self.log("train/batches_without_pos", float(self._no_pos_batches), sync_dist=True)
            self.log("train/batches_without_neg", float(self._no_neg_batches), sync_dist=True)

    # -- validation ------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self._losses(batch, gather=False)
        self._log_terms("val", out, int(batch["y"].shape[0]))
        self._val_outputs.append(
            (
                out["u"].detach().float().cpu(),
                out["pred"].detach().float().cpu(),
                batch["y"].detach().float().cpu(),
                batch["pid"].detach().cpu(),
            )
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        u = torch.cat([o[0] for o in self._val_outputs])
        pred = torch.cat([o[1] for o in self._val_outputs])
        y = torch.cat([o[2] for o in self._val_outputs])
        pid = torch.cat([o[3] for o in self._val_outputs])
        self._val_outputs.clear()
        labelled = ~torch.isnan(y)
        if labelled.any():
            mae = (self.to_raw_score(pred[labelled]) - self.to_raw_score(y[labelled])).abs().mean()
            self.log("val/score_mae", mae, sync_dist=True)
        rho = cosine_distance_spearman(u, y, pid)
        self.log("val/spearman", float(rho) if not math.isnan(rho) else 0.0, sync_dist=True)

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        opt = torch.optim.AdamW(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        if t.scheduler == "none":
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- checkpoint metadata ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["learner"] = {
            "config": self.hparams["config"],
            "score_range": list(self.score_range),
            **self.run_info,
        }
