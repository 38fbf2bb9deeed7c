"""CTC fine-tuning with Lightning, and the run folder behind `audio-ssl finetune`.

The task stays thin: masks, forward, CTC loss, log. The feature encoder is frozen; for the first
``ctc.freeze_updates`` updates the loaded backbone takes no gradient and only the head (and any
re-initialised top layers, ``ctc.reinit_layers``) learns (fairseq's ``freeze_finetune_updates``);
the learning rate follows the tri-stage schedule. Lightning's validation loop runs every
``train.val_every`` updates (and at the end): greedy decoding, torchmetrics' WER and CER (summed
over ranks); its ``ModelCheckpoint`` keeps the lowest WER (the lowest CER among equal WERs; CER
first with ``train.best_by: cer``) in ``checkpoints/best.ckpt`` and the latest state in
``last.ckpt``, written atomically. The data side (:func:`prepare`, :class:`FinetuneData`), the
utterances refused before training (rejected.jsonl) and :class:`FinetuneResult` are in
:mod:`audio_ssl.tasks.finetune_data`; what training writes to the run folder (metrics.jsonl,
rejected.jsonl's rows with a step, summary.json) goes through the run log that pretraining
uses too (:class:`~audio_ssl.tasks.run_log.RunLog`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import MeanMetric
from torchmetrics.text import CharErrorRate, WordErrorRate

from audio_ssl.config import FinetuneConfig, dump, finetune_preset, merge, to_dict
from audio_ssl.config_io import overlay
from audio_ssl.data.augment import perturbed_lengths, speed_perturb
from audio_ssl.data.labelled import LabelledBatch
from audio_ssl.data.manifest import Rejected
from audio_ssl.data.text import Vocabulary
from audio_ssl.io import check_run_folder, make_run_folder
from audio_ssl.asr.decode import greedy_decode
from audio_ssl.interop import CONFIG_KEY, VOCAB_KEY
from audio_ssl.losses.ctc import ctc_loss, frames_needed
from audio_ssl.models.ctc import Wav2Vec2ForCTC, head_kernel_of, top_layer_prefixes
from audio_ssl.models.masking import chunk_attention_mask, compute_span_mask, draw_chunk
from audio_ssl.tasks.finetune_data import (
    SELECTION_KEYS,
    FinetuneData,
    FinetuneResult,
    Prepared,
    prepare,
    read_sets,
    rejected_row,
    selection_score,
    start_rejected_log,
)
from audio_ssl.tasks.pretrain import step_seed
from audio_ssl.tasks.run import find_last_checkpoint
from audio_ssl.tasks.run_log import RunLog
from audio_ssl.tasks.schedules import skips_weight_decay, tri_stage
from audio_ssl.tasks.trainer import RunCheckpoint, build_trainer, is_distributed

log = logging.getLogger("audio_ssl")


class FinetuneTask(L.LightningModule):
    """Wav2Vec2ForCTC trained with CTC.

    Args:
        cfg: the resolved fine-tuning config.
        vocab: output tokens (blank first).
        valid_texts: normalised reference of each validation item.
        run_log: where the run's records go (metrics.jsonl, rejected.jsonl, the validations
            and the summary's losses); None: a run log that writes nothing.
    """

    def __init__(self, cfg: FinetuneConfig, vocab: Vocabulary,
                 valid_texts: list[str] | None = None, run_log: RunLog | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.model = Wav2Vec2ForCTC(cfg.model, len(vocab), cfg.ctc.final_dropout,
                                    cfg.ctc.head_kernel)
        if cfg.ctc.freeze_feature_encoder:
            self.model.backbone.feature_encoder.requires_grad_(False)
        # what the first ctc.freeze_updates leave untrained: the loaded, otherwise trainable ones
        self._freezable = [p for name, p in self.model.named_parameters()
                           if p.requires_grad and self.is_pretrained(name)]
        self.valid_texts = valid_texts or []
        self.run_log = run_log or finetune_log(None)
        # corpus rates: errors and reference lengths are summed over batches and ranks
        self.valid_wer, self.valid_cer = WordErrorRate(), CharErrorRate()
        self.valid_loss = MeanMetric()  # CTC loss per utterance
        self.batches_seen = 0
        self.skipped_in_training = 0  # utterances CTC could not align

    def configure_callbacks(self) -> list[Callback]:
        return [self.run_log]

    # -- helpers ---------------------------------------------------------------------------------
    def backbone_frozen(self, step: int) -> bool:
        """True while the loaded backbone is frozen."""
        return step < self.cfg.ctc.freeze_updates

    def freeze_loaded(self, frozen: bool) -> None:
        """While ``frozen`` the loaded backbone parameters take no gradient, so autograd records
        nothing below the re-initialised top layers (``ctc.reinit_layers``), which learn from
        the first update with the head: a random layer that stayed frozen would feed the head
        features it must unlearn when the stage ends."""
        for param in self._freezable:
            param.requires_grad_(not frozen)

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
            dim = self.model.head.in_features  # the context network's width
            full = torch.full_like(frames, dim)  # (B,)
            channel_mask = compute_span_mask(full, dim, chan_cfg, generator)  # (B, D)
        return time_mask, channel_mask

    def chunk_mask(self, num_frames: int, step: int,
                   device: torch.device | str | None = None) -> torch.Tensor | None:
        """Chunk training's attention mask (T, T) for the batch of update ``step`` (None: full
        attention, or ``ctc.chunk_train`` off): the chunk size is a pure function of the step
        and rank, drawn on the host."""
        ctc = self.cfg.ctc
        if not ctc.chunk_train:
            return None
        seed = step_seed(self.cfg.train.seed, step, self.global_rank) + 1  # not dropout's seed
        chunk = draw_chunk(ctc, torch.Generator().manual_seed(seed))
        if chunk is None:
            return None
        return chunk_attention_mask(num_frames, chunk, ctc.chunk_left, device)

    def speeds(self, batch: LabelledBatch, step: int) -> torch.Tensor | None:
        """The speed of each row (B,) of the training batch of update ``step`` under
        ``data.speed_factors`` (None: off), drawn uniformly on the host from a pure function of
        the step and rank; a row whose transcript would not fit the frames of its faster self
        keeps its own speed."""
        factors = self.cfg.data.speed_factors
        if not factors:
            return None
        seed = step_seed(self.cfg.train.seed, step, self.global_rank) + 2  # not chunks' or masks'
        pick = torch.randint(len(factors), (len(batch),),
                             generator=torch.Generator().manual_seed(seed))  # (B,)
        speeds = torch.tensor(factors, dtype=torch.float64)[pick]  # (B,)
        needed = frames_needed(batch.targets.cpu(), batch.target_lengths.cpu())  # (B,)
        frames = self.model.backbone.frame_lengths(
            perturbed_lengths(batch.lengths, speeds, self.cfg.data.sample_rate))  # (B,)
        return torch.where(frames.cpu() >= needed, speeds, 1.0)

    def perturb(self, batch: LabelledBatch, step: int) -> LabelledBatch:
        """The training batch of update ``step`` with each row at its :meth:`speeds` (the batch
        itself when speed perturbation is off)."""
        speeds = self.speeds(batch, step)
        if speeds is None or bool((speeds == 1.0).all()):
            return batch
        waveforms, lengths = speed_perturb(batch.waveforms, batch.lengths, speeds,
                                           self.cfg.data.sample_rate)  # (B, S'), (B,)
        return replace(batch, waveforms=waveforms, lengths=lengths)

    def forward_ctc(self, batch: LabelledBatch, *, train: bool, step: int = 0,
                    generator: torch.Generator | None = None):
        """Logits (B, T, V), frame lengths (B,) and the CTC loss of one batch. ``train``: with
        time and channel masks drawn from ``generator``; the loaded backbone takes no gradient
        while ``step`` is in the frozen stage (:meth:`freeze_loaded`)."""
        model = self.model
        time_mask = channel_mask = chunk_mask = None
        if train:
            frames = model.backbone.frame_lengths(batch.lengths)  # (B,)
            num_frames = int(model.backbone.frame_lengths(
                batch.lengths.new_tensor([batch.waveforms.shape[1]]))[0])
            time_mask, channel_mask = self.masks(frames, num_frames, generator)
            chunk_mask = self.chunk_mask(num_frames, step, frames.device)
            self.freeze_loaded(self.backbone_frozen(step))
        out = model(batch.waveforms, batch.lengths, mask=time_mask, channel_mask=channel_mask,
                    generator=generator, chunk_mask=chunk_mask)
        loss = ctc_loss(out.logits, out.frame_lengths, batch.targets, batch.target_lengths,
                        blank=self.vocab.blank)
        return out.logits, out.frame_lengths, loss

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: LabelledBatch, batch_idx: int) -> torch.Tensor | None:
        self.batches_seen += 1
        self._leave_out(batch.failed, batch.failures, "train")
        if len(batch) == 0:
            return None
        step = self.global_step
        seed = step_seed(self.cfg.train.seed, step, self.global_rank)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator(device=self.device).manual_seed(seed)
        batch = self.perturb(batch, step)
        logits, frames, loss = self.forward_ctc(batch, train=True, step=step, generator=generator)
        rows = (~loss.kept).nonzero().flatten().tolist()
        items = self.trainer.datamodule.train.items
        unaligned = [Rejected(items[batch.indices[row]].path,
                              f"transcript of {int(batch.target_lengths[row])} tokens cannot be "
                              f"aligned to {int(frames[row])} frames") for row in rows]
        self.skipped_in_training += self._leave_out([batch.indices[row] for row in rows],
                                                    unaligned, "train")
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
        self.run_log.train(step, metrics, write=step % self.cfg.train.log_every == 0)
        return loss.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step >= self.trainer.max_steps:
            # Lightning's loop validates on a stop request, not on reaching max_steps by itself
            self.trainer.should_stop = True

    def configure_optimizers(self):
        o = self.cfg.optim
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}  # (lr, decays)
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                lr = o.lr * (o.backbone_lr_scale if self.is_pretrained(name) else 1.0)
                groups.setdefault((lr, not skips_weight_decay(name, param)), []).append(param)
        # the highest lr first, decay before no decay: at backbone_lr_scale 1 the two groups
        # (decay, no decay) that checkpoints of earlier versions resume into
        param_groups = [{"params": ps, "lr": lr, "weight_decay": o.weight_decay if decays else 0.0}
                        for (lr, decays), ps in sorted(groups.items(),
                                                       key=lambda kv: (-kv[0][0], not kv[0][1]))]
        optimizer = torch.optim.AdamW(param_groups, lr=o.lr, betas=o.betas, eps=o.eps,
                                      fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_scale)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def is_pretrained(self, name: str) -> bool:
        """Whether parameter ``name`` is one of the backbone's loaded (not re-initialised) ones:
        those train at ``optim.backbone_lr_scale`` times the learning rate."""
        if not name.startswith("backbone."):
            return False
        fresh = top_layer_prefixes(self.cfg.model.context_layers, self.cfg.ctc.reinit_layers,
                                   "backbone.")
        return not name.startswith(fresh)

    # -- validation ------------------------------------------------------------------------------
    def validation_step(self, batch: LabelledBatch, batch_idx: int) -> None:
        """Greedy hypotheses into the WER / CER metrics, the CTC loss into its mean."""
        self._leave_out(batch.failed, batch.failures, "valid")
        if len(batch):
            logits, frames, loss = self.forward_ctc(batch, train=False)
            hyps = [" ".join(h.split()) for h in greedy_decode(logits.float(), frames, self.vocab)]
            refs = [" ".join(self.valid_texts[i].split()) for i in batch.indices]
            self.valid_wer.update(hyps, refs)
            self.valid_cer.update(hyps, refs)  # spaces count; runs of them are one
            self.valid_loss.update(loss.per_utterance[loss.kept])
        # every batch, so that each rank logs the keys ModelCheckpoint monitors
        for name, metric in self._valid_metrics():
            self.log(name, metric, prog_bar=name == "valid/wer", batch_size=len(batch))

    def _valid_metrics(self):
        return (("valid/wer", self.valid_wer), ("valid/cer", self.valid_cer),
                ("valid/loss", self.valid_loss))

    def on_validation_epoch_end(self) -> None:
        # compute() sums over ranks and caches the value Lightning logs after this hook
        row = {name: float(metric.compute()) for name, metric in self._valid_metrics()}
        step = self.global_step
        self.run_log.valid(step, row)
        log.info("step %d: valid WER %.2f%%, CER %.2f%%, loss %.3f", step, 100 * row["valid/wer"],
                 100 * row["valid/cer"], row["valid/loss"])
        if row["valid/wer"] != row["valid/wer"]:  # NaN: no reference word on any rank
            log.warning("step %d: no validation utterance could be scored (rejected.jsonl)", step)
        # what best.ckpt is chosen by: WER, and CER among equal WERs (with few labels every WER
        # is 100 % for a long time, and the first of equal ones was an untrained checkpoint);
        # or CER first (train.best_by)
        by = self.cfg.train.best_by
        self.log(SELECTION_KEYS[by], torch.tensor(
            selection_score(row["valid/wer"], row["valid/cer"], by), dtype=torch.float64))

    # -- bookkeeping -----------------------------------------------------------------------------
    def _leave_out(self, indices: list[int], reasons: list[Rejected], split: str) -> int:
        """Leave these utterances of ``split`` out of every later batch and list them in
        rejected.jsonl, once each (a loader that fetched ahead may bring one again); returns how
        many were new."""
        self.trainer.datamodule.dataset(split).exclude(indices)
        return sum(self.run_log.report(f"rejected_{split}", index,
                                       rejected_row(split, reason, self.global_step))
                   for index, reason in zip(indices, reasons))

    # -- checkpoints (the run log saves and restores its own records) ----------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = to_dict(self.cfg)
        checkpoint[VOCAB_KEY] = list(self.vocab.tokens)
        checkpoint["batches_seen"] = self.batches_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batches_seen = int(checkpoint.get("batches_seen", 0))


def finetune_log(output: str | Path | None) -> RunLog:
    """The run log of fine-tuning in ``output`` (None: writes nothing): an utterance that fails
    to decode or cannot be aligned goes to rejected.jsonl, once per split and item."""
    return RunLog(output, failures="rejected.jsonl", kinds=("rejected_train", "rejected_valid"))


def _initial_weights(pretrained: str | Path | None, from_scratch: bool):
    """(model config, state dict to start from or None, vocab of a CTC model or None, run config
    of the checkpoint, whether it expects normalised audio, description)."""
    if pretrained is None:
        return None, None, None, {}, False, "random weights (no checkpoint)"
    from audio_ssl.asr.transcribe import run_config_of
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
        resume: continue from ``checkpoints/last.ckpt`` (also in a folder renamed or copied
            since); the summary's time covers every segment. Without it, the logs a run killed
            before its first checkpoint left are removed and start anew
            (:meth:`~audio_ssl.tasks.run_log.RunLog.start`).
    """
    start = time.perf_counter()
    output = Path(output_dir)
    last = find_last_checkpoint(output)
    check_run_folder(output, resume=resume, last=last)
    if pretrained is None and not from_scratch:
        raise ValueError("fine-tuning needs a pretrained checkpoint (or --from-scratch)")

    cfg, state, ctc_vocab, init = _settings(pretrained, from_scratch, preset, config_yaml,
                                            overrides)
    vocab, train_set, valid_set = read_sets(
        train, valid, cfg, ctc_vocab, train_split=train_split, valid_split=valid_split,
        rejected_log=output / "rejected.jsonl")
    run_log, hours = _start_run_folder(output, cfg, vocab, train_set, valid_set, resume)

    torch.manual_seed(cfg.train.seed)  # the same head (and scratch network) for the same seed
    data = FinetuneData(train_set.dataset(cfg), valid_set.dataset(cfg), cfg)
    task = FinetuneTask(cfg, vocab, valid_set.texts, run_log)
    if state is not None:
        if ctc_vocab is not None:
            task.model.load_state_dict(state)
        else:
            task.model.load_backbone(state, keep_random_layers=cfg.ctc.reinit_layers)
    trainer = _trainer(cfg, output, accelerator, progress)
    trainer.fit(task, datamodule=data, ckpt_path=last if resume else None)
    result = _result(trainer, task, data, refused=len(train_set.rejected) + len(valid_set.rejected),
                     hours=hours, start=start, from_scratch=from_scratch, init=init)
    run_log.write_summary(result, ("output_dir", "best_checkpoint", "last_checkpoint"),
                          best=result.best)
    return result


