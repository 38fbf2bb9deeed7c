"""Self-supervised pretraining with Lightning: the module stays thin (forward, loss, log)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from audio_ssl.config import PretrainConfig, to_dict
from audio_ssl.interop import CONFIG_KEY
from audio_ssl.io import atomic_path
from audio_ssl.losses.reconstruction import chance_loss
from audio_ssl.models.data2vec import Data2VecForPretraining
from audio_ssl.models.pretraining import PRETRAINING_MODELS, Wav2Vec2ForPretraining, pretraining_model
from audio_ssl.tasks.monitor import CollapseWatch, SpreadWatch
from audio_ssl.tasks.run_log import RunLog
from audio_ssl.tasks.schedules import skips_weight_decay, warmup_linear


def step_seed(seed: int, step: int, rank: int) -> int:
    """A seed that is a pure function of (run seed, update, rank): exact resume needs no RNG
    state in the checkpoint."""
    return (seed * 1_000_003 + step * 9_176 + rank * 7_919) % (2**63 - 1)


def _part(name: str) -> str:
    """Which part of the pretraining model a parameter belongs to, for gradient norms."""
    for prefix, part in (("backbone.feature_encoder.", "encoder"), ("backbone.context.", "context"),
                         ("quantizer.", "quantizer"), ("project_q.", "quantizer")):
        if name.startswith(prefix):
            return part
    return "heads"  # layer norm, projection, mask embedding, final projection


class Throughput:
    """Audio seconds trained on per second between two records. The samples of every update
    are added on the device: an update that writes no record reads nothing back to the host."""

    def __init__(self):
        self._samples: torch.Tensor | None = None  # audio samples trained on since the record
        self._last_time: float | None = None  # when the last record was taken

    def add(self, lengths: torch.Tensor) -> None:
        samples = lengths.sum()
        self._samples = samples if self._samples is None else self._samples + samples

    def take(self, now: float, sample_rate: int, world_size: int) -> float | None:
        """Audio seconds per second since the last record (of every rank's batches), None at
        the first; ``now`` is this record's time."""
        seconds = float(self._samples) / sample_rate * world_size
        self._samples = None
        rate = None
        if self._last_time is not None:
            rate = seconds / max(now - self._last_time, 1e-9)
        self._last_time = now
        return rate


class CodeChurn:
    """Share of target codes (noiseless argmax) on a fixed probe batch (two items of the first
    batch it sees) that changed since the last logged step."""

    def __init__(self):
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None  # (waveforms, lengths)
        self._codes: torch.Tensor | None = None  # (B', T, G) at the last logged step

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, batch: Any) -> float | None:
        """None for a model with fixed targets (nothing churns) and at the first call."""
        if not isinstance(model, Wav2Vec2ForPretraining):
            return None
        if self._probe is None:
            self._probe = (batch.waveforms[:2].detach().clone(), batch.lengths[:2].clone())
        codes = model.target_codes(*self._probe)  # (B', T, G)
        previous, self._codes = self._codes, codes
        if previous is None or codes.numel() == 0:
            return None
        return float((codes != previous).float().mean())


