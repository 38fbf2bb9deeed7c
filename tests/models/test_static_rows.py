"""The pretraining heads take the masked frames as a fixed number of rows (a host-side bound,
filler rows weighted out) instead of ``x[mask]``, so the step needs no host sync. These tests
hold them to the boolean-indexing formulation they replaced, kept here as the reference: same
masks and distractors for the same generator, same loss, metrics and gradients."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audio_ssl import config
from audio_ssl.losses.contrastive import (
    contrastive_accuracy,
    contrastive_logits,
    diversity_loss,
    similarity_sums,
)
from audio_ssl.models.masking import (
    compute_span_mask,
    masked_rows,
    max_masked_frames,
    sample_negatives,
)
from audio_ssl.models.pretraining import pretraining_model
from audio_ssl.models.quantizer import perplexity
from tests.conftest import small_model_config, tiny_wav2vec2


def _old_sample_negatives(mask, num_negatives, generator):
    """The distractor sampler as it was (repeat_interleave of the masked counts, M rows)."""
    counts = mask.sum(-1)
    utt = torch.repeat_interleave(torch.arange(mask.shape[0]), counts)
    offsets = torch.cumsum(counts, 0) - counts
    local = torch.arange(utt.shape[0]) - offsets[utt]
    others = (counts[utt] - 1).clamp(min=0)
    draw = torch.rand(utt.shape[0], num_negatives, generator=generator)
    pick = torch.floor(draw * others[:, None]).long()
    pick = pick + (pick >= local[:, None]).long()
    valid = (others > 0)[:, None].expand_as(pick)
    return torch.where(valid, offsets[utt][:, None] + pick, torch.zeros_like(pick)), valid


def _reference(model, x, lengths, step, generator, labels=None):
    """The loss of the step as it was: masked frames gathered with ``x[mask]`` (M rows)."""
    cfg = model.cfg
    frames = model.backbone.frame_lengths(lengths)
    num_frames = model.backbone.frame_lengths(x.shape[1])
    mask = compute_span_mask(frames, num_frames, cfg.mask, generator)
    if labels is not None:
        mask = mask & (labels >= 0)
    out = model.backbone(x, lengths, mask=mask, generator=generator)
    result = {"mask": mask}
    if cfg.objective != "wav2vec2":
        c = out.context[mask].float()
        if cfg.objective == "best-rq":
            target = model.targets(x, lengths)[mask]
            logits = model.head(c)
        else:
            target = labels[mask]
            logits = (F.normalize(model.final_proj(c), dim=-1)
                      @ F.normalize(model.label_embeddings.float(), dim=-1).T
                      / cfg.hubert.logit_temperature)
        m = target.shape[0]
        result["loss"] = F.cross_entropy(logits, target, reduction="sum") / m
        result["accuracy"] = (logits.argmax(-1) == target).sum().float() / m
        result["logits"] = logits
        codes = cfg.best_rq.codes if cfg.objective == "best-rq" else cfg.hubert.clusters
        result["code_perplexity"] = perplexity(torch.bincount(target, minlength=codes)[None] / m)
        return result
    features = out.features[mask]
    q = None
    if model.quantizer is None:
        targets = model.project_q(model.dropout_features(features))
    else:
        q = model.quantizer(model.dropout_features(features), cfg.quantizer.temperature(step))
        targets = model.project_q(q.quantized)
    context = model.final_proj(out.context[mask])
    idx, valid = _old_sample_negatives(mask, cfg.loss.num_negatives, generator)
    codes = q.codes if q is not None and cfg.loss.mask_identical_negatives else None
    logits = contrastive_logits(context, targets, idx, valid, codes, cfg.loss.logit_temperature)
    m = logits.shape[0]
    ce = F.cross_entropy(logits, torch.zeros(m, dtype=torch.long), reduction="sum") / m
    w = cfg.loss
    loss = ce + w.feature_penalty_weight * out.raw_features.float().pow(2)[~out.padding_mask
               if out.padding_mask is not None else slice(None)].mean()
    if q is not None:
        prob_perplexity = perplexity(q.prob_sum / m)
        loss = loss + w.diversity_weight * diversity_loss(prob_perplexity, cfg.quantizer.groups,
                                                          cfg.quantizer.codes)
        result["prob_perplexity"] = prob_perplexity
        result["code_perplexity"] = perplexity(q.code_sum / m)
        result["noise_flip_rate"] = q.noise_flips / (m * cfg.quantizer.groups)
    sims = similarity_sums(logits, targets, idx, w.logit_temperature)
    result.update(loss=loss, logits=logits, accuracy=contrastive_accuracy(logits) / m,
                  positive_cosine=sims[0] / sims[4], distractor_cosine=sims[1] / sims[3],
                  target_cosine=sims[2] / sims[3])
    return result


def _models():
    tiny = tiny_wav2vec2()
    small = small_model_config("group", False)
    yield "tiny", tiny
    yield "quantized, Gumbel noise", replace(small, dropout_input=0.1)
    yield "quantized, layer-norm encoder", small_model_config("layer", True)
    yield "continuous", replace(small, quantize_targets=False)
    yield "layer drop", replace(small, context=replace(small.context, layer_drop=0.5))
    yield "best-rq", replace(small, objective="best-rq", best_rq=replace(tiny.best_rq, codes=64))
    yield "hubert", replace(small, objective="hubert", hubert=replace(tiny.hubert, clusters=20))


MODELS = dict(_models())


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("name", list(MODELS))
def test_step_equals_the_boolean_indexing_step(name, padded):
    cfg = MODELS[name]
    samples = 8_000
    lengths = torch.tensor([samples, 6_100, 5_000]) if padded else torch.full((3,), samples)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, samples, generator=g) * (torch.arange(samples)[None] < lengths[:, None])
    labels, extra = None, {}
    if cfg.objective == "hubert":
        torch.manual_seed(0)
        frames = pretraining_model(cfg).backbone.frame_lengths(lengths)
        labels = torch.randint(0, 20, (3, int(frames[0])), generator=g)
        labels[torch.arange(labels.shape[1])[None] >= frames[:, None]] = -1
        labels[0, 3:7] = -1  # unlabelled frames are never predicted
        extra["labels"] = labels

    def run(reference: bool):
        torch.manual_seed(0)
        model = pretraining_model(cfg).train()
        torch.manual_seed(11)  # dropout and Gumbel noise
        generator = torch.Generator().manual_seed(123)
        if reference:
            r = _reference(model, x, lengths, 3, generator, labels)
        else:
            out = model(x, lengths, step=3, generator=generator, padded=padded, **extra)
            r = {"loss": out.loss, "mask": out.mask, "logits": out.logits, "accuracy": out.accuracy}
            if cfg.objective != "wav2vec2" or cfg.quantize_targets:
                r["code_perplexity"] = out.code_perplexity
            if cfg.objective == "wav2vec2":
                r.update(positive_cosine=out.positive_cosine,
                         distractor_cosine=out.distractor_cosine, target_cosine=out.target_cosine)
                if cfg.quantize_targets:
                    r.update(prob_perplexity=out.prob_perplexity,
                             noise_flip_rate=out.noise_flip_rate)
            assert out.row_logits.shape[0] >= out.logits.shape[0]  # filler rows, weighted out
            torch.testing.assert_close(out.loss, out.total, rtol=1e-6, atol=1e-6)
        r["loss"].backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in r.items()}, grads

    ref, ref_grads = run(reference=True)
    new, new_grads = run(reference=False)
    assert torch.equal(new["mask"], ref["mask"])
    assert set(new) == set(ref)
    for key in ref:
        torch.testing.assert_close(new[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    assert set(new_grads) == set(ref_grads)
    for name_, grad in ref_grads.items():
        torch.testing.assert_close(new_grads[name_], grad, rtol=1e-5, atol=1e-6, msg=name_)


def test_rows_sampler_matches_the_old_one_and_pads_with_invalid_rows():
    g = torch.Generator().manual_seed(4)
    mask = torch.zeros(5, 50, dtype=torch.bool)
    mask[0, 3:13] = True
    mask[2, 40:42] = True  # row 1 has no masked frame
    mask[3, 7:27] = True
    mask[4, 9] = True  # one masked frame: no distractor
    m = int(mask.sum())
    old = _old_sample_negatives(mask, 30, torch.Generator().manual_seed(7))
    dynamic = sample_negatives(mask, 30, torch.Generator().manual_seed(7))
    padded = sample_negatives(mask, 30, torch.Generator().manual_seed(7), rows=m + 17)
    for a, b in zip(old, dynamic):
        assert torch.equal(a, b)
    for a, b in zip(old, padded):
        assert torch.equal(a, b[:m])
    assert padded[0].shape == (m + 17, 30) and not padded[1][m:].any()
    positions, valid = masked_rows(mask, m + 17)
    x = torch.randn(5, 50, 3, generator=g)
    assert torch.equal(x.flatten(0, 1)[positions[:m]], x[mask])
    assert valid[:m].all() and not valid[m:].any()


def test_max_masked_frames_bounds_every_span_mask():
    g = torch.Generator().manual_seed(0)
    for prob, length, min_masks in ((0.065, 10, 2), (0.1, 5, 2), (0.5, 3, 1), (0.2, 4, 0)):
        cfg = config.MaskConfig(prob=prob, length=length, min_masks=min_masks)
        for frames in (1, 3, 10, 49, 50, 99, 137):
            lengths = torch.randint(1, frames + 1, (64,), generator=g)
            lengths[0] = frames
            masked = compute_span_mask(lengths, frames, cfg, g).sum(-1)
            assert int(masked.max()) <= max_masked_frames(frames, cfg), (cfg, frames)


def test_max_masked_frames_covers_the_largest_uniform_draw():
    """The span count is floor(prob * T + u) in float32; u < 1 rounds up to an integer when
    prob * T is one (10 + 0.99999994 -> 11.0 in float32): the bound must allow for it."""
    u = torch.tensor(1.0 - 2.0**-24)  # the largest float32 below 1 (torch.rand's largest draw)
    for prob in (0.065, 0.1, 0.05, 0.3):
        for frames in range(1, 400):
            spans = int(torch.floor(prob * torch.tensor([frames]).float() + u))
            cfg = config.MaskConfig(prob=prob, length=1, min_masks=0)
            assert max_masked_frames(frames, cfg) >= min(frames, spans), (prob, frames)
    assert np.float32(10.0) + np.float32(1.0 - 2.0**-24) == np.float32(11.0)
    assert max_masked_frames(100, config.MaskConfig(prob=0.1, length=1, min_masks=0)) == 11
