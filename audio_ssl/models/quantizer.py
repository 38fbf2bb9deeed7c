"""Gumbel-softmax product quantizer (q): G groups x V codevectors, hard straight-through."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from audio_ssl.config import QuantizerConfig


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """Sum over groups of exp(entropy) of the marginal distribution. probs: (G, V) marginals."""
    entropy = -(probs * torch.log(probs + 1e-7)).sum(-1)  # (G,)
    return torch.exp(entropy).sum()


def one_hot(codes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(..., G) codes -> (..., G, V) one-hot of ``like``'s shape and dtype. ``F.one_hot`` on the
    CPU first reads min and max back to check them (its CUDA path leaves that to a device
    assert); the scatter needs no read on any device."""
    return torch.zeros_like(like).scatter_(-1, codes[..., None], 1.0)


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (N, dim) codevectors (straight-through in training)
    codes: torch.Tensor  # (N, G) int64 chosen entry per group
    # sums and counts over the frames that count (all N, or those ``weight`` keeps)
    prob_sum: torch.Tensor  # (G, V) sum over the frames of softmax(logits), no noise, fp32
    code_sum: torch.Tensor  # (G, V) counts of the hard choices, fp32
    count: int | torch.Tensor  # N, or () the frames ``weight`` keeps
    noise_flips: torch.Tensor  # () how many of the choices Gumbel noise moved off the argmax

    @property
    def prob_perplexity(self) -> torch.Tensor:
        return perplexity(self.prob_sum / torch.as_tensor(self.count).clamp(min=1))

    @property
    def code_perplexity(self) -> torch.Tensor:
        return perplexity(self.code_sum / torch.as_tensor(self.count).clamp(min=1))


class GumbelQuantizer(nn.Module):
    def __init__(self, in_dim: int, cfg: QuantizerConfig):
        super().__init__()
        if cfg.dim % cfg.groups:
            raise ValueError(f"quantizer dim {cfg.dim} is not divisible by groups {cfg.groups}")
        self.cfg = cfg
        self.groups, self.codes = cfg.groups, cfg.codes
        self.weight_proj = nn.Linear(in_dim, cfg.groups * cfg.codes)
        self.codevectors = nn.Parameter(torch.empty(1, cfg.groups * cfg.codes, cfg.dim // cfg.groups))
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        if cfg.codebook_init == "uniform":
            nn.init.uniform_(self.codevectors)
        else:
            nn.init.normal_(self.codevectors)

    def forward(self, x: torch.Tensor, temperature: float,
                weight: torch.Tensor | None = None) -> QuantizerOutput:
        """x: (N, C) features of the frames to quantize -> codevectors (N, dim). weight: (N,)
        bool, the frames the sums and counts cover (None: all), so filler rows of a fixed-size
        batch of frames cost no host sync and count for nothing."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.weight_proj(x.float())  # (N, G*V) fp32
            logits = rearrange(logits, "n (g v) -> n g v", g=self.groups)  # (N, G, V)
            probs = logits.softmax(-1)  # (N, G, V), no noise: for the diversity loss
            if self.training:
                noisy = logits
                if self.cfg.gumbel_noise:
                    noisy = logits - torch.empty_like(logits).exponential_().log()
                soft = (noisy / temperature).softmax(-1)
                codes = soft.argmax(-1)  # (N, G)
                flipped = codes != logits.argmax(-1)  # (N, G)
                if weight is not None:
                    flipped = flipped & weight[:, None]
                flips = flipped.sum().float()
                hard = one_hot(codes, soft)
                weights = hard - soft.detach() + soft  # straight-through
            else:
                codes = logits.argmax(-1)
                hard = one_hot(codes, logits)
                weights = hard
                flips = torch.zeros((), device=x.device)
            book = rearrange(self.codevectors.float(), "1 (g v) d -> g v d", g=self.groups)
            quantized = torch.einsum("ngv,gvd->ngd", weights, book)  # (N, G, d)
            hard = hard.detach()
            count: int | torch.Tensor = x.shape[0]
            if weight is not None:
                probs = probs * weight[:, None, None]
                hard = hard * weight[:, None, None]
                count = weight.sum()
        return QuantizerOutput(
            quantized=rearrange(quantized, "n g d -> n (g d)"),
            codes=codes,
            prob_sum=probs.sum(0),
            code_sum=hard.sum(0),
            count=count,
            noise_flips=flips.detach(),
        )
