"""What the command line prints: each line once, no advertisement, no warnings our calls cause,
and --quiet / --verbose as users expect. Run as a user runs it: a separate process."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

FAST = """
train: {log_every: 1, checkpoint_every: 100}
data: {num_workers: 0, max_batch_samples: 64000, max_crop_samples: 16000}
"""
NOISE = ("litlogger", "Tip:", "weights_only", "LeafSpec", "Traceback", "UserWarning",
         "FutureWarning", "DeprecationWarning")


def _run(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "audio_ssl.cli", *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line.rstrip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def _assert_clean(lines: list[str]) -> None:
    repeated = [line for line, n in Counter(lines).items() if n > 1]
    assert not repeated, f"printed more than once: {repeated}"
    for word in NOISE:
        assert not any(word in line for line in lines), (word, lines)


@pytest.mark.slow
def test_pretrain_and_finetune_print_each_line_once(tmp_path, data_dir):
    (tmp_path / "fast.yaml").write_text(FAST)
    run = tmp_path / "pre"
    lines = _run("pretrain", str(data_dir / "tiny"), "-o", str(run), "--max-steps", "2",
                 "--config", str(tmp_path / "fast.yaml"), "--no-progress")
    _assert_clean(lines)
    assert any(line.startswith("pretrained 2 steps") for line in lines)
    assert not any("GPU available" in line for line in lines)  # Lightning's INFO: --verbose only
    assert not any("Trainable params" in line for line in lines)

    (tmp_path / "ft.yaml").write_text("train: {val_every: 1}\ndata: {num_workers: 0}\n")
    manifest = str(data_dir / "tiny" / "manifest.jsonl")
    lines = _run("finetune", str(run / "checkpoints" / "last.ckpt"), "--train", manifest,
                 "--valid", manifest, "--train-split", "train", "--valid-split", "test",
                 "-o", str(tmp_path / "ft"), "--max-steps", "2", "--config",
                 str(tmp_path / "ft.yaml"), "--no-progress")
    _assert_clean(lines)  # three checkpoint writes used to warn about weights_only
    assert any(line.startswith("fine-tuned 2 steps") for line in lines)


@pytest.mark.slow
def test_quiet_and_verbose(tmp_path, data_dir):
    (tmp_path / "fast.yaml").write_text(FAST)
    quiet = _run("pretrain", str(data_dir / "tiny"), "-o", str(tmp_path / "q"), "--max-steps",
                 "2", "--config", str(tmp_path / "fast.yaml"), "--quiet")
    _assert_clean(quiet)
    assert quiet[0].startswith("pretrained 2 steps")  # the result only: no progress, no log
    assert not any("usable files" in line for line in quiet)

    loud = _run("pretrain", str(data_dir / "tiny"), "-o", str(tmp_path / "v"), "--max-steps",
                "2", "--config", str(tmp_path / "fast.yaml"), "--verbose", "--no-progress")
    _assert_clean([line for line in loud if not set(line) <= set("-─━┃┡┩│└┘┏┓┳╇┴ ")])
    assert sum("GPU available" in line for line in loud) == 1
    assert any("Trainable params" in line for line in loud)


def test_objective_help_names_each_presets_own_default():
    """`audio-ssl pretrain --help` says which objective each preset trains, as the presets do."""
    import re

    from audio_ssl import config
    from audio_ssl.cli.pretrain import OBJECTIVE_HELP

    for name in config.PRESETS:
        objective = config.preset(name).model.objective
        assert re.search(rf"\b{objective} for [a-z ,]*\b{name}\b", OBJECTIVE_HELP), name
