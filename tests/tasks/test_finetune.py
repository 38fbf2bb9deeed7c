"""CTC fine-tuning: the head, masks, what moves at each stage, and the commands end to end
(the CTC loss itself: tests/losses/test_ctc_loss.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl import config
from audio_ssl.cli import main
from audio_ssl.data.labelled import LabelledBatch
from audio_ssl.data.text import Vocabulary
from audio_ssl.interop import load_model
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from audio_ssl.tasks.finetune import FinetuneTask
from tests.conftest import small_model_config

VOCAB = Vocabulary(("<blank>", "|", "a", "b", "c"))


def _small_cpc() -> config.ModelConfig:
    """A small CPC backbone whose causal network has 3 layers where the Transformer settings
    (model.context, unused by CPC) say 2: code that counts the wrong network's layers fails."""
    cfg = small_model_config()
    return replace(cfg, objective="cpc", cpc=config.CpcConfig(dim=64, layers=3, steps=3))


def _cfg(model: config.ModelConfig | None = None, **ctc) -> config.FinetuneConfig:
    """The tiny preset on the small model (or ``model``); channel spans of 8 of its 64 dims
    (the paper's 64 would zero them all)."""
    cfg = config.finetune_preset("tiny", model or small_model_config())
    ctc = {"channel_mask": config.MaskConfig(prob=0.5 / 8, length=8, min_masks=0), **ctc}
    return replace(cfg, ctc=replace(cfg.ctc, **ctc))


def _batch(batch: int = 2, samples: int = 8000) -> LabelledBatch:
    torch.manual_seed(0)
    targets = torch.tensor([[2, 3, 4, 1, 2], [3, 3, 0, 0, 0]][:batch])  # (B, L)
    return LabelledBatch(
        waveforms=torch.randn(batch, samples), lengths=torch.tensor([samples, samples - 1600][:batch]),
        targets=targets, target_lengths=torch.tensor([5, 2][:batch]), indices=list(range(batch)))


def test_ctc_head_outputs_the_vocabulary_per_frame():
    model = Wav2Vec2ForCTC(small_model_config(), len(VOCAB))
    batch = _batch()
    out = model(batch.waveforms, batch.lengths)
    assert out.logits.shape == (2, int(out.frame_lengths[0]), len(VOCAB))
    assert out.frame_lengths.tolist() == model.backbone.frame_lengths(batch.lengths).tolist()


