"""`audio-ssl convert` end to end, and load_model on what it writes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from audio_ssl import config
from audio_ssl.cli import main
from audio_ssl.interop import CONFIG_KEY, load_model
from audio_ssl.interop.export import save_native
from audio_ssl.interop.hf import from_hf
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining, Wav2Vec2Model
from tests.conftest import small_model_config
from tests.interop.interop_helpers import (
    greedy_transcripts,
    hf_model,
    report,
    waveforms,
    write_hf_vocab,
)

transformers = pytest.importorskip("transformers")


def test_hf_folder_to_audio_ssl_to_hf(tmp_path, capsys):
    tokens = ["a", "|", "<pad>", "b", "<unk>", "c"]  # HF's blank (pad) at 2
    hf = hf_model("Wav2Vec2ForCTC", vocab_size=len(tokens), pad_token_id=2)
    with torch.no_grad():
        hf.lm_head.weight.mul_(50.0)
    hf.save_pretrained(tmp_path / "hf")
    write_hf_vocab(tmp_path / "hf", tokens)

    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "model.ckpt"),
                 "--to", "audio-ssl"]) == 0
    assert "Wav2Vec2ForCTC from hf" in capsys.readouterr().out
    native = load_model(tmp_path / "model.ckpt")
    assert native.source == "audio-ssl" and native.vocab == ["<blank>", "a", "|", "b", "<unk>",
                                                              "c"]
    assert native.normalize is True  # preprocessor_config.json's do_normalize, kept
    assert main(["convert", str(tmp_path / "model.ckpt"), str(tmp_path / "out"),
                 "--to", "hf"]) == 0

    back = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path / "out").eval()
    processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "out")
    original = transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "hf")
    x = waveforms(batch=3)
    with torch.no_grad():
        ref, out = hf(x).logits, back(x).logits
    report("convert hf -> audio-ssl -> hf ctc logits", out, ref[..., [2, 0, 1, 3, 4, 5]], 0.0)
    assert processor.batch_decode(out.argmax(-1)) == original.batch_decode(ref.argmax(-1))
    assert processor.batch_decode(out.argmax(-1)) == greedy_transcripts(out, native.vocab)
    assert load_model(tmp_path / "out").vocab == native.vocab


def _pretraining_checkpoint(path, model_cfg):
    """A checkpoint as the pretraining task writes it (Lightning dict, run config inside)."""
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(model_cfg).eval()
    run = replace(config.preset("tiny"), model=model_cfg)
    torch.save({"epoch": 0, "global_step": 10, CONFIG_KEY: config.to_dict(run),
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "optimizer_states": [], "loops": {}}, path)
    return model


def test_audio_ssl_checkpoint_to_hf_folder(tmp_path):
    model_cfg = small_model_config("layer", True)
    ours = _pretraining_checkpoint(tmp_path / "last.ckpt", model_cfg)
    assert main(["convert", str(tmp_path / "last.ckpt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {
        "config.json", "model.safetensors", "preprocessor_config.json"}
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["do_normalize"]
    x = waveforms()
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[:, 3:9] = True
    with torch.no_grad():
        ref = hf(x, mask_time_indices=mask)
        ref_context = hf.wav2vec2(x, mask_time_indices=mask).last_hidden_state
        out = ours.backbone(x, mask=mask)
        q = ours.quantizer(out.features.reshape(-1, out.features.shape[-1]), 1.0)
        projected_q = ours.project_q(q.quantized).reshape(2, 24, -1)
    report("convert audio-ssl -> hf context", out.context, ref_context, 1e-4)
    report("convert audio-ssl -> hf projected states", ours.final_proj(out.context),
           ref.projected_states, 1e-4)
    report("convert audio-ssl -> hf quantized targets", projected_q,
           ref.projected_quantized_states, 1e-4)
    back = from_hf(tmp_path / "hf")
    assert back.config == model_cfg  # fields HF has no place for travel in config.json
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(),
                                                 ours.state_dict().values()))


def test_backbone_only_model_round_trip(tmp_path):
    hf = hf_model("Wav2Vec2Model")
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path), "--to", "audio-ssl"]) == 0
    loaded = load_model(tmp_path / "model.ckpt")
    assert isinstance(loaded.model, Wav2Vec2Model) and loaded.backbone is loaded.model
    x = waveforms()
    with torch.no_grad():
        report("convert backbone", loaded.model.eval()(x).context, hf(x).last_hidden_state, 1e-4)


def test_convert_refuses_to_overwrite_and_reports_errors(tmp_path, capsys):
    torch.manual_seed(0)
    ctc = Wav2Vec2ForCTC(small_model_config(), 3)
    save_native(ctc, tmp_path / "ctc.ckpt", ["<blank>", "|", "a"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    assert main(["convert", str(tmp_path / "ctc.ckpt"), str(tmp_path / "out"), "--to", "hf"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x"), "--to", "hf"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "ctc.ckpt"), str(tmp_path / "out"), "--to", "hf",
                 "--overwrite"]) == 0
    assert load_model(tmp_path / "out").vocab == ["<blank>", "|", "a"]
