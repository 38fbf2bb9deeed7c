"""BEST-RQ: masked prediction of fixed targets from a random-projection quantizer.

The targets need no training and no labelling pass: log-mel frames of the raw audio, normalised
per utterance, stacked to the feature encoder's frame rate, projected by a frozen random matrix
and matched (cosine) to a frozen random codebook. The context network predicts the code of each
masked frame with a linear head and a cross-entropy loss (Chiu et al., 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from audio_ssl.config import BestRqConfig, ConvSpec
from audio_ssl.models.feature_encoder import frame_lengths, receptive_field


class LogMelFrames(nn.Module):
    """Raw audio (B, S) -> per-utterance normalised log-mel frames stacked to the feature
    encoder's frame rate, (B, T, stack * mels), frozen (BEST-RQ's targets' input, the
    reconstruction objective's targets).

    Mel frame j covers samples [j * hop, j * hop + window) with ``window`` the conv stack's
    receptive field and ``hop`` its stride / ``stack``, so the ``stack`` mel frames of encoder
    frame t start where the encoder's frame t starts. Each mel channel is normalised to zero mean
    and unit variance over the utterance's valid mel frames; a mel frame at or past an
    utterance's last valid one repeats that one (the last encoder frame's second half; padding),
    so a padded batch gives the same valid frames as its items one by one.
    """

    def __init__(self, mels: int, stack: int, conv_layers: ConvSpec, sample_rate: int, *,
                 where: str = "stack"):
        super().__init__()
        window, stride = receptive_field(conv_layers)
        if stack < 1 or stride % stack:
            raise ValueError(f"{where} {stack} does not divide the encoder's hop of "
                             f"{stride} samples")
        self.mels, self.stack, self.conv_layers = mels, stack, conv_layers
        self.window, self.hop = window, stride // stack
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=window, win_length=window, hop_length=self.hop, n_mels=mels,
            center=False, power=2.0)

    @torch.no_grad()
    def stacked(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """waveforms: (B, S), lengths: (B,) -> (B, T, stack * mels) fp32, ``stack`` mel frames
        per encoder frame in time order, each frame's ``mels`` channels together."""
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            num_frames = frame_lengths(waveforms.shape[1], self.conv_layers)  # host arithmetic
            logmel = torch.log(self.mel(waveforms.float()) + 1e-6)  # (B, mels, J)
            steps = logmel.shape[-1]
            valid = torch.div(lengths - self.window, self.hop, rounding_mode="floor") + 1
            valid = valid.clamp(min=1, max=steps).to(logmel.device)  # (B,) mel frames per item
            keep = (torch.arange(steps, device=logmel.device)[None, :] < valid[:, None])
            keep = keep[:, None, :].float()  # (B, 1, J)
            mean = (logmel * keep).sum(-1, keepdim=True) / valid[:, None, None]  # (B, mels, 1)
            var = ((logmel - mean).pow(2) * keep).sum(-1, keepdim=True) / valid[:, None, None]
            x = (logmel - mean) / (var + 1e-5).sqrt()  # (B, mels, J) per-utterance normalised
            need = num_frames * self.stack
            # mel frames at or past the last valid one repeat it (no frame reads padding)
            last = torch.arange(need, device=x.device)[None, :].minimum(valid[:, None] - 1)
            x = x.gather(-1, last[:, None, :].expand(-1, x.shape[1], -1))  # (B, mels, T*s)
            return rearrange(x, "b m (t s) -> b t (s m)", s=self.stack)  # (B, T, s*mels)


class RandomProjectionQuantizer(LogMelFrames):
    """Raw audio (B, S) -> one code per encoder frame (B, T), frozen: the stacked log-mel frames
    of :class:`LogMelFrames`, projected by a frozen random matrix and matched (cosine) to a
    frozen random codebook."""

    def __init__(self, cfg: BestRqConfig, conv_layers: ConvSpec, sample_rate: int):
        super().__init__(cfg.mels, cfg.stack, conv_layers, sample_rate, where="best_rq.stack")
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        projection = torch.empty(cfg.mels * cfg.stack, cfg.code_dim)
        bound = (6.0 / (projection.shape[0] + projection.shape[1])) ** 0.5  # Xavier uniform
        projection.uniform_(-bound, bound, generator=g)
        codebook = F.normalize(torch.randn(cfg.codes, cfg.code_dim, generator=g), dim=-1)
        self.register_buffer("projection", projection)  # (stack * mels, code_dim)
        self.register_buffer("codebook", codebook)  # (V, code_dim), unit rows

    @torch.no_grad()
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """waveforms: (B, S), lengths: (B,) -> codes (B, T) int64 (padding frames: any code)."""
        x = self.stacked(waveforms, lengths)  # (B, T, s*mels) fp32
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            z = F.normalize(x @ self.projection, dim=-1)  # (B, T, code_dim)
            return (z @ self.codebook.T).argmax(-1)  # (B, T)


@dataclass
class MaskedPredictionOutput:
    """Loss to back-propagate and the batch's statistics (global across DDP ranks)."""

    loss: torch.Tensor  # scalar to call backward on (scaled for DDP's gradient averaging)
    total: torch.Tensor  # reported loss (= masked_loss)
    masked_loss: torch.Tensor  # mean over masked frames of -log p(target code)
    accuracy: torch.Tensor  # share of masked frames whose target code ranks first
    code_perplexity: torch.Tensor  # perplexity of the targets' codes over the masked frames
    num_masked: torch.Tensor
    masked_fraction: torch.Tensor
    row_logits: torch.Tensor  # (R, V) this rank's logits, rows as masking.masked_rows (R >= M)
    row_labels: torch.Tensor  # (R,) this rank's target codes (-100 in filler rows)
    row_valid: torch.Tensor  # (R,) bool, the rows that are masked frames (the first M)
    mask: torch.Tensor  # (B, T)

    @property
    def logits(self) -> torch.Tensor:
        """(M, V) this rank's logits of the masked frames (reads M back from the device)."""
        return self.row_logits[self.row_valid]

    @property
    def labels(self) -> torch.Tensor:
        """(M,) this rank's target codes of the masked frames (reads M back from the device)."""
        return self.row_labels[self.row_valid]

    def metrics(self) -> dict[str, torch.Tensor]:
        return {"train/loss": self.total, "train/masked_loss": self.masked_loss,
                "train/accuracy": self.accuracy, "train/code_perplexity": self.code_perplexity,
                "train/masked_fraction": self.masked_fraction}