def test_fine_tuning_masks_follow_the_config():
    task = FinetuneTask(_cfg(), VOCAB)
    frames = torch.tensor([200, 120])
    time_mask, channel_mask = task.masks(frames, 200, torch.Generator().manual_seed(0))
    assert time_mask.shape == (2, 200) and channel_mask.shape == (2, 64)
    assert not time_mask[1, 120:].any()  # padding is never masked
    # fairseq's 0.65 spans x 10 frames -> about 1 - (1 - 0.065)^10 = 49% of the frames
    many = task.masks(torch.full((256,), 200), 200, torch.Generator().manual_seed(1))[0]
    assert 0.40 < float(many.float().mean()) < 0.55
    off = FinetuneTask(_cfg(time_mask=config.MaskConfig(prob=0.0),
                            channel_mask=config.MaskConfig(prob=0.0)), VOCAB)
    assert off.masks(frames, 200, torch.Generator()) == (None, None)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _moved(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {k for k, v in model.named_parameters() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("backbone", ["wav2vec2", "cpc"])
@pytest.mark.parametrize("reinit_layers", [0, 1])
def test_the_right_parameters_move_at_each_stage(reinit_layers, backbone):
    model = _small_cpc() if backbone == "cpc" else None
    task = FinetuneTask(_cfg(model, freeze_updates=2, reinit_layers=reinit_layers), VOCAB)
    optimizer = task.configure_optimizers()["optimizer"]
    batch = _batch()
    moved_by_step = []
    for step in range(4):
        before = _snapshot(task.model)
        optimizer.zero_grad()
        _, _, loss = task.forward_ctc(batch, train=True, step=step,
                                      generator=torch.Generator().manual_seed(step))
        loss.loss.backward()
        optimizer.step()
        moved_by_step.append(_moved(before, task.model))
    head = {"head.weight", "head.bias"}
    top = f"backbone.context.layers.{len(task.model.backbone.context.layers) - 1}."
    fresh = head | {k for k, p in task.model.named_parameters()
                    if reinit_layers and k.startswith(top)}
    assert not reinit_layers or len(fresh) > len(head)
    for step in (0, 1):  # loaded backbone frozen: the head and a re-initialised layer learn
        assert moved_by_step[step] == fresh
    for step in (2, 3):
        moved = moved_by_step[step]
        assert head <= moved
        assert any(k.startswith("backbone.context.") for k in moved)
        assert "backbone.projection.weight" in moved
        assert backbone == "cpc" or "backbone.mask_embedding" in moved  # CPC has none
        assert not any(k.startswith("backbone.feature_encoder.") for k in moved)  # always frozen
    assert task.lr_scale(0) == pytest.approx(0.01)  # tri-stage starts at 1% of the peak


@pytest.mark.parametrize("backbone", ["wav2vec2", "cpc"])
def test_backbone_lr_scale_slows_only_the_loaded_backbone(backbone):
    cfg = _cfg(_small_cpc() if backbone == "cpc" else None, reinit_layers=1, freeze_updates=0)
    cfg = replace(cfg, optim=replace(cfg.optim, backbone_lr_scale=0.0))
    task = FinetuneTask(cfg, VOCAB)
    optimizer = task.configure_optimizers()["optimizer"]
    lrs = {id(p): group["initial_lr"]  # the peak; "lr" is the schedule's first value
           for group in optimizer.param_groups for p in group["params"]}
    top = f"backbone.context.layers.{len(task.model.backbone.context.layers) - 1}."
    for name, param in task.model.named_parameters():
        if param.requires_grad:
            fresh = name.startswith(("head.", top))
            assert lrs[id(param)] == (cfg.optim.lr if fresh else 0.0), name
    before = _snapshot(task.model)
    _, _, loss = task.forward_ctc(_batch(), train=True, step=0,
                                  generator=torch.Generator().manual_seed(0))
    loss.loss.backward()
    optimizer.step()
    moved = _moved(before, task.model)
    assert {"head.weight", "head.bias"} <= moved and any(k.startswith(top) for k in moved)
    assert all(k.startswith(("head.", top)) for k in moved)  # the loaded layers stay
    # the default keeps the two groups (decay, no decay) that earlier checkpoints resume into
    default = FinetuneTask(_cfg(), VOCAB).configure_optimizers()["optimizer"]
    assert [g["weight_decay"] for g in default.param_groups] == [0.0, 0.0]
    assert len(default.param_groups) == 2


# ---------------------------------------------------------------------------------------------
# End to end: finetune, transcribe, evaluate and lm on ../shared/data/tiny

FAST = """
train: {log_every: 1, val_every: 2}
data: {num_workers: 0, max_batch_samples: 480000}
ctc: {freeze_updates: 1, channel_mask: {prob: 0.0625, length: 8}}
"""


def _pretrained(tmp_path: Path) -> Path:
    """A pretraining checkpoint of the small model, as `audio-ssl pretrain` writes them."""
    cfg = replace(config.preset("tiny"), model=small_model_config(norm="group"))
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(cfg.model)
    path = tmp_path / "pretrained.ckpt"
    torch.save({"audio_ssl_config": config.to_dict(cfg),
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _manifest_with_bad_rows(tmp_path: Path, data: Path) -> tuple[Path, Path]:
    """Train / valid JSONL: tiny's rows plus one of each kind of bad input."""
    rows = [json.loads(line) for line in (data / "tiny" / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio"] = str(data / "tiny" / row["audio"])
    sf.write(tmp_path / "blip.wav", np.zeros(2000, dtype=np.float32), 16000)  # 6 frames
    (tmp_path / "broken.flac").write_bytes(b"fLaC but not really")
    train = [r for r in rows if r["split"] == "train"] + [
        {"audio": str(tmp_path / "blip.wav"), "text": "much too long for six frames"},
        {"audio": str(tmp_path / "blip.wav"), "text": "?!"},
        {"audio": str(tmp_path / "broken.flac"), "text": "unreadable"},
    ]
    valid = [r for r in rows if r["split"] == "test"] + [
        {"audio": rows[0]["audio"], "text": "quiz"},  # q and z are in no training transcript
    ]
    paths = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    for path, part in zip(paths, (train, valid)):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


@pytest.mark.slow
def test_three_commands_end_to_end_on_tiny(tmp_path, data_dir, capsys):
    pretrained = _pretrained(tmp_path)
    train, valid = _manifest_with_bad_rows(tmp_path, data_dir)
    (tmp_path / "fast.yaml").write_text(FAST)
    run = tmp_path / "run"
    code = main(["finetune", str(pretrained), "--train", str(train), "--valid", str(valid),
                 "--output", str(run), "--max-steps", "3", "--config", str(tmp_path / "fast.yaml"),
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fine-tuned 3 steps with CTC" in printed and "best WER" in printed

    # bad input: reported per utterance, never a crash or a NaN
    reasons = {(r["split"], Path(r["path"]).name, r["reason"].split(":")[0])
               for r in map(json.loads, (run / "rejected.jsonl").read_text().splitlines())}
    assert ("train", "blip.wav", "transcript too long for CTC") in reasons
    assert ("train", "blip.wav", "empty transcript after normalisation (was '?!')") in reasons
    assert ("train", "broken.flac", "unreadable") in reasons
    assert ("valid", "cv_00.flac", "characters outside the vocabulary") in reasons
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "valid/wer" in r] == [2, 3]
    for r in rows:
        assert all(math.isfinite(v) for v in r.values())
    assert [r["train/backbone_frozen"] for r in rows if "train/loss" in r] == [1.0, 0.0, 0.0]

    # the checkpoint: load_model rebuilds the CTC model with its vocabulary and settings
    for name in ("best.ckpt", "last.ckpt"):
        assert (run / "checkpoints" / name).is_file()
    loaded = load_model(run / "checkpoints" / "last.ckpt")
    assert isinstance(loaded.model, Wav2Vec2ForCTC)
    assert loaded.vocab[:2] == ["<blank>", "|"] and "q" not in loaded.vocab
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {"model", "text", "ctc", "data", "optim", "train"} <= set(ckpt["audio_ssl_config"])
    assert ckpt["audio_ssl_config"]["data"]["normalize"] is True  # inherited from the tiny preset
    assert "max_steps: 3" in (run / "config.yaml").read_text()
    # the feature encoder is exactly the pretrained one; the context network has moved
    start = torch.load(pretrained, weights_only=False)["state_dict"]
    state = ckpt["state_dict"]
    for key in state:
        if key.startswith("model.backbone.feature_encoder."):
            assert torch.equal(state[key], start[key]), key
    key = "model.backbone.context.layers.0.attention.q_proj.weight"
    assert not torch.equal(state[key], start[key])

    # a second run into the same folder is refused
    assert main(["finetune", str(pretrained), "--train", str(train), "--valid", str(valid),
                 "--output", str(run), "--no-progress"]) == 2
    capsys.readouterr()

    # transcribe: text to stdout, or JSONL; an unreadable file is reported and skipped
    model = run / "checkpoints" / "best.ckpt"
    clip = data_dir / "tiny" / "audio" / "cv_00.flac"
    assert main(["transcribe", str(model), str(clip), str(tmp_path / "broken.flac")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{clip}\t")
    assert "skipped" in captured.err and "broken.flac" in captured.err
    out = tmp_path / "hyp.jsonl"
    assert main(["transcribe", str(model), str(data_dir / "tiny" / "audio"), "-o", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 23 and all(set(r) == {"path", "text", "seconds"} for r in lines)

    # lm + evaluate with beam search and a lexicon, and greedy with a report
    text = tmp_path / "text.txt"
    text.write_text("".join(json.loads(line)["text"] + "\n" for line in
                            (data_dir / "tiny" / "manifest.jsonl").read_text().splitlines()))
    assert main(["lm", str(text), "-o", str(tmp_path / "lm.arpa"), "--order", "2",
                 "--lexicon", str(tmp_path / "lexicon.txt")]) == 0
    assert "2-gram model" in capsys.readouterr().out
    tests = sum(json.loads(line)["split"] == "test" for line in
                (data_dir / "tiny" / "manifest.jsonl").read_text().splitlines())
    report = tmp_path / "report.jsonl"
    assert main(["evaluate", str(model), str(data_dir / "tiny" / "manifest.jsonl"),
                 "--split", "test", "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "WER" in printed and "CER" in printed and f"{tests} utterance(s) decoded (greedy)" in printed
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(rows) == tests and all(r["words"] > 0 for r in rows)
    assert main(["evaluate", str(model), str(data_dir / "tiny" / "manifest.jsonl"), "--split",
                 "test", "--lm", str(tmp_path / "lm.arpa"), "--lexicon",
                 str(tmp_path / "lexicon.txt"), "--beam-size", "8"]) == 0
    assert "(beam search)" in capsys.readouterr().out


@pytest.mark.slow
def test_from_scratch_and_continuing_a_ctc_model(tmp_path, data_dir, capsys):
    pretrained = _pretrained(tmp_path)
    (tmp_path / "fast.yaml").write_text(FAST)
    manifest = str(data_dir / "tiny" / "manifest.jsonl")
    common = ["--train", manifest, "--train-split", "train", "--valid", manifest,
              "--valid-split", "test", "--max-steps", "2", "--config",
              str(tmp_path / "fast.yaml"), "--no-progress"]
    assert main(["finetune", str(pretrained), "--from-scratch", "--output",
                 str(tmp_path / "scratch"), *common]) == 0
    assert "from random weights" in capsys.readouterr().out
    start = torch.load(pretrained, weights_only=False)["state_dict"]
    state = torch.load(tmp_path / "scratch" / "checkpoints" / "last.ckpt",
                       weights_only=False)["state_dict"]
    key = "model.backbone.feature_encoder.layers.0.conv.weight"
    assert state[key].shape == start[key].shape and not torch.equal(state[key], start[key])

    first = tmp_path / "scratch" / "checkpoints" / "last.ckpt"
    assert main(["finetune", str(first), "--output", str(tmp_path / "more"), *common]) == 0
    assert "from the CTC model" in capsys.readouterr().out
    assert load_model(tmp_path / "more" / "checkpoints" / "last.ckpt").vocab == \
        load_model(first).vocab
    shutil.rmtree(tmp_path / "more")


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_the_loaded_backbone_frozen(tmp_path, data_dir):
    """Under DDP the frozen stage gives the loaded parameters no gradient (the reducer must not
    wait for them) while the re-initialised top layer and the head learn."""
    pretrained = _pretrained(tmp_path)
    train, valid = _manifest_with_bad_rows(tmp_path, data_dir)
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(FAST.replace("freeze_updates: 1,", "freeze_updates: 2, reinit_layers: 1,"))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "audio_ssl.cli", "finetune", str(pretrained), "--train", str(train),
         "--valid", str(valid), "--output", str(run), "--max-steps", "2", "--config", str(cfg),
         "--devices", "2", "--accelerator", "cpu", "--no-progress"],
        env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/backbone_frozen"] for r in rows if "train/loss" in r] == [1.0, 1.0]
    source = torch.load(pretrained, map_location="cpu", weights_only=False)["state_dict"]
    tuned = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    layers = small_model_config().context.layers
    top = f"model.backbone.context.layers.{layers - 1}."
    moved = {k for k, v in tuned.items()
             if k.startswith("model.backbone.") and not torch.equal(v, source[k])}
    assert moved and all(k.startswith(top) for k in moved)


def test_reinit_layers_is_checked_against_the_network_that_is_built():
    """CPC's causal network has 3 layers here, the (unused) Transformer settings 2: 3 is
    allowed, 4 is refused with the count of the layers that exist."""
    from audio_ssl.tasks.finetune import _check_settings

    _check_settings(_cfg(_small_cpc(), reinit_layers=3), None, continues_ctc=False)
    with pytest.raises(ValueError, match="between 0 and the network's 3 context layers, got 4"):
        _check_settings(_cfg(_small_cpc(), reinit_layers=4), None, continues_ctc=False)