def _settings(pretrained: str | Path | None, from_scratch: bool, preset: str,
              config_yaml: str | Path | None,
              overrides: dict[str, Any] | None) -> tuple[FinetuneConfig, dict | None,
                                                         list[str] | None, str]:
    """The run's config and what it starts from: (config, state dict or None, a CTC model's
    vocabulary or None, a description of the weights). The config is the preset, YAML and
    overrides over the checkpoint's network, with audio normalised as that network heard it
    and, continuing a CTC model, its own text settings unless others are given."""
    model_cfg, state, ctc_vocab, run, normalize, init = _initial_weights(pretrained, from_scratch)
    base = finetune_preset(preset, model_cfg)
    if ctc_vocab is not None:  # continuing a CTC model: its head is the default ...
        kernel = head_kernel_of(state)
        base = merge(base, {"ctc": {"head_kernel": kernel}})
    cfg = overlay(base, config_yaml, overrides)
    if ctc_vocab is not None and cfg.ctc.head_kernel != kernel:  # ... and one named must agree
        raise ValueError(f"ctc.head_kernel is {cfg.ctc.head_kernel}: the CTC model "
                         f"{pretrained} reads {kernel} frame(s) per output; continuing it "
                         "keeps its head")
    _check_settings(cfg, pretrained, continues_ctc=ctc_vocab is not None)
    if pretrained is None:  # the preset's network: its pretraining preset's audio rule
        from audio_ssl.config import preset as pretrain_preset

        normalize = pretrain_preset(preset).data.normalize
    if cfg.data.normalize is None:  # audio as the pretrained model heard it
        cfg = merge(cfg, {"data": {"normalize": normalize}})
    if ctc_vocab is not None and isinstance(run.get("text"), dict) and \
            not (overrides or {}).get("text") and config_yaml is None:
        cfg = merge(cfg, {"text": run["text"]})  # continue with the model's own text settings
    return cfg, state, ctc_vocab, init


