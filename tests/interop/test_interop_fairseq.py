"""fairseq checkpoints, read without fairseq, against transformers' own fairseq key mapping.

Each test builds a random HF model, writes its weights under fairseq's keys with the mapping of
transformers' conversion script (tests/interop/fairseq_oracle.py), adds a config as fairseq
writes it, and checks that our importer gives the HF model's outputs: the same weights through
both routes.
"""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

from audio_ssl.interop import load_model
from audio_ssl.interop.fairseq import from_fairseq, read_dictionary
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from tests.interop import fairseq_oracle as oracle
from tests.interop.interop_helpers import (
    check_hidden_states,
    compare_pretraining,
    greedy_transcripts,
    hf_model,
    report,
    waveforms,
)

transformers = pytest.importorskip("transformers")

LETTERS = ["|", "E", "T", "A", "O", "N", "I", "H"]


@pytest.mark.parametrize("norm,stable", [("group", False), ("layer", True)])
def test_pretraining_checkpoint_gives_hf_outputs(tmp_path, norm, stable):
    hf = hf_model("Wav2Vec2ForPreTraining", norm=norm, stable=stable)
    state = oracle.fairseq_state(hf)
    torch.save(oracle.checkpoint(state, cfg=oracle.pretraining_cfg(hf.config)),
               tmp_path / "checkpoint_best.pt")
    loaded = load_model(tmp_path / "checkpoint_best.pt")
    assert loaded.source == "fairseq" and isinstance(loaded.model, Wav2Vec2ForPretraining)
    cfg = loaded.config
    assert cfg.encoder.grad_scale == 0.1 and cfg.loss.feature_penalty_weight == 10.0
    assert cfg.mask.prob == pytest.approx(0.065) and cfg.quantizer.temperature_end == 0.5
    assert loaded.normalize is (norm == "layer")
    check_hidden_states(hf.wav2vec2, loaded.model.backbone.eval(), waveforms(),
                        f"fairseq {norm}/{stable}")
    compare_pretraining(hf, loaded.model, f"fairseq {norm}/{stable}")


class AverageMeter:  # stands for fairseq.logging.meters.AverageMeter, absent when loading
    def __init__(self):
        self.val, self.sum, self.count = 0.5, 10.0, 20


def test_old_args_checkpoint_without_fairseq_installed(tmp_path):
    """An early fairseq file: ``args`` (a Namespace; literals as strings), no ``cfg``, fairseq
    meters pickled in ``extra_state``, and no post_extract_proj since the conv output already
    has the model's width."""
    hf = hf_model("Wav2Vec2ForPreTraining", conv_dim=[64] * 7)
    with torch.no_grad():
        hf.wav2vec2.feature_projection.projection.weight.copy_(torch.eye(64))
        hf.wav2vec2.feature_projection.projection.bias.zero_()
    state = oracle.fairseq_state(hf)
    del state["post_extract_proj.weight"], state["post_extract_proj.bias"]
    args = dict(oracle.model_cfg(hf.config), arch="wav2vec2", latent_temp="(2,0.5,0.999995)",
                loss_weights="[0.1, 10]", task="audio_pretraining", normalize=False)
    del args["_name"], args["layer_type"], args["pos_conv_depth"], args["attn_type"]
    checkpoint = oracle.checkpoint(state, args=argparse.Namespace(**args),
                                   extra={"train_meters": {"loss": AverageMeter()}})
    path = tmp_path / "wav2vec_small.pt"
    oracle.save_with_absent_modules(checkpoint, path,
                                    {"fairseq.logging.meters": {"AverageMeter": AverageMeter}})
    assert "fairseq.logging.meters" not in sys.modules
    loaded = load_model(path)
    assert "fairseq.logging.meters" not in sys.modules  # the loader imports nothing it names
    assert loaded.source == "fairseq" and loaded.config.quantizer.temperature_decay == 0.999995
    check_hidden_states(hf.wav2vec2, loaded.model.backbone.eval(), waveforms(), "fairseq args")
    compare_pretraining(hf, loaded.model, "fairseq args")


class DictConfig:  # omegaconf's pickled layout: containers and value nodes keep `_content`/`_val`
    def __init__(self, content: dict):
        self._metadata, self._parent = ContainerMetadata(), None
        self._content = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v)
                         for k, v in content.items()}

    def __getstate__(self):
        return dict(self.__dict__)


