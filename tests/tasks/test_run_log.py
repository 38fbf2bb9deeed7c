"""The run log that pretraining and fine-tuning share: when a row is written, what a resumed run
keeps, what a fresh run removes, the summary; and that both tasks write their run folders
through it and nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from audio_ssl import config
from audio_ssl.cli import main
from audio_ssl.data import collate
from audio_ssl.data.audio import AudioError
from audio_ssl.tasks import finetune as finetune_module
from audio_ssl.tasks import run_log as run_log_module
from audio_ssl.tasks.finetune import FinetuneTask, finetune_log
from audio_ssl.tasks.pretrain import PretrainTask, pretrain_log
from audio_ssl.tasks.run_log import RunLog, written_after
from tests.conftest import small_model_config
from tests.tasks.test_finetune import _manifest_with_bad_rows
from tests.tasks.test_finetune_loops import VOCAB, _rows, _run

LOGS = [pytest.param(pretrain_log, "decode_failures.jsonl", ("failed_files", "failed_shards"),
                     id="pretraining"),
        pytest.param(finetune_log, "rejected.jsonl", ("rejected_train", "rejected_valid"),
                     id="fine-tuning")]


def _after(step: int) -> SimpleNamespace:
    """The trainer as the run log sees it once ``step`` updates are done."""
    return SimpleNamespace(global_step=step)


@pytest.mark.parametrize("make, failures, kinds", LOGS)
def test_a_row_is_written_once_its_update_is_done(tmp_path, make, failures, kinds):
    log = make(tmp_path)
    assert log.logs == ("metrics.jsonl", failures) and tuple(log.reported) == kinds
    log.train(0, {"train/loss": 4.0}, write=True)
    assert log.pending and not (tmp_path / "metrics.jsonl").exists()
    log.add({"train/grad_norm": 2.0})  # before the optimizer step
    log.on_train_batch_end(_after(0), None, None, None, 0)  # gradients accumulated: no step yet
    assert not (tmp_path / "metrics.jsonl").exists()
    log.on_train_batch_end(_after(1), None, None, None, 1)
    log.on_train_batch_end(_after(1), None, None, None, 2)  # written once
    log.train(1, {"train/loss": 3.0}, write=False)  # not a logged update: the summary's only
    log.on_train_batch_end(_after(2), None, None, None, 3)
    log.valid(2, {"valid/wer": 0.5})
    assert _rows(tmp_path / "metrics.jsonl") == [
        {"step": 0, "train/loss": 4.0, "train/grad_norm": 2.0}, {"step": 2, "valid/wer": 0.5}]
    assert log.first == {"train/loss": 4.0}
    assert log.last == {"train/loss": 3.0, "train/grad_norm": 2.0}
    assert log.history == [{"step": 2, "valid/wer": 0.5}]


@pytest.mark.parametrize("make, failures, kinds", LOGS)
def test_a_failure_is_written_once_and_stays_reported_across_a_resume(tmp_path, make, failures,
                                                                     kinds):
    log = make(tmp_path)
    row = {"step": 3, "path": "/x/bad.flac", "reason": "cannot decode: corrupt"}
    assert [log.report(kinds[0], "/x/bad.flac", row) for _ in range(3)] == [True, False, False]
    assert log.report(kinds[1], "/x/bad.flac", {**row, "kind": "other"})  # another kind
    assert _rows(tmp_path / failures) == [row, {**row, "kind": "other"}]
    checkpoint = {"global_step": 4}
    log.on_save_checkpoint(None, None, checkpoint)
    resumed = make(None)  # writes nothing
    resumed.on_load_checkpoint(None, None, checkpoint)
    assert resumed.reported == {kinds[0]: {"/x/bad.flac"}, kinds[1]: {"/x/bad.flac"}}
    assert not resumed.report(kinds[0], "/x/bad.flac", row)


@pytest.mark.parametrize("make, failures, kinds", LOGS)
def test_a_resumed_run_keeps_the_rows_its_checkpoint_had_seen(tmp_path, make, failures, kinds):
    metrics = [{"step": 0, "train/loss": 4.0}, {"step": 1, "train/loss": 3.5},
               {"step": 2, "valid/wer": 0.9}, {"step": 2, "train/loss": 3.0},
               {"step": 3, "train/loss": 2.5}, {"step": 4, "valid/wer": 0.8}]
    failed = [{"split": "train", "path": "before.wav", "reason": "too short"},  # no step
              {"step": 1, "path": "a.wav", "reason": "x"}, {"step": 2, "path": "b.wav"},
              {"split": "valid", "step": 2, "path": "c.wav"}]
    for name, rows in (("metrics.jsonl", metrics), (failures, failed)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = make(tmp_path)
    log.on_load_checkpoint(None, None, {"global_step": 2, "elapsed_seconds": 12.5})
    # the validation of update 2 wrote the checkpoint: it stays; update 2's training row goes
    assert _rows(tmp_path / "metrics.jsonl") == metrics[:3]
    assert _rows(tmp_path / failures) == [failed[0], failed[1], failed[3]]
    assert log.clock.before == 12.5 and log.clock.seconds >= 12.5


@pytest.mark.parametrize("make, failures, kinds", LOGS)
def test_a_fresh_run_removes_the_logs_a_killed_run_left(tmp_path, make, failures, kinds):
    paths = [tmp_path / "metrics.jsonl", tmp_path / failures,
             tmp_path / "logs" / "csv" / "metrics.csv",
             tmp_path / "logs" / "tensorboard" / "events.out.tfevents.1.host"]
    kept = [tmp_path / "config.yaml", tmp_path / "logs" / "tensorboard" / "other"]
    for path in paths + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    make(tmp_path).start(resume=True)
    assert all(path.is_file() for path in paths + kept)
    make(tmp_path).start(resume=False)
    assert not any(path.exists() for path in paths) and all(path.is_file() for path in kept)


def test_checkpoints_carry_the_summarys_records_and_read_those_of_earlier_versions(tmp_path):
    log = finetune_log(tmp_path)
    log.clock.before = 100.0
    log.train(0, {"train/loss": 4.0})
    log.valid(2, {"valid/wer": 0.5})
    checkpoint: dict = {}
    log.on_save_checkpoint(None, None, checkpoint)
    assert checkpoint["elapsed_seconds"] >= 100.0
    assert checkpoint["first_metrics"] == {"train/loss": 4.0}
    assert checkpoint["valid_history"] == [{"step": 2, "valid/wer": 0.5}]
    resumed = finetune_log(None)
    resumed.on_load_checkpoint(None, None, checkpoint)
    assert (resumed.first, resumed.history) == (log.first, log.history)
    # a fine-tuning checkpoint written before the run log kept only the first loss
    old = finetune_log(None)
    old.on_load_checkpoint(None, None, {"first_loss": 4.5, "valid_history": [], "global_step": 3})
    assert old.first == {"train/loss": 4.5}


def test_the_summary_names_paths_as_strings_after_the_other_fields(tmp_path):
    result = SimpleNamespace(output_dir=tmp_path, steps=3, last_checkpoint=None, loss=float("nan"))
    pretrain_log(tmp_path).write_summary(result, ("output_dir", "last_checkpoint"), loss=None,
                                         init="x.ckpt")
    text = (tmp_path / "summary.json").read_text()
    assert list(json.loads(text).items()) == [
        ("steps", 3), ("loss", None), ("output_dir", str(tmp_path)),
        ("last_checkpoint", "None"), ("init", "x.ckpt")]
    assert text.startswith('{\n  "steps": 3,')  # indented by two


def test_each_task_hands_its_run_log_to_the_trainer():
    pretraining = PretrainTask(config.preset("tiny"), pretrain_log(None))
    finetuning = FinetuneTask(config.finetune_preset("tiny", small_model_config()), VOCAB)
    for task in (pretraining, finetuning):
        assert isinstance(task.run_log, RunLog) and task.configure_callbacks() == [task.run_log]
    assert pretraining.run_log.failures == "decode_failures.jsonl"
    assert finetuning.run_log.failures == "rejected.jsonl"


FAST_PRETRAIN = """
train: {log_every: 1, checkpoint_every: 2}
data: {num_workers: 0, max_batch_samples: 64000, max_crop_samples: 16000}
"""


def _steps_rows(path: Path) -> list[dict]:
    return [row for row in _rows(path) if "step" in row] if path.is_file() else []


def _kept(rows: list[dict], step: int) -> list[dict]:
    return [row for row in rows if row["step"] < step + written_after(row)]


@pytest.mark.slow
def test_both_tasks_write_their_run_folder_through_the_run_log(tmp_path, data_dir, monkeypatch):
    """Each task runs 3 updates, then resumes from its checkpoint of update 2 (as after a kill
    whose last.ckpt write was lost) to 3 again. Every row with a step in metrics.jsonl and the
    failures log is one the run log wrote, and the resumed run dropped the rows of update 2 on
    through the run log: a task that wrote or trimmed its logs by its own code fails here."""
    written: dict[Path, list[dict]] = {}  # rows the run log appended, by file
    trimmed: list[tuple[Path, int]] = []
    append, keep = RunLog._append, run_log_module.keep_rows_of_checkpoint

    def spy_append(self, name, row):
        if self.output is not None:
            written.setdefault(self.output / name, []).append(json.loads(json.dumps(row)))
        append(self, name, row)

    def spy_keep(path, step):
        trimmed.append((path, step))
        keep(path, step)

    monkeypatch.setattr(RunLog, "_append", spy_append)
    monkeypatch.setattr(run_log_module, "keep_rows_of_checkpoint", spy_keep)
    # pretraining: the first file it decodes fails; fine-tuning: a validation clip
    _, valid = _manifest_with_bad_rows(tmp_path, data_dir)
    bad = {"fine-tuning": Path(_rows(valid)[-2]["audio"]).name}  # the last row is "quiz"
    stage = {"now": "pretraining"}
    real_load = collate.load_audio

    def load_audio(path, **kw):
        if bad.setdefault(stage["now"], Path(path).name) == Path(path).name:
            raise AudioError(path, "corrupt frames")
        return real_load(path, **kw)

    monkeypatch.setattr(collate, "load_audio", load_audio)

    # pretraining: checkpoints at updates 2 and 3
    cfg = tmp_path / "pretrain.yaml"
    cfg.write_text(FAST_PRETRAIN)
    run = tmp_path / "pretrain"
    args = ["pretrain", str(data_dir / "tiny"), "--output", str(run), "--config", str(cfg),
            "--max-steps", "3", "--no-progress"]
    assert main(args) == 0
    first = {path: list(rows) for path, rows in written.items()}
    written.clear()
    shutil.copy(run / "checkpoints" / "step=0000002.ckpt", run / "checkpoints" / "last.ckpt")
    assert main([*args, "--resume"]) == 0
    _check_folder(run, "decode_failures.jsonl", first, written, trimmed, [0, 1, 2])

    # fine-tuning: validations after updates 2 and 3, equal scores, so best.ckpt is update 2's
    stage["now"] = "fine-tuning"
    written.clear()
    monkeypatch.setattr(finetune_module, "greedy_decode",
                        lambda logits, frames, vocab: [""] * len(frames))
    run = tmp_path / "ft"
    _run(tmp_path, data_dir, run, 3)
    first = {path: list(rows) for path, rows in written.items()}
    written.clear()
    best = run / "checkpoints" / "best.ckpt"
    assert torch.load(best, map_location="cpu", weights_only=False)["global_step"] == 2
    shutil.copy(best, run / "checkpoints" / "last.ckpt")
    _run(tmp_path, data_dir, run, 3, resume=True)
    _check_folder(run, "rejected.jsonl", first, written, trimmed, [0, 1, 2])
    rows = _rows(run / "metrics.jsonl")
    assert [(r["step"], "valid/wer" in r) for r in rows] == [
        (0, False), (1, False), (2, True), (2, False), (3, True)]
    failed = _steps_rows(run / "rejected.jsonl")  # in the validation that wrote the checkpoint
    assert [(r["split"], r["step"], r["reason"]) for r in failed] == [
        ("valid", 2, "corrupt frames")]


def _check_folder(run: Path, failures: str, first: dict[Path, list[dict]],
                  second: dict[Path, list[dict]], trimmed: list[tuple[Path, int]],
                  train_steps: list[int]) -> None:
    """The rows of ``run``'s logs are those the run log wrote in the first segment up to
    update 2, then those of the resumed one; both logs were trimmed at update 2."""
    for name in ("metrics.jsonl", failures):
        path = run / name
        expected = _kept(first.get(path, []), 2) + second.get(path, [])
        assert _steps_rows(path) == expected, name
        assert (path, 2) in trimmed, name
    train = [r["step"] for r in _rows(run / "metrics.jsonl") if "valid/wer" not in r]
    assert train == train_steps  # each update once
    failed = _steps_rows(run / failures)
    assert failed and len({r["path"] for r in failed}) == len(failed)  # each failure once