class PretrainTask(L.LightningModule):
    """Any pretraining objective (``cfg.model.objective``): forward, loss, log.

    Args:
        cfg: the resolved pretraining config.
        run_log: where the run's records go (metrics.jsonl, decode_failures.jsonl, the
            summary's first and last metrics); None: a run log that writes nothing.
    """

    def __init__(self, cfg: PretrainConfig, run_log: RunLog | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = pretraining_model(cfg.model)
        self.run_log = run_log or pretrain_log(None)
        self.batches_seen = 0  # data position: batches consumed by training_step on this rank
        self.throughput = Throughput()
        self.churn = CodeChurn()
        q = cfg.model.quantizer
        groups = q.groups if cfg.model.quantize_targets else 0  # 0: no codebook to collapse
        negatives = cfg.model.loss.num_negatives
        if cfg.model.objective == "cpc":  # its plateau is log(N + 1) of its own distractors
            negatives, groups = cfg.model.cpc.negatives, 0
        self.watch = CollapseWatch(negatives, groups, q.codes,
                                   patience=cfg.train.collapse_patience)
        self.spread_watch = SpreadWatch(patience=cfg.train.collapse_patience)  # data2vec

    def configure_callbacks(self) -> list[Callback]:
        return [self.run_log]

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        self.batches_seen += 1
        for failure in batch.failures:
            self._record_failure(failure)
        for failure in getattr(batch, "shard_failures", ()):
            self._record_failure(failure, shard=True)
        if batch.waveforms.shape[0] == 0:
            return None
        step = self.global_step
        seed = step_seed(self.cfg.train.seed, step, self.global_rank)
        torch.manual_seed(seed)  # dropout and Gumbel noise
        generator = torch.Generator(device=self.device).manual_seed(seed)
        ema_decay = None
        if isinstance(self.model, Data2VecForPretraining):  # the teacher catches up
            ema_decay = self.model.update_teacher(step, self._schedule_steps)
        extra = {"labels": batch.labels} if self.cfg.model.objective == "hubert" else {}
        # crops cut to the batch's shortest item are never padded; short clips' batches
        # (data.pad_min_samples) are: the loader says which on the host, so the model need not
        # read the lengths back from the device to find out
        out = self.model(batch.waveforms, batch.lengths, step=step, generator=generator,
                         padded=not self.cfg.data.crop_to_shortest or batch.padded, **extra)
        self.throughput.add(batch.lengths)  # audio of this rank's batches since the last record
        if step % self.cfg.train.log_every:
            return out.loss
        metrics = self._metrics(step, out, batch, ema_decay)
        shown = {"train/loss", "train/accuracy", "train/code_perplexity"}
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name in shown, batch_size=batch.waveforms.shape[0])
        metrics = {k: float(v) for k, v in metrics.items()}
        self._watch(step, metrics)
        self.run_log.train(step, metrics)  # written with the gradient norms, after the update
        return out.loss

    def _metrics(self, step: int, out: Any, batch: Any, ema_decay: float | None) -> dict[str, Any]:
        """The record of a logged step: the objective's metrics and the schedules' values."""
        now = time.perf_counter()
        metrics = {
            **out.metrics(),
            "train/gumbel_temperature": self.cfg.model.quantizer.temperature(step),
            "train/lr": self.cfg.optim.lr * warmup_linear(step, self._schedule_steps,
                                                          self.cfg.optim.warmup_fraction),
        }
        if not self.cfg.model.quantize_targets or self.cfg.model.objective != "wav2vec2":
            del metrics["train/gumbel_temperature"]  # no Gumbel quantizer
        if ema_decay is not None:
            metrics["train/ema_decay"] = ema_decay
        churn = self.churn.measure(self.model, batch)
        if churn is not None:
            metrics["train/code_churn"] = churn
        rate = self.throughput.take(now, self.cfg.data.sample_rate, self.trainer.world_size)
        if rate is not None:  # the audio of every update since the last record
            metrics["train/audio_seconds_per_second"] = rate
        return metrics

    def _watch(self, step: int, metrics: dict[str, float]) -> None:
        """Feed the plateau and collapse watches; their warnings go to the run log."""
        if "train/contrastive" in metrics:  # the plateau and collapse of wav2vec 2.0
            perplexity = metrics.get("train/code_perplexity", float("nan"))  # nan: no codebook
            for message in self.watch.update(step, metrics["train/contrastive"], perplexity):
                self.run_log.warn(message)
        if "train/target_std" in metrics:  # data2vec: the teacher's collapse
            for message in self.spread_watch.update(step, metrics["train/target_std"]):
                self.run_log.warn(message)

    def _record_failure(self, failure: Any, shard: bool = False) -> None:
        row = {"step": self.global_step, "path": failure.path, "reason": failure.reason,
               **({"kind": "shard"} if shard else {})}
        self.run_log.report("failed_shards" if shard else "failed_files", failure.path, row)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.run_log.pending:  # gradient norms go with a step's row only
            return
        parts: dict[str, list[torch.Tensor]] = {}
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                parts.setdefault(_part(name), []).append(p.grad.detach().float().norm())
        norms = {part: torch.stack(g).norm() for part, g in parts.items()}
        if norms:
            norms["all"] = torch.stack(list(norms.values())).norm()
        grads = {("train/grad_norm" if part == "all" else f"train/grad_norm_{part}"): float(v)
                 for part, v in norms.items()}
        for name, value in grads.items():
            self.log(name, value)
        self.run_log.add(grads)

    def configure_optimizers(self):
        o = self.cfg.optim
        groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:  # data2vec's EMA teacher
                continue
            scale = 1.0
            if name.startswith("backbone.feature_encoder."):
                scale = o.encoder_lr_scale
            elif name.startswith("quantizer."):
                scale = o.quantizer_lr_scale
            groups.setdefault((skips_weight_decay(name, param), scale), []).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": params, "weight_decay": 0.0 if no_decay else o.weight_decay,
              "lr": o.lr * scale}
             for (no_decay, scale), params in sorted(groups.items())],
            lr=o.lr, betas=o.betas, eps=o.eps, fused=True,  # one kernel per step, CPU and GPU
        )
        total = self._schedule_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_linear(s, total, o.warmup_fraction)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @property
    def uniform_loss(self) -> float:
        """The loss of a uniform guess: log(K + 1) candidates, or log(V) codes or clusters."""
        if isinstance(self.model, Wav2Vec2ForPretraining) or self.cfg.model.objective == "cpc":
            return self.watch.uniform_loss
        if self.cfg.model.objective == "hubert":
            return math.log(self.cfg.model.hubert.clusters)
        if self.cfg.model.objective == "reconstruct":  # predicting 0, each channel's mean
            return chance_loss(self.cfg.model.reconstruct.loss)
        if self.cfg.model.objective == "data2vec":
            return float("nan")  # a regression: no uniform guess
        return math.log(self.cfg.model.best_rq.codes)

    @property
    def _schedule_steps(self) -> int:
        return self.cfg.optim.schedule_steps or self.cfg.train.max_steps

    # -- checkpoints (the run log saves and restores its own records) --------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = to_dict(self.cfg)
        checkpoint["batches_seen"] = self.batches_seen
        checkpoint["collapse_watch"] = self.watch.state_dict()
        checkpoint["spread_watch"] = self.spread_watch.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batches_seen = int(checkpoint.get("batches_seen", 0))
        state = checkpoint.get("collapse_watch")
        if state:
            self.watch.load_state_dict(state)
        if checkpoint.get("spread_watch"):
            self.spread_watch.load_state_dict(checkpoint["spread_watch"])


def pretrain_log(output: str | Path | None) -> RunLog:
    """The run log of pretraining in ``output`` (None: writes nothing): files that fail to
    decode, and shards missing or unreadable, go to decode_failures.jsonl, each once."""
    return RunLog(output, failures="decode_failures.jsonl",
                  kinds=("failed_files", "failed_shards"))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary name in the same folder, fsyncs it, then renames
    (:func:`~audio_ssl.io.atomic_path`): a kill at any moment leaves either the old checkpoint
    or the new one, never a truncated file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path, sync_dir=False) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)

