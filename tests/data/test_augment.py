"""Speed perturbation: each row of a batch as resampled alone, frequencies and lengths by the
closed form, and fine-tuning's choice of speeds (a pure function of the update; never a speed
that leaves a transcript unalignable)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from audio_ssl import config
from audio_ssl.data.augment import perturbed_lengths, speed_perturb, speed_rate
from audio_ssl.data.labelled import LabelledBatch
from audio_ssl.data.text import Vocabulary
from audio_ssl.tasks.finetune import FinetuneTask
from tests.conftest import small_model_config

SR = 16_000


def _padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    waveforms = torch.zeros(len(lengths), max(lengths))  # (B, S)
    for b, n in enumerate(lengths):
        waveforms[b, :n] = torch.randn(n, generator=g)
    return waveforms, torch.tensor(lengths)


def test_each_row_is_what_resampling_it_alone_gives():
    lengths = [16_000, 9_001, 12_345, 4_000, 15_999]
    factors = torch.tensor([0.9, 1.0, 1.1, 1.1, 0.95], dtype=torch.float64)
    waveforms, lens = _padded(lengths)
    out, new = speed_perturb(waveforms, lens, factors, SR)
    assert out.shape == (5, int(new.max()))
    for b, (n, f) in enumerate(zip(lengths, factors.tolist())):
        rate = speed_rate(f, SR)
        alone = waveforms[b, :n] if rate == SR else AF.resample(waveforms[b, :n], rate, SR)
        assert int(new[b]) == alone.shape[0] == math.ceil(n * SR / rate)
        if f == 1.0:
            assert torch.equal(out[b, :n], waveforms[b, :n])  # untouched, bit for bit
        else:
            torch.testing.assert_close(out[b, :int(new[b])], alone, atol=1e-5, rtol=1e-5)
        assert not out[b, int(new[b]):].any()  # zero padded after the row
    assert torch.equal(perturbed_lengths(lens, factors, SR), new)


def test_mixed_precision_resamples_in_fp32():
    waveforms, lens = _padded([16_000, 12_000])
    factors = torch.tensor([0.9, 1.1])
    plain, _ = speed_perturb(waveforms, lens, factors, SR)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as training's bf16-mixed step is
        mixed, _ = speed_perturb(waveforms, lens, factors, SR)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)


def test_a_tone_played_faster_is_higher_and_shorter():
    t = np.arange(SR) / SR
    tone = torch.tensor(np.sin(2 * np.pi * 440.0 * t), dtype=torch.float32)[None]  # (1, S)
    for factor in (0.9, 1.1, 1.25):
        out, new = speed_perturb(tone, torch.tensor([SR]), torch.tensor([factor]), SR)
        n = int(new[0])
        assert n == math.ceil(SR / factor)
        spectrum = np.abs(np.fft.rfft(out[0, :n].numpy() * np.hanning(n)))
        peak = np.argmax(spectrum) * SR / n  # Hz
        assert peak == pytest.approx(440.0 * factor, abs=SR / n)  # within one bin


def _task(factors: tuple[float, ...]) -> FinetuneTask:
    cfg = config.finetune_preset("tiny", small_model_config())
    cfg = replace(cfg, data=replace(cfg.data, speed_factors=factors))
    return FinetuneTask(cfg, Vocabulary(("<blank>", "|", "a", "b", "c")))


def _batch(lengths: list[int], targets: list[list[int]]) -> LabelledBatch:
    waveforms, lens = _padded(lengths)
    width = max(map(len, targets))
    padded = torch.tensor([t + [0] * (width - len(t)) for t in targets])  # (B, L)
    return LabelledBatch(waveforms=waveforms, lengths=lens, targets=padded,
                         target_lengths=torch.tensor([len(t) for t in targets]),
                         indices=list(range(len(lengths))))


def test_speeds_are_a_pure_function_of_the_update_and_drawn_from_the_list():
    task = _task((0.9, 1.0, 1.1))
    batch = _batch([16_000] * 64, [[2, 3]] * 64)
    first = task.speeds(batch, step=7)
    assert torch.equal(first, task.speeds(batch, step=7))  # resume draws the same
    assert not torch.equal(first, task.speeds(batch, step=8))
    assert set(first.tolist()) == {0.9, 1.0, 1.1}
    assert _task(()).speeds(batch, step=7) is None
    assert _task(()).perturb(batch, step=7) is batch


def test_a_speed_that_would_leave_the_transcript_unalignable_is_not_used():
    task = _task((1.5,))
    frames = int(task.model.backbone.frame_lengths(torch.tensor([16_000]))[0])
    fast = int(task.model.backbone.frame_lengths(
        perturbed_lengths(torch.tensor([16_000]), torch.tensor([1.5]), SR))[0])
    # needs all its frames: a token per frame with a blank between the two repeated "a"s
    tight = [2, 2] + [3, 4] * ((frames - 3) // 2) + [3] * ((frames - 3) % 2)
    assert len(tight) + 1 == frames and fast < frames
    loose = [2, 3]
    speeds = task.speeds(_batch([16_000, 16_000], [tight, loose]), step=0)
    assert speeds.tolist() == [1.0, 1.5]
    batch = task.perturb(_batch([16_000, 16_000], [tight, loose]), step=0)
    assert batch.lengths.tolist() == [16_000, math.ceil(16_000 / 1.5)]


@pytest.mark.parametrize("bad, expected", [([0.9, 3], r"\[1\] is 3.0: expected a speed between"),
                                           ([0.4], r"\[0\] is 0.4: expected a speed between"),
                                           ([True], r"\[0\]: expected float"),
                                           (["fast"], r"\[0\]: expected float")])
def test_speed_factors_outside_the_range_are_refused_by_name(bad, expected):
    with pytest.raises(ValueError, match=r"data\.speed_factors" + expected):
        config.load_finetune("tiny", overrides={"data": {"speed_factors": bad}})
