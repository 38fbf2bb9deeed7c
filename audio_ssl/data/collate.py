"""Stack variable-length rows into one zero-padded batch, with their lengths."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_batch(rows: Sequence[torch.Tensor], width: int | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D rows (S_i,) -> (padded (B, S) of ``dtype``, zeros after each row; lengths (B,) int64).

    ``width`` is S (default: the longest row; 0 for no rows); a row longer than it raises.
    """
    lengths = torch.tensor([r.numel() for r in rows], dtype=torch.int64)  # (B,)
    longest = int(lengths.max()) if len(rows) else 0
    if width is None:
        width = longest
    elif longest > width:
        raise ValueError(f"a row of {longest} values does not fit a batch of width {width}")
    padded = torch.zeros(len(rows), width, dtype=dtype)  # (B, S)
    for i, row in enumerate(rows):
        padded[i, : row.numel()] = row
    return padded, lengths


__all__ = ["pad_batch"]
