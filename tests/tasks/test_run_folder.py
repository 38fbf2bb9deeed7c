"""A run folder across kills, renames and reruns: checkpoints land in ``last.ckpt`` with no
``-v1`` copies, the CSV log is never absent, a fresh run starts fresh logs, and the summary's
time covers every segment."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from audio_ssl.cli import main
from audio_ssl.tasks import finetune as finetune_module
from audio_ssl.tasks.finetune import FinetuneTask
from audio_ssl.tasks.pretrain import PretrainTask
from audio_ssl.tasks.trainer import HistoryCSVLogger, RunCheckpoint
from tests.tasks.test_finetune_loops import _run, _rows

FAST = """
train: {log_every: 1, checkpoint_every: 2}
data: {num_workers: 0, max_batch_samples: 64000, max_crop_samples: 16000}
"""


def _csv_steps(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(float(row["step"])) for row in csv.DictReader(f)]


def _step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


def test_checkpoint_state_follows_a_renamed_folder(tmp_path):
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    new.mkdir(parents=True)
    saved = RunCheckpoint(dirpath=old, filename="best", monitor="valid/score", save_top_k=1)
    saved.best_k_models = {str(old / "best.ckpt"): torch.tensor(0.25)}
    saved.best_model_path = saved.kth_best_model_path = str(old / "best.ckpt")
    saved.best_model_score = saved.kth_value = torch.tensor(0.25)
    saved.last_model_path = str(old / "last.ckpt")
    moved = RunCheckpoint(dirpath=new, filename="best", monitor="valid/score", save_top_k=1)
    moved.load_state_dict(saved.state_dict())
    assert moved.best_model_path == moved.kth_best_model_path == str(new / "best.ckpt")
    assert moved.last_model_path == str(new / "last.ckpt")
    assert moved.best_k_models == {str(new / "best.ckpt"): torch.tensor(0.25)}
    assert float(moved.best_model_score) == 0.25  # a worse model does not replace best.ckpt
    assert not moved._enable_version_counter  # never step=N-v1.ckpt or last-v1.ckpt


def test_csv_log_is_never_absent_and_keeps_the_rows_before_the_resumed_step(tmp_path):
    folder = tmp_path / "logs" / "csv"
    folder.mkdir(parents=True)
    path = folder / "metrics.csv"
    path.write_text("epoch,step,train/loss\n" + "".join(f"0,{s},{s}.5\n" for s in range(6))
                    + "0,6")  # a row a kill cut short
    logger = HistoryCSVLogger(tmp_path, name="logs", version="csv", flush_logs_every_n_steps=1)
    logger.experiment  # Lightning's logger deleted metrics.csv here
    assert _csv_steps(path) == list(range(6)) + [6]  # the file as the killed run left it
    logger.log_metrics({"train/loss": 3.25}, step=3)  # the resumed run logs from step 3 on
    assert _csv_steps(path) == [0, 1, 2, 3]
    logger.log_metrics({"train/loss": 4.0, "train/accuracy": 0.5}, step=4)  # a new column
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[2]["train/loss"] == "2.5" and rows[3]["train/loss"] == "3.25"
    assert rows[4]["train/accuracy"] == "0.5" and rows[0]["train/accuracy"] == ""
    assert not list(folder.glob(".*.tmp"))


def _pretrain(data_dir: Path, cfg: Path, output: Path, steps: int, *more: str) -> int:
    return main(["pretrain", str(data_dir / "tiny"), "--output", str(output), "--config",
                 str(cfg), "--max-steps", str(steps), "--no-progress", *more])


@pytest.mark.slow
def test_a_renamed_or_copied_run_resumes_into_last_ckpt(tmp_path, data_dir, monkeypatch, capsys):
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(FAST)
    assert _pretrain(data_dir, cfg, tmp_path / "first", 2) == 0
    (tmp_path / "first").rename(tmp_path / "renamed")
    run = tmp_path / "renamed"
    csv_at_start = []
    on_train_start = PretrainTask.on_train_start

    def spy(self):  # after the checkpoint is restored, before the first new row
        path = run / "logs" / "csv" / "metrics.csv"
        csv_at_start.append(_csv_steps(path) if path.is_file() else None)
        on_train_start(self)

    monkeypatch.setattr(PretrainTask, "on_train_start", spy)
    capsys.readouterr()
    assert _pretrain(data_dir, cfg, run, 4, "--resume") == 0
    assert "pretrained 4 steps" in capsys.readouterr().out
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "last.ckpt", "step=0000002.ckpt", "step=0000004.ckpt"]
    assert _step(checkpoints / "last.ckpt") == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["last_checkpoint"] == str(checkpoints / "last.ckpt")
    assert csv_at_start == [[0, 1]]
    assert _csv_steps(run / "logs" / "csv" / "metrics.csv") == [0, 1, 2, 3]

    # a copy whose last.ckpt is older than its latest step=N.ckpt (a kill between the two
    # writes): step=0000004.ckpt is written again, not step=0000004-v1.ckpt
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.copy(copy / "checkpoints" / "step=0000002.ckpt", copy / "checkpoints" / "last.ckpt")
    assert _pretrain(data_dir, cfg, copy, 4, "--resume") == 0
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == [
        "last.ckpt", "step=0000002.ckpt", "step=0000004.ckpt"]
    assert _step(copy / "checkpoints" / "last.ckpt") == 4
    assert _step(checkpoints / "last.ckpt") == 4  # the original is untouched


@pytest.mark.slow
def test_a_fresh_run_does_not_append_to_a_killed_runs_logs(tmp_path, data_dir):
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(FAST)
    run = tmp_path / "run"
    run.mkdir()  # what a run killed before its first checkpoint leaves
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "train/loss": 99.0}) + "\n"
                                       + json.dumps({"step": 1, "train/loss": 98.0}) + "\n")
    (run / "decode_failures.jsonl").write_text(json.dumps({"step": 0, "path": "gone.wav"}) + "\n")
    (run / "logs" / "csv").mkdir(parents=True)
    (run / "logs" / "csv" / "metrics.csv").write_text("step,train/loss\n0,99.0\n1,98.0\n")
    assert _pretrain(data_dir, cfg, run, 1) == 0
    rows = _rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0] and rows[0]["train/loss"] != 99.0
    assert not (run / "decode_failures.jsonl").exists()
    assert _csv_steps(run / "logs" / "csv" / "metrics.csv") == [0]


@pytest.mark.slow
def test_finetuning_resumed_in_a_renamed_folder_keeps_its_best_and_its_time(
        tmp_path, data_dir, monkeypatch):
    # validation after updates 2 and 4; the decoder says "he" for every clip after update 2
    # (some references hold the word: WER below 1) and nothing after 4 (WER 1)
    at = {}
    monkeypatch.setattr(FinetuneTask, "on_validation_epoch_start",
                        lambda self: at.update(step=self.global_step))
    monkeypatch.setattr(finetune_module, "greedy_decode", lambda logits, frames, vocab:
                        ["he" if at["step"] == 2 else ""] * len(frames))
    _run(tmp_path, data_dir, tmp_path / "first", 2)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["elapsed_seconds"] > 0
    state["elapsed_seconds"] = 1000.0  # as if the first segment had trained for 1000 s
    torch.save(state, last)
    (tmp_path / "first").rename(tmp_path / "run")
    run = tmp_path / "run"
    result = _run(tmp_path, data_dir, run, 4, resume=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert _step(run / "checkpoints" / "last.ckpt") == 4
    assert _step(run / "checkpoints" / "best.ckpt") == 2  # WER 1 at update 4 is not better
    assert result.best["step"] == 2
    assert 1000.0 < result.seconds < 1000.0 + 600
    assert json.loads((run / "summary.json").read_text())["seconds"] == result.seconds
