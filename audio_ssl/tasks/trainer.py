"""The Lightning trainer that pretraining and fine-tuning share."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.precision import MixedPrecision, Precision as PrecisionPlugin
from lightning.pytorch.utilities import GradClipAlgorithmType

from audio_ssl import console, precision
from audio_ssl.config import TrainerConfig
from audio_ssl.io import atomic_write_text
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


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for a run folder that may be renamed or copied between a
    kill and ``--resume``, and resumed from an earlier checkpoint than its latest.

    - The state it restores (the latest and best paths, the best scores) names the files of the
      folder it was saved in; Lightning drops all but ``best_model_path`` when that folder is
      not this one, so a renamed run wrote ``last-v1.ckpt`` beside a ``last.ckpt`` that kept
      the old step, and a fine-tuning run forgot its best score. Here the paths are moved into
      this folder (the files moved with it) and the state is restored whole.
    - A file of the same name is overwritten (no version counter): resumed before an existing
      ``step=N.ckpt``, the run writes ``step=N.ckpt`` again rather than ``step=N-v1.ckpt``.
      Checkpoints are written through :class:`~audio_ssl.tasks.pretrain.AtomicCheckpointIO`,
      so an overwrite leaves the old file or the new one, never a partial one.
    """

    def __init__(self, **options: Any):
        super().__init__(enable_version_counter=False, **options)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved is not None and self.dirpath is not None and saved != self.dirpath:
            state_dict = moved_state(state_dict, Path(saved), Path(self.dirpath))
        super().load_state_dict(state_dict)


def moved_state(state: dict[str, Any], old: Path, new: Path) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state saved in folder ``old`` with its paths in folder ``new``;
    a path outside ``old`` is left as it is."""

    def move(path: str | None) -> str | None:
        if not path or not Path(path).is_relative_to(old):
            return path
        return str(new / Path(path).relative_to(old))

    state = dict(state, dirpath=str(new))
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            state[key] = move(state[key])
    if "best_k_models" in state:
        state["best_k_models"] = {move(path): score
                                  for path, score in state["best_k_models"].items()}
    return state


class HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, except that ``metrics.csv`` is never absent and never half
    written. Lightning deletes the file when a run starts in a folder that has one (a resumed
    run lost its history until its first new row, for good if killed before it) and rewrites it
    in place when a new metric appears. Here the file stays as it is until the first save,
    which keeps its rows of the steps before the first step logged now (those past the resumed
    checkpoint are logged again; a fresh run starts at step 0 and keeps none); that rewrite and
    one for a new metric go through a temporary file and ``os.replace``. Rows under an
    unchanged header are appended in one write."""

    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        self._trim = Path(self.metrics_file_path).is_file()  # rows of an earlier run in it

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's removes metrics.csv

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        new_keys = self._record_new_keys()
        if self._trim or (new_keys and path.is_file()):
            rows = read_csv_rows(path)
            if self._trim:
                first = min(int(row["step"]) for row in self.metrics)
                rows = [row for row in rows if int(float(row.get("step") or 0)) < first]
            self.metrics_keys[:] = sorted(set(self.metrics_keys).union(*rows))
            self._write(path, rows + self.metrics, header=True, atomic=True)
            self._trim = False
        else:
            self._write(path, self.metrics, header=not path.is_file(), atomic=not path.is_file())
        self.metrics = []

    def _write(self, path: Path, rows: list[dict], *, header: bool, atomic: bool) -> None:
        text = io.StringIO()
        out = csv.DictWriter(text, fieldnames=self.metrics_keys)
        if header:
            out.writeheader()
        out.writerows(rows)
        if atomic:
            atomic_write_text(path, text.getvalue(), fsync=False)
        else:
            with open(path, "a", newline="", encoding="utf-8") as f:
                f.write(text.getvalue())


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of the CSV log ``path``: a last line a kill cut short (fewer fields
    than the header) is left out."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if None not in row.values() and None not in row]


class HistoryCSVLogger(CSVLogger):
    """Lightning's CSV logger writing through :class:`HistoryWriter`: a resumed run keeps its
    history, and the file is there at every moment."""

    @property
    @rank_zero_experiment
    def experiment(self) -> HistoryWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = HistoryWriter(self.log_dir)
        return self._experiment


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


__all__ = ["BF16Mixed", "RunCheckpoint", "HistoryWriter", "HistoryCSVLogger", "is_distributed",
           "build_trainer"]