def _check_settings(cfg: FinetuneConfig, pretrained: str | Path | None, *,
                    continues_ctc: bool) -> None:
    """Refuse CTC settings that cannot work with this network (``continues_ctc``: training
    goes on from the CTC model ``pretrained``)."""
    if not 0 <= cfg.ctc.reinit_layers <= cfg.model.context_layers:
        raise ValueError(f"ctc.reinit_layers must be between 0 and the network's "
                         f"{cfg.model.context_layers} context layers, got {cfg.ctc.reinit_layers}")
    if continues_ctc and cfg.ctc.reinit_layers:
        raise ValueError(f"ctc.reinit_layers is {cfg.ctc.reinit_layers}: expected 0 when "
                         f"continuing the CTC model {pretrained} (it re-initialises layers of a "
                         f"pretrained backbone)")
    low, high = cfg.ctc.chunk_frames
    if cfg.ctc.chunk_train and not (1 <= low <= high and 0 <= cfg.ctc.chunk_full_prob <= 1):
        raise ValueError(f"ctc.chunk_frames is {cfg.ctc.chunk_frames} and ctc.chunk_full_prob "
                         f"{cfg.ctc.chunk_full_prob}: expected 1 <= low <= high frames and a "
                         "probability in [0, 1]")
    if not cfg.optim.backbone_lr_scale >= 0:
        raise ValueError(f"optim.backbone_lr_scale is {cfg.optim.backbone_lr_scale}: expected "
                         "0 or more (a fraction of optim.lr)")


