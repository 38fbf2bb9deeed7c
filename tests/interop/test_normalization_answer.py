"""One answer to "does this checkpoint want normalised audio?", whichever command asks.

``LoadedModel.expects_normalized`` is the answer: what the checkpoint says, else the fairseq/HF
convention (layer-norm encoders were trained on normalised audio, group-norm ones were not).
Before, extract fell back to the convention while finetune, transcribe and pretrain --init fell
back to False, so a torchaudio state dict of a layer-norm encoder was normalised by one command
and not by the others.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from audio_ssl.cli.pretrain import pretrain_config
from audio_ssl.extract.extractor import FeatureExtractor
from audio_ssl.asr.transcribe import InferenceSettings
from audio_ssl.interop import load_model
from audio_ssl.interop.export import save_native
from audio_ssl.models import Wav2Vec2ForPretraining
from audio_ssl.tasks.finetune import _initial_weights
from tests.conftest import small_model_config
from tests.interop.test_interop_torchaudio import _torchaudio_model


def _ours(tmp_path, norm: str, normalize: bool | None):
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(small_model_config(norm, norm == "layer"))
    run = {} if normalize is None else {"data": {"normalize": normalize}}
    return save_native(model, tmp_path / f"ours-{norm}-{normalize}.ckpt", run_config=run)


def _torchaudio(tmp_path, norm: str):
    path = tmp_path / f"torchaudio-{norm}.pt"
    model = _torchaudio_model(f"{norm}_norm", norm == "layer")
    torch.save({"state_dict": model.state_dict(), "config": {"encoder_num_heads": 4}}, path)
    return path


def _hf(tmp_path, norm: str, do_normalize: bool):
    from audio_ssl.interop.hf import save_hf

    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(small_model_config(norm, norm == "layer"))
    folder = tmp_path / f"hf-{norm}-{do_normalize}"
    save_hf(model, folder, normalize=do_normalize)
    return folder


CASES = [  # (make checkpoint, expected answer)
    (lambda t: _ours(t, "group", True), True),
    (lambda t: _ours(t, "layer", False), False),
    (lambda t: _ours(t, "layer", None), True),   # says nothing: the convention
    (lambda t: _ours(t, "group", None), False),
    (lambda t: _torchaudio(t, "layer"), True),   # the bug: finetune and transcribe said False
    (lambda t: _torchaudio(t, "group"), False),
    (lambda t: _hf(t, "layer", False), False),   # the folder's word beats the convention
    (lambda t: _hf(t, "group", True), True),
]


@pytest.mark.parametrize("make,expected", CASES)
def test_every_command_gets_the_same_answer(tmp_path, make, expected):
    path = make(tmp_path)
    loaded = load_model(path)
    assert loaded.expects_normalized is expected
    answers = {
        "extract": FeatureExtractor.from_checkpoint(path, device="cpu").normalize,
        "transcribe/evaluate": InferenceSettings.of(loaded).normalize_audio,
        "finetune": _initial_weights(path, from_scratch=False)[4],
        "pretrain --init": pretrain_config(argparse.Namespace(
            preset="tiny", config=None, max_steps=None, devices=None, num_nodes=None,
            precision=None, objective=None, targets=None), loaded).data.normalize,
    }
    assert answers == dict.fromkeys(answers, expected), answers


def test_transformers_5_processor_config_and_eval_mode(tmp_path):
    """transformers 5 writes do_normalize to processor_config.json only; it was lost, and
    `convert --to hf` then wrote do_normalize: true. Loaded models come back in eval mode."""
    import json

    from audio_ssl.cli import main

    folder = _hf(tmp_path, "layer", False)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").unlink()
    (folder / "processor_config.json").write_text(json.dumps(
        {"feature_extractor": pre, "processor_class": "Wav2Vec2Processor"}))
    loaded = load_model(folder)
    assert loaded.normalize is False and loaded.expects_normalized is False
    assert not loaded.model.training
    assert main(["convert", str(folder), str(tmp_path / "back"), "--to", "hf"]) == 0
    written = json.loads((tmp_path / "back" / "preprocessor_config.json").read_text())
    assert written["do_normalize"] is False
