"""data2vec 2.0 on the wav2vec 2.0 backbone: a student regresses an EMA teacher's contextual
targets at masked frames (Baevski et al., 2022, "Efficient self-supervised learning with
contextualized target representations for vision, speech and language").

One step: the feature encoder runs once on the batch (B, S) -> z (B, T, C). The teacher, an EMA
copy of the context network, sees the unmasked projected frames under no_grad; its top K block
outputs, each normalised over time per utterance, are averaged into the targets (B, T, D). The
student context network sees ``clones`` copies of the projected frames (M * B, T, D), each with
its own span mask; a light conv decoder maps its output to predictions (M * B, T, D), and the
loss is the L2 (or smooth L1) distance to the targets at the masked frames only.

What differs from data2vec 2.0's audio recipe, and why:
- the student encodes every frame (masked ones carry the mask embedding, as in wav2vec 2.0);
  data2vec 2.0 drops masked frames from the student encoder for speed. Not implemented here.
- targets are the blocks' outputs (data2vec 2.0's ``end_of_block_targets``), not the
  feed-forward output before its last residual; for pre-norm models the top one is after the
  final layer norm, as :meth:`ContextNetwork.forward` returns it.
- the loss is the mean over dims and masked frames (data2vec sums over dims and scales by
  1/sqrt(D)): the reported value reads the same for any model width.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from audio_ssl.config import Data2VecConfig, ModelConfig
from audio_ssl.losses.distributed import global_sum
from audio_ssl.losses.regression import layer_average_targets, regression_sum, spread
from audio_ssl.losses.total import masked_prediction_objective
from audio_ssl.models.context import ContextNetwork
from audio_ssl.models.masking import compute_span_mask, masked_rows, max_masked_frames
from audio_ssl.models.wav2vec2 import EncodedFrames, Wav2Vec2Model


class ConvDecoder(nn.Module):
    """data2vec 2.0's Decoder1d: ``layers`` blocks of grouped conv over time ('same' padding) ->
    LayerNorm over channels without affine -> GELU, each block adding its input when the widths
    agree (residual), then a linear projection to ``out_dim``. (B, T, D_in) -> (B, T, D_out)."""

    def __init__(self, in_dim: int, out_dim: int, cfg: Data2VecConfig):
        super().__init__()
        if in_dim % cfg.decoder_groups:
            raise ValueError(f"model.data2vec.decoder_groups {cfg.decoder_groups} does not divide "
                             f"the context dim {in_dim}")
        self.dim = cfg.decoder_dim
        self.convs = nn.ModuleList(
            nn.Conv1d(in_dim if i == 0 else cfg.decoder_dim, cfg.decoder_dim, cfg.decoder_kernel,
                      padding=cfg.decoder_kernel // 2, groups=cfg.decoder_groups)
            for i in range(cfg.decoder_layers))
        self.proj = nn.Linear(cfg.decoder_dim, out_dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D_in), padding_mask: (B, T) True = padded (those frames read as zeros, as
        beyond the utterance's end) -> (B, T, D_out)."""
        keep = None if padding_mask is None else rearrange(~padding_mask, "b t -> b 1 t")
        x = rearrange(x, "b t d -> b d t")
        for conv in self.convs:
            if keep is not None:
                x = x * keep
            y = rearrange(conv(x), "b d t -> b t d")  # (B, T, E)
            y = F.gelu(F.layer_norm(y, (self.dim,)))
            y = rearrange(y, "b t d -> b d t")
            x = y + x if y.shape == x.shape else y  # residual where the widths agree
        return self.proj(rearrange(x, "b d t -> b t d"))  # (B, T, D_out)


@dataclass
class Data2VecOutput:
    """Loss to back-propagate and the batch's statistics (global across DDP ranks)."""

    loss: torch.Tensor  # scalar to call backward on (scaled for DDP's gradient averaging)
    total: torch.Tensor  # reported loss (= regression)
    regression: torch.Tensor  # mean over masked frames (all clones) of the per-frame loss
    target_std: torch.Tensor  # spread of the targets over the masked frames, mean over dims
    prediction_std: torch.Tensor  # the same for the predictions
    num_masked: torch.Tensor  # masked frames in the whole (global) batch, all clones
    masked_fraction: torch.Tensor  # masked / (clones * valid frames)
    row_predictions: torch.Tensor  # (R, D) this rank's predictions at the masked frames + filler
    row_targets: torch.Tensor  # (R, D) their targets
    row_valid: torch.Tensor  # (R,) bool, the rows that are masked frames (the first M)
    mask: torch.Tensor  # (clones * B, T), clone-major: row m * B + b is clone m of item b

    def metrics(self) -> dict[str, torch.Tensor]:
        return {"train/loss": self.total, "train/regression": self.regression,
                "train/target_std": self.target_std, "train/prediction_std": self.prediction_std,
                "train/masked_fraction": self.masked_fraction}


