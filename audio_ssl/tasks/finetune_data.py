"""Fine-tuning's data and records: labelled sets made ready for CTC, the Lightning data module
that loads them, the run folder's logs of what was left out, and the result a run returns.

Every utterance that cannot be used is one row of ``rejected.jsonl``: those refused before
training (:func:`prepare`) without a step, those that fail later (a file that does not decode, a
row CTC cannot align) with the step, once each: the datasets then leave them out of every later
batch, and the data module keeps their lists in the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from audio_ssl.config import FinetuneConfig
from audio_ssl.data.labelled import (
    LabelledBatchDataset,
    LabelledItem,
    make_labelled_loader,
    read_labelled,
    reference_text,
)
from audio_ssl.data.labelled_shards import ShardLabelledDataset, read_labelled_shards
from audio_ssl.data.manifest import Rejected
from audio_ssl.data.shards import ShardIndex, is_shard_folder
from audio_ssl.data.text import TokenError, Vocabulary, ctc_frames_needed, normalize_text
from audio_ssl.io import atomic_write_text
from audio_ssl.models.feature_encoder import frame_lengths as conv_frame_lengths


@dataclass
class Prepared:
    """A labelled set ready for CTC: items, their normalised texts and token ids."""

    items: list[LabelledItem]
    texts: list[str]
    targets: list[list[int]]
    rejected: list[Rejected]
    shards: ShardIndex | None = None  # the shard folder the items are cuts of, if they are

    def dataset(self, cfg: FinetuneConfig) -> LabelledBatchDataset | ShardLabelledDataset:
        d = cfg.data
        if self.shards is not None:
            return ShardLabelledDataset(self.shards, self.items, self.targets,
                                        sample_rate=d.sample_rate, normalize=d.normalize)
        return LabelledBatchDataset(self.items, self.targets, sample_rate=d.sample_rate,
                                    normalize=d.normalize)


def prepare(items: list[LabelledItem], rejected: list[Rejected], cfg: FinetuneConfig,
            vocab: Vocabulary, shards: ShardIndex | None = None) -> Prepared:
    """Normalise, encode and length-check each utterance; the bad ones join ``rejected``."""
    out = Prepared([], [], [], list(rejected), shards)
    convs = cfg.model.encoder.conv_layers
    frames = conv_frame_lengths(torch.tensor([it.samples for it in items] or [0]), convs).tolist()
    for it, n in zip(items, frames):
        text = reference_text(it, cfg.text)
        if isinstance(text, Rejected):
            out.rejected.append(text)
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


def read_sets(train: str | Path, valid: str | Path, cfg: FinetuneConfig,
              ctc_vocab: list[str] | None, *, train_split: str | None, valid_split: str | None,
              rejected_log: Path) -> tuple[Vocabulary, Prepared, Prepared]:
    """The vocabulary (``ctc_vocab``, a CTC model's own, else the characters of the training
    transcripts) and both labelled sets prepared for CTC; a set with no usable utterance is an
    error that points to ``rejected_log``."""
    d = cfg.data
    read = dict(sample_rate=d.sample_rate, min_samples=d.min_samples, max_samples=d.max_samples)

    def read_set(source, split, option):
        if is_shard_folder(str(source)):
            if split is not None:
                raise ValueError(f"{option}-split {split!r}: a shard folder ({source}) has no "
                                 "splits; shard each split into its own folder")
            return read_labelled_shards(str(source), **read)
        return (*read_labelled(source, split=split, **read), None)

    train_items, train_rejected, train_shards = read_set(train, train_split, "--train")
    valid_items, valid_rejected, valid_shards = read_set(valid, valid_split, "--valid")
    if ctc_vocab is not None:
        vocab = Vocabulary(tuple(ctc_vocab))
    else:
        vocab = Vocabulary.build(t for t in (normalize_text(it.text, cfg.text) for it in train_items)
                                 if t)
    train_set = prepare(train_items, train_rejected, cfg, vocab, train_shards)
    valid_set = prepare(valid_items, valid_rejected, cfg, vocab, valid_shards)
    if not train_set.items:
        raise ValueError(f"no usable training utterance in {train}: see {rejected_log}")
    if not valid_set.items:
        raise ValueError(f"no usable validation utterance in {valid}: see {rejected_log}")
    return vocab, train_set, valid_set


class FinetuneData(L.LightningDataModule):
    """The training stream and the validation pass, each rank's share; the items left out
    (:meth:`LabelledBatchDataset.exclude`) travel in the checkpoint."""

    def __init__(self, train: LabelledBatchDataset | ShardLabelledDataset,
                 valid: LabelledBatchDataset | ShardLabelledDataset, cfg: FinetuneConfig):
        super().__init__()
        self.train, self.valid, self.cfg = train, valid, cfg

    def dataset(self, split: str) -> LabelledBatchDataset | ShardLabelledDataset:
        return self.train if split == "train" else self.valid

    def train_dataloader(self):
        trainer = self.trainer
        if isinstance(self.train, ShardLabelledDataset):
            d = self.cfg.data
            return self.train.train_loader(
                max_batch_samples=d.max_batch_samples, num_buckets=d.num_buckets,
                seed=self.cfg.train.seed, rank=trainer.global_rank,
                world_size=trainer.world_size, position=trainer.lightning_module.batches_seen,
                num_workers=d.num_workers)
        return make_labelled_loader(
            self.train, max_batch_samples=self.cfg.data.max_batch_samples, train=True,
            seed=self.cfg.train.seed, num_buckets=self.cfg.data.num_buckets,
            rank=trainer.global_rank, world_size=trainer.world_size,
            position=trainer.lightning_module.batches_seen, num_workers=self.cfg.data.num_workers,
        )

    def val_dataloader(self):
        trainer = self.trainer
        if isinstance(self.valid, ShardLabelledDataset):
            return self.valid.valid_loader(max_batch_samples=self.cfg.data.max_batch_samples,
                                           rank=trainer.global_rank,
                                           world_size=trainer.world_size)
        return make_labelled_loader(self.valid, max_batch_samples=self.cfg.data.max_batch_samples,
                                    train=False, rank=trainer.global_rank,
                                    world_size=trainer.world_size)

    def state_dict(self) -> dict[str, Any]:
        return {"excluded": {"train": sorted(self.train.excluded),
                             "valid": sorted(self.valid.excluded)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for split, indices in state.get("excluded", {}).items():
            self.dataset(split).exclude(indices)


# ---------------------------------------------------------------------------------------------
# The run's records: its result, and its logs of what was left out


SELECTION_KEYS = {"wer": "valid/wer_then_cer", "cer": "valid/cer_then_wer"}  # best.ckpt's
TIE_BREAK = 1e-6  # below a WER step for validation sets of up to ~500,000 words


def selection_score(wer: float, cer: float, by: str = "wer") -> float:
    """best.ckpt's criterion (``train.best_by``), lower is better: WER, and among equal WERs
    the CER; or the other way round for ``by="cer"`` (float64; a rate of up to 2 moves the
    score by less than one word in 500,000 does)."""
    if by == "cer":
        return cer + TIE_BREAK * wer
    return wer + TIE_BREAK * cer


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

    best_by: str = "wer"  # train.best_by

    @property
    def best(self) -> dict[str, float] | None:
        """The validation of best.ckpt: the first of the lowest WERs, CER deciding among them
        (the other way round when ``best_by`` is ``"cer"``)."""
        return min(self.history, default=None, key=lambda r: selection_score(
            r["valid/wer"], r["valid/cer"], self.best_by))

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
        :func:`audio_ssl.asr.transcribe.transcribe`)."""
        from audio_ssl.asr.transcribe import transcribe

        return transcribe(self.best_checkpoint or self.last_checkpoint, inputs, **options)


def rejected_row(split: str, rejected: Rejected, step: int | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"split": split}
    if step is not None:
        row["step"] = step
    row.update(path=rejected.path, reason=rejected.reason)
    if rejected.line is not None:  # two rows may name the same clip
        row["line"] = rejected.line
    return row


def start_rejected_log(path: Path, before_training: dict[str, list[Rejected]],
                       resume: bool) -> None:
    """Write ``rejected.jsonl``: the utterances refused before training, by split; a resumed
    run keeps the rows its training wrote (those with a step) after them."""
    rows = [json.dumps(rejected_row(split, r), ensure_ascii=False)
            for split, rejected in before_training.items() for r in rejected]
    if resume and path.is_file():
        rows += [line for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and "step" in json.loads(line)]
    atomic_write_text(path, "".join(row + "\n" for row in rows), fsync=False)


__all__ = ["Prepared", "prepare", "read_sets", "FinetuneData", "FinetuneResult", "rejected_row",
           "start_rejected_log"]
