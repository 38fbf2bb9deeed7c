"""load_audio(): mono mix-down, resampling, span reads, normalisation, errors."""

from __future__ import annotations


from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from audio_ssl.data import AudioError, audio_info, load_audio, resampled_length


def _noise(n: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((n, channels))).astype(np.float32)  # (N, C)


def test_mono_mixdown_no_resample(tmp_path):
    x = _noise(16000, 2)
    path = tmp_path / "st.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    wav = load_audio(path, sample_rate=16000)
    assert wav.dtype == torch.float32 and wav.shape == (16000,)
    torch.testing.assert_close(wav, torch.from_numpy(x.mean(axis=1)), rtol=0, atol=1e-7)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_length_and_values(tmp_path, sr):
    x = _noise(sr // 2 + 7, 1)
    path = tmp_path / f"x{sr}.wav"
    sf.write(path, x, sr, subtype="FLOAT")
    wav = load_audio(path, sample_rate=16000)
    frames, file_sr, _ = audio_info(path)
    assert (frames, file_sr) == (len(x), sr)
    assert len(wav) == resampled_length(len(x), sr, 16000)
    ref = AF.resample(torch.from_numpy(x[:, 0]), sr, 16000)
    torch.testing.assert_close(wav, ref)


def _check_spans(path, sample_rate, rng, n_trials=25, atol=1e-6):
    full = load_audio(path, sample_rate=sample_rate)
    S = len(full)
    spans = [(0, 1), (0, S), (S - 1, 1), (S - 5, 100), (1, S - 2)]
    spans += [(int(rng.integers(0, S)), int(rng.integers(1, S))) for _ in range(n_trials)]
    for start, num in spans:
        part = load_audio(path, sample_rate=sample_rate, start=start, num_samples=num)
        ref = full[start : start + num]
        assert part.shape == ref.shape, (start, num)
        torch.testing.assert_close(part, ref, rtol=0, atol=atol)
    tail = load_audio(path, sample_rate=sample_rate, start=S // 3)
    torch.testing.assert_close(tail, full[S // 3 :], rtol=0, atol=atol)


@pytest.mark.parametrize("sr,channels", [(16000, 1), (8000, 1), (44100, 2), (48000, 2)])
def test_span_reads_equal_slices_of_full_decode(tmp_path, sr, channels):
    path = tmp_path / "x.flac"
    sf.write(path, _noise(int(1.3 * sr), channels, seed=sr), sr)
    _check_spans(path, 16000, np.random.default_rng(sr), atol=0 if sr == 16000 else 1e-6)


@pytest.mark.parametrize("rel", ["fsdd/audio/0_george_10.flac",
                                 "commonvoice/audio/ar/common_voice_ar_24059251.mp3",
                                 "commonvoice/audio/fr/common_voice_fr_20434995.mp3"])
def test_span_reads_real_files(data_dir, rel):
    _check_spans(data_dir / rel, 16000, np.random.default_rng(0), n_trials=10)


def test_span_past_the_end(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, _noise(8000, 1), 8000)  # 16000 samples at 16 kHz
    assert len(load_audio(path, start=15000, num_samples=5000)) == 1000  # what there is
    with pytest.raises(AudioError, match=r"x\.wav: empty"):
        load_audio(path, start=16000, num_samples=10)
    with pytest.raises(ValueError, match="num_samples"):
        load_audio(path, num_samples=0)


def test_normalize(tmp_path):
    path = tmp_path / "x.wav"
    x = 2.5 * _noise(20000, 1) + 0.3  # std 0.5: eps 1e-5 is negligible
    sf.write(path, x, 16000, subtype="FLOAT")
    wav = load_audio(path, normalize=True)
    assert abs(wav.mean().item()) < 1e-5
    assert wav.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    span = load_audio(path, normalize=True, start=1000, num_samples=4000)  # over the span only
    assert abs(span.mean().item()) < 1e-5
    assert span.std(unbiased=False).item() == pytest.approx(1, abs=1e-3)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((1000, 1), np.float32), 16000)
    assert torch.equal(load_audio(silent, normalize=True), torch.zeros(1000))  # eps, no NaN


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC but not really")
    with pytest.raises(AudioError, match=r"bad\.flac: cannot decode"):
        load_audio(bad)
    nan = tmp_path / "nan.wav"
    x = _noise(1000, 1)
    x[10] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: non-finite samples: 1 of 1000"):
        load_audio(nan)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav: empty"):
        load_audio(empty)
    with pytest.raises(AudioError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")


def test_missing_files_and_dangling_links_say_no_such_file(tmp_path):
    """libsndfile's own message for both is "System error"."""
    from audio_ssl.data import scan
    from audio_ssl.data.audio import AudioError, audio_info, load_audio

    link = tmp_path / "dangling.flac"
    link.symlink_to(tmp_path / "gone.flac")
    missing = tmp_path / "missing.flac"
    for path, detail in ((missing, ""), (link, "a symbolic link to")):
        with pytest.raises(FileNotFoundError, match="no such file"):
            audio_info(path)
        with pytest.raises(AudioError, match=f"no such file.*{detail}"):
            load_audio(path)
    good = tmp_path / "good.flac"
    sf.write(good, np.zeros(16_000, dtype=np.float32), 16_000)
    listing = tmp_path / "files.lst"
    listing.write_text(f"{missing}\n{link}\n{good}\n")
    items, rejected = scan(listing, progress=False)
    assert [it.path for it in items] == [str(good)]
    reasons = {Path(r.path).name: r.reason for r in rejected}
    assert reasons["missing.flac"] == "unreadable: no such file"
    assert "no such file: a symbolic link to" in reasons["dangling.flac"]


@pytest.mark.parametrize("values, bad", [
    ([np.inf, -np.inf], 2),  # their sum is NaN
    ([np.inf], 1), ([-np.inf, -np.inf], 2), ([np.nan, np.inf], 2),
    ([3e38] * 1000, 0),  # finite, but a float32 sum would overflow to inf
    ([-3.4e38, 3.4e38] * 500, 0),
])
def test_non_finite_samples_are_found_exactly(tmp_path, values, bad):
    """The check sums in float64; it must agree with an element-wise check on every case."""
    x = _noise(4000, 1)  # (4000, 1)
    x[100: 100 + len(values), 0] = values
    assert int((~np.isfinite(x)).sum()) == bad  # the second way: numpy, element by element
    path = tmp_path / "x.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    if bad:
        with pytest.raises(AudioError, match=rf"non-finite samples: {bad} of 4000"):
            load_audio(path)
    else:
        assert load_audio(path).shape == (4000,)
