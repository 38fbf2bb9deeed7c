"""Masked reconstruction: log-mel targets stacked to the encoder's frames, a masked-frame loss
that equals a naive loop over utterances and frames, padding that never counts."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torchaudio
from torch import nn

from audio_ssl import config
from audio_ssl.losses.reconstruction import reconstruction_objective
from audio_ssl.models import ReconstructForPretraining, pretraining_model
from audio_ssl.models.feature_encoder import frame_lengths
from audio_ssl.models.masking import compute_span_mask
from audio_ssl.models.reconstruct import mel_stack
from tests.conftest import small_model_config
from tests.models.test_pretraining import _batch

LENGTHS = [16_000, 11_000, 7_300]


def _cfg(**reconstruct):
    cfg = small_model_config()
    return replace(cfg, objective="reconstruct",
                   reconstruct=replace(cfg.reconstruct, **reconstruct))


def _padded_batch():
    """(B, S) audio with zeros after each item's length, (B,) lengths, (B,) frame lengths."""
    x = _batch(batch=3)
    lengths = torch.tensor(LENGTHS)
    x = x * (torch.arange(x.shape[1])[None] < lengths[:, None])
    return x, lengths, frame_lengths(lengths, small_model_config().encoder.conv_layers)


class KnownHead(nn.Module):
    """A head whose output is a given tensor, whatever the context."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.output


def _naive(prediction, target, mask, frames, kind):
    """(loss, l1 masked, l1 unmasked, masked fraction) by a loop over utterances, valid frames
    and dimensions, in Python floats."""
    sums = {"loss": 0.0, "masked": 0.0, "unmasked": 0.0}
    masked = unmasked = 0
    dims = prediction.shape[-1]
    for b in range(prediction.shape[0]):
        for t in range(int(frames[b])):  # padding frames are never visited
            l1 = sum(abs(float(prediction[b, t, d]) - float(target[b, t, d])) for d in range(dims))
            if bool(mask[b, t]):
                masked += 1
                sums["masked"] += l1
                sums["loss"] += l1 if kind == "l1" else sum(
                    (float(prediction[b, t, d]) - float(target[b, t, d])) ** 2 for d in range(dims))
            else:
                unmasked += 1
                sums["unmasked"] += l1
    return (sums["loss"] / (masked * dims), sums["masked"] / (masked * dims),
            sums["unmasked"] / (unmasked * dims), masked / (masked + unmasked))


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_objective_equals_a_naive_loop_bit_for_bit(kind):
    """Values on a grid of quarters: every sum is exact in fp32, so the vectorised objective and
    the loop agree to the last bit (one rounding, the final division)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.tensor([20, 13, 7])
    valid = torch.arange(20)[None] < frames[:, None]  # (B, T)
    prediction = torch.randint(-16, 17, (3, 20, 8), generator=g).float() / 4
    target = torch.randint(-16, 17, (3, 20, 8), generator=g).float() / 4
    prediction[~valid] = 1e6  # padding: large values that would dominate if they counted
    mask = compute_span_mask(frames, 20, config.MaskConfig(prob=0.2, length=3),
                             torch.Generator().manual_seed(1))
    out = reconstruction_objective(prediction, target, mask, valid, kind)
    loss, l1_masked, l1_unmasked, fraction = _naive(prediction, target, mask, frames, kind)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    assert torch.equal(out.total, f32(loss)) and torch.equal(out.loss, f32(loss))
    assert torch.equal(out.l1_masked, f32(l1_masked))
    assert torch.equal(out.l1_unmasked, f32(l1_unmasked))
    assert torch.equal(out.masked_fraction, f32(fraction))
    assert out.num_masked == mask.sum()


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_copy_through_model_loss_is_the_formula(kind):
    """A model whose head copies the targets through at unmasked frames (and predicts the
    previous frame's target, plus 0.5, at masked ones) on a padded batch: its loss is what a
    loop over utterances and valid frames gives, the unmasked frames' l1 is exactly 0."""
    torch.manual_seed(0)
    model = pretraining_model(_cfg(loss=kind)).eval()
    x, lengths, frames = _padded_batch()
    mask = compute_span_mask(frames, int(frames.max()), model.cfg.mask,
                             torch.Generator().manual_seed(0))
    target = model.targets.stacked(x, lengths)  # (B, T, F)
    guess = torch.roll(target, 1, dims=1) + 0.5
    prediction = torch.where(mask[..., None], guess, target)  # (B, T, F)
    padding = torch.arange(target.shape[1])[None] >= frames[:, None]
    prediction[padding] = 1e6  # never counted
    model.head = KnownHead(prediction)
    with torch.no_grad():
        out = model(x, lengths, mask=mask, padded=True)
    loss, l1_masked, l1_unmasked, fraction = _naive(prediction, target, mask, frames, kind)
    assert l1_unmasked == 0.0 and float(out.l1_unmasked) == 0.0
    torch.testing.assert_close(out.total, torch.tensor(loss), rtol=2e-6, atol=0)
    torch.testing.assert_close(out.l1_masked, torch.tensor(l1_masked), rtol=2e-6, atol=0)
    assert float(out.masked_fraction) == pytest.approx(fraction, abs=1e-7)
    assert torch.equal(out.mask, mask)


