"""Sums over DDP ranks, for losses and metrics normalised by global counts (each a no-op
without DDP)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a detached tensor over DDP ranks (itself without DDP)."""
    x = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(x)
    return x


def with_global_value(local: torch.Tensor) -> torch.Tensor:
    """The global sum's value with the gradient of the local term."""
    return local - local.detach() + global_sum(local)


__all__ = ["world_size", "global_sum", "with_global_value"]