@dataclass
class Data2VecPredictions:
    """Every frame's prediction and target, before the loss picks the masked ones."""

    predictions: torch.Tensor  # (M * B, T, D) clone-major
    targets: torch.Tensor  # (B, T, D) fp32
    mask: torch.Tensor  # (M * B, T) bool
    padding_mask: torch.Tensor | None  # (B, T) True = padded
    frame_lengths: torch.Tensor  # (B,)


class Data2VecForPretraining(nn.Module):
    """data2vec 2.0 on the wav2vec 2.0 backbone (see the module docstring).

    ``backbone`` is a plain :class:`Wav2Vec2Model` (the student): extraction, probes,
    fine-tuning and export take it alone. ``teacher`` (an EMA copy of ``backbone.context``,
    never trained by the optimizer: its parameters do not require grad) and ``decoder`` are
    saved in checkpoints so a resumed run continues exactly.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.objective != "data2vec":
            raise ValueError(f"Data2VecForPretraining trains the data2vec objective, not "
                             f"{cfg.objective!r}: build it with pretraining_model(cfg)")
        self.cfg = cfg
        self.backbone = Wav2Vec2Model(cfg)
        self.teacher: ContextNetwork = copy.deepcopy(self.backbone.context)
        self.teacher.requires_grad_(False)
        self.decoder = ConvDecoder(cfg.context.dim, cfg.context.dim, cfg.data2vec)
        self.top_k = min(cfg.data2vec.top_k, cfg.context.layers)
        self._teacher_step: int | None = None  # the step the teacher last caught up at

    @torch.no_grad()
    def update_teacher(self, step: int, total_steps: int) -> float:
        """Bring the teacher up to the student of update ``step`` (the student after ``step``
        optimizer steps): teacher = tau * teacher + (1 - tau) * student with tau =
        ``cfg.data2vec.tau(step - 1, total_steps)``, the decay of the update after step - 1.

        Call it at the start of every training step (the task does): the first call at a step
        updates, a repeated call at the same step (gradient accumulation) does nothing, step 0
        leaves the teacher as built. A run resumed from the checkpoint of update N therefore
        applies the same updates as the straight run: exact resume needs no state beyond the
        teacher's weights. Returns the tau of the update after this step."""
        if step > 0 and step != self._teacher_step:
            tau = self.cfg.data2vec.tau(step - 1, total_steps)
            teacher = list(self.teacher.parameters())
            student = [p.detach() for p in self.backbone.context.parameters()]
            torch._foreach_lerp_(teacher, student, 1.0 - tau)  # t + (1 - tau) * (s - t)
            for t, s in zip(self.teacher.buffers(), self.backbone.context.buffers()):
                t.copy_(s)
        self._teacher_step = step
        return self.cfg.data2vec.tau(step, total_steps)

    def _mask(self, frames: torch.Tensor, num_frames: int, mask: torch.Tensor | None,
              generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """(M * B, T) clone-major span masks (one per clone) and the host-side bound on their
        masked frames (see :func:`masked_rows`)."""
        clones = self.cfg.data2vec.clones
        if mask is not None:
            return mask, mask.numel()
        lengths = repeat(frames, "b -> (m b)", m=clones)  # (M * B,)
        gen_device = generator.device if generator is not None else frames.device
        mask = compute_span_mask(lengths.to(gen_device), num_frames, self.cfg.mask, generator)
        rows = lengths.shape[0] * max_masked_frames(num_frames, self.cfg.mask)  # host arithmetic
        return mask.to(frames.device), rows

    @torch.no_grad()
    def targets(self, encoded: EncodedFrames) -> torch.Tensor:
        """(B, T, D) fp32: the teacher's top K block outputs on the unmasked projected frames,
        normalised and averaged (:func:`layer_average_targets`)."""
        x = self.backbone.projection(encoded.features)  # (B, T, D), no dropout
        mode = self.teacher.training
        self.teacher.eval()  # no dropout or LayerDrop in the teacher, as data2vec; its mode
        try:  # flag otherwise follows the model's (Lightning warns of modules left in eval)
            _, states = self.teacher(x, encoded.padding_mask, return_layers=True)
        finally:
            self.teacher.train(mode)
        return layer_average_targets(states[-self.top_k:], encoded.padding_mask,
                                     self.cfg.data2vec.instance_norm_layers,
                                     self.cfg.data2vec.instance_norm_targets)

    def predict(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                padded: bool | None = None) -> tuple[Data2VecPredictions, int]:
        """Predictions and targets at every frame, and the row bound for :func:`masked_rows`."""
        clones = self.cfg.data2vec.clones
        enc = self.backbone.encode(waveforms, lengths, padded=padded)
        batch, num_frames = enc.features.shape[:2]
        mask, rows = self._mask(enc.frame_lengths, num_frames, mask, generator)
        if mask.shape != (clones * batch, num_frames):
            raise ValueError(f"mask of shape {tuple(mask.shape)}: expected (clones * B, T) = "
                             f"{(clones * batch, num_frames)}")
        targets = self.targets(enc)  # (B, T, D)
        pad = None if enc.padding_mask is None else repeat(enc.padding_mask, "b t -> (m b) t",
                                                           m=clones)
        copies = EncodedFrames(repeat(enc.features, "b t c -> (m b) t c", m=clones),
                               enc.raw_features,  # (B, T, C): prepare does not read it
                               pad, repeat(enc.frame_lengths, "b -> (m b)", m=clones))
        x = self.backbone.prepare(copies, mask)  # (M * B, T, D), mask embedding at masked frames
        c, _ = self.backbone.context(x, pad, generator=generator)  # (M * B, T, D)
        predictions = self.decoder(c, pad)  # (M * B, T, D)
        return Data2VecPredictions(predictions, targets, mask, enc.padding_mask,
                                   enc.frame_lengths), rows

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
                step: int = 0, mask: torch.Tensor | None = None, negatives: None = None,
                generator: torch.Generator | None = None,
                padded: bool | None = None) -> Data2VecOutput:
        """waveforms: (B, S), lengths: (B,); ``mask`` (clones * B, T), clone-major, overrides
        the random masks; ``step`` and ``negatives`` exist for a common signature and are not
        used (the teacher is updated by :meth:`update_teacher`); ``padded`` as for
        :meth:`Wav2Vec2Model.forward`. The masked frames travel as a fixed number of rows
        (:func:`masked_rows`): no host sync."""
        out, rows = self.predict(waveforms, lengths, mask=mask, generator=generator,
                                 padded=padded)
        positions, row_valid = masked_rows(out.mask, rows)  # (R,), (R,)
        per_clone = out.targets.shape[0] * out.targets.shape[1]  # B * T
        predictions = out.predictions.flatten(0, 1).index_select(0, positions)  # (R, D)
        targets = out.targets.flatten(0, 1).index_select(0, positions % per_clone)  # (R, D)
        cfg = self.cfg.data2vec
        loss_sum = regression_sum(predictions, targets, row_valid, cfg.loss, cfg.smooth_l1_beta)
        num_masked = global_sum(row_valid.sum().float())
        objective = masked_prediction_objective(loss_sum, num_masked)
        valid = global_sum(out.frame_lengths.sum().float()) * cfg.clones
        return Data2VecOutput(
            loss=objective.loss, total=objective.total, regression=objective.total,
            target_std=spread(targets, row_valid), prediction_std=spread(predictions, row_valid),
            num_masked=num_masked, masked_fraction=num_masked / valid.clamp(min=1),
            row_predictions=predictions.detach(), row_targets=targets, row_valid=row_valid,
            mask=out.mask,
        )


