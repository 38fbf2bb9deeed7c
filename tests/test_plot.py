"""`audio-ssl plot`: PNGs for a pretraining run, a fine-tuning run and a checkpoint's codebook;
clear errors for what cannot be plotted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audio_ssl.cli import main
from audio_ssl.plot import load_run
from tests.conftest import DATA, require_shared

FAST = """
train: {log_every: 1, checkpoint_every: 100}
data: {num_workers: 0, max_batch_samples: 64000, max_crop_samples: 16000}
"""
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    shared = require_shared(DATA)
    tmp = tmp_path_factory.mktemp("plot")
    (tmp / "q.yaml").write_text(FAST + "model: {objective: wav2vec2, quantize_targets: true}\n")
    (tmp / "c.yaml").write_text(FAST + "model: {objective: wav2vec2}\n")  # tiny's targets
    (tmp / "d.yaml").write_text(FAST)  # tiny's default objective: CPC
    (tmp / "ft.yaml").write_text("train: {val_every: 2, log_every: 1}\n"
                                 "data: {num_workers: 0, max_batch_samples: 64000}\n")
    tiny = shared / "tiny"
    for name, cfg in (("quantized", "q.yaml"), ("continuous", "c.yaml"), ("cpc", "d.yaml")):
        assert main(["pretrain", str(tiny), "--output", str(tmp / name), "--max-steps", "4",
                     "--config", str(tmp / cfg), "--quiet"]) == 0
    manifest = tiny / "manifest.jsonl"
    assert main(["finetune", str(tmp / "continuous" / "checkpoints" / "last.ckpt"),
                 "--train", str(manifest), "--valid", str(manifest), "--train-split", "train",
                 "--valid-split", "test", "--output", str(tmp / "ft"), "--max-steps", "4",
                 "--config", str(tmp / "ft.yaml"), "--quiet"]) == 0
    return tmp


@pytest.mark.slow
def test_pretraining_runs_overlaid(runs, capsys):
    out = runs / "pre.png"
    assert main(["plot", str(runs / "quantized"), str(runs / "continuous"), str(runs / "cpc"),
                 "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 20_000
    assert str(out) in capsys.readouterr().out
    assert load_run(runs / "quantized").kind == "pretrain"
    # default output: RUN_DIR/curves.png
    assert main(["plot", str(runs / "continuous")]) == 0
    assert (runs / "continuous" / "curves.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_cpc_run_shows_its_nearest_and_farthest_future_step(runs):
    from audio_ssl.plot import _pretrain_figure

    fig, axes, _ = _pretrain_figure([load_run(runs / "cpc"), load_run(runs / "continuous")])
    labels = [line.get_label() for line in axes[2].lines]
    assert labels == ["cpc", "cpc: k = 1", "cpc: k = 12", "continuous"]
    assert [line.get_label() for line in axes[1].lines][1:3] == ["cpc: loss, k = 1",
                                                                 "cpc: loss, k = 12"]
    fig.clf()


@pytest.mark.slow
def test_finetuning_run(runs):
    out = runs / "ft.png"
    assert main(["plot", str(runs / "ft"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    run = load_run(runs / "ft")
    assert run.kind == "finetune" and run.series("valid/cer")[0] == [2, 4]


@pytest.mark.slow
def test_codebook_heat_map_of_a_checkpoint(runs, data_dir):
    out = runs / "codes.png"
    ckpt = runs / "quantized" / "checkpoints" / "last.ckpt"
    assert main(["plot", str(ckpt), "--data", str(data_dir / "tiny"), "-o", str(out),
                 "--max-files", "5"]) == 0
    assert out.read_bytes()[:8] == PNG

    from audio_ssl.plot import code_usage

    counts = code_usage(ckpt, data_dir / "tiny", max_files=2)
    assert counts.shape == (2, 320) and (counts.sum(axis=1) == counts.sum(axis=1)[0]).all()


@pytest.mark.slow
def test_what_cannot_be_plotted_is_one_clear_line(runs, data_dir, tmp_path, capsys):
    ckpt = runs / "continuous" / "checkpoints" / "last.ckpt"
    assert main(["plot", str(ckpt), "--data", str(data_dir / "tiny")]) == 2
    assert "continuous targets" in capsys.readouterr().err
    cpc = runs / "cpc" / "checkpoints" / "last.ckpt"
    assert main(["plot", str(cpc), "--data", str(data_dir / "tiny")]) == 2
    assert "the cpc objective, which has no codebook" in capsys.readouterr().err
    assert main(["plot", str(ckpt)]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["plot", str(runs / "quantized"), str(runs / "ft")]) == 2
    assert "cannot share one figure" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no metrics.jsonl" in err and str(tmp_path) in err and "Traceback" not in err
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "other": 1.0}) + "\n")
    assert main(["plot", str(tmp_path)]) == 2
    assert "neither a pretraining nor a fine-tuning" in capsys.readouterr().err
