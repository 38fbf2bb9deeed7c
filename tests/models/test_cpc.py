"""CPC / wav2vec (v1): it learns a predictable future and not an unpredictable one; the causal
backbone ignores padding; the config refuses bad values."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from audio_ssl import config
from audio_ssl.models import pretraining_model
from audio_ssl.models.cpc import CpcForPretraining, CpcModel

CHANNELS = 12  # z width of the constructed latent sequences


def _cfg(context: str = "conv", **cpc) -> config.ModelConfig:
    m = config.preset("tiny").model
    values = dict(context=context, dim=32, layers=2, kernel=3, steps=3, negatives=10, **cpc)
    return replace(m, objective="cpc",
                   encoder=replace(m.encoder, conv_layers=((CHANNELS, 10, 5), (CHANNELS, 3, 2))),
                   cpc=config.CpcConfig(**values))


def _latents(kind: str, g: torch.Generator, batch: int = 8, frames: int = 64) -> torch.Tensor:
    """(B, T, C) latent frames. ramp: each pair of channels a rotation of its own period and a
    random phase per utterance, so z_{t+1} is a linear function of z_t and no frame of an
    utterance repeats another (periods 7..97 frames, all different); noise: i.i.d. N(0, 1)."""
    if kind == "noise":
        return torch.randn(batch, frames, CHANNELS, generator=g)
    periods = torch.tensor([97.0, 53.0, 31.0, 17.0, 11.0, 7.0])
    phase = torch.rand(batch, 1, CHANNELS // 2, generator=g) * 2 * math.pi
    angle = 2 * math.pi * torch.arange(frames)[None, :, None] / periods + phase  # (B, T, C/2)
    z = torch.cat([angle.cos(), angle.sin()], dim=-1)  # (B, T, C)
    return z + 0.05 * torch.randn(batch, frames, CHANNELS, generator=g)


def _train_then_accuracy(context: str, kind: str, updates: int = 60) -> torch.Tensor:
    """Context network + predictors trained on fresh latents each update (the feature encoder
    is bypassed); (K,) accuracy per step on a held-out batch."""
    torch.manual_seed(0)
    model = CpcForPretraining(_cfg(context))
    params = [p for n, p in model.named_parameters()
              if not n.startswith("backbone.feature_encoder.")]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    g = torch.Generator().manual_seed(1)
    lengths = torch.full((8,), 64)
    for _ in range(updates):
        out = model.objective(_latents(kind, g), lengths, generator=g)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        return model.objective(_latents(kind, g), lengths, generator=g).step_accuracy


@pytest.mark.parametrize("context", ["conv", "gru"])
def test_a_predictable_future_is_learned_and_noise_is_not(context):
    """Measured (2 cores): ramp >= 0.99 at every step, noise 0.09-0.12 (chance 1/11 = 0.09;
    ruling out the distractors the context has already seen lifts it a little)."""
    ramp = _train_then_accuracy(context, "ramp")
    assert ramp[0] >= 0.9, ramp
    noise = _train_then_accuracy(context, "noise")
    assert noise[0] <= 0.25, noise


def test_a_fresh_model_scores_near_a_uniform_guess_and_logs_every_step():
    torch.manual_seed(0)
    model = pretraining_model(_cfg())
    assert isinstance(model, CpcForPretraining)
    waveforms = torch.randn(3, 4000)
    out = model(waveforms, torch.tensor([4000, 3000, 1500]),
                generator=torch.Generator().manual_seed(0))
    assert abs(float(out.total) - math.log(11)) < 1.0
    metrics = out.metrics()
    for k in (1, 2, 3):
        assert f"train/accuracy_k{k}" in metrics and f"train/loss_k{k}" in metrics
    assert {"train/loss", "train/accuracy", "train/contrastive"} <= set(metrics)
    out.loss.backward()
    assert model.backbone.feature_encoder.layers[0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="masks none"):
        model(waveforms, mask=torch.zeros(3, 10, dtype=torch.bool))


@pytest.mark.parametrize("context", ["conv", "gru"])
def test_padded_batch_equals_items_one_by_one(context):
    """Causal: padding after a row's end changes none of its frames (layer-norm encoder: no
    statistics over time)."""
    torch.manual_seed(0)
    cfg = _cfg(context)
    model = CpcModel(replace(cfg, encoder=replace(cfg.encoder, norm="layer"))).eval()
    lengths = torch.tensor([4000, 2500])
    waveforms = torch.randn(2, 4000)
    with torch.no_grad():
        batch = model(waveforms, lengths, return_layers=True)
        for i, n in enumerate(lengths.tolist()):
            one = model(waveforms[i:i + 1, :n], return_layers=True)
            frames = one.context.shape[1]
            assert frames == int(batch.frame_lengths[i])
            torch.testing.assert_close(batch.context[i, :frames], one.context[0])
            assert len(one.hidden_states) == cfg.cpc.layers + 1


def test_bad_cpc_values_are_one_clear_error():
    with pytest.raises(ValueError, match=r"model\.cpc\.steps is 0: expected an integer"):
        config.load("tiny", overrides={"model": {"objective": "cpc", "cpc": {"steps": 0}}})
    with pytest.raises(ValueError, match="expected one of"):
        config.load("tiny", overrides={"model": {"cpc": {"context": "lstm"}}})


@pytest.mark.parametrize("name", ["tiny", "base", "large"])
def test_every_preset_builds_a_cpc_model(name):
    cfg = config.load(name, overrides={"model": {"objective": "cpc"}})
    assert isinstance(pretraining_model(cfg.model), CpcForPretraining)


def test_extracted_layers_are_z_and_the_context_outputs():
    """A CPC checkpoint's model through the extractor: ``encoder`` is z (layer-normed), layer_i
    each context layer's output, equal to the backbone's own forward."""
    from audio_ssl.extract.extractor import FeatureExtractor

    torch.manual_seed(0)
    model = CpcForPretraining(_cfg()).eval()
    waveforms = torch.randn(1, 8000)
    extractor = FeatureExtractor(model, layers="encoder,all", device="cpu", precision="fp32")
    assert extractor.layers == ("encoder", "layer_0", "layer_1", "layer_2")
    features, frames = extractor.model(waveforms)
    with torch.no_grad():
        out = model.backbone(waveforms, return_layers=True)
    torch.testing.assert_close(features["encoder"], out.features)
    for i, state in enumerate(out.hidden_states):
        torch.testing.assert_close(features[f"layer_{i}"], state)
    torch.testing.assert_close(features["layer_2"], out.context)


def test_ctc_fine_tuning_puts_its_head_on_the_pretrained_causal_context():
    """What `audio-ssl finetune` builds from a CPC checkpoint: Wav2Vec2ForCTC with the CPC
    backbone, loaded from the pretraining state dict, masks as fine-tuning draws them."""
    from audio_ssl.models import Wav2Vec2ForCTC

    torch.manual_seed(0)
    cfg = _cfg()
    pretrained = CpcForPretraining(cfg)
    ctc = Wav2Vec2ForCTC(cfg, vocab_size=5)
    assert isinstance(ctc.backbone, CpcModel) and ctc.head.in_features == cfg.cpc.dim
    ctc.load_backbone(pretrained.state_dict())
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(ctc.backbone.state_dict()[key], value), key
    waveforms = torch.randn(2, 4000)
    lengths = torch.tensor([4000, 3000])
    frames = ctc.backbone.frame_lengths(lengths)  # (2,)
    time_mask = torch.zeros(2, int(frames[0]), dtype=torch.bool)
    time_mask[:, 5:10] = True
    channel_mask = torch.zeros(2, cfg.cpc.dim, dtype=torch.bool)
    channel_mask[:, :4] = True
    out = ctc(waveforms, lengths, mask=time_mask, channel_mask=channel_mask)
    assert out.logits.shape == (2, int(frames[0]), 5) and torch.equal(out.frame_lengths, frames)
    out.logits.sum().backward()
    assert ctc.backbone.context.layers[0].conv.weight.grad.abs().sum() > 0
