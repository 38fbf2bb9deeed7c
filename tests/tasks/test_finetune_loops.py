"""Fine-tuning on Lightning's own loops: validation metrics, best checkpoint, resumed logs, and
files that fail to decode."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from torchmetrics.text import CharErrorRate, WordErrorRate

from audio_ssl import config
from audio_ssl.data import collate
from audio_ssl.data.audio import AudioError
from audio_ssl.data.labelled import LabelledBatchDataset, LabelledItem, make_labelled_loader
from audio_ssl.data.text import Vocabulary
from audio_ssl.asr.metrics import cer, wer
from audio_ssl.tasks import finetune as finetune_module
from audio_ssl.tasks.finetune import FinetuneData, FinetuneTask, finetune
from audio_ssl.tasks.run_log import keep_rows_of_checkpoint
from tests.conftest import small_model_config
from tests.tasks.test_finetune import FAST, _manifest_with_bad_rows, _pretrained

VOCAB = Vocabulary(("<blank>", "|", "a", "b", "c", "d"))


def _clips(tmp_path: Path, texts: list[str]) -> list[LabelledItem]:
    """One noise clip per text, each longer than the one before (validation keeps their order)."""
    rng = np.random.default_rng(0)
    items = []
    for i, text in enumerate(texts):
        path = tmp_path / f"clip{i}.wav"
        samples = 8000 + 800 * i
        sf.write(path, rng.standard_normal(samples).astype(np.float32) * 0.1, 16000)
        items.append(LabelledItem(str(path), text, samples, path.stem))
    return items


def test_validation_wer_and_cer_are_torchmetrics_and_match_a_hand_count(tmp_path, monkeypatch):
    refs = ["a cab", "bad", "ab ba"]
    hyps = ["a cb", "bad", "ab  ba ab"]  # a run of spaces counts as one
    # words: cab -> cb (1 substitution), + ab (1 insertion): 2 errors / 5 words
    # characters: cab -> cb (1 deletion), + " ab" (3 insertions): 4 errors / 13 characters
    cfg = config.finetune_preset("tiny", small_model_config())
    cfg = replace(cfg, data=replace(cfg.data, max_batch_samples=10**7, num_workers=0))
    items = _clips(tmp_path, refs)
    data = LabelledBatchDataset(items, [VOCAB.encode(t) for t in refs], sample_rate=16000,
                                normalize=True)
    monkeypatch.setattr(finetune_module, "greedy_decode", lambda logits, frames, vocab: hyps)
    task = FinetuneTask(cfg, VOCAB, refs)
    assert isinstance(task.valid_wer, WordErrorRate) and isinstance(task.valid_cer, CharErrorRate)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(task, datamodule=FinetuneData(data, data, cfg), verbose=False)[0]
    row = task.run_log.history[-1]
    assert row["valid/wer"] == pytest.approx(2 / 5) == pytest.approx(wer(refs, hyps))
    assert row["valid/cer"] == pytest.approx(4 / 13) == pytest.approx(cer(refs, hyps))
    assert logged["valid/wer"] == pytest.approx(2 / 5)  # what ModelCheckpoint monitors
    assert np.isfinite(row["valid/loss"]) and row["valid/loss"] > 0


def _run(tmp_path: Path, data_dir: Path, output: Path, max_steps: int, resume: bool = False,
         yaml: str = FAST):
    pretrained = tmp_path / "pretrained.ckpt"
    if not pretrained.is_file():
        _pretrained(tmp_path)
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    if not train.is_file():
        _manifest_with_bad_rows(tmp_path, data_dir)
    (tmp_path / "fast.yaml").write_text(yaml)
    return finetune(pretrained, train, valid, output, config_yaml=tmp_path / "fast.yaml",
                    overrides={"train": {"max_steps": max_steps}}, resume=resume, progress=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run_with_decoder(tmp_path, data_dir, monkeypatch, steps, says, train=""):
    """A run validated after every update, whose greedy decoder gives every clip
    ``says(update)``: its folder and FinetuneResult. ``train``: more train settings
    (", key: value")."""
    step = {}
    monkeypatch.setattr(FinetuneTask, "on_validation_epoch_start",
                        lambda self: step.update(now=self.global_step))
    monkeypatch.setattr(finetune_module, "greedy_decode", lambda logits, frames, vocab:
                        [says(step["now"])] * len(frames))
    run = tmp_path / "run"
    return run, _run(tmp_path, data_dir, run, steps,
                     yaml=FAST.replace("val_every: 2", "val_every: 1" + train))


@pytest.mark.slow
def test_best_checkpoint_is_the_lowest_wer(tmp_path, data_dir, monkeypatch):
    # validation after each of 4 updates; the decoder says "he" for every clip after updates 2
    # and 3 (some references hold the word: WER below 1), nothing after 1 and 4 (WER 1)
    run, result = _run_with_decoder(tmp_path, data_dir, monkeypatch, 4,
                                    lambda step: "he" if step in (2, 3) else "")
    wers = {r["step"]: r["valid/wer"] for r in _rows(run / "metrics.jsonl") if "valid/wer" in r}
    assert list(wers) == [1, 2, 3, 4]
    assert wers[1] == wers[4] == 1.0 and wers[2] == wers[3] < 1.0
    ckpt = {name: torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=False)
            for name in ("best", "last")}
    assert ckpt["best"]["global_step"] == 2  # the first of the two lowest
    assert ckpt["last"]["global_step"] == 4
    assert result.best["step"] == 2 and result.best_checkpoint == run / "checkpoints" / "best.ckpt"
    assert json.loads((run / "summary.json").read_text())["best"]["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_best_checkpoint_breaks_equal_wers_by_cer(tmp_path, data_dir, monkeypatch):
    # few labels: every validation is at WER 100 %, but after update 2 the decoder says "e" for
    # every clip (one right letter: CER below 100 %), nothing otherwise (CER 100 %); the first
    # of the equal WERs (update 1, untrained) must not be kept
    run, result = _run_with_decoder(tmp_path, data_dir, monkeypatch, 3,
                                    lambda step: "e" if step == 2 else "")
    rows = {r["step"]: r for r in _rows(run / "metrics.jsonl") if "valid/wer" in r}
    assert [rows[s]["valid/wer"] for s in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert rows[2]["valid/cer"] < rows[1]["valid/cer"] == rows[3]["valid/cer"] == 1.0
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == 2
    assert result.best["step"] == 2


@pytest.mark.slow
def test_best_checkpoint_can_be_the_lowest_cer(tmp_path, data_dir, monkeypatch):
    # update 1 has the lower WER (one right word, "he"), update 2 the lower CER (many right
    # letters, every word wrong): train.best_by cer keeps update 2
    says = {1: "he", 2: "e e e e e e e"}
    run, result = _run_with_decoder(tmp_path, data_dir, monkeypatch, 3,
                                    lambda step: says.get(step, ""),
                                    train=", best_by: cer")
    rows = {r["step"]: r for r in _rows(run / "metrics.jsonl") if "valid/wer" in r}
    assert rows[1]["valid/wer"] < rows[2]["valid/wer"]
    assert rows[2]["valid/cer"] < rows[1]["valid/cer"] < rows[3]["valid/cer"]
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == 2
    assert result.best["step"] == 2 and result.best_by == "cer"
    assert json.loads((run / "summary.json").read_text())["best"]["step"] == 2


@pytest.mark.slow
def test_resume_logs_each_step_once(tmp_path, data_dir):
    run = tmp_path / "run"
    _run(tmp_path, data_dir, run, 2)
    at_two = tmp_path / "last_at_2.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", at_two)
    _run(tmp_path, data_dir, run, 4, resume=True)
    # a kill after update 4 whose checkpoint write was lost: the last one is at update 2
    shutil.copy(at_two, run / "checkpoints" / "last.ckpt")
    result = _run(tmp_path, data_dir, run, 4, resume=True)
    rows = _rows(run / "metrics.jsonl")
    keys = [("valid" if "valid/wer" in r else "train", r["step"]) for r in rows]
    assert keys == [("train", 0), ("train", 1), ("valid", 2), ("train", 2), ("train", 3),
                    ("valid", 4)]
    assert [r["step"] for r in result.history] == [2, 4]
    rejected = (run / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == len(set(rejected)) == 4  # the rows of bad input, once each


def test_keep_rows_of_checkpoint_keeps_the_validation_that_wrote_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "train/loss": 1.0}, {"step": 2, "valid/wer": 0.5},
            {"step": 2, "train/loss": 1.0}, {"step": 3, "valid/wer": 0.4},
            {"split": "train", "path": "x"}, {"split": "valid", "step": 2, "path": "y"},
            {"split": "train", "step": 2, "path": "z"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keep_rows_of_checkpoint(path, 2)
    assert _rows(path) == [rows[0], rows[1], rows[4], rows[5]]


def _failing_on(monkeypatch, bad: set[str]) -> dict[str, int]:
    """load_audio raises for the paths in ``bad``; counts the attempts on each (the labelled
    dataset decodes through data.collate.load_batch)."""
    calls: dict[str, int] = {}
    real = collate.load_audio

    def load_audio(path, **kw):
        calls[path] = calls.get(path, 0) + 1
        if path in bad:
            raise AudioError(path, "corrupt frames")
        return real(path, **kw)

    monkeypatch.setattr(collate, "load_audio", load_audio)
    return calls


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loaders_do_not_ask_for_an_excluded_item_again(tmp_path, monkeypatch, workers):
    items = _clips(tmp_path, ["ab"] * 6)
    calls = _failing_on(monkeypatch, {items[2].path})
    data = LabelledBatchDataset(items, [[2, 3]] * 6, sample_rate=16000, normalize=False)
    loader = make_labelled_loader(data, max_batch_samples=12_000, train=True, num_buckets=1,
                                  num_workers=workers)  # one clip a batch, six batches an epoch
    failed_at = []
    for _, batch in zip(range(18), loader):  # three epochs
        failed_at += [batch.position] * len(batch.failures)
        data.exclude(batch.failed)  # what the task does with a worker's failures
    if workers == 0:  # loaded here: remembered at once
        assert failed_at and failed_at[0] < 6 and len(failed_at) == calls[items[2].path] == 1
    else:  # the workers run ahead by 2 requests each, and hold their own copies
        assert failed_at and failed_at[0] < 6 and all(p < failed_at[0] + 5 for p in failed_at)
    assert data.excluded == {2}
    valid = make_labelled_loader(data, max_batch_samples=10**6, train=False)
    assert [b.indices for b in valid] == [[0, 1, 3, 4, 5]]


@pytest.mark.slow
def test_a_file_that_fails_to_decode_is_read_once(tmp_path, data_dir, monkeypatch):
    rows = [json.loads(line) for line in (data_dir / "tiny" / "manifest.jsonl").read_text()
            .splitlines()]
    for row in rows:
        row["audio"] = str(data_dir / "tiny" / row["audio"])
    train = [r for r in rows if r["split"] == "train"][:4]
    valid = [r for r in rows if r["split"] == "test"][:3]
    for name, part in (("train", train), ("valid", valid)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    bad_train, bad_valid = train[1]["audio"], valid[2]["audio"]
    calls = _failing_on(monkeypatch, {bad_train, bad_valid})
    # one batch is the whole training set: three updates are three epochs
    yaml = FAST.replace("val_every: 2", "val_every: 1").replace(
        "max_batch_samples: 480000", "max_batch_samples: 100000000, num_buckets: 1")
    run = tmp_path / "run"
    result = _run(tmp_path, data_dir, run, 3, yaml=yaml)
    assert calls[bad_train] == 1 and calls[bad_valid] == 1
    # the others: at each update (and once more: Lightning fetches a batch ahead), each validation
    assert calls[train[0]["audio"]] >= 3 and calls[valid[0]["audio"]] == 3
    failed = [r for r in _rows(run / "rejected.jsonl") if r["reason"] == "corrupt frames"]
    assert [(r["split"], r["path"], r["step"]) for r in failed] == [
        ("train", bad_train, 0), ("valid", bad_valid, 1)]
    assert result.train_utterances == 3 and result.valid_utterances == 2
    assert result.rejected == 2
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["FinetuneData"] == {"excluded": {"train": [1], "valid": [2]}}