class AnyNode:
    def __init__(self, value):
        self._val, self._metadata, self._parent = value, ContainerMetadata(), None


class ContainerMetadata:
    def __init__(self):
        self.ref_type, self.object_type, self.optional = None, dict, True


def _write_ctc_checkpoint(tmp_path, hf, cfg_as_omegaconf: bool) -> None:
    state = oracle.fairseq_state(hf, ctc=True)
    # fine-tuned files keep no pretraining modules
    state = {k: v for k, v in state.items() if "quantizer" not in k and "project" not in k
             and "final_proj" not in k}
    cfg = oracle.ctc_cfg(hf.config, dropout=0.05)
    if cfg_as_omegaconf:
        cfg = DictConfig(cfg)
        oracle.save_with_absent_modules(
            oracle.checkpoint(state, cfg=cfg), tmp_path / "checkpoint_best.pt",
            {"omegaconf.dictconfig": {"DictConfig": DictConfig},
             "omegaconf.nodes": {"AnyNode": AnyNode},
             "omegaconf.base": {"ContainerMetadata": ContainerMetadata}})
    else:
        torch.save(oracle.checkpoint(state, cfg=cfg), tmp_path / "checkpoint_best.pt")
    counts = range(1000, 1000 - 10 * len(LETTERS), -10)
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} {c}\n" for s, c in zip(LETTERS, counts)))


@pytest.mark.parametrize("cfg_as_omegaconf", [False, True])
def test_ctc_checkpoint_gives_hf_logits_and_transcripts(tmp_path, cfg_as_omegaconf):
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + LETTERS
    # transformers' script: the CTC blank is fairseq's <s> (index 0), written as pad_token_id
    hf = hf_model("Wav2Vec2ForCTC", vocab_size=len(symbols), pad_token_id=0)
    with torch.no_grad():
        hf.lm_head.weight.mul_(50.0)  # a head that does not always pick one token
        hf.lm_head.bias[1:4] = -1e3  # a trained model never emits <pad>, </s>, <unk>
    _write_ctc_checkpoint(tmp_path, hf, cfg_as_omegaconf)
    loaded = load_model(tmp_path / "checkpoint_best.pt")
    assert isinstance(loaded.model, Wav2Vec2ForCTC) and loaded.source == "fairseq"
    assert loaded.vocab == ["<blank>", "<pad>", "</s>", "<unk>"] + LETTERS
    assert loaded.model.dropout.p == 0.05 and loaded.config.context.dropout == 0.05
    assert loaded.config.mask.prob == pytest.approx(0.05)  # fine-tuning's mask_prob 0.5 / 10
    assert loaded.config.encoder.grad_scale == 0.0  # feature_grad_mult 0: frozen encoder
    x = waveforms(batch=3)
    with torch.no_grad():
        ref = hf(x).logits
        ours = loaded.model.eval()(x).logits
    name = "fairseq ctc logits" + (" (omegaconf cfg)" if cfg_as_omegaconf else "")
    report(name, ours, ref, 1e-4)
    # fairseq's letter post-processing: collapse, drop the blank, "|" -> space
    expected = []
    for row in ref.argmax(-1).tolist():
        ids = [t for i, t in enumerate(row) if (i == 0 or t != row[i - 1]) and t != 0]
        expected.append("".join(symbols[t] for t in ids).replace("|", " ").strip())
    assert greedy_transcripts(ours, loaded.vocab) == expected
    assert any(len(t) > 2 for t in expected)


def test_dictionary_reader(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text("| 94802\nE 51860\nT 38431 #fairseq:overwrite\n' 1000\n")
    assert read_dictionary(path) == ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "T", "'"]


def test_ctc_dictionary_passed_explicitly(tmp_path):
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + LETTERS
    hf = hf_model("Wav2Vec2ForCTC", vocab_size=len(symbols), pad_token_id=0)
    _write_ctc_checkpoint(tmp_path, hf, cfg_as_omegaconf=False)
    (tmp_path / "dict.ltr.txt").rename(tmp_path / "letters.txt")
    with pytest.raises(FileNotFoundError, match="dict.ltr.txt"):
        load_model(tmp_path / "checkpoint_best.pt")
    loaded = from_fairseq(tmp_path / "checkpoint_best.pt", dictionary=tmp_path / "letters.txt")
    assert loaded.vocab[4:] == LETTERS
