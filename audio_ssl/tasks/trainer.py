"""The Lightning trainer that pretraining and fine-tuning share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from audio_ssl import console
from audio_ssl.tasks.pretrain import AtomicCheckpointIO


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on a GPU, fp32 on the CPU; ``32``: Lightning's ``32-true``."""
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "auto":
        return "bf16-mixed" if use_gpu else "32-true"
    return "32-true" if precision == "32" else precision


def is_distributed(cfg: Any) -> bool:
    return cfg.train.devices > 1 or cfg.train.num_nodes > 1


def build_trainer(cfg: Any, output: Path, *, accelerator: str, progress: bool,
                  strategy: str | None = None, callbacks: list[Callback] = (),
                  **options: Any) -> L.Trainer:
    """A trainer for ``cfg`` (a pretraining or fine-tuning config: its ``train`` section and
    ``optim.grad_clip``) writing CSV and TensorBoard logs under ``output``; checkpoints are
    written atomically. The loaders shard and position themselves (no distributed sampler), and
    there is no Lightning validation loop. ``strategy`` defaults to DDP when several devices or
    nodes are asked for; ``options`` go to ``L.Trainer``."""
    t = cfg.train
    bar = [TQDMProgressBar(refresh_rate=max(1, t.log_every // 2))] if progress else []
    return L.Trainer(
        accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategy or ("ddp" if is_distributed(cfg) else "auto"),
        precision=resolve_precision(t.precision, accelerator), max_steps=t.max_steps,
        gradient_clip_val=cfg.optim.grad_clip or None,
        accumulate_grad_batches=t.accumulate_grad_batches, use_distributed_sampler=False,
        limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=t.log_every,
        enable_progress_bar=progress, enable_model_summary=console.verbose(), default_root_dir=output,
        logger=[CSVLogger(output, name="logs", version="csv"),
                TensorBoardLogger(output, name="logs", version="tensorboard")],
        callbacks=[*callbacks, *bar], plugins=[AtomicCheckpointIO()], **options,
    )


__all__ = ["resolve_precision", "is_distributed", "build_trainer"]