def test_targets_stack_and_normalise_as_a_manual_computation():
    """10 ms log-mel frames (25 ms windows: the conv stack's receptive field), each mel channel
    normalised over the utterance, two per 20 ms encoder frame in time order (the last encoder
    frame repeats its first half when the audio ends), 80 mels -> 160 values."""
    cfg = _cfg()
    model = ReconstructForPretraining(cfg)
    samples = 11_000
    x = _batch(batch=1, samples=samples)
    got = model.targets.stacked(x, torch.tensor([samples]))[0]  # (T, 160)
    num_frames = frame_lengths(samples, cfg.encoder.conv_layers)
    assert got.shape == (num_frames, 160)

    mel = torchaudio.transforms.MelSpectrogram(16_000, n_fft=400, win_length=400, hop_length=160,
                                               n_mels=80, center=False, power=2.0)
    logmel = torch.log(mel(x[0]) + 1e-6).double()  # (80, J)
    steps = logmel.shape[1]
    assert steps == (samples - 400) // 160 + 1 == 2 * num_frames - 1  # the last half is missing
    norm = torch.empty_like(logmel)
    for m in range(80):
        values = [float(v) for v in logmel[m]]
        mean = sum(values) / steps
        var = sum((v - mean) ** 2 for v in values) / steps
        norm[m] = (logmel[m] - mean) / math.sqrt(var + 1e-5)
    for t in range(num_frames):
        first, second = 2 * t, min(2 * t + 1, steps - 1)
        expected = torch.cat([norm[:, first], norm[:, second]])  # (160,)
        torch.testing.assert_close(got[t].double(), expected, atol=2e-4, rtol=1e-4)
    assert abs(float(got[:, :80].mean())) < 0.05 and abs(float(got[:, :80].std()) - 1) < 0.05


@pytest.mark.parametrize("last_stride, stack", [(2, 2), (4, 4), (3, 3)])
def test_stack_follows_the_conv_stacks_hop(last_stride, stack):
    conv = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2), (32, 2, last_stride))
    cfg = replace(_cfg(n_mels=20), encoder=replace(small_model_config().encoder, conv_layers=conv))
    assert mel_stack(conv, 16_000) == stack
    model = ReconstructForPretraining(cfg)
    assert model.head.out_features == 20 * stack
    x = _batch(batch=2)
    out = model(x)
    assert out.prediction.shape == out.targets.shape == (
        2, frame_lengths(x.shape[1], conv), 20 * stack)


def test_a_hop_that_is_no_whole_number_of_mel_frames_is_refused():
    conv = ((32, 10, 5), (32, 5, 5), (32, 2, 2), (32, 2, 2), (32, 2, 2))  # 200 samples
    cfg = replace(_cfg(), encoder=replace(small_model_config().encoder, conv_layers=conv))
    with pytest.raises(ValueError, match="hop of 200 samples must be a multiple of it"):
        ReconstructForPretraining(cfg)


