"""CTC fine-tuning with Lightning, and the run folder behind `audio-ssl finetune`.

The task stays thin: masks, forward, CTC loss, log. The feature encoder is frozen; for the first
``ctc.freeze_updates`` updates the whole backbone runs without gradients and only the head
learns (fairseq's ``freeze_finetune_updates``); the learning rate follows the tri-stage
schedule. Every ``train.val_every`` updates (and at the end) the model is decoded greedily on the
validation set; ``checkpoints/best.ckpt`` keeps the lowest WER, ``last.ckpt`` the latest state.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from audio_ssl.config import FinetuneConfig, dump, load_finetune, merge, to_dict
from audio_ssl.data.labelled import (
    LabelledBatch,
    LabelledBatchDataset,
    LabelledItem,
    make_labelled_loader,
    read_labelled,
)
from audio_ssl.data.manifest import Rejected
from audio_ssl.data.text import TokenError, Vocabulary, ctc_frames_needed, normalize_text
from audio_ssl.io import check_run_folder, make_run_folder
from audio_ssl.inference.decode import greedy_decode
from audio_ssl.inference.metrics import ZERO, char_errors, word_errors
from audio_ssl.interop import CONFIG_KEY, VOCAB_KEY
from audio_ssl.losses.ctc import ctc_loss
from audio_ssl.models.ctc import Wav2Vec2ForCTC
from audio_ssl.models.feature_encoder import frame_lengths as conv_frame_lengths
from audio_ssl.models.masking import compute_span_mask
from audio_ssl.tasks.pretrain import step_seed
from audio_ssl.tasks.run import find_last_checkpoint
from audio_ssl.tasks.schedules import skips_weight_decay, tri_stage
from audio_ssl.tasks.trainer import build_trainer, is_distributed

log = logging.getLogger("audio_ssl")


class FinetuneTask(L.LightningModule):
    """Wav2Vec2ForCTC trained with CTC.

    Args:
        cfg: the resolved fine-tuning config.
        vocab: output tokens (blank first).
        valid: validation dataset (its items' normalised transcripts are the references).
        valid_texts: normalised reference of each validation item.
        output_dir: run folder (metrics.jsonl, rejected.jsonl, checkpoints), or None.
    """

    def __init__(self, cfg: FinetuneConfig, vocab: Vocabulary,
                 valid: LabelledBatchDataset | None = None, valid_texts: list[str] | None = None,
                 output_dir: str | Path | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.model = Wav2Vec2ForCTC(cfg.model, len(vocab), cfg.ctc.final_dropout)
        if cfg.ctc.freeze_feature_encoder:
            self.model.backbone.feature_encoder.requires_grad_(False)
        self.valid, self.valid_texts = valid, valid_texts or []
        self.output_dir = Path(output_dir) if output_dir else None
        self.batches_seen = 0
        self.best_wer = math.inf
        self.history: list[dict[str, float]] = []  # validation rows
        self.first_loss: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.skipped_in_training = 0

    # -- helpers ---------------------------------------------------------------------------------
    def backbone_frozen(self, step: int) -> bool:
        """True while only the head trains."""
        return step < self.cfg.ctc.freeze_updates

    def lr_scale(self, step: int) -> float:
        o = self.cfg.optim
        return tri_stage(step, self.cfg.train.max_steps, o.stages, o.init_scale, o.final_scale)

    def masks(self, frames: torch.Tensor, num_frames: int,
              generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Time mask (B, T) and channel mask (B, D) of one training batch (None when off)."""
        time_cfg, chan_cfg = self.cfg.ctc.time_mask, self.cfg.ctc.channel_mask
        time_mask = channel_mask = None
        if time_cfg.prob > 0:
            time_mask = compute_span_mask(frames, num_frames, time_cfg, generator)
        if chan_cfg.prob > 0:
            dim = self.cfg.model.context.dim
            full = torch.full_like(frames, dim)  # (B,)
            channel_mask = compute_span_mask(full, dim, chan_cfg, generator)  # (B, D)
        return time_mask, channel_mask

    def forward_ctc(self, batch: LabelledBatch, *, train: bool, step: int = 0,
                    generator: torch.Generator | None = None):
        """Logits (B, T, V), frame lengths (B,) and the CTC loss of one batch. ``train``: with
        time and channel masks drawn from ``generator``; the backbone runs without gradients
        while ``step`` is in the frozen stage."""
        model = self.model
        time_mask = channel_mask = None
        if train:
            frames = model.backbone.frame_lengths(batch.lengths)  # (B,)
            num_frames = int(model.backbone.frame_lengths(
                batch.lengths.new_tensor([batch.waveforms.shape[1]]))[0])
            time_mask, channel_mask = self.masks(frames, num_frames, generator)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen(step)):
            out = model.backbone(batch.waveforms, batch.lengths, mask=time_mask,
                                 channel_mask=channel_mask, generator=generator)
        logits = model.head(model.dropout(out.context))  # (B, T, V)
        loss = ctc_loss(logits, out.frame_lengths, batch.targets, batch.target_lengths,
                        blank=self.vocab.blank)
        return logits, out.frame_lengths, loss

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: LabelledBatch, batch_idx: int) -> torch.Tensor | None:
        self.batches_seen += 1
        for failure in batch.failures:
            self._report(failure.path, failure.reason)
        if len(batch) == 0:
            return None
        step = self.global_step
        seed = step_seed(self.cfg.train.seed, step, self.global_rank)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator(device=self.device).manual_seed(seed)
        logits, frames, loss = self.forward_ctc(batch, train=True, step=step, generator=generator)
        for row in (~loss.kept).nonzero().flatten().tolist():
            item = self.trainer.datamodule.train.items[batch.indices[row]]
            self.skipped_in_training += 1
            self._report(item.path, f"transcript of {int(batch.target_lengths[row])} tokens "
                                    f"cannot be aligned to {int(frames[row])} frames")
        if not bool(loss.kept.any()):
            return None
        metrics = {
            "train/loss": float(loss.loss.detach()),
            "train/lr": self.cfg.optim.lr * self.lr_scale(step),
            "train/backbone_frozen": float(self.backbone_frozen(step)),
            "train/utterances": float(loss.kept.sum()),
        }
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "train/loss", batch_size=len(batch))
        if self.first_loss is None:
            self.first_loss = metrics["train/loss"]
        self.last_metrics.update(metrics)
        if self.output_dir is not None and step % self.cfg.train.log_every == 0:
            self._append_jsonl("metrics.jsonl", {"step": step, **metrics})
        return loss.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step  # updates done
        every = self.cfg.train.val_every
        done = step >= self.cfg.train.max_steps
        if step > 0 and (step % every == 0 or done) and step != getattr(self, "_validated_at", -1):
            self._validated_at = step
            self.validate_now(step)

    def configure_optimizers(self):
        o = self.cfg.optim
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if skips_weight_decay(name, param) else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=o.betas, eps=o.eps, fused=True,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_scale)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def validate_now(self, step: int) -> dict[str, float]:
        """Greedy WER / CER (and CTC loss) on the validation set; saves best.ckpt / last.ckpt."""
        trainer = self.trainer
        was_training = self.training
        self.eval()
        word = char = ZERO
        loss_sum, utts = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        loader = make_labelled_loader(self.valid, max_batch_samples=self.cfg.data.max_batch_samples,
                                      train=False, rank=trainer.global_rank,
                                      world_size=trainer.world_size, num_workers=0)
        for batch in loader:
            for failure in batch.failures:
                self._report(failure.path, failure.reason)
            if len(batch) == 0:
                continue
            batch = batch.to(self.device)
            with trainer.precision_plugin.forward_context():
                logits, frames, loss = self.forward_ctc(batch, train=False)
            loss_sum += loss.per_utterance.sum()
            utts += loss.kept.sum()
            hyps = greedy_decode(logits.float(), frames, self.vocab)
            for idx, hyp in zip(batch.indices, hyps):
                ref = self.valid_texts[idx]
                word = word + word_errors(ref, hyp)
                char = char + char_errors(ref, hyp)
        counts = torch.tensor([word.errors, word.reference_length, char.errors,
                               char.reference_length], dtype=torch.float64, device=self.device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        loss_sum = trainer.strategy.reduce(loss_sum, reduce_op="sum")
        utts = trainer.strategy.reduce(utts, reduce_op="sum")
        row = {
            "valid/wer": float(counts[0] / counts[1].clamp(min=1)),
            "valid/cer": float(counts[2] / counts[3].clamp(min=1)),
            "valid/loss": float(loss_sum / utts.clamp(min=1)),
        }
        if was_training:
            self.train()
        for name, value in row.items():
            self.log(name, value, prog_bar=name == "valid/wer")
        self.history.append({"step": step, **row})
        if self.output_dir is not None:
            self._append_jsonl("metrics.jsonl", {"step": step, **row})
            ckpt = self.output_dir / "checkpoints"
            if row["valid/wer"] < self.best_wer or (row["valid/wer"] == self.best_wer
                                                    and not (ckpt / "best.ckpt").exists()):
                self.best_wer = row["valid/wer"]
                trainer.save_checkpoint(ckpt / "best.ckpt", weights_only=False)
            trainer.save_checkpoint(ckpt / "last.ckpt", weights_only=False)
        log.info("step %d: valid WER %.2f%%, CER %.2f%%, loss %.3f", step, 100 * row["valid/wer"],
                 100 * row["valid/cer"], row["valid/loss"])
        return row

    # -- bookkeeping -----------------------------------------------------------------------------
    @rank_zero_only
    def _append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        with open(self.output_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _report(self, path: str, reason: str) -> None:
        if self.output_dir is not None:
            self._append_jsonl("rejected.jsonl", {"split": "train", "step": self.global_step,
                                                  "path": path, "reason": reason})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = to_dict(self.cfg)
        checkpoint[VOCAB_KEY] = list(self.vocab.tokens)
        checkpoint["batches_seen"] = self.batches_seen
        checkpoint["best_wer"] = self.best_wer
        checkpoint["valid_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batches_seen = int(checkpoint.get("batches_seen", 0))
        self.best_wer = float(checkpoint.get("best_wer", math.inf))
        self.history = list(checkpoint.get("valid_history", []))


class FinetuneData(L.LightningDataModule):
    def __init__(self, train: LabelledBatchDataset, cfg: FinetuneConfig):
        super().__init__()
        self.train, self.cfg = train, cfg

    def train_dataloader(self):
        trainer = self.trainer
        return make_labelled_loader(
            self.train, max_batch_samples=self.cfg.data.max_batch_samples, train=True,
            seed=self.cfg.train.seed, num_buckets=self.cfg.data.num_buckets,
            rank=trainer.global_rank, world_size=trainer.world_size,
            position=trainer.lightning_module.batches_seen, num_workers=self.cfg.data.num_workers,
        )


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Prepared:
    """A labelled set ready for CTC: items, their normalised texts and token ids."""

    items: list[LabelledItem]
    texts: list[str]
    targets: list[list[int]]
    rejected: list[Rejected]


def prepare(items: list[LabelledItem], rejected: list[Rejected], cfg: FinetuneConfig,
            vocab: Vocabulary) -> Prepared:
    """Normalise, encode and length-check each utterance; the bad ones join ``rejected``."""
    out = Prepared([], [], [], list(rejected))
    convs = cfg.model.encoder.conv_layers
    frames = conv_frame_lengths(torch.tensor([it.samples for it in items] or [0]), convs).tolist()
    for it, n in zip(items, frames):
        text = normalize_text(it.text, cfg.text)
        if not text:
            out.rejected.append(Rejected(it.path, f"empty transcript after normalisation "
                                                  f"(was {it.text!r})"))
            continue
        try:
            ids = vocab.encode(text)
        except TokenError as e:
            out.rejected.append(Rejected(it.path, str(e)))
            continue
        need = ctc_frames_needed(ids)
        if need > n:
            out.rejected.append(Rejected(
                it.path, f"transcript too long for CTC: {len(ids)} tokens need {need} frames, "
                         f"the audio gives {n}"))
            continue
        out.items.append(it)
        out.texts.append(text)
        out.targets.append(ids)
    return out


@dataclass
class FinetuneResult:
    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    steps: int
    train_utterances: int
    train_hours: float
    valid_utterances: int
    rejected: int
    vocab: list[str]
    history: list[dict[str, float]]  # validation rows: step, valid/wer, valid/cer, valid/loss
    first_loss: float | None
    last_loss: float | None
    seconds: float
    from_scratch: bool
    init: str  # what the weights started from
    warnings: list[str] = field(default_factory=list)

    @property
    def best(self) -> dict[str, float] | None:
        return min(self.history, key=lambda r: (r["valid/wer"], r["valid/cer"]), default=None)

    def summary(self) -> str:
        best = self.best
        text = (f"fine-tuned {self.steps} steps with CTC on {self.train_utterances} utterances "
                f"({self.train_hours:.2f} h) in {self.seconds / 60:.1f} min, from {self.init}; "
                f"{self.rejected} utterance(s) skipped\n")
        if self.first_loss is not None and self.last_loss is not None:
            text += f"  CTC loss {self.first_loss:.3f} -> {self.last_loss:.3f}\n"
        if best is not None:
            last = self.history[-1]
            text += (f"  validation ({self.valid_utterances} utterances, greedy): best WER "
                     f"{100 * best['valid/wer']:.2f}% CER {100 * best['valid/cer']:.2f}% at step "
                     f"{int(best['step'])}; last WER {100 * last['valid/wer']:.2f}% CER "
                     f"{100 * last['valid/cer']:.2f}%\n")
        text += (f"  vocabulary {len(self.vocab)} tokens: {' '.join(self.vocab)}\n"
                 f"outputs in {self.output_dir}:\n"
                 f"  best        {self.best_checkpoint}\n"
                 f"  last        {self.last_checkpoint}\n"
                 f"  config      {self.output_dir / 'config.yaml'}\n"
                 f"  metrics     {self.output_dir / 'metrics.jsonl'}\n"
                 f"  skipped     {self.output_dir / 'rejected.jsonl'}\n")
        for w in self.warnings:
            text += f"warning: {w}\n"
        return text

    def transcribe(self, inputs, **options):
        """Transcribe files/folders with the best checkpoint (see
        :func:`audio_ssl.inference.transcribe.transcribe`)."""
        from audio_ssl.inference.transcribe import transcribe

        return transcribe(self.best_checkpoint or self.last_checkpoint, inputs, **options)


def _initial_weights(pretrained: str | Path | None, from_scratch: bool):
    """(model config, state dict to start from or None, vocab of a CTC model or None, run config
    of the checkpoint, whether it expects normalised audio, description)."""
    if pretrained is None:
        return None, None, None, {}, False, "random weights (no checkpoint)"
    from audio_ssl.inference.transcribe import run_config_of
    from audio_ssl.interop import load_model
    from audio_ssl.models import PRETRAINING_MODELS, Wav2Vec2Model

    loaded = load_model(pretrained)
    run = run_config_of(loaded)
    norm = loaded.expects_normalized
    model = loaded.model
    if from_scratch:
        return loaded.config, None, None, run, norm, f"random weights (the network of {pretrained})"
    if isinstance(model, Wav2Vec2ForCTC):
        return (loaded.config, model.state_dict(), loaded.vocab, run, norm,
                f"the CTC model {pretrained}")
    if isinstance(model, PRETRAINING_MODELS):
        state = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
        return loaded.config, state, None, run, norm, f"the pretrained backbone of {pretrained}"
    if isinstance(model, Wav2Vec2Model):
        state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
        return loaded.config, state, None, run, norm, f"the pretrained backbone of {pretrained}"
    raise ValueError(f"{pretrained} holds a {type(model).__name__}: expected a wav2vec 2.0 model")


def _write_rejected(path: Path, split: str, rejected: list[Rejected]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in rejected:
            row = {"split": split, "path": r.path, "reason": r.reason}
            if r.line is not None:  # two rows may name the same clip
                row["line"] = r.line
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def finetune(pretrained: str | Path | None, train: str | Path, valid: str | Path,
             output_dir: str | Path, *, preset: str = "tiny", config_yaml: str | Path | None = None,
             overrides: dict[str, Any] | None = None, from_scratch: bool = False,
             train_split: str | None = None, valid_split: str | None = None,
             resume: bool = False, progress: bool = True,
             accelerator: str = "auto") -> FinetuneResult:
    """`audio-ssl finetune`: a pretrained checkpoint and labelled data in, a CTC model out.

    Args:
        pretrained: checkpoint for :func:`audio_ssl.interop.load_model` (pretraining model:
            its backbone is taken; CTC model: training continues from it, with its vocabulary);
            None with ``from_scratch`` builds the preset's network.
        train, valid: labelled data (see :func:`audio_ssl.data.labelled.read_labelled`), with
            their JSONL ``split`` filters.
        preset, config_yaml, overrides: fine-tuning settings (see
            :func:`audio_ssl.config.load_finetune`); the network comes from the checkpoint.
        from_scratch: the same network with random weights (the baseline).
    """
    start = time.perf_counter()
    output = Path(output_dir)
    last = find_last_checkpoint(output)
    check_run_folder(output, resume=resume, last=last)
    if pretrained is None and not from_scratch:
        raise ValueError("fine-tuning needs a pretrained checkpoint (or --from-scratch)")

    model_cfg, state, ctc_vocab, run, normalize, init = _initial_weights(pretrained, from_scratch)
    cfg = load_finetune(preset, config_yaml, overrides, model=model_cfg)
    if pretrained is None:  # the preset's network: its pretraining preset's audio rule
        from audio_ssl.config import preset as pretrain_preset

        normalize = pretrain_preset(preset).data.normalize
    if cfg.data.normalize is None:  # audio as the pretrained model heard it
        cfg = merge(cfg, {"data": {"normalize": normalize}})
    if ctc_vocab is not None and isinstance(run.get("text"), dict) and \
            not (overrides or {}).get("text") and config_yaml is None:
        cfg = merge(cfg, {"text": run["text"]})  # continue with the model's own text settings
    d = cfg.data
    read = dict(sample_rate=d.sample_rate, min_samples=d.min_samples, max_samples=d.max_samples)
    train_items, train_rejected = read_labelled(train, split=train_split, **read)
    valid_items, valid_rejected = read_labelled(valid, split=valid_split, **read)
    if ctc_vocab is not None:
        vocab = Vocabulary(tuple(ctc_vocab))
    else:
        vocab = Vocabulary.build(t for t in (normalize_text(it.text, cfg.text) for it in train_items)
                                 if t)
    train_set = prepare(train_items, train_rejected, cfg, vocab)
    valid_set = prepare(valid_items, valid_rejected, cfg, vocab)
    if not train_set.items:
        raise ValueError(f"no usable training utterance in {train}: see {output / 'rejected.jsonl'}")
    if not valid_set.items:
        raise ValueError(f"no usable validation utterance in {valid}: see "
                         f"{output / 'rejected.jsonl'}")
    make_run_folder(output)  # only now: a refused run writes nothing
    if not resume:
        (output / "rejected.jsonl").unlink(missing_ok=True)
        (output / "metrics.jsonl").unlink(missing_ok=True)
    _write_rejected(output / "rejected.jsonl", "train", train_set.rejected)
    _write_rejected(output / "rejected.jsonl", "valid", valid_set.rejected)
    dump(cfg, output / "config.yaml")
    (output / "vocab.json").write_text(json.dumps(list(vocab.tokens), ensure_ascii=False))
    hours = sum(it.samples for it in train_set.items) / d.sample_rate / 3600
    log.info("%d training utterances (%.2f h), %d validation; %d skipped (listed in %s)",
             len(train_set.items), hours, len(valid_set.items),
             len(train_set.rejected) + len(valid_set.rejected), output / "rejected.jsonl")

    torch.manual_seed(cfg.train.seed)  # the same head (and scratch network) for the same seed
    train_data = LabelledBatchDataset(train_set.items, train_set.targets,
                                      sample_rate=d.sample_rate, normalize=d.normalize)
    valid_data = LabelledBatchDataset(valid_set.items, valid_set.targets,
                                      sample_rate=d.sample_rate, normalize=d.normalize)
    task = FinetuneTask(cfg, vocab, valid_data, valid_set.texts, output)
    if state is not None:
        if ctc_vocab is not None:
            task.model.load_state_dict(state)
        else:
            task.model.load_backbone(state)
    # a frozen context network has no gradients for its first updates
    strategy = ("ddp_find_unused_parameters_true"
                if is_distributed(cfg) and cfg.ctc.freeze_updates > 0 else None)
    trainer = build_trainer(cfg, output, accelerator=accelerator, progress=progress,
                            strategy=strategy, enable_checkpointing=False)
    trainer.fit(task, datamodule=FinetuneData(train_data, cfg), ckpt_path=last if resume else None)
    best = output / "checkpoints" / "best.ckpt"
    warnings = []
    if task.skipped_in_training:
        warnings.append(f"{task.skipped_in_training} training utterance(s) could not be aligned "
                        "and were skipped (rejected.jsonl)")
    result = FinetuneResult(
        output_dir=output, best_checkpoint=best if best.is_file() else None,
        last_checkpoint=find_last_checkpoint(output), steps=trainer.global_step,
        train_utterances=len(train_set.items), train_hours=hours,
        valid_utterances=len(valid_set.items),
        rejected=len(train_set.rejected) + len(valid_set.rejected) + task.skipped_in_training,
        vocab=list(vocab.tokens), history=task.history, first_loss=task.first_loss,
        last_loss=task.last_metrics.get("train/loss"), seconds=time.perf_counter() - start,
        from_scratch=from_scratch, init=init, warnings=warnings,
    )
    if trainer.global_rank == 0:
        summary = {k: v for k, v in vars(result).items()
                   if k not in ("output_dir", "best_checkpoint", "last_checkpoint")}
        summary.update(output_dir=str(output), best_checkpoint=str(result.best_checkpoint),
                       last_checkpoint=str(result.last_checkpoint), best=result.best)
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return result


__all__ = ["FinetuneTask", "FinetuneData", "Prepared", "prepare", "FinetuneResult", "finetune"]
