"""Pretraining heads on the wav2vec 2.0 backbone: wav2vec 2.0's contrastive loss against its
quantized (or continuous) targets, and BEST-RQ's masked prediction of fixed codes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from audio_ssl.config import ModelConfig
from audio_ssl.losses.contrastive import (
    contrastive_accuracy,
    contrastive_logits,
    cross_entropy_sum,
    diversity_loss,
    feature_penalty,
    similarity_sums,
)
from audio_ssl.losses.distributed import global_sum, with_global_value
from audio_ssl.losses.total import masked_prediction_objective, wav2vec2_objective
from audio_ssl.models.best_rq import MaskedPredictionOutput, RandomProjectionQuantizer
from audio_ssl.models.cpc import CpcForPretraining
from audio_ssl.models.data2vec import Data2VecForPretraining
from audio_ssl.models.masking import (
    compute_span_mask,
    masked_rows,
    max_masked_frames,
    sample_negatives,
)
from audio_ssl.models.quantizer import GumbelQuantizer, perplexity
from audio_ssl.models.reconstruct import ReconstructForPretraining
from audio_ssl.models.wav2vec2 import Wav2Vec2Model


@dataclass
class PretrainOutput:
    """Loss to back-propagate and the batch's statistics (global across DDP ranks)."""

    loss: torch.Tensor  # scalar to call backward on (scaled for DDP's gradient averaging)
    total: torch.Tensor  # reported loss = contrastive + a * diversity + b * feature_penalty
    contrastive: torch.Tensor  # mean over masked frames of -log p(positive)
    diversity: torch.Tensor
    feature_penalty: torch.Tensor
    accuracy: torch.Tensor  # share of masked frames whose positive ranks first
    code_perplexity: torch.Tensor
    prob_perplexity: torch.Tensor
    num_masked: torch.Tensor  # masked frames in the whole (global) batch
    masked_fraction: torch.Tensor  # masked / valid frames
    row_logits: torch.Tensor  # (R, 1 + K) this rank's logits, rows as masked_rows (R >= M)
    row_valid: torch.Tensor  # (R,) bool, the rows that are masked frames (the first M)
    mask: torch.Tensor  # (B, T)
    # plateau diagnostics (global means): cosine of the context with its positive and with its
    # distractors, cosine between a positive and its distractors, share of the quantizer's
    # choices that Gumbel noise moved off the noiseless argmax
    positive_cosine: torch.Tensor
    distractor_cosine: torch.Tensor
    target_cosine: torch.Tensor
    noise_flip_rate: torch.Tensor
    quantized: bool = True  # False: continuous targets, no codebook metrics

    @property
    def logits(self) -> torch.Tensor:
        """(M, 1 + K) this rank's logits of the masked frames (reads M back from the device)."""
        return self.row_logits[self.row_valid]

    def metrics(self) -> dict[str, torch.Tensor]:
        """Named metrics; the codebook's (perplexities, Gumbel noise) only for quantized targets."""
        codebook = ("train/diversity", "train/code_perplexity", "train/prob_perplexity",
                    "train/noise_flip_rate")
        metrics = {
            "train/loss": self.total, "train/contrastive": self.contrastive,
            "train/diversity": self.diversity, "train/feature_penalty": self.feature_penalty,
            "train/accuracy": self.accuracy, "train/code_perplexity": self.code_perplexity,
            "train/prob_perplexity": self.prob_perplexity,
            "train/masked_fraction": self.masked_fraction,
            "train/positive_cosine": self.positive_cosine,
            "train/distractor_cosine": self.distractor_cosine,
            "train/target_cosine": self.target_cosine, "train/noise_flip_rate": self.noise_flip_rate,
        }
        return metrics if self.quantized else {k: v for k, v in metrics.items() if k not in codebook}