def student_activation_bytes(cfg: ModelConfig, batch_samples: int,
                             bytes_per_value: int = 2) -> int:
    """A lower bound on the activations the student keeps for the backward pass of one update
    on a batch of ``batch_samples`` samples (padded B * S): its context network runs on
    ``clones`` copies of every frame, and each Transformer block keeps at least its input, the
    attention's q, k, v and output, its two layer norms' inputs and the feed-forward's input and
    hidden layer: ``8 D + 2 F`` values per frame and block (D the model dim, F the feed-forward
    dim; attention probabilities, dropout masks, the convolutional decoder and the feature
    encoder come on top). ``bytes_per_value``: 2 under bf16/fp16 autocast, 4 in fp32.

    Used to refuse, before training, a ``clones`` x batch that cannot fit in memory at all."""
    from audio_ssl.frames import frame_lengths

    frames = int(frame_lengths(int(batch_samples), cfg.encoder.conv_layers))
    per_frame = cfg.context.layers * (8 * cfg.context.dim + 2 * cfg.context.ffn_dim)
    return cfg.data2vec.clones * frames * per_frame * bytes_per_value


__all__ = ["ConvDecoder", "Data2VecForPretraining", "Data2VecOutput", "Data2VecPredictions",
           "student_activation_bytes"]
