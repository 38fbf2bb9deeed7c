"""The wav2vec 2.0 backbone: feature encoder -> layer norm -> projection -> (mask) -> context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from audio_ssl.config import ModelConfig
from audio_ssl.models.context import ContextNetwork
from audio_ssl.models.feature_encoder import FeatureEncoder


@dataclass
class EncodedFrames:
    """The feature encoder's side of the backbone, before the projection."""

    features: torch.Tensor  # (B, T, C) layer-normed conv features (the quantizer's input)
    raw_features: torch.Tensor  # (B, T, C) conv features before the layer norm (L2 penalty)
    padding_mask: torch.Tensor | None  # (B, T) True = padded, None when nothing is padded
    frame_lengths: torch.Tensor  # (B,)


@dataclass
class BackboneOutput(EncodedFrames):
    context: torch.Tensor  # (B, T, D) c
    hidden_states: list[torch.Tensor]  # context input, then each layer's output (when asked)


class Wav2Vec2Model(nn.Module):
    """Raw audio (B, S) with ``lengths`` (B,) -> context vectors (B, T, D).

    ``forward`` is :meth:`encode`, then :meth:`prepare`, then the context network; a caller
    that needs another encoder kernel or other layer kernels (inference) calls the same steps.
    """

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

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
               padded: bool | None = None,
               encoder: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
               ) -> EncodedFrames:
        """waveforms: (B, S); lengths: (B,) valid samples (None = all) -> conv features, their
        layer norm, the padding mask and the frame lengths.

        padded: whether a row may be shorter than S, when the caller knows it on the host (a
        training step knows it from its data: crops cut to the shortest item are never padded).
        True takes the padding-aware path, right for any lengths; False asserts (on the device,
        without waiting for it) that every length is S; None reads it from ``lengths``, which
        on an accelerator waits for the device.
        encoder: another implementation of ``feature_encoder`` (waveforms, lengths or None) ->
        (B, T, C), e.g. the inference kernels'.
        """
        batch, samples = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long, device=waveforms.device)
            padded = False
        elif padded is None:
            padded = bool((lengths < samples).any())  # a host sync on an accelerator
        elif not padded:
            torch._assert_async((lengths == samples).all(), "padded=False but a row is padded")
        raw = (encoder or self.feature_encoder)(waveforms, lengths if padded else None)  # (B, T, C)
        num_frames = raw.shape[1]
        frames = self.frame_lengths(lengths).clamp(max=num_frames)  # (B,)
        padding_mask = None
        if padded:
            padding_mask = torch.arange(num_frames, device=raw.device)[None, :] >= frames[:, None]
        return EncodedFrames(self.layer_norm(raw), raw, padding_mask, frames)

    def prepare(self, encoded: EncodedFrames, mask: torch.Tensor | None = None,
                channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The context network's input (B, T, D): the projected features, with the frames of
        ``mask`` (B, T) bool replaced by the mask embedding (None = no masking) and the channels
        of ``channel_mask`` (B, D) bool set to zero (fine-tuning's channel masking, after time
        masking, as in fairseq and HF)."""
        x = self.dropout_input(self.projection(encoded.features))  # (B, T, D)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        if channel_mask is not None:
            x = x.masked_fill(channel_mask[:, None, :], 0.0)
        return x

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                return_layers: bool = False,
                channel_mask: torch.Tensor | None = None,
                padded: bool | None = None, num_layers: int | None = None,
                chunk_mask: torch.Tensor | None = None) -> BackboneOutput:
        """waveforms: (B, S); lengths: (B,) valid samples (None = all); mask (B, T) and
        channel_mask (B, D) as in :meth:`prepare`; padded as in :meth:`encode`; generator:
        LayerDrop's draws; return_layers and num_layers (run only the first N Transformer
        layers) and chunk_mask (T, T) (chunk training) as in :meth:`ContextNetwork.forward`."""
        enc = self.encode(waveforms, lengths, padded=padded)
        c, states = self.context(self.prepare(enc, mask, channel_mask), enc.padding_mask,
                                 generator=generator, return_layers=return_layers,
                                 num_layers=num_layers, chunk_mask=chunk_mask)
        return BackboneOutput(**vars(enc), context=c, hidden_states=states)