def _lengths_frames_mask(backbone: Wav2Vec2Model, cfg: ModelConfig, waveforms: torch.Tensor,
                         lengths: torch.Tensor | None, mask: torch.Tensor | None,
                         generator: torch.Generator | None):
    """(lengths (B,), frame lengths (B,), mask (B, T), rows): all samples valid when ``lengths``
    is None; a random span mask (drawn on the generator's device) when ``mask`` is None. ``rows``
    is a host-side bound on the batch's masked frames (B times the most a span mask can cover,
    or every frame for a given mask): the masked frames travel as that many rows
    (:func:`masked_rows`), so no shape depends on a value the host would read back."""
    batch, samples = waveforms.shape
    if lengths is None:
        lengths = torch.full((batch,), samples, dtype=torch.long, device=waveforms.device)
    frames = backbone.frame_lengths(lengths)
    num_frames = backbone.frame_lengths(samples)  # host arithmetic
    if mask is None:
        gen_device = generator.device if generator is not None else waveforms.device
        mask = compute_span_mask(frames.to(gen_device), num_frames, cfg.mask, generator)
        mask = mask.to(waveforms.device)
        rows = batch * max_masked_frames(num_frames, cfg.mask)
    else:
        rows = mask.numel()
    return lengths, frames, mask, rows


