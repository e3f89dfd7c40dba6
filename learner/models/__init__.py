"""Encoders (scan -> embedding ``u``), heads, temporal shift and pretrained-weight loading."""

from learner.models.encoders import (
    ENCODERS,
    FeatureMLP,
    ResNet2D18,
    ResNet3D18,
    TSMResNet18,
    build_encoder,
)
from learner.models.heads import ProjectionHead, RegressionHead
from learner.models.pretrained import load_torchvision_resnet18
from learner.models.tsm import ShiftedConv, TemporalShift, insert_residual_shift, temporal_shift

__all__ = [
    "ENCODERS",
    "FeatureMLP",
    "ProjectionHead",
    "RegressionHead",
    "ResNet2D18",
    "ResNet3D18",
    "ShiftedConv",
    "TSMResNet18",
    "TemporalShift",
    "build_encoder",
    "insert_residual_shift",
    "load_torchvision_resnet18",
    "temporal_shift",
]
