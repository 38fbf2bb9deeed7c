"""Learning-rate schedules as pure functions of the update count, and which parameters get
weight decay."""

from __future__ import annotations

import torch


def skips_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Parameters that get no weight decay: biases, norms' gains (every parameter of fewer than
    two dimensions), the mask embedding and the quantizer's codevectors (as fairseq)."""
    return param.ndim < 2 or name.endswith("mask_embedding") or "codevectors" in name


def warmup_linear(step: int, total: int, warmup_fraction: float) -> float:
    """Multiplier of the peak learning rate: linear warm-up over ``warmup_fraction`` of
    ``total`` updates, then linear decay to 0 at ``total``."""
    warmup = max(1, int(round(total * warmup_fraction)))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def tri_stage(step: int, total: int, stages: tuple[float, float, float] = (0.1, 0.4, 0.5),
              init_scale: float = 0.01, final_scale: float = 0.05) -> float:
    """fairseq's tri-stage schedule (warm-up, hold, exponential decay), for fine-tuning."""
    import math

    warmup, hold = int(total * stages[0]), int(total * stages[1])
    decay = max(1, total - warmup - hold)
    if step < warmup:
        return init_scale + (1 - init_scale) * step / max(1, warmup)
    if step < warmup + hold:
        return 1.0
    progress = min(1.0, (step - warmup - hold) / decay)
    return math.exp(math.log(final_scale) * progress)