def _at_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) -> (R, ...) the frames at flat positions b * T + t (see masked_rows)."""
    return x.flatten(0, 1).index_select(0, positions)


def pretraining_model(cfg: ModelConfig) -> nn.Module:
    """The pretraining model of ``cfg.objective``."""
    if cfg.objective == "best-rq":
        return BestRqForPretraining(cfg)
    if cfg.objective == "hubert":
        return HubertForPretraining(cfg)
    if cfg.objective == "reconstruct":
        return ReconstructForPretraining(cfg)
    if cfg.objective == "cpc":
        return CpcForPretraining(cfg)
    if cfg.objective == "data2vec":
        return Data2VecForPretraining(cfg)
    return Wav2Vec2ForPretraining(cfg)


def _masked_prediction(logits: torch.Tensor, labels: torch.Tensor, row_valid: torch.Tensor,
                       frames: torch.Tensor, mask: torch.Tensor,
                       codes: int) -> MaskedPredictionOutput:
    """Cross-entropy of (R, V) fp32 logits against (R,) labels at the rows that are masked
    frames ((R,) bool ``row_valid``; the others are filler), globally normalised over DDP."""
    labels = labels.masked_fill(~row_valid, -100)  # (R,) filler rows: cross_entropy's ignore_index
    ce_sum = F.cross_entropy(logits, labels, reduction="sum")
    num_masked = global_sum(row_valid.sum().float())
    objective = masked_prediction_objective(ce_sum, num_masked)
    # (V,) label counts: index_add, not bincount (whose size comes from a read of max(labels))
    counts = logits.new_zeros(codes).index_add_(0, labels.clamp(min=0), row_valid.float())
    code_perplexity = perplexity(global_sum(counts)[None] / num_masked.clamp(min=1))
    correct = global_sum(((logits.detach().argmax(-1) == labels) & row_valid).sum().float())
    valid_count = global_sum(frames.sum().float())
    return MaskedPredictionOutput(
        loss=objective.loss, total=objective.total, masked_loss=objective.total,
        accuracy=correct / num_masked.clamp(min=1), code_perplexity=code_perplexity,
        num_masked=num_masked, masked_fraction=num_masked / valid_count.clamp(min=1),
        row_logits=logits.detach(), row_labels=labels, row_valid=row_valid, mask=mask,
    )


class Wav2Vec2ForPretraining(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.objective != "wav2vec2":
            raise ValueError(f"Wav2Vec2ForPretraining trains the wav2vec2 objective, not "
                             f"{cfg.objective!r}: build it with pretraining_model(cfg)")
        self.cfg = cfg
        self.backbone = Wav2Vec2Model(cfg)
        channels = self.backbone.feature_encoder.out_channels
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.quantizer: GumbelQuantizer | None = None
        if cfg.quantize_targets:
            self.quantizer = GumbelQuantizer(channels, cfg.quantizer)
        self.project_q = nn.Linear(cfg.quantizer.dim if cfg.quantize_targets else channels,
                                   cfg.final_dim)
        self.final_proj = nn.Linear(cfg.context.dim, cfg.final_dim)

    @torch.no_grad()
    def target_codes(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, G) the code each frame would get without Gumbel noise (padding included);
        G = 0 for continuous targets."""
        if self.quantizer is None:
            return waveforms.new_zeros((waveforms.shape[0], 0, 0), dtype=torch.long)
        features = self.backbone.encode(waveforms, lengths).features  # (B, T, C)
        logits = self.quantizer.weight_proj(features.float())  # (B, T, G*V)
        return rearrange(logits, "b t (g v) -> b t g v", g=self.quantizer.groups).argmax(-1)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
                step: int = 0, mask: torch.Tensor | None = None,
                negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
                generator: torch.Generator | None = None,
                padded: bool | None = None) -> PretrainOutput:
        """waveforms: (B, S), lengths: (B,). ``mask`` (B, T) and ``negatives`` ((M, K) indices,
        (M, K) valid) override the random ones, for exact tests. ``step`` sets the Gumbel
        temperature. Random draws (mask, distractors, LayerDrop) come from ``generator``.
        ``padded``: see :meth:`Wav2Vec2Model.forward` (a training step passes it: no host sync).

        The masked frames travel as a fixed number R >= M of rows (``masked_rows``), the filler
        rows weighted out, so the host never waits for the device to learn M."""
        cfg = self.cfg
        lengths, frames, mask, rows = _lengths_frames_mask(self.backbone, cfg, waveforms, lengths,
                                                           mask, generator)
        if negatives is not None:
            rows = negatives[0].shape[0]  # M itself
        out = self.backbone(waveforms, lengths, mask=mask, generator=generator, padded=padded)
        positions, row_valid = masked_rows(mask, rows)  # (R,), (R,)

        # targets and predictions at the masked frames (and filler rows): (R, ...)
        features = _at_rows(out.features, positions)  # (R, C)
        if cfg.detach_targets:
            features = features.detach()
        quantized = None
        if self.quantizer is None:  # continuous targets
            targets = self.project_q(self.dropout_features(features))  # (R, F)
        else:
            quantized = self.quantizer(self.dropout_features(features),
                                       cfg.quantizer.temperature(step), weight=row_valid)
            targets = self.project_q(quantized.quantized)  # (R, F)
        context = self.final_proj(_at_rows(out.context, positions))  # (R, F)
        if negatives is None:
            gen_mask = mask.to(generator.device) if generator is not None else mask
            indices, valid = sample_negatives(gen_mask, cfg.loss.num_negatives, generator, rows)
            negatives = (indices.to(mask.device), valid.to(mask.device))
        codes = None
        if quantized is not None and cfg.loss.mask_identical_negatives:
            codes = quantized.codes
        logits = contrastive_logits(context, targets, negatives[0], negatives[1], codes,
                                    cfg.loss.logit_temperature)  # (R, 1 + K)

        # global normalisation: every term is a global sum over a global count
        num_masked = global_sum(row_valid.sum().float())
        ce_sum = cross_entropy_sum(logits, row_valid)
        if quantized is None:  # no codebook: no diversity term, perplexities read 0
            prob_perplexity = code_perplexity = diversity = logits.new_zeros(())
            noise_flips = logits.new_zeros(())
        else:
            prob_marginal = with_global_value(quantized.prob_sum) / num_masked.clamp(min=1)
            prob_perplexity = perplexity(prob_marginal)
            code_perplexity = perplexity(global_sum(quantized.code_sum) / num_masked.clamp(min=1))
            diversity = diversity_loss(prob_perplexity, cfg.quantizer.groups, cfg.quantizer.codes)
            noise_flips = quantized.noise_flips
        valid_frames = None if out.padding_mask is None else ~out.padding_mask
        sq_sum, sq_count = feature_penalty(out.raw_features, valid_frames)
        # the diversity term has the global value and the gradient of this rank's frames
        objective = wav2vec2_objective(ce_sum, num_masked, diversity, sq_sum, global_sum(sq_count),
                                       cfg.loss)
        correct = global_sum(contrastive_accuracy(logits.detach(), row_valid))
        valid_count = global_sum(frames.sum().float())
        sims = global_sum(similarity_sums(logits, targets, negatives[0],
                                          cfg.loss.logit_temperature, row_valid))
        flips = global_sum(noise_flips) / (num_masked * cfg.quantizer.groups).clamp(min=1)
        return PretrainOutput(
            loss=objective.loss, total=objective.total, contrastive=objective.contrastive,
            diversity=diversity.detach(), feature_penalty=objective.feature_penalty,
            accuracy=correct / num_masked.clamp(min=1),
            code_perplexity=code_perplexity, prob_perplexity=prob_perplexity.detach(),
            num_masked=num_masked, masked_fraction=num_masked / valid_count.clamp(min=1),
            row_logits=logits.detach(), row_valid=row_valid, mask=mask,
            positive_cosine=sims[0] / sims[4].clamp(min=1),
            distractor_cosine=sims[1] / sims[3].clamp(min=1),
            target_cosine=sims[2] / sims[3].clamp(min=1), noise_flip_rate=flips,
            quantized=quantized is not None,
        )


