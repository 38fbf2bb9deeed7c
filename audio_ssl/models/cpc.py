"""CPC / wav2vec (v1): the feature encoder (z), a causal context network (c), one linear
predictor per future step, InfoNCE (:mod:`audio_ssl.losses.cpc`).

:class:`CpcModel` is the backbone. It has the shape of :class:`Wav2Vec2Model` where extraction,
probing and fine-tuning touch it (``feature_encoder``, ``frame_lengths``, ``encode``,
``prepare``, ``context(x, padding_mask, return_layers=, num_layers=)`` with ``context.layers``,
``forward`` -> :class:`BackboneOutput`), so a CPC checkpoint serves those commands: its layers
are ``encoder`` (z), ``layer_0`` (the context network's input, z projected) and ``layer_i``
(each context layer's output; the last is c).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from audio_ssl.config import CpcConfig, ModelConfig
from audio_ssl.losses.cpc import cpc_step_sums, sample_distractors
from audio_ssl.losses.distributed import global_sum, world_size
from audio_ssl.models.feature_encoder import FeatureEncoder
from audio_ssl.models.wav2vec2 import BackboneOutput, Wav2Vec2Model


class CausalConvLayer(nn.Module):
    """(B, T, D) -> (B, T, D): x + GELU(LayerNorm(conv(x))), the conv reading frames
    t - kernel + 1 .. t (left padding only). The norm is per frame: a norm over time (wav2vec's
    group norm) would let the future leak into c_t."""

    def __init__(self, dim: int, kernel: int, dropout: float):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(dim, dim, kernel)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.pad(rearrange(x, "b t d -> b d t"), (self.kernel - 1, 0)))  # (B, D, T)
        return x + self.dropout(F.gelu(self.norm(rearrange(y, "b d t -> b t d"))))


class GruLayer(nn.Module):
    """(B, T, D) -> (B, T, D): one unidirectional GRU layer (CPC's context network)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.gru(x)[0])


class CausalContext(nn.Module):
    """Projected frames (B, T, D) -> c (B, T, D); c_t depends on frames 0..t only, so padding
    at the end of a row changes none of its real frames (nothing to mask)."""

    def __init__(self, cfg: CpcConfig):
        super().__init__()
        self.cfg = cfg
        make = ((lambda: CausalConvLayer(cfg.dim, cfg.kernel, cfg.dropout)) if cfg.context == "conv"
                else (lambda: GruLayer(cfg.dim, cfg.dropout)))
        self.layers = nn.ModuleList(make() for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                return_layers: bool = False, num_layers: int | None = None, *,
                positional: Callable | None = None, layers: Sequence[Callable] | None = None,
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """As :meth:`ContextNetwork.forward`: c (B, T, D) and, with ``return_layers``, the input
        followed by each layer's output; ``num_layers`` runs the first N. ``padding_mask`` and
        ``generator`` are not needed (causal; no LayerDrop); ``positional`` and ``layers``
        (other kernels of a Transformer) must be None."""
        if positional is not None or layers is not None:
            raise ValueError("the CPC context network has no positional convolution or "
                             "Transformer layers to swap kernels into")
        depth = len(self.layers) if num_layers is None else num_layers
        if not 0 <= depth <= len(self.layers):
            raise ValueError(f"num_layers must be in 0..{len(self.layers)}, got {num_layers}")
        states = [x] if return_layers else []
        for layer in self.layers[:depth]:
            x = layer(x)  # (B, T, D)
            if return_layers:
                states.append(x)
        return x, states


class CpcModel(nn.Module):
    """Raw audio (B, S) with ``lengths`` (B,) -> causal context vectors c (B, T, D), D =
    ``cfg.cpc.dim``: feature encoder -> layer norm (z) -> projection -> causal context."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.feature_encoder = FeatureEncoder(cfg.encoder)
        channels = self.feature_encoder.out_channels
        self.layer_norm = nn.LayerNorm(channels)
        self.projection = nn.Linear(channels, cfg.cpc.dim)
        self.dropout_input = nn.Dropout(cfg.cpc.dropout)
        self.context = CausalContext(cfg.cpc)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.feature_encoder.frame_lengths(lengths)

    # the same steps from samples to layer-normed frames as wav2vec 2.0 (one encode path)
    encode = Wav2Vec2Model.encode

    def prepare(self, encoded, mask: torch.Tensor | None = None,
                channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The context network's input (B, T, D): the projected z; frames of ``mask`` (B, T)
        and channels of ``channel_mask`` (B, D) set to zero (fine-tuning's masks; CPC has no
        mask embedding)."""
        x = self.dropout_input(self.projection(encoded.features))  # (B, T, D)
        if mask is not None:
            x = x.masked_fill(mask[..., None], 0.0)
        if channel_mask is not None:
            x = x.masked_fill(channel_mask[:, None, :], 0.0)
        return x

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                return_layers: bool = False, channel_mask: torch.Tensor | None = None,
                padded: bool | None = None, num_layers: int | None = None) -> BackboneOutput:
        """As :meth:`Wav2Vec2Model.forward`."""
        enc = self.encode(waveforms, lengths, padded=padded)
        c, states = self.context(self.prepare(enc, mask, channel_mask), enc.padding_mask,
                                 return_layers=return_layers, num_layers=num_layers)
        return BackboneOutput(**vars(enc), context=c, hidden_states=states)


def backbone_model(cfg: ModelConfig) -> nn.Module:
    """The backbone of ``cfg.objective``: :class:`CpcModel` for cpc, else the wav2vec 2.0 one
    (what fine-tuning and probing build a checkpoint's network with)."""
    return CpcModel(cfg) if cfg.objective == "cpc" else Wav2Vec2Model(cfg)


@dataclass
class CpcOutput:
    """Loss to back-propagate and the batch's statistics (global across DDP ranks)."""

    loss: torch.Tensor  # scalar to call backward on (scaled for DDP's gradient averaging)
    total: torch.Tensor  # reported loss: the mean over steps of each step's InfoNCE
    step_loss: torch.Tensor  # (K,) global mean over pairs (t, k) of -log p(positive)
    step_accuracy: torch.Tensor  # (K,) share of pairs whose positive scores highest
    accuracy: torch.Tensor  # mean of step_accuracy
    step_count: torch.Tensor  # (K,) pairs (t, k) with a real target, global
    frame_lengths: torch.Tensor  # (B,)

    def metrics(self) -> dict[str, torch.Tensor]:
        """``train/contrastive`` is the loss too: the collapse watch's plateau at log(N + 1)."""
        metrics = {"train/loss": self.total, "train/contrastive": self.total,
                   "train/accuracy": self.accuracy}
        for k in range(1, self.step_loss.shape[0] + 1):
            metrics[f"train/loss_k{k}"] = self.step_loss[k - 1]
            metrics[f"train/accuracy_k{k}"] = self.step_accuracy[k - 1]
        return metrics


class CpcForPretraining(nn.Module):
    """CPC / wav2vec (v1): c_t predicts z_{t+k} through ``predictor`` (one linear map per step,
    D -> C each, held as one D -> K*C layer); InfoNCE against distractors of the same
    utterance, no masking."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.objective != "cpc":
            raise ValueError(f"CpcForPretraining trains the cpc objective, not "
                             f"{cfg.objective!r}: build it with pretraining_model(cfg)")
        self.cfg = cfg
        self.backbone = CpcModel(cfg)
        channels = self.backbone.feature_encoder.out_channels
        self.predictor = nn.Linear(cfg.cpc.dim, cfg.cpc.steps * channels)

    def objective(self, features: torch.Tensor, frame_lengths: torch.Tensor,
                  context_input: torch.Tensor | None = None, *,
                  negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
                  generator: torch.Generator | None = None) -> CpcOutput:
        """The loss on latent frames: features (B, T, C) z, the targets; frame_lengths (B,);
        context_input (B, T, D) the context network's input (None: z projected, as
        :meth:`CpcModel.prepare`). ``negatives``: ((B, T, N) indices, (B, T) valid) instead of
        drawing them from ``generator`` (exact tests)."""
        cpc = self.cfg.cpc
        batch, num_frames, channels = features.shape
        if context_input is None:
            context_input = self.backbone.dropout_input(self.backbone.projection(features))
        c, _ = self.backbone.context(context_input)  # (B, T, D)
        predictions = rearrange(self.predictor(c), "b t (k c) -> b t k c", k=cpc.steps)
        if negatives is None:
            device = generator.device if generator is not None else features.device
            indices, valid = sample_distractors(frame_lengths.to(device), num_frames,
                                                cpc.negatives, generator)
            negatives = (indices.to(features.device), valid.to(features.device))
        sums = cpc_step_sums(predictions, features, frame_lengths, *negatives)
        count = global_sum(sums.count)  # (K,)
        present = (count > 0).float()  # (K,) steps with a pair somewhere in the batch
        steps = present.sum().clamp(min=1)
        # the mean over steps of each step's global mean; backward: this rank's share x world
        loss = world_size() * (sums.ce_sum / count.clamp(min=1) * present).sum() / steps
        step_loss = global_sum(sums.ce_sum) / count.clamp(min=1)  # (K,)
        step_accuracy = global_sum(sums.correct) / count.clamp(min=1)  # (K,)
        return CpcOutput(
            loss=loss, total=(step_loss * present).sum() / steps, step_loss=step_loss,
            step_accuracy=step_accuracy, accuracy=(step_accuracy * present).sum() / steps,
            step_count=count, frame_lengths=frame_lengths,
        )

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
                step: int = 0, mask: None = None,
                negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
                generator: torch.Generator | None = None,
                padded: bool | None = None) -> CpcOutput:
        """waveforms: (B, S), lengths: (B,). ``step`` and ``mask`` exist for a common signature
        with the other objectives (no schedule, no masking: a mask is refused); ``negatives``
        as in :meth:`objective`; ``padded`` as in :meth:`Wav2Vec2Model.encode`."""
        if mask is not None:
            raise ValueError("CPC predicts future frames and masks none: mask must be None")
        enc = self.backbone.encode(waveforms, lengths, padded=padded)
        return self.objective(enc.features, enc.frame_lengths, self.backbone.prepare(enc),
                              negatives=negatives, generator=generator)


__all__ = ["CausalContext", "CpcModel", "CpcForPretraining", "CpcOutput", "backbone_model"]