def _start_run_folder(output: Path, cfg: FinetuneConfig, vocab: Vocabulary, train_set: Prepared,
                      valid_set: Prepared, resume: bool) -> tuple[RunLog, float]:
    """Make the run folder, once the run is accepted, with its run log, rejected.jsonl, config
    and vocabulary; returns the run log and the hours of training audio."""
    make_run_folder(output)  # only now: a refused run writes nothing
    run_log = finetune_log(output)
    run_log.start(resume)  # a run killed before its first checkpoint left logs: they start anew
    start_rejected_log(output / "rejected.jsonl",
                       {"train": train_set.rejected, "valid": valid_set.rejected}, resume)
    dump(cfg, output / "config.yaml")
    (output / "vocab.json").write_text(json.dumps(list(vocab.tokens), ensure_ascii=False))
    hours = sum(it.samples for it in train_set.items) / cfg.data.sample_rate / 3600
    log.info("%d training utterances (%.2f h), %d validation; %d skipped (listed in %s)",
             len(train_set.items), hours, len(valid_set.items),
             len(train_set.rejected) + len(valid_set.rejected), output / "rejected.jsonl")
    return run_log, hours


def _trainer(cfg: FinetuneConfig, output: Path, accelerator: str, progress: bool) -> L.Trainer:
    """The trainer of a fine-tuning run: validation every ``train.val_every`` updates, then
    best.ckpt if its (WER, CER) (or (CER, WER)) is the lowest yet (the first of equal ones
    stays), then last.ckpt (save_last would write it only with a new best)."""
    # a frozen context network has no gradients for its first updates
    strategy = ("ddp_find_unused_parameters_true"
                if is_distributed(cfg.train) and cfg.ctc.freeze_updates > 0 else None)
    best_key = SELECTION_KEYS[cfg.train.best_by]
    checkpoints = [RunCheckpoint(dirpath=output / "checkpoints", filename=name, save_top_k=1,
                                 **monitor)
                   for name, monitor in (("best", {"monitor": best_key, "mode": "min"}),
                                         ("last", {}))]
    return build_trainer(cfg.train, output, grad_clip=cfg.optim.grad_clip,
                         accelerator=accelerator, progress=progress, strategy=strategy,
                         callbacks=checkpoints, val_every=cfg.train.val_every)