class BestRqForPretraining(nn.Module):
    """BEST-RQ on the wav2vec 2.0 backbone: the context network predicts, at each masked frame,
    the code a frozen random-projection quantizer gives that frame's log-mel (cross-entropy).
    The same feature encoder, context network, masking and padding as wav2vec 2.0."""

    def __init__(self, cfg: ModelConfig, sample_rate: int = 16_000):
        super().__init__()
        self.cfg = cfg
        self.backbone = Wav2Vec2Model(cfg)
        self.targets = RandomProjectionQuantizer(cfg.best_rq, cfg.encoder.conv_layers, sample_rate)
        self.head = nn.Linear(cfg.context.dim, cfg.best_rq.codes)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
                step: int = 0, mask: torch.Tensor | None = None,
                negatives: None = None,
                generator: torch.Generator | None = None,
                padded: bool | None = None) -> MaskedPredictionOutput:
        """waveforms: (B, S), lengths: (B,); ``mask`` (B, T) overrides the random one. ``step``
        and ``negatives`` exist for a common signature with wav2vec 2.0 and are not used;
        ``padded`` as for :meth:`Wav2Vec2Model.forward`."""
        lengths, frames, mask, rows = _lengths_frames_mask(self.backbone, self.cfg, waveforms,
                                                           lengths, mask, generator)
        labels_all = self.targets(waveforms, lengths)  # (B, T)
        out = self.backbone(waveforms, lengths, mask=mask, generator=generator, padded=padded)
        positions, row_valid = masked_rows(mask, rows)  # (R,), (R,)
        labels = _at_rows(labels_all, positions)  # (R,)
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            logits = self.head(_at_rows(out.context, positions).float())  # (R, V) fp32
        return _masked_prediction(logits, labels, row_valid, frames, mask, self.cfg.best_rq.codes)


class HubertForPretraining(nn.Module):
    """HuBERT on the wav2vec 2.0 backbone: at each masked frame, the cosine similarity of the
    projected context to one learned embedding per k-means cluster, over a temperature, is
    trained with cross-entropy against the frame's label (made beforehand by ``audio-ssl
    targets``). The same feature encoder, context network, masking and padding as wav2vec 2.0."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Wav2Vec2Model(cfg)
        self.final_proj = nn.Linear(cfg.context.dim, cfg.final_dim)
        self.label_embeddings = nn.Parameter(torch.empty(cfg.hubert.clusters, cfg.final_dim))
        nn.init.uniform_(self.label_embeddings)  # fairseq's hubert

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, *,
                labels: torch.Tensor, step: int = 0, mask: torch.Tensor | None = None,
                negatives: None = None,
                generator: torch.Generator | None = None,
                padded: bool | None = None) -> MaskedPredictionOutput:
        """waveforms: (B, S), lengths: (B,), labels: (B, T) cluster per frame (-1: none, never
        masked); ``mask`` (B, T) overrides the random one; ``padded`` as for
        :meth:`Wav2Vec2Model.forward`."""
        lengths, frames, mask, rows = _lengths_frames_mask(self.backbone, self.cfg, waveforms,
                                                           lengths, mask, generator)
        mask = mask & (labels >= 0)  # frames without a label are not predicted (fewer rows)
        out = self.backbone(waveforms, lengths, mask=mask, generator=generator, padded=padded)
        positions, row_valid = masked_rows(mask, rows)  # (R,), (R,)
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            c = _at_rows(out.context, positions).float()  # (R, D)
            c = F.normalize(self.final_proj(c), dim=-1)  # (R, F)
            e = F.normalize(self.label_embeddings.float(), dim=-1)  # (V, F)
            logits = c @ e.T / self.cfg.hubert.logit_temperature  # (R, V)
        return _masked_prediction(logits, _at_rows(labels, positions), row_valid, frames, mask,
                                  self.cfg.hubert.clusters)


PRETRAINING_MODELS = (Wav2Vec2ForPretraining, BestRqForPretraining, HubertForPretraining,
                      ReconstructForPretraining, CpcForPretraining,
                      Data2VecForPretraining)  # for isinstance checks
