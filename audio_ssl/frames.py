"""Samples to frames: the conv stack's arithmetic, the one place where samples become frames.

Pure functions of a :data:`~audio_ssl.config.ConvSpec`, at the bottom of the package so that
``data/`` (crops, labels per frame) and ``models/`` (padding masks) share them without ``data/``
importing a model.
"""

from __future__ import annotations

import torch

from audio_ssl.config import ConvSpec


def frame_lengths(lengths: torch.Tensor | int, conv_layers: ConvSpec) -> torch.Tensor | int:
    """Sample lengths (B,) -> frame lengths (B,) after the conv stack (valid convolutions); a
    Python int gives a Python int (host arithmetic: no tensor to read back from a device).

    The one place where samples become frames: every other length in the project derives from it.
    """
    for _, kernel, stride in conv_layers:
        if isinstance(lengths, torch.Tensor):
            lengths = (torch.div(lengths - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)
        else:
            lengths = max((lengths - kernel) // stride + 1, 0)
    return lengths


def receptive_field(conv_layers: ConvSpec) -> tuple[int, int]:
    """(receptive field, hop) in samples of the conv stack: (400, 320) for the paper's stack."""
    field, hop = 1, 1
    for _, kernel, stride in conv_layers:
        field += (kernel - 1) * hop
        hop *= stride
    return field, hop


__all__ = ["frame_lengths", "receptive_field"]
