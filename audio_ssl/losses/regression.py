"""Regression to a teacher (data2vec): the targets built from the teacher's layers, the loss at
the masked frames, and the spread of targets and predictions (the collapse watch's signal)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from audio_ssl.losses.distributed import global_sum


def instance_norm_over_time(x: torch.Tensor, padding_mask: torch.Tensor | None,
                            eps: float = 1e-5) -> torch.Tensor:
    """x: (B, T, D) -> each utterance's channels normalised over its valid frames (mean 0,
    variance 1 with F.instance_norm's biased variance and eps), padded frames set to 0.
    padding_mask: (B, T) True = padded, or None."""
    x = x.float()
    if padding_mask is None:
        mean = x.mean(1, keepdim=True)  # (B, 1, D)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return (x - mean) / (var + eps).sqrt()
    keep = (~padding_mask)[..., None].float()  # (B, T, 1)
    count = keep.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    mean = (x * keep).sum(1, keepdim=True) / count  # (B, 1, D)
    var = ((x - mean).pow(2) * keep).sum(1, keepdim=True) / count
    return (x - mean) / (var + eps).sqrt() * keep


def layer_average_targets(layers: Sequence[torch.Tensor], padding_mask: torch.Tensor | None,
                          instance_norm_layers: bool = True,
                          instance_norm_targets: bool = False) -> torch.Tensor:
    """data2vec's targets: the mean of ``layers`` (each (B, T, D), the teacher's top K block
    outputs), each first normalised over time per utterance (``instance_norm_layers``), the
    mean normalised again with ``instance_norm_targets``. Returns (B, T, D) fp32; padded frames
    0 when any normalisation runs."""
    if not layers:
        raise ValueError("layer_average_targets: no layers to average")
    total = None
    for y in layers:
        y = instance_norm_over_time(y, padding_mask) if instance_norm_layers else y.float()
        total = y if total is None else total + y
    target = total / len(layers)  # (B, T, D)
    if instance_norm_targets:
        target = instance_norm_over_time(target, padding_mask)
    return target


def regression_sum(predictions: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                   kind: Literal["mse", "smooth_l1"] = "mse", beta: float = 0.25) -> torch.Tensor:
    """Sum over the valid rows of the per-row loss, the mean over dims of the squared error
    (``mse``) or of the smooth L1 loss with ``beta``. predictions, targets: (R, D); valid: (R,)
    bool (the masked frames; other rows are filler and weigh 0). Computed in fp32."""
    p, t = predictions.float(), targets.float()
    if kind == "mse":
        per_dim = F.mse_loss(p, t, reduction="none")  # (R, D)
    elif kind == "smooth_l1":
        per_dim = F.smooth_l1_loss(p, t, reduction="none", beta=beta)
    else:
        raise ValueError(f"unknown regression loss {kind!r}: expected 'mse' or 'smooth_l1'")
    return (per_dim.mean(-1) * valid.float()).sum()


@torch.no_grad()
def spread(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """() the standard deviation over the valid rows of each of x's dims (global over DDP
    ranks), averaged over the dims. x: (R, D), valid: (R,) bool. Near 0 when every frame gets
    the same vector: the sign of a collapsed teacher (targets) or student (predictions)."""
    w = valid.float()[:, None]  # (R, 1)
    x = x.float() * w
    count = global_sum(w.sum()).clamp(min=1)
    mean = global_sum(x.sum(0)) / count  # (D,)
    var = global_sum(x.pow(2).sum(0)) / count - mean.pow(2)
    return var.clamp(min=0).sqrt().mean()


__all__ = ["instance_norm_over_time", "layer_average_targets", "regression_sum", "spread"]
