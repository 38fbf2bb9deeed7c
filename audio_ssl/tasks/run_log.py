"""The run folder's logs, one callback for pretraining and fine-tuning.

A task hands :class:`RunLog` what happened; the run log writes it, on rank zero only:

- ``metrics.jsonl``: a row ``{"step": ..., name: value, ...}`` for every ``train.log_every``
  updates, written once the update is done (:meth:`RunLog.train`, with the gradient norms a
  task adds before the optimizer step: :meth:`RunLog.add`), and a row per validation
  (:meth:`RunLog.valid`);
- the failures log (pretraining: ``decode_failures.jsonl``, fine-tuning: ``rejected.jsonl``):
  a row with the step for each file or utterance that failed, once each (:meth:`RunLog.report`);
- ``summary.json`` at the end (:meth:`RunLog.write_summary`).

It keeps what the summary needs (the first and last training records, the validations, the
warnings) and the training time over every segment that ``--resume`` joined, saves them in each
checkpoint and reads them back. A resumed run first drops the rows its checkpoint had not seen
(:func:`keep_rows_of_checkpoint`): a run killed after its last checkpoint logged updates the
resumed one logs again, so no step is missing or written twice. A run started without
``--resume`` removes the logs a run killed before its first checkpoint left
(:meth:`RunLog.start`). The CSV and TensorBoard logs under ``logs/`` are Lightning's loggers
(:func:`audio_ssl.tasks.trainer.build_trainer`), ``metrics.csv`` with the same resume rule
(:class:`audio_ssl.tasks.trainer.HistoryWriter`).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from audio_ssl.io import atomic_write_text

log = logging.getLogger("audio_ssl")

METRICS = "metrics.jsonl"


class RunClock:
    """Training time of a run over the segments that ``--resume`` joined: the seconds stored in
    the checkpoint a segment started from (:attr:`before`, 0 for a run that was not resumed)
    plus this segment's since :meth:`start`."""

    def __init__(self):
        self.before = 0.0
        self._start = time.perf_counter()

    def start(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self._start


class RunLog(Callback):
    """The logs of one run folder (see the module's docstring); with ``output`` None it keeps
    its records and writes nothing. A task holds its run log and returns it from
    ``configure_callbacks``, so every trainer that fits the task calls its hooks.

    Args:
        output: the run folder, or None.
        failures: the name of the failures log in it.
        kinds: what :meth:`report` is told about, each once: a failure's ``kind``, also the
            checkpoint key that keeps the ones reported (pretraining's ``failed_files`` are
            also the files its loader does not try again).
    """

    def __init__(self, output: str | Path | None = None, *, failures: str,
                 kinds: tuple[str, ...]):
        self.output = Path(output) if output else None
        self.failures = failures
        self.clock = RunClock()
        self.first: dict[str, float] | None = None  # the first training record
        self.last: dict[str, float] = {}  # the latest value of each training metric
        self.history: list[dict[str, float]] = []  # validation rows
        self.warnings: list[str] = []
        self.reported: dict[str, set] = {kind: set() for kind in kinds}
        self._pending: tuple[int, dict[str, float]] | None = None  # a row waiting for its update

    @property
    def logs(self) -> tuple[str, str]:
        """The JSONL logs whose rows carry a step."""
        return METRICS, self.failures

    # -- a run's start and end -------------------------------------------------------------------
    def start(self, resume: bool) -> None:
        """Without ``resume``, remove what a run killed before its first checkpoint left: these
        logs, the CSV log and TensorBoard's events (:func:`start_fresh_logs`). A resumed run
        keeps them; its checkpoint decides which rows stay (:meth:`on_load_checkpoint`)."""
        if self.output is not None and not resume:
            start_fresh_logs(self.output, self.logs)

    @rank_zero_only
    def write_summary(self, result: Any, paths: tuple[str, ...], **extra: Any) -> None:
        """``summary.json``: the fields of ``result`` (a dataclass), those named in ``paths``
        written as strings after the others, then ``extra`` (which may replace a field)."""
        summary = {k: v for k, v in vars(result).items() if k not in paths}
        summary.update({name: str(getattr(result, name)) for name in paths})
        summary.update(extra)
        (self.output / "summary.json").write_text(json.dumps(summary, indent=2))

    # -- what a task hands it --------------------------------------------------------------------
    def train(self, step: int, metrics: dict[str, float], write: bool = True) -> None:
        """The metrics of training update ``step``; with ``write`` they are the update's row
        of metrics.jsonl, written when the update is done (after :meth:`add`)."""
        if self.first is None:
            self.first = dict(metrics)
        self.last.update(metrics)
        if write and self.output is not None:
            self._pending = (step, dict(metrics))

    @property
    def pending(self) -> bool:
        """Whether a row of metrics.jsonl waits for this update (:meth:`add` goes into it)."""
        return self._pending is not None

    def add(self, metrics: dict[str, float]) -> None:
        """More metrics of the update whose row waits (gradient norms, known before the
        optimizer step)."""
        self.last.update(metrics)
        if self._pending is not None:
            self._pending[1].update(metrics)

    def valid(self, step: int, row: dict[str, float]) -> None:
        """A validation after ``step`` updates: its row of metrics.jsonl, written now."""
        self.history.append({"step": step, **row})
        self._append(METRICS, {"step": step, **row})

    def report(self, kind: str, key: Any, row: dict[str, Any]) -> bool:
        """A failure of ``kind`` (of :attr:`reported`), ``row`` its row of the failures log,
        written the first time ``key`` is reported only (another loader worker, or a loader
        that fetched ahead, may bring it again); True when it was new."""
        seen = self.reported[kind]
        if key in seen:
            return False
        seen.add(key)
        self._append(self.failures, row)
        return True

    def warn(self, message: str) -> None:
        """A warning of the run: in the summary, and shown once (rank zero)."""
        self.warnings.append(message)
        _warn(message)

    @rank_zero_only
    def _append(self, name: str, row: dict[str, Any]) -> None:
        if self.output is not None:
            with open(self.output / name, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    # -- Lightning's hooks -----------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # after the optimizer step (not after a batch whose gradients are accumulated), before
        # any checkpoint of this update (Lightning runs checkpoint callbacks last)
        if self._pending is not None and trainer.global_step > self._pending[0]:
            step, metrics = self._pending
            self._pending = None
            self._append(METRICS, {"step": step, **metrics})

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["elapsed_seconds"] = self.clock.seconds
        checkpoint["first_metrics"] = self.first
        checkpoint["valid_history"] = self.history
        for kind, seen in self.reported.items():
            checkpoint[kind] = sorted(seen)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.clock.before = float(checkpoint.get("elapsed_seconds", 0.0))
        first = checkpoint.get("first_metrics")
        if first is None and checkpoint.get("first_loss") is not None:
            first = {"train/loss": checkpoint["first_loss"]}  # fine-tuning's before the run log
        self.first = first or self.first
        self.history = list(checkpoint.get("valid_history", []))
        for kind in self.reported:
            self.reported[kind] = set(checkpoint.get(kind, ()))
        self._forget_after(int(checkpoint.get("global_step", 0)))

    @rank_zero_only
    def _forget_after(self, step: int) -> None:
        """Drop the rows the checkpoint of ``step`` updates had not seen: a killed run may have
        logged past its last checkpoint, and the resumed run logs them again."""
        if self.output is not None:
            for name in self.logs:
                keep_rows_of_checkpoint(self.output / name, step)


@rank_zero_only
def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=1)


def written_after(row: dict[str, Any]) -> bool:
    """Whether a log row is written after its step's update (validation: its ``step`` counts
    the updates done) rather than during it (training: ``step`` is the update's index)."""
    return "valid/wer" in row or row.get("split") == "valid"


def keep_rows_of_checkpoint(path: Path, step: int) -> None:
    """Rewrite the JSONL log ``path`` (atomically) with only the rows the checkpoint of
    ``step`` updates had seen: those of training updates before ``step``, and the validations
    up to ``step`` (the validation of update ``step`` ran before the checkpoint was written: it
    is what wrote it). A run resumed from it writes the others again; rows without a step (an
    utterance refused before training) stay."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("step", 0) < step + written_after(row):
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept), fsync=False)


def start_fresh_logs(output: Path, names: tuple[str, ...]) -> None:
    """Remove the logs that a run killed before its first checkpoint left in ``output``: the
    JSONL logs ``names``, ``logs/csv/metrics.csv`` and TensorBoard's event files in
    ``logs/tensorboard``. A run started without ``--resume`` writes them anew rather than
    appending to the records of a run it cannot continue (only a folder without a checkpoint
    takes such a run: :func:`audio_ssl.io.check_run_folder`)."""
    logs = output / "logs"
    paths = [output / name for name in names] + [logs / "csv" / "metrics.csv"]
    paths += sorted((logs / "tensorboard").glob("events.out.tfevents.*"))
    removed = [path for path in paths if path.is_file()]
    for path in removed:
        path.unlink()
    if removed:
        log.info("removed %d log file(s) of an earlier run that left no checkpoint in %s",
                 len(removed), output)


__all__ = ["RunClock", "RunLog", "keep_rows_of_checkpoint", "start_fresh_logs"]
