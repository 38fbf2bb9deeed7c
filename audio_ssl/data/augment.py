"""Augmentation of labelled speech for fine-tuning: speed perturbation.

Speed perturbation (Ko et al., 2015, *Audio augmentation for speech recognition*; Kaldi's
``perturb_data_dir_speed.sh``, ESPnet's and lhotse's ``perturb_speed``) plays an utterance faster
or slower, tempo and pitch together, as a tape played at another speed: the waveform, recorded at
``sample_rate``, is read as if it had been recorded at ``factor * sample_rate`` and resampled back
to ``sample_rate``. ``factor`` 1.1 makes it 1/1.1 as long and every frequency 1.1 times higher.
The transcript does not change, so CTC sees the same words said by a slightly different voice at
a slightly different rate: with few labelled utterances, more of what a voice can do.

The resampler is :func:`torchaudio.functional.resample` with its defaults, the one that reads
audio (:mod:`audio_ssl.data.audio`); a batch is resampled one factor at a time, all its rows of
that factor in one call, on the batch's device, in fp32 whatever the autocast around it.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF

from audio_ssl.data.audio import resampled_length


def speed_rate(factor: float, sample_rate: int) -> int:
    """The rate the waveform is read at so that resampling it to ``sample_rate`` plays it at
    ``factor`` times its speed (rounded to whole hertz)."""
    return int(round(float(factor) * int(sample_rate)))


def perturbed_lengths(lengths: torch.Tensor, factors: torch.Tensor,
                      sample_rate: int) -> torch.Tensor:
    """Samples (B,) of each row after :func:`speed_perturb`, on the host: ``ceil(length * sr /
    rate)`` (:func:`~audio_ssl.data.audio.resampled_length`, what the resampler gives)."""
    sr = int(sample_rate)
    return torch.tensor([resampled_length(n, speed_rate(f, sr), sr)
                         for n, f in zip(lengths.tolist(), factors.tolist())],
                        dtype=torch.int64)  # (B,)


def speed_perturb(waveforms: torch.Tensor, lengths: torch.Tensor, factors: torch.Tensor,
                  sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of a padded batch played at its own speed.

    Args:
        waveforms: (B, S) float, zero padded after each row's ``lengths``.
        lengths: (B,) real samples.
        factors: (B,) speed of each row (1.0: unchanged, bit for bit).
        sample_rate: the rate of ``waveforms`` and of the result.

    Returns:
        (B, S') waveforms, zero padded, S' the longest new row, and their lengths (B,) on
        ``lengths``'s device. Each row is what resampling it alone gives (the zeros after a row
        are the zeros the resampler pads it with).
    """
    if (waveforms.dim() != 2 or lengths.shape != (waveforms.shape[0],)
            or factors.shape != lengths.shape):
        raise ValueError(f"expected waveforms (B, S), lengths (B,) and factors (B,); got "
                         f"{tuple(waveforms.shape)}, {tuple(lengths.shape)}, "
                         f"{tuple(factors.shape)}")
    if waveforms.shape[0] == 0:
        return waveforms, lengths
    sr = int(sample_rate)
    new_lengths = perturbed_lengths(lengths, factors, sr)  # (B,) on the host
    rates = [speed_rate(f, sr) for f in factors.tolist()]
    out = waveforms.new_zeros(waveforms.shape[0], max(int(new_lengths.max()), 1))  # (B, S')
    for rate in sorted(set(rates)):
        rows = [b for b, r in enumerate(rates) if r == rate]
        width = int(lengths[rows].max())
        part = waveforms[rows, :width]  # (b, S_rate)
        if rate != sr:
            # fp32 under mixed precision too: autocast would run the sinc convolution in bf16
            with torch.autocast(waveforms.device.type, enabled=False):
                part = AF.resample(part.float(), rate, sr)  # (b, ceil(S_rate * sr / rate))
        n = min(part.shape[1], out.shape[1])
        index = torch.tensor(rows, device=waveforms.device)  # (b,)
        inside = (torch.arange(n, device=waveforms.device)
                  < new_lengths[rows].to(waveforms.device)[:, None])  # (b, n)
        out[index, :n] = torch.where(inside, part[:, :n], 0.0).to(out.dtype)
    return out, new_lengths.to(lengths.device)


__all__ = ["speed_rate", "perturbed_lengths", "speed_perturb"]
