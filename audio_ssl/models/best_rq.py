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


class RandomProjectionQuantizer(nn.Module):
    """Raw audio (B, S) -> one code per encoder frame (B, T), frozen.

    Mel frame j covers samples [j * hop, j * hop + window) with ``window`` the conv stack's
    receptive field and ``hop`` its stride / ``cfg.stack``, so the ``stack`` mel frames of encoder
    frame t start where the encoder's frame t starts.
    """

    def __init__(self, cfg: BestRqConfig, conv_layers: ConvSpec, sample_rate: int):
        super().__init__()
        window, stride = receptive_field(conv_layers)
        if stride % cfg.stack:
            raise ValueError(f"best_rq.stack {cfg.stack} does not divide the encoder's hop of "
                             f"{stride} samples")
        self.cfg, self.conv_layers = cfg, conv_layers
        self.window, self.hop = window, stride // cfg.stack
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=window, win_length=window, hop_length=self.hop, n_mels=cfg.mels,
            center=False, power=2.0)
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
            need = num_frames * self.cfg.stack
            if steps < need:  # the last encoder frame's second half: repeat the last mel frame
                x = torch.cat([x, x[..., -1:].expand(-1, -1, need - steps)], dim=-1)
            x = rearrange(x[..., :need], "b m (t s) -> b t (s m)", s=self.cfg.stack)  # (B, T, s*mels)
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
