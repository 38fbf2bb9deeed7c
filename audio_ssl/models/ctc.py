"""wav2vec 2.0 with a linear CTC head, for speech recognition."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from audio_ssl.config import ModelConfig, check_head_kernel
from audio_ssl.models.cpc import backbone_model


@dataclass
class CTCOutput:
    logits: torch.Tensor  # (B, T, V) unnormalised scores over the vocabulary (blank = 0)
    frame_lengths: torch.Tensor  # (B,)
    padding_mask: torch.Tensor | None  # (B, T) True = padded, None when nothing is padded
    hidden_states: list[torch.Tensor]  # as BackboneOutput.hidden_states


def top_layer_prefixes(layers: int, n: int, prefix: str = "") -> tuple[str, ...]:
    """Parameter-name prefixes of the top ``n`` of ``layers`` context layers (under ``prefix``,
    e.g. ``"backbone."``)."""
    return tuple(f"{prefix}context.layers.{i}." for i in range(layers - n, layers))


def head_kernel_of(state: dict[str, torch.Tensor]) -> int:
    """The ``head_kernel`` of a :class:`Wav2Vec2ForCTC` state dict (keys without ``model.``):
    its ``mix`` convolution's width, 1 without one."""
    mix = state.get("mix.weight")
    return 1 if mix is None or mix.ndim != 3 else int(mix.shape[-1])


class Wav2Vec2ForCTC(nn.Module):
    """Backbone -> dropout -> linear over ``vocab_size`` tokens (index 0 is the CTC blank).

    ``head_kernel`` > 1 (odd) puts a centred convolution over that many context frames before
    the linear map, added to its input through a GELU (``mix``): for a causal backbone (CPC's),
    whose frame t has heard nothing after t, it gives the head ``(head_kernel - 1) / 2`` frames
    of what follows, as wav2vec (v1) fed its features to a convolutional acoustic model. Padded
    frames are zeroed before it, so a frame reads what it would read alone. 1 (the default):
    the linear head of wav2vec 2.0 and HF.

    The backbone keeps the attribute name of :class:`Wav2Vec2ForPretraining`, so a pretrained
    state dict loads into it with ``load_backbone``.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, final_dropout: float = 0.0,
                 head_kernel: int = 1):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (blank and one token), got {vocab_size}")
        check_head_kernel(head_kernel)
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.backbone = backbone_model(cfg)  # CPC: its causal context network's output
        self.dropout = nn.Dropout(final_dropout)
        dim = self.backbone.projection.out_features
        self.mix = (nn.Conv1d(dim, dim, head_kernel, padding=head_kernel // 2)
                    if head_kernel > 1 else None)
        self.head = nn.Linear(dim, vocab_size)

    @property
    def head_kernel(self) -> int:
        return 1 if self.mix is None else self.mix.kernel_size[0]

    def head_logits(self, context: torch.Tensor,
                    padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Context vectors (B, T, D), or (T, D) of one utterance, -> logits (B, T, V) / (T, V).
        ``padding_mask``: (B, T), True = padded (None: nothing is)."""
        x = self.dropout(context)
        if self.mix is None:
            return self.head(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        y = x[None] if x.ndim == 2 else x  # (B, T, D)
        y = y + F.gelu(self.mix(y.transpose(1, 2)).transpose(1, 2))
        return self.head(y[0] if x.ndim == 2 else y)

    def load_backbone(self, state_dict: dict[str, torch.Tensor], *, keep_random_layers: int = 0,
                      ) -> None:
        """Load the ``backbone.*`` entries of a pretraining (or CTC) state dict.

        ``keep_random_layers``: the top N context layers keep this model's random initialisation
        (re-initialising the top layers before fine-tuning on few labels: the pretrained ones
        are the most specialised to the self-supervised task)."""
        backbone = {k.removeprefix("backbone."): v for k, v in state_dict.items()
                    if k.startswith("backbone.")}
        if not backbone:
            raise ValueError("state dict has no 'backbone.*' entries: not a wav2vec 2.0 model "
                             "of this library")
        layers = len(self.backbone.context.layers)
        if not 0 <= keep_random_layers <= layers:
            raise ValueError(f"keep_random_layers must be between 0 and the {layers} context "
                             f"layers, got {keep_random_layers}")
        fresh = top_layer_prefixes(layers, keep_random_layers)
        backbone = {k: v for k, v in backbone.items() if not k.startswith(fresh)}
        missing, unexpected = self.backbone.load_state_dict(backbone, strict=False)
        wrong = [k for k in missing if not k.startswith(fresh)] + list(unexpected)
        if wrong:  # as strict loading would say
            raise RuntimeError(f"backbone state dict does not match: {', '.join(wrong[:5])}")

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None, channel_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                return_layers: bool = False, padded: bool | None = None,
                chunk_mask: torch.Tensor | None = None) -> CTCOutput:
        """waveforms: (B, S); lengths: (B,); mask (B, T) and channel_mask (B, D) as in
        :meth:`Wav2Vec2Model.forward` (fine-tuning's SpecAugment-style masking); padded as in
        :meth:`Wav2Vec2Model.encode` (True for a graph that must serve any lengths: ONNX);
        chunk_mask: (T, T) bool attention mask of chunk training (None: full attention). What
        is frozen is decided by the parameters' ``requires_grad`` (fine-tuning's
        ``FinetuneTask.freeze_loaded``), not here.
        """
        # only what was asked for: a CPC backbone (causal already) takes neither
        extra = {k: v for k, v in (("padded", padded), ("chunk_mask", chunk_mask)) if v is not None}
        out = self.backbone(waveforms, lengths, mask=mask, generator=generator,
                            return_layers=return_layers, channel_mask=channel_mask, **extra)
        logits = self.head_logits(out.context, out.padding_mask)  # (B, T, V)
        return CTCOutput(logits, out.frame_lengths, out.padding_mask, out.hidden_states)
