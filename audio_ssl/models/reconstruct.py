"""Masked reconstruction on the wav2vec 2.0 backbone (TERA / Mockingjay style, the generative
family): the latent frames are span-masked as in wav2vec 2.0, and a small head predicts, from
each masked frame's context vector, the per-utterance normalised log-mel frames under it.

The targets are BEST-RQ's log-mel frames (:class:`~audio_ssl.models.best_rq.LogMelFrames`) at a
10 ms hop, stacked to the encoder's frame rate: the stack is the conv stack's hop over 10 ms
(2 x 80 mels = 160 values per frame for the paper's 20 ms stack). The head is dropped when a
checkpoint is used for features or fine-tuning: the backbone is a plain Wav2Vec2Model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from audio_ssl.config import ConvSpec, ModelConfig
from audio_ssl.losses.reconstruction import reconstruction_objective
from audio_ssl.models.best_rq import LogMelFrames
from audio_ssl.models.feature_encoder import receptive_field
from audio_ssl.models.masking import compute_span_mask
from audio_ssl.models.wav2vec2 import Wav2Vec2Model

MEL_HOP_SECONDS = 0.010


def mel_stack(conv_layers: ConvSpec, sample_rate: int) -> int:
    """10 ms mel frames per encoder frame: the conv stack's hop over the mel hop (2 for the
    paper's 320-sample hop at 16 kHz)."""
    _, stride = receptive_field(conv_layers)
    mel_hop = round(sample_rate * MEL_HOP_SECONDS)
    if stride % mel_hop:
        raise ValueError(f"the reconstruct objective stacks 10 ms log-mel frames ({mel_hop} samples "
                         f"at {sample_rate} Hz) per encoder frame: the conv stack's hop of {stride} "
                         "samples must be a multiple of it")
    return stride // mel_hop


@dataclass
class ReconstructOutput:
    """Loss to back-propagate and the batch's statistics (global across DDP ranks)."""

    loss: torch.Tensor  # scalar to call backward on (scaled for DDP's gradient averaging)
    total: torch.Tensor  # reported loss: mean l1 (or l2) over masked frames x dims
    l1_masked: torch.Tensor  # mean |prediction - target| over masked frames x dims
    l1_unmasked: torch.Tensor  # the same over unmasked valid frames (monitoring only)
    num_masked: torch.Tensor
    masked_fraction: torch.Tensor  # masked / valid frames
    prediction: torch.Tensor  # (B, T, F) fp32, detached; F = stack * mels
    targets: torch.Tensor  # (B, T, F) normalised stacked log-mel (padding frames: any value)
    mask: torch.Tensor  # (B, T)

    def metrics(self) -> dict[str, torch.Tensor]:
        return {"train/loss": self.total, "train/l1_masked": self.l1_masked,
                "train/l1_unmasked": self.l1_unmasked,
                "train/masked_fraction": self.masked_fraction}


class ReconstructForPretraining(nn.Module):
    """The wav2vec 2.0 backbone with a reconstruction head: context (B, T, D) -> stacked
    log-mel (B, T, F). The same feature encoder, context network, masking and padding as
    wav2vec 2.0; the loss counts masked frames only."""

    def __init__(self, cfg: ModelConfig, sample_rate: int = 16_000):
        super().__init__()
        self.cfg = cfg
        r = cfg.reconstruct
        self.backbone = Wav2Vec2Model(cfg)
        stack = mel_stack(cfg.encoder.conv_layers, sample_rate)
        self.targets = LogMelFrames(r.n_mels, stack, cfg.encoder.conv_layers, sample_rate)
        dims = stack * r.n_mels
        if r.head_hidden:
            self.head = nn.Sequential(nn.Linear(cfg.context.dim, r.head_hidden), nn.GELU(),
                                      nn.Linear(r.head_hidden, dims))
        else:
            self.head = nn.Linear(cfg.context.dim, dims)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
                step: int = 0, mask: torch.Tensor | None = None,
                negatives: None = None,
                generator: torch.Generator | None = None,
                padded: bool | None = None) -> ReconstructOutput:
        """waveforms: (B, S), lengths: (B,); ``mask`` (B, T) overrides the random span mask
        (drawn from ``generator``, as LayerDrop). ``step`` and ``negatives`` exist for a common
        signature with wav2vec 2.0 and are not used; ``padded`` as for
        :meth:`Wav2Vec2Model.forward`."""
        batch, samples = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long, device=waveforms.device)
        num_frames = self.backbone.frame_lengths(samples)  # host arithmetic
        if mask is None:
            frames = self.backbone.frame_lengths(lengths)  # (B,)
            gen_device = generator.device if generator is not None else waveforms.device
            mask = compute_span_mask(frames.to(gen_device), num_frames, self.cfg.mask, generator)
            mask = mask.to(waveforms.device)  # (B, T)
        targets = self.targets.stacked(waveforms, lengths)  # (B, T, F) fp32
        out = self.backbone(waveforms, lengths, mask=mask, generator=generator, padded=padded)
        valid = (torch.arange(num_frames, device=waveforms.device)[None, :]
                 < out.frame_lengths[:, None])  # (B, T)
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            prediction = self.head(out.context.float())  # (B, T, F) fp32
        objective = reconstruction_objective(prediction, targets, mask & valid, valid,
                                             self.cfg.reconstruct.loss)
        return ReconstructOutput(
            loss=objective.loss, total=objective.total, l1_masked=objective.l1_masked,
            l1_unmasked=objective.l1_unmasked, num_masked=objective.num_masked,
            masked_fraction=objective.masked_fraction, prediction=prediction.detach(),
            targets=targets, mask=mask,
        )


__all__ = ["ReconstructForPretraining", "ReconstructOutput", "mel_stack"]
