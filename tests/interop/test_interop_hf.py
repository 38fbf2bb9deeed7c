"""Parity with HF transformers (the reference implementation) through HF folders.

What HF computes differently in pretraining (so the tests compare like with like):
- HF's ``loss`` is a sum over masked frames: ``contrastive_loss`` is the summed cross entropy and
  ``diversity_loss`` is (GV - perplexity) / GV times the number of masked frames M. Ours are means
  over masked frames, so HF's values are ours times M.
- HF has no feature penalty (fairseq's L2 term on the conv features): ours adds
  ``feature_penalty_weight * feature_penalty`` to ``total``; HF's loss equals ours without it.
- In eval mode HF's perplexity is that of the hard code choices (our ``code_perplexity``), so its
  diversity loss differs from ours, which always uses the softmax probabilities (fairseq's
  ``prob_perplexity``). In training mode both use the softmax probabilities of masked frames.
- HF draws Gumbel noise with no generator; the training-mode test replaces it by zero noise in
  both models (HF: ``torch.nn.functional.gumbel_softmax`` patched; ours: ``gumbel_noise=False``).
- HF marks a distractor equal to the positive by comparing projected vectors, we by comparing
  codes: the same distractors for distinct codevectors.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from audio_ssl.config import MaskConfig
from audio_ssl.interop import load_model
from audio_ssl.interop.hf import from_hf, save_hf, to_hf
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining, Wav2Vec2Model
from audio_ssl.models.masking import compute_span_mask, sample_negatives
from tests.conftest import small_model_config
from tests.interop.interop_helpers import (
    check_hidden_states,
    compare_logits,
    greedy_transcripts,
    hf_logits,
    hf_model,
    hf_negatives,
    report,
    waveforms,
    write_hf_vocab,
    zero_noise_gumbel_softmax,
)

transformers = pytest.importorskip("transformers")

NORM_ORDERS = [("group", False), ("layer", True), ("group", True), ("layer", False)]


@pytest.mark.parametrize("norm,stable", NORM_ORDERS)
def test_import_gives_hf_hidden_states_small(tmp_path, norm, stable):
    hf = hf_model("Wav2Vec2Model", norm=norm, stable=stable)
    hf.save_pretrained(tmp_path)
    loaded = from_hf(tmp_path)
    assert isinstance(loaded.model, Wav2Vec2Model) and loaded.source == "hf"
    assert loaded.config.encoder.norm == norm and loaded.config.context.layer_norm_first == stable
    check_hidden_states(hf, loaded.model.eval(), waveforms(), f"hf small {norm}/{stable}")


@pytest.mark.slow
@pytest.mark.parametrize("norm,stable", [("group", False), ("layer", True)])
def test_import_gives_hf_hidden_states_base(tmp_path, norm, stable):
    hf = hf_model("Wav2Vec2Model", size="base", norm=norm, stable=stable)
    hf.save_pretrained(tmp_path)
    loaded = from_hf(tmp_path)
    assert loaded.config.context.dim == 768 and loaded.config.context.layers == 12
    check_hidden_states(hf, loaded.model.eval(), waveforms(samples=16_000),
                         f"hf base {norm}/{stable}")


def test_padded_batch_matches_hf_with_attention_mask(tmp_path):
    """Layer-norm encoders: HF's attention mask and our lengths agree on padded batches (HF's
    group norm counts padded frames, so HF passes no mask for group-norm models)."""
    hf = hf_model("Wav2Vec2Model", norm="layer", stable=True)
    hf.save_pretrained(tmp_path)
    ours = from_hf(tmp_path).model.eval()
    x = waveforms()
    lengths = torch.tensor([x.shape[1], 5_000])
    x[1, 5_000:] = 0.0
    attention = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        ref = hf(x, attention_mask=attention).last_hidden_state
        out = ours(x, lengths)
    frames = int(out.frame_lengths[1])
    report("hf padded item", out.context[1, :frames], ref[1, :frames], 1e-4)
    report("hf full item", out.context[0], ref[0], 1e-4)


def test_old_weight_norm_names_and_pytorch_model_bin(tmp_path):
    """Older HF files name the positional conv's weight norm ``weight_g``/``weight_v`` and store
    ``pytorch_model.bin``."""
    hf = hf_model("Wav2Vec2Model")
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state = {k.replace("parametrizations.weight.original0", "weight_g")
             .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert any(k.endswith("weight_g") for k in state)
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    check_hidden_states(hf, from_hf(tmp_path).model.eval(), waveforms(), "hf weight_g/v .bin")


@pytest.mark.parametrize("training", [False, True])
def test_pretraining_logits_and_loss_match_hf(tmp_path, monkeypatch, training):
    hf = hf_model("Wav2Vec2ForPreTraining", norm="group", stable=False)
    hf.save_pretrained(tmp_path)
    loaded = from_hf(tmp_path)
    ours = loaded.model
    assert isinstance(ours, Wav2Vec2ForPretraining)
    x = waveforms()
    g = torch.Generator().manual_seed(3)
    frames = ours.backbone.frame_lengths(torch.tensor([x.shape[1]] * 2))
    mask = compute_span_mask(frames, int(frames[0]), MaskConfig(prob=0.15, length=3), g)
    indices, valid = sample_negatives(mask, hf.config.num_negatives, g)
    assert bool(valid.all())
    if training:  # zero Gumbel noise in both, so the code choices are deterministic
        monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", zero_noise_gumbel_softmax)
        ours.quantizer.cfg = replace(ours.quantizer.cfg, gumbel_noise=False)
        hf.set_gumbel_temperature(ours.cfg.quantizer.temperature(0))
    hf.train(training)
    ours.train(training)
    negatives = hf_negatives(mask, indices)
    with torch.no_grad():
        ref = hf(x, mask_time_indices=mask, sampled_negative_indices=negatives)
        out = ours(x, mask=mask, negatives=(indices, valid), step=0)
        reference_logits = hf_logits(hf, ref, mask, negatives)
    mode = "train" if training else "eval"
    compare_logits(f"hf pretraining logits ({mode})", out.logits, reference_logits, 1e-4)
    m = mask.sum()
    # HF sums over masked frames, we average
    report(f"hf contrastive loss / M ({mode})", out.contrastive, ref.contrastive_loss / m, 1e-5)
    if training:  # both from the softmax probabilities of the masked frames
        report("hf diversity loss / M (train)", out.diversity, ref.diversity_loss / m, 1e-5)
        penalty = ours.cfg.loss.feature_penalty_weight * out.feature_penalty
        report("hf loss / M = ours total - feature penalty (train)", out.total - penalty,
               ref.loss / m, 1e-5)
    else:  # HF's eval perplexity is that of the hard codes
        report("hf code perplexity (eval)", out.code_perplexity, ref.codevector_perplexity, 1e-4)


def test_ctc_logits_and_transcripts_match_hf(tmp_path):
    """HF's blank is its pad token, here at index 3: our head puts it first."""
    tokens = ["a", "b", "|", "<pad>", "<unk>", "c", "d", "e"]
    hf = hf_model("Wav2Vec2ForCTC", vocab_size=len(tokens), pad_token_id=3)
    with torch.no_grad():
        hf.lm_head.weight.mul_(50.0)  # a random head that does not always pick one token
    hf.save_pretrained(tmp_path)
    write_hf_vocab(tmp_path, tokens)
    loaded = load_model(tmp_path)
    assert isinstance(loaded.model, Wav2Vec2ForCTC) and loaded.source == "hf"
    assert loaded.vocab == ["<blank>", "a", "b", "|", "<unk>", "c", "d", "e"]
    x = waveforms(batch=3)
    with torch.no_grad():
        ref = hf(x).logits
        ours = loaded.model.eval()(x).logits
    report("hf ctc logits (blank first)", ours, ref[..., [3, 0, 1, 2, 4, 5, 6, 7]], 1e-4)
    processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path)
    expected = processor.batch_decode(ref.argmax(-1))
    assert greedy_transcripts(ours, loaded.vocab) == expected
    assert any(len(t) > 2 for t in expected)


