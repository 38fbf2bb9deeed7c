"""The Lightning trainer that pretraining and fine-tuning share."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.precision import MixedPrecision, Precision as PrecisionPlugin
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_only

from audio_ssl import console, precision
from audio_ssl.config import TrainerConfig
from audio_ssl.tasks.pretrain import AtomicCheckpointIO

log = logging.getLogger("audio_ssl")


class BF16Mixed(MixedPrecision):
    """Lightning's bf16-mixed, which refuses to clip gradients for a fused optimizer because it
    would unscale them itself; bf16 has no gradient scaler, so there is nothing to unscale and
    clipping is the plain one (fp32 gradients of fp32 parameters)."""

    def __init__(self, device: str):
        super().__init__("bf16-mixed", device)

    def clip_gradients(self, optimizer, clip_val=0.0,
                       gradient_clip_algorithm=GradClipAlgorithmType.NORM) -> None:
        PrecisionPlugin.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)


class HistoryCSVLogger(CSVLogger):
    """Lightning's CSV logger, except that a resumed run keeps its history: Lightning deletes
    ``metrics.csv`` when it starts in a folder that has one; this logger keeps that file's rows
    of the steps before the first one it logs itself (those past the resumed checkpoint are
    logged again)."""

    @property
    def experiment(self):
        if self._experiment is not None or rank_zero_only.rank != 0:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        history = []
        if path.is_file():
            with open(path, newline="") as f:
                history = list(csv.DictReader(f))
        writer = super().experiment  # deletes metrics.csv
        if history:
            save = writer.save

            def save_after_history() -> None:
                if history and writer.metrics:
                    first = min(int(row.get("step", 0)) for row in writer.metrics)
                    kept = [row for row in history if int(float(row.get("step") or 0)) < first]
                    if kept:
                        keys = sorted(set().union(*kept))
                        with open(path, "w", newline="") as f:
                            out = csv.DictWriter(f, fieldnames=keys)
                            out.writeheader()
                            out.writerows(kept)
                        writer.metrics_keys[:] = keys
                    history.clear()
                save()

            writer.save = save_after_history
        return writer


def is_distributed(train: TrainerConfig) -> bool:
    return train.devices > 1 or train.num_nodes > 1


def build_trainer(train: TrainerConfig, output: Path, *, grad_clip: float, accelerator: str,
                  progress: bool, strategy: str | None = None, callbacks: list[Callback] = (),
                  val_every: int | None = None, **options: Any) -> L.Trainer:
    """A trainer for ``train`` (the ``train`` section of a pretraining or fine-tuning config)
    writing CSV and TensorBoard logs under ``output``; checkpoints are written atomically;
    gradients clipped to a norm of ``grad_clip`` (0: not clipped). The loaders shard and
    position themselves (no distributed sampler). ``val_every``: Lightning's validation loop runs every this many updates of the (endless)
    training stream; None: no validation loop. ``strategy`` defaults to DDP when several devices
    or nodes are asked for; ``options`` go to ``L.Trainer``."""
    t = train
    log_every = options.pop("log_every_n_steps", t.log_every)
    device_type = precision.device_type_of(accelerator)
    chosen = precision.resolve(t.precision, device_type)
    log.info(chosen.describe())
    plugins: list[Any] = [AtomicCheckpointIO()]
    if chosen.bf16:
        plugins.append(BF16Mixed(device_type))
    bar = [TQDMProgressBar(refresh_rate=max(1, t.log_every // 2))] if progress else []
    if val_every is None:
        validation = dict(limit_val_batches=0)
    else:  # Lightning counts training batches (across epochs): accumulated ones per update
        validation = dict(val_check_interval=val_every * t.accumulate_grad_batches,
                          check_val_every_n_epoch=None)
    return L.Trainer(
        accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategy or ("ddp" if is_distributed(t) else "auto"),
        max_steps=t.max_steps,
        gradient_clip_val=grad_clip or None,
        accumulate_grad_batches=t.accumulate_grad_batches, use_distributed_sampler=False,
        num_sanity_val_steps=0, **validation,
        log_every_n_steps=log_every,
        enable_progress_bar=progress, enable_model_summary=console.verbose(), default_root_dir=output,
        logger=[HistoryCSVLogger(output, name="logs", version="csv",
                                 flush_logs_every_n_steps=1),  # a kill loses no logged row
                TensorBoardLogger(output, name="logs", version="tensorboard")],
        callbacks=[*callbacks, *bar], plugins=plugins, **options,
    )


__all__ = ["BF16Mixed", "HistoryCSVLogger", "is_distributed", "build_trainer"]
