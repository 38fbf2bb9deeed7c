"""`audio-ssl pretrain` end to end on ../shared/data/tiny: outputs, bad files, exact resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_ssl.cli import main

FAST = """
train: {log_every: 1, checkpoint_every: 3}
data: {num_workers: 0, max_batch_samples: 64000, max_crop_samples: 16000}
"""


def _config(tmp_path: Path, text: str = FAST) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text(text)
    return path


def _metrics(run: Path) -> dict[int, dict]:
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run re-logs the steps after its checkpoint
    return rows


@pytest.mark.slow
def test_cli_pretrains_on_tiny(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    # wav2vec 2.0 with its codebook logs every metric there is
    quantized = _config(tmp_path, FAST + "model: {objective: wav2vec2, quantize_targets: true}\n")
    code = main(["pretrain", str(data_dir / "tiny"), "--output", str(run), "--max-steps", "4",
                 "--config", str(quantized), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pretrained 4 steps on 23 files" in printed and "checkpoint" in printed
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "step=0000003.ckpt").is_file()
    assert "max_steps: 4" in (run / "config.yaml").read_text()
    rows = _metrics(run)
    assert sorted(rows) == [0, 1, 2, 3]
    for key in ("train/loss", "train/contrastive", "train/diversity", "train/feature_penalty",
                "train/accuracy", "train/code_perplexity", "train/prob_perplexity",
                "train/gumbel_temperature", "train/lr", "train/masked_fraction",
                # plateau diagnostics
                "train/positive_cosine", "train/distractor_cosine", "train/target_cosine",
                "train/noise_flip_rate", "train/code_churn", "train/grad_norm",
                "train/grad_norm_encoder", "train/grad_norm_context", "train/grad_norm_quantizer",
                "train/grad_norm_heads"):
        assert np.isfinite(rows[3][key]), key
    assert "train/code_churn" not in rows[0]  # nothing to compare with at the first step
    assert 0.0 <= rows[3]["train/code_churn"] <= 1.0 and 0.0 <= rows[3]["train/noise_flip_rate"] <= 1.0
    assert 0.3 < rows[3]["train/masked_fraction"] < 0.7
    assert (run / "logs" / "csv" / "metrics.csv").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["files"] == 23
    # a second run into the same folder without --resume is refused, not overwritten
    assert main(["pretrain", str(data_dir / "tiny"), "--output", str(run), "--max-steps", "4",
                 "--config", str(_config(tmp_path)), "--no-progress"]) == 2


@pytest.mark.slow
def test_bad_files_are_skipped_and_listed(tmp_path, data_dir):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for src in sorted((data_dir / "tiny" / "audio").glob("*.flac"))[:4]:
        shutil.copy(src, corpus / "sub" / src.name)
    (corpus / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (corpus / "empty.flac").write_bytes(b"")
    sf.write(corpus / "short.wav", np.zeros(800, dtype=np.float32), 16000)
    (corpus / "notes.txt").write_text("not audio, not scanned")
    run = tmp_path / "run"
    assert main(["pretrain", str(corpus), "--output", str(run), "--max-steps", "2",
                 "--config", str(_config(tmp_path)), "--no-progress"]) == 0
    rejected = {Path(r["path"]).name: r["reason"]
                for r in map(json.loads, (run / "rejected.jsonl").read_text().splitlines())}
    assert set(rejected) == {"corrupt.wav", "empty.flac", "short.wav"}
    assert "short" in rejected["short.wav"]


def test_folder_without_usable_audio_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.wav").write_bytes(b"garbage")
    code = main(["pretrain", str(tmp_path / "data"), "--output", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.wav" in err and str(tmp_path / "data") in err


def _cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "audio_ssl.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["cpc", "wav2vec2"])  # tiny's default, and the paper's
def test_resume_after_a_kill_gives_the_same_losses(tmp_path, data_dir, objective):
    cfg = _config(tmp_path, FAST + f"model: {{objective: {objective}}}\n")
    common = [str(data_dir / "tiny"), "--config", str(cfg), "--no-progress", "--max-steps", "9"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    ref = _cli(["pretrain", *common, "--output", str(straight)])

    victim = _cli(["pretrain", *common, "--output", str(killed)])
    checkpoint = killed / "checkpoints" / "step=0000006.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert checkpoint.exists(), victim.stderr.read()[-2000:]
    # nothing half-written: every checkpoint present loads
    import torch

    for path in (killed / "checkpoints").glob("*.ckpt"):
        torch.load(path, map_location="cpu", weights_only=False)
    assert ref.wait() == 0, ref.stderr.read()[-2000:]

    (killed / "checkpoints" / ".last.ckpt.0123abcd.tmp").write_bytes(b"half a checkpoint")
    logged_before = [json.loads(line)["step"]
                     for line in (killed / "metrics.jsonl").read_text().splitlines()]
    resumed = _cli(["pretrain", *common, "--output", str(killed), "--resume"])
    assert resumed.wait() == 0, resumed.stderr.read()[-2000:]
    a, b = _metrics(straight), _metrics(killed)
    assert sorted(a) == sorted(b) == list(range(9))
    # the logs of the whole run, each step once: rows past the checkpoint were dropped
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(9)) and len(logged_before) >= 6
    with open(killed / "logs" / "csv" / "metrics.csv") as f:
        csv_steps = sorted({int(float(row["step"])) for row in csv.DictReader(f)})
    assert csv_steps[0] == 0 and csv_steps[-1] == 8  # the history before the kill is kept
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["first"]["train/loss"] == pytest.approx(a[0]["train/loss"], rel=1e-5)
    assert summary["seconds"] > json.loads((straight / "summary.json").read_text())["seconds"] / 3
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # the killed write's leftover
    assert (killed / "checkpoints" / "step=0000009.ckpt").is_file()
    for step in range(6, 9):  # the steps run after the resume
        keys = {"cpc": "train/accuracy_k1", "wav2vec2": "train/positive_cosine"}[objective]
        for key in ("train/loss", "train/accuracy", keys, "train/lr"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)


@pytest.mark.slow
def test_cli_runs_ddp_on_two_cpu_processes_with_layer_drop(tmp_path, data_dir):
    cfg = _config(tmp_path, FAST + "model: {objective: wav2vec2, context: {layer_drop: 0.5}}\n")
    run = tmp_path / "ddp"
    proc = _cli(["pretrain", str(data_dir / "tiny"), "--output", str(run), "--max-steps", "3",
                 "--devices", "2", "--accelerator", "cpu", "--config", str(cfg), "--no-progress"])
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    assert sorted(_metrics(run)) == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


def test_init_continues_pretraining_from_an_hf_checkpoint(tmp_path, data_dir, capsys):
    """--init: the checkpoint's network replaces the preset's, its weights are the starting
    point, and --config still sets the training-time fields."""
    import torch

    from audio_ssl.interop import load_model, save_hf
    from audio_ssl.models import Wav2Vec2ForPretraining, Wav2Vec2Model
    from tests.conftest import small_model_config

    torch.manual_seed(0)
    source = Wav2Vec2ForPretraining(small_model_config(norm="group", layer_norm_first=False))
    hf_dir = save_hf(source, tmp_path / "hf", normalize=False)
    run = tmp_path / "run"
    yaml = _config(tmp_path, FAST + "optim: {lr: 0.0}\nmodel: {mask: {length: 4}}\n")
    code = main(["pretrain", str(data_dir / "tiny"), "--output", str(run), "--max-steps", "2",
                 "--config", str(yaml), "--init", str(hf_dir), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    written = (run / "config.yaml").read_text()
    assert "dim: 64" in written and "length: 4" in written and "normalize: false" in written
    assert json.loads((run / "summary.json").read_text())["init"] == str(hf_dir)
    # lr 0: two updates leave the weights where --init put them
    resumed = load_model(run / "checkpoints" / "last.ckpt").model.state_dict()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)

    backbone = save_hf(Wav2Vec2Model(small_model_config()), tmp_path / "backbone")
    code = main(["pretrain", str(data_dir / "tiny"), "--output", str(tmp_path / "run2"),
                 "--init", str(backbone), "--no-progress"])
    assert code == 2
    assert "has no quantizer" in capsys.readouterr().err


@pytest.mark.slow
def test_best_rq_pretrains_resumes_exactly_and_its_backbone_serves(tmp_path, data_dir):
    """--objective best-rq end to end: the checkpoint records its objective, a resumed run
    repeats the straight run's losses, and the backbone converts to an HF Wav2Vec2Model."""
    from audio_ssl.interop import load_model
    from audio_ssl.models import BestRqForPretraining

    cfg = _config(tmp_path, FAST + "optim: {schedule_steps: 6}\n")
    common = [str(data_dir / "tiny"), "--config", str(cfg), "--no-progress",
              "--objective", "best-rq"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["pretrain", *common, "--max-steps", "6", "--output", str(straight)]) == 0
    assert main(["pretrain", *common, "--max-steps", "3", "--output", str(split)]) == 0
    assert main(["pretrain", *common, "--max-steps", "6", "--output", str(split), "--resume"]) == 0
    a, b = _metrics(straight), _metrics(split)
    assert sorted(a) == sorted(b) == list(range(6))
    for step in range(6):
        for key in ("train/loss", "train/masked_loss", "train/accuracy", "train/lr"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)
    assert "train/contrastive" not in a[5] and np.isfinite(a[5]["train/code_perplexity"])

    loaded = load_model(straight / "checkpoints" / "last.ckpt")
    assert isinstance(loaded.model, BestRqForPretraining)
    assert loaded.config.objective == "best-rq"
    assert main(["convert", str(straight / "checkpoints" / "last.ckpt"), str(tmp_path / "hf"),
                 "--to", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2Model"]


def test_auto_resume_starts_fresh_then_continues_with_the_same_losses(tmp_path, data_dir,
                                                                    capsys):
    """One command line for the first start and every restart (a requeued job): fresh where
    --output has no checkpoint, resumed where it has; the split run equals the straight one."""
    cfg = _config(tmp_path, FAST + "optim: {schedule_steps: 6}\n")
    common = [str(data_dir / "tiny"), "--config", str(cfg), "--no-progress"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["pretrain", *common, "--max-steps", "6", "--output", str(straight)]) == 0
    assert main(["pretrain", *common, "--max-steps", "3", "--output", str(split),
                 "--auto-resume"]) == 0
    assert main(["pretrain", *common, "--max-steps", "6", "--output", str(split),
                 "--auto-resume"]) == 0
    a, b = _metrics(straight), _metrics(split)
    assert sorted(a) == sorted(b) == list(range(6))
    assert [b[s]["train/loss"] for s in range(3, 6)] == [a[s]["train/loss"] for s in range(3, 6)]