def test_padding_never_counts():
    """Garbage in the padded samples changes nothing; the padded batch's targets at valid frames
    are each item's own."""
    torch.manual_seed(0)
    model = pretraining_model(_cfg()).eval()
    x, lengths, frames = _padded_batch()
    noisy = x + 3.0 * torch.randn(x.shape) * (torch.arange(x.shape[1])[None] >= lengths[:, None])
    mask = compute_span_mask(frames, int(frames.max()), model.cfg.mask,
                             torch.Generator().manual_seed(2))
    with torch.no_grad():
        clean, dirty = model(x, lengths, mask=mask), model(noisy, lengths, mask=mask)
    for name in ("total", "l1_masked", "l1_unmasked", "masked_fraction"):
        torch.testing.assert_close(getattr(dirty, name), getattr(clean, name), rtol=1e-6, atol=0)
    assert float(clean.masked_fraction) == pytest.approx(float(mask.sum() / frames.sum()))
    together = model.targets.stacked(noisy, lengths)
    for i in range(3):
        alone = model.targets.stacked(x[i : i + 1, : lengths[i]], lengths[i : i + 1])[0]
        torch.testing.assert_close(together[i, : frames[i]], alone, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_the_backbone_and_hidden_head():
    torch.manual_seed(0)
    model = pretraining_model(_cfg(head_hidden=32, loss="l2"))
    assert isinstance(model.head, nn.Sequential) and isinstance(model.head[1], nn.GELU)
    out = model(_batch(batch=2), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert not out.l1_unmasked.requires_grad and not out.l1_masked.requires_grad
    assert model.backbone.feature_encoder.layers[0].conv.weight.grad.abs().sum() > 0
    assert model.head[0].weight.grad.abs().sum() > 0
    assert set(out.metrics()) == {"train/loss", "train/l1_masked", "train/l1_unmasked",
                                  "train/masked_fraction"}
    assert 0.2 < float(out.masked_fraction) < 0.7


def test_config_is_validated_with_one_line():
    with pytest.raises(ValueError, match=r"^model.reconstruct.n_mels is 0: expected at least 1$"):
        config.load("tiny", overrides={"model": {"reconstruct": {"n_mels": 0}}})
    with pytest.raises(ValueError, match=r"head_hidden is -1: expected at least 0"):
        config.load("tiny", overrides={"model": {"reconstruct": {"head_hidden": -1}}})
    with pytest.raises(ValueError, match=r"reconstruct.loss: expected one of \['l1', 'l2'\]"):
        config.load("tiny", overrides={"model": {"reconstruct": {"loss": "huber"}}})
    cfg = config.load("tiny", overrides={"model": {"objective": "reconstruct",
                                                   "reconstruct": {"head_hidden": 64}}})
    assert cfg.model.reconstruct == config.ReconstructConfig(n_mels=80, head_hidden=64, loss="l1")


def test_command_line_names_a_bad_reconstruct_value_in_one_line(tmp_path, capsys):
    from audio_ssl.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {reconstruct: {n_mels: 0}}\n")
    assert main(["pretrain", str(tmp_path), "--objective", "reconstruct", "--config", str(bad),
                 "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.reconstruct.n_mels is 0" in err, err
    assert not (tmp_path / "run").exists()


def test_backbone_exports_as_a_plain_wav2vec2_model(tmp_path):
    from audio_ssl.interop import save_hf

    model = pretraining_model(_cfg())
    save_hf(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [
        "Wav2Vec2Model"]


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_unlogged_training_step_does_not_sync(padded):
    """As the other objectives (tests/tasks/test_no_host_sync.py): an update that writes no
    record never waits for the device."""
    from tests.tasks.test_no_host_sync import _batch as sync_batch
    from tests.tasks.test_no_host_sync import _step_syncs, _task

    task = _task("reconstruct", padded)
    assert task.global_step % task.cfg.train.log_every  # not a logged step
    syncs = _step_syncs(task, sync_batch(task, padded))
    assert syncs == [], "host syncs in the training step:\n" + "\n".join(syncs)