def _result(trainer: L.Trainer, task: FinetuneTask, data: FinetuneData, *, refused: int,
            hours: float, start: float, from_scratch: bool, init: str) -> FinetuneResult:
    """What the run did: its checkpoints, the utterances used (``refused``: those left out
    before training; the data module's, while training), the run log's records; ``start``:
    when the run began (its time covers every segment)."""
    run_log = task.run_log
    output = run_log.output
    best = output / "checkpoints" / "best.ckpt"
    warnings = []
    if task.skipped_in_training:
        warnings.append(f"{task.skipped_in_training} training utterance(s) could not be aligned "
                        "and were skipped (rejected.jsonl)")
    train, valid = data.train, data.valid
    return FinetuneResult(
        output_dir=output, best_checkpoint=best if best.is_file() else None,
        last_checkpoint=find_last_checkpoint(output), steps=trainer.global_step,
        train_utterances=len(train.items) - len(train.excluded), train_hours=hours,
        valid_utterances=len(valid.items) - len(valid.excluded),
        rejected=refused + len(train.excluded) + len(valid.excluded),
        vocab=list(task.vocab.tokens), history=run_log.history,
        first_loss=(run_log.first or {}).get("train/loss"),
        last_loss=run_log.last.get("train/loss"),
        seconds=run_log.clock.before + time.perf_counter() - start,  # every segment of the run
        from_scratch=from_scratch, init=init, warnings=warnings, best_by=task.cfg.train.best_by,
    )


__all__ = ["FinetuneTask", "FinetuneData", "Prepared", "prepare", "FinetuneResult", "finetune"]
