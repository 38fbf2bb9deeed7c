"""The wav2vec 2.0 backbone: feature encoder -> layer norm -> projection -> (mask) -> context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from audio_ssl.config import ModelConfig
from audio_ssl.models.context import ContextNetwork
from audio_ssl.models.feature_encoder import FeatureEncoder


@dataclass
class BackboneOutput:
    context: torch.Tensor  # (B, T, D) c
    features: torch.Tensor  # (B, T, C) layer-normed conv features (the quantizer's input)
    raw_features: torch.Tensor  # (B, T, C) conv features before the layer norm (L2 penalty)
    padding_mask: torch.Tensor | None  # (B, T) True = padded, None when nothing is padded
    frame_lengths: torch.Tensor  # (B,)
    hidden_states: list[torch.Tensor]  # context input, then each layer's output (when asked)


class Wav2Vec2Model(nn.Module):
    """Raw audio (B, S) with ``lengths`` (B,) -> context vectors (B, T, D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.feature_encoder = FeatureEncoder(cfg.encoder)
        channels = self.feature_encoder.out_channels
        self.layer_norm = nn.LayerNorm(channels)
        self.projection = nn.Linear(channels, cfg.context.dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_embedding = nn.Parameter(torch.empty(cfg.context.dim).uniform_())
        self.context = ContextNetwork(cfg.context)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.feature_encoder.frame_lengths(lengths)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                return_layers: bool = False,
                channel_mask: torch.Tensor | None = None,
                padded: bool | None = None) -> BackboneOutput:
        """waveforms: (B, S); lengths: (B,) valid samples (None = all); mask: (B, T) bool frames
        to replace by the mask embedding (None = no masking); channel_mask: (B, D) bool channels
        of the projected frames set to zero (fine-tuning's channel masking, after time masking,
        as in fairseq and HF).

        padded: whether a row may be shorter than S, when the caller knows it on the host (a
        training step knows it from its data: crops cut to the shortest item are never padded).
        True takes the padding-aware path, right for any lengths; False asserts (on the device,
        without waiting for it) that every length is S; None reads it from ``lengths``, which
        on an accelerator waits for the device.
        """
        batch, samples = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long, device=waveforms.device)
            padded = False
        elif padded is None:
            padded = bool((lengths < samples).any())  # a host sync on an accelerator
        elif not padded:
            torch._assert_async((lengths == samples).all(), "padded=False but a row is padded")
        raw = self.feature_encoder(waveforms, lengths if padded else None)  # (B, T, C)
        num_frames = raw.shape[1]
        frames = self.frame_lengths(lengths).clamp(max=num_frames)  # (B,)
        padding_mask = None
        if padded:
            padding_mask = torch.arange(num_frames, device=raw.device)[None, :] >= frames[:, None]
        features = self.layer_norm(raw)  # (B, T, C)
        x = self.dropout_input(self.projection(features))  # (B, T, D)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        if channel_mask is not None:
            x = x.masked_fill(channel_mask[:, None, :], 0.0)
        c, states = self.context(x, padding_mask, generator=generator, return_layers=return_layers)
        return BackboneOutput(c, features, raw, padding_mask, frames, states)
