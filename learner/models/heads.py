"""Heads on top of an encoder's embedding ``u``.

- :class:`RegressionHead` predicts the (normalised) clinical score from ``u``.
- :class:`ProjectionHead` maps ``u`` to the space the pair objective acts on when it is not
  ``u`` itself (SimCLR-style; by default the objective uses ``u`` directly, which is what the
  downstream change classifier reads).
"""

from __future__ import annotations

import torch
from torch import nn

from learner.models.encoders import check_positive_int


class RegressionHead(nn.Module):
    """Score regressor: a Linear layer, or Linear -> ReLU -> Linear with ``hidden`` units.

    Args:
        embed_dim: size of the embedding ``u``.
        hidden: hidden width; ``None`` for a single linear layer.

    Shape:
        input ``(B, embed_dim)`` -> output ``(B,)``.

    Example:
        >>> RegressionHead(8)(torch.randn(4, 8)).shape
        torch.Size([4])
    """

    def __init__(self, embed_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        self.embed_dim = embed_dim
        self.net: nn.Module
        if hidden is None:
            self.net = nn.Linear(embed_dim, 1)
        else:
            check_positive_int("hidden", hidden)
            self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Predict scores: ``(B, embed_dim)`` -> ``(B,)``."""
        if u.ndim != 2 or u.shape[1] != self.embed_dim:
            raise ValueError(
                f"RegressionHead expects (B, {self.embed_dim}), got shape {tuple(u.shape)}"
            )
        out: torch.Tensor = self.net(u)
        return out.squeeze(-1)


class ProjectionHead(nn.Module):
    """Projection for the pair objective: Linear -> ReLU -> Linear.

    Args:
        embed_dim: size of the embedding ``u`` (also the hidden width).
        out_dim: size of the projection.

    Shape:
        input ``(B, embed_dim)`` -> output ``(B, out_dim)``.

    Example:
        >>> ProjectionHead(8, out_dim=4)(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, embed_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        check_positive_int("out_dim", out_dim)
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, out_dim)
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Project: ``(B, embed_dim)`` -> ``(B, out_dim)``."""
        if u.ndim != 2 or u.shape[1] != self.embed_dim:
            raise ValueError(
                f"ProjectionHead expects (B, {self.embed_dim}), got shape {tuple(u.shape)}"
            )
        out: torch.Tensor = self.net(u)
        return out