@pytest.mark.parametrize("cls_name", ["Wav2Vec2Model", "Wav2Vec2ForPreTraining",
                                      "Wav2Vec2ForCTC"])
def test_export_and_reload_keeps_hf_outputs(tmp_path, cls_name):
    kwargs = {"norm": "layer", "stable": True}
    if cls_name == "Wav2Vec2ForCTC":
        kwargs.update(vocab_size=6, pad_token_id=0)
    hf = hf_model(cls_name, **kwargs)
    hf.save_pretrained(tmp_path / "in")
    if cls_name == "Wav2Vec2ForCTC":
        write_hf_vocab(tmp_path / "in", ["<pad>", "|", "a", "b", "<unk>", "c"])
    loaded = from_hf(tmp_path / "in")
    save_hf(loaded.model, tmp_path / "out", loaded.vocab, loaded.normalize)
    reloaded = getattr(transformers, cls_name).from_pretrained(tmp_path / "out").eval()
    before, after = hf.state_dict(), reloaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    x = waveforms()
    with torch.no_grad():
        a, b = hf(x, output_hidden_states=True), reloaded(x, output_hidden_states=True)
    for field in ("last_hidden_state", "projected_states", "projected_quantized_states", "logits"):
        if getattr(a, field, None) is not None:
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    if cls_name == "Wav2Vec2ForCTC":
        processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "out")
        assert processor.tokenizer.pad_token_id == 0
        assert processor.batch_decode(b.logits.argmax(-1)) == greedy_transcripts(
            b.logits, loaded.vocab)


