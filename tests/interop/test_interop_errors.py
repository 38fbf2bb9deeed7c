"""Checkpoints we must refuse, with a message naming what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from audio_ssl.interop import CheckpointError, load_model
from audio_ssl.interop.hf import save_hf
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from tests.conftest import small_model_config


@pytest.fixture
def hf_folder(tmp_path):
    """An HF folder of a small pretraining model (written without transformers)."""
    torch.manual_seed(0)
    save_hf(Wav2Vec2ForPretraining(small_model_config("group", False)), tmp_path / "hf")
    return tmp_path / "hf"


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_weights(folder, drop=(), add=None):
    state = load_file(str(folder / "model.safetensors"))
    for key in drop:
        del state[key]
    state.update(add or {})
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "hubert", "architectures": ["HubertModel"]},
     "model_type 'hubert' is not wav2vec 2.0"),
    ({"architectures": ["Wav2Vec2ForXVector"]}, "Wav2Vec2ForXVector (a TDNN x-vector head"),
    ({"architectures": ["Wav2Vec2ConformerForPreTraining"]},
     "'Wav2Vec2ConformerForPreTraining' is not wav2vec 2.0"),
    ({"feat_extract_activation": "relu"}, "unsupported feat_extract_activation='relu'"),
    ({"hidden_act": "gelu_new"}, "unsupported hidden_act='gelu_new'"),
    ({"add_adapter": True}, "unsupported add_adapter=True"),
    ({"num_adapter_layers": 2, "add_adapter": True}, "num_adapter_layers=2"),
    ({"adapter_attn_dim": 16}, "unsupported adapter_attn_dim=16"),
    ({"use_weighted_layer_sum": True}, "unsupported use_weighted_layer_sum=True"),
    ({"layer_norm_eps": 1e-6}, "unsupported layer_norm_eps=1e-06"),
    ({"feat_extract_norm": "batch"}, "unsupported feat_extract_norm='batch'"),
    ({"conv_stride": [5, 2, 2]}, "conv_dim, conv_kernel and conv_stride have different lengths"),
    ({"num_attention_heads": 5}, "not divisible by 5 attention heads"),
])
def test_hf_unsupported_config(hf_folder, changes, message):
    _edit_config(hf_folder, **changes)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_model(hf_folder)


def test_hf_missing_and_unexpected_keys(hf_folder):
    key = "wav2vec2.encoder.layers.1.final_layer_norm.weight"
    weight = load_file(str(hf_folder / "model.safetensors"))[key]
    _edit_weights(hf_folder, drop=[key])
    with pytest.raises(CheckpointError, match=f"missing keys {key}"):
        load_model(hf_folder)
    extra = "wav2vec2.encoder.layers.0.adapter_layer.linear_1.weight"
    _edit_weights(hf_folder, add={key: weight, extra: torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match=f"unexpected keys {extra}"):
        load_model(hf_folder)


def test_hf_config_that_does_not_fit_the_weights(hf_folder):
    _edit_config(hf_folder, conv_bias=True)  # no conv biases in the file
    with pytest.raises(CheckpointError,
                       match="missing keys wav2vec2.feature_extractor.conv_layers.0.conv.bias"):
        load_model(hf_folder)
    _edit_config(hf_folder, conv_bias=False, intermediate_size=256)
    with pytest.raises(CheckpointError, match=r"intermediate_dense\.\w+ has shape \(128\b.*, "
                                              r"the config implies \(256\b"):
        load_model(hf_folder)


def test_hf_ctc_needs_its_vocabulary(tmp_path):
    torch.manual_seed(0)
    save_hf(Wav2Vec2ForCTC(small_model_config(), 4), tmp_path, ["<blank>", "|", "a", "b"])
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "|": 1, "a": 2}))
    with pytest.raises(CheckpointError, match=r"no token for output ids \[3\]"):
        load_model(tmp_path)
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_model(tmp_path)


def test_save_hf_refuses_a_ctc_model_without_vocab(tmp_path):
    with pytest.raises(ValueError, match="needs its vocab"):
        save_hf(Wav2Vec2ForCTC(small_model_config(), 4), tmp_path)


@pytest.fixture(scope="module")
def fairseq_parts():
    """(state dict, cfg) of a small fairseq pretraining checkpoint and of a CTC one."""
    pytest.importorskip("transformers")
    from tests.interop import fairseq_oracle as oracle
    from tests.interop.interop_helpers import hf_model

    pre = hf_model("Wav2Vec2ForPreTraining")
    ctc = hf_model("Wav2Vec2ForCTC", vocab_size=6)
    return ((oracle.fairseq_state(pre), oracle.pretraining_cfg(pre.config)),
            (oracle.fairseq_state(ctc, ctc=True), oracle.ctc_cfg(ctc.config)))


def _save_fairseq(path, state, cfg):
    from tests.interop import fairseq_oracle as oracle

    torch.save(oracle.checkpoint(state, cfg=cfg), path)
    return path


@pytest.mark.parametrize("field,value,message", [
    ("_name", "hubert", "fairseq model 'hubert' is not wav2vec 2.0"),
    ("quantize_targets", False, "unsupported quantize_targets=False"),
    ("latent_temp", 0.5, "unsupported latent_temp=0.5"),
    ("latent_temp", "(2, 0.5)", r"unsupported latent_temp='\(2, 0.5\)'"),
    ("layer_type", "conformer", "unsupported layer_type='conformer'"),
    ("pos_conv_depth", 5, "unsupported pos_conv_depth=5"),
    ("extractor_mode", "batch_norm", "unsupported extractor_mode='batch_norm'"),
    ("activation_fn", "relu", "unsupported activation_fn='relu'"),
    ("target_glu", True, "unsupported target_glu=True"),
    ("quantize_input", True, "unsupported quantize_input=True"),
    ("conv_feature_layers", "[(32, 10, 5)] * __import__('os').getpid()",
     "cannot read conv_feature_layers"),
])
def test_fairseq_unsupported_config(tmp_path, fairseq_parts, field, value, message):
    state, cfg = fairseq_parts[0]
    cfg = json.loads(json.dumps(cfg))
    cfg["model"][field] = value
    with pytest.raises(CheckpointError, match=message):
        load_model(_save_fairseq(tmp_path / "x.pt", state, cfg))


def test_fairseq_missing_and_unexpected_keys(tmp_path, fairseq_parts):
    state, cfg = fairseq_parts[0]
    missing = {k: v for k, v in state.items() if k != "encoder.layers.1.fc2.weight"}
    with pytest.raises(CheckpointError, match="missing keys encoder.layers.1.fc2.weight"):
        load_model(_save_fairseq(tmp_path / "a.pt", missing, cfg))
    extra = {**state, "encoder.layers.0.self_attn.bias_k": torch.zeros(64)}
    with pytest.raises(CheckpointError, match="unexpected keys encoder.layers.0.self_attn.bias_k"):
        load_model(_save_fairseq(tmp_path / "b.pt", extra, cfg))


def test_fairseq_ctc_errors(tmp_path, fairseq_parts):
    state, cfg = fairseq_parts[1]
    (tmp_path / "dict.ltr.txt").write_text("| 10\nA 5\nB 2\n")  # 4 + 3 symbols, head has 6
    path = _save_fairseq(tmp_path / "ctc.pt", state, cfg)
    with pytest.raises(CheckpointError, match="7 symbols .* CTC head .* has 6 outputs"):
        load_model(path)
    cfg = json.loads(json.dumps(cfg))
    cfg["model"]["blank_weight"] = 1.5
    with pytest.raises(CheckpointError, match="unsupported blank_weight=1.5"):
        load_model(_save_fairseq(tmp_path / "ctc.pt", state, cfg))
    cfg["model"]["blank_weight"] = 0.0
    cfg["model"]["w2v_args"] = None
    with pytest.raises(CheckpointError, match="w2v_args"):
        load_model(_save_fairseq(tmp_path / "ctc.pt", state, cfg))


def test_unrecognised_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nothing.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint format audio_ssl recognises"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_model(tmp_path / "folder")