def test_to_hf_runs_our_weights(tmp_path):
    torch.manual_seed(0)
    ours = Wav2Vec2ForPretraining(small_model_config("group", False)).eval()
    hf = to_hf(ours)
    assert isinstance(hf, transformers.Wav2Vec2ForPreTraining) and not hf.training
    x = waveforms()
    with torch.no_grad():
        ref = hf.wav2vec2(x, output_hidden_states=True)
        out = ours.backbone(x, return_layers=True)
    report("to_hf context", out.context, ref.last_hidden_state, 1e-4)
    ctc = Wav2Vec2ForCTC(small_model_config("layer", True), 5).eval()
    with torch.no_grad():
        report("to_hf ctc logits", ctc(x).logits, to_hf(ctc).eval()(x).logits, 1e-4)


def test_folders_need_no_transformers(tmp_path, monkeypatch):
    """Importing and exporting HF folders works with transformers absent."""
    torch.manual_seed(0)
    ours = Wav2Vec2ForCTC(small_model_config(), 4).eval()
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    save_hf(ours, tmp_path, ["<blank>", "|", "a", "b"])
    loaded = from_hf(tmp_path)
    assert loaded.vocab == ["<blank>", "|", "a", "b"]
    x = waveforms()
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x).logits, ours(x).logits)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForCTC"] and config["pad_token_id"] == 0


def test_masking_free_hf_model_gets_a_mask_embedding(tmp_path):
    """HF builds no masked_spec_embed when mask_time_prob = mask_feature_prob = 0."""
    hf = hf_model("Wav2Vec2Model", mask_time_prob=0.0)
    assert not hasattr(hf, "masked_spec_embed")
    hf.save_pretrained(tmp_path)
    loaded = from_hf(tmp_path)
    assert loaded.config.mask.prob == 0.0
    check_hidden_states(hf, loaded.model.eval(), waveforms(), "hf without mask embedding")
    save_hf(loaded.model, tmp_path / "out")
    assert "masked_spec_embed" not in load_file(str(tmp_path / "out" / "model.safetensors"))
