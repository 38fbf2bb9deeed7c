"""The synthetic corpus: files, manifest, determinism, idempotence, and that it is speech-like."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_ssl.data import synth
from audio_ssl.data.synth import LEXICON, PHONES, make_corpus, make_speakers, synthesize

SR = 16000


def _rows(out: Path) -> list[dict]:
    with open(out / "manifest.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    ret = make_corpus(out, minutes=0.5, seed=0, use_espeak=False, progress=False)
    assert ret == out
    return out


def test_manifest_and_files(corpus):
    rows = _rows(corpus)
    assert len(rows) >= 4
    assert json.loads((corpus / "corpus.json").read_text())["generator"] == "builtin"
    total = 0.0
    for r in rows:
        assert set(r) == {"audio", "duration", "sr", "speaker", "text", "split"}
        assert re.fullmatch(r"audio/utt_\d{5}\.flac", r["audio"])
        assert r["sr"] == SR
        assert re.fullmatch(r"synth:\d+", r["speaker"])
        assert r["split"] in ("train", "test")
        assert re.fullmatch(r"[a-z' ]+", r["text"]) and r["text"] == r["text"].strip()
        assert all(w in LEXICON for w in r["text"].split())

        info = sf.info(str(corpus / r["audio"]))
        assert info.format == "FLAC" and info.samplerate == SR and info.channels == 1
        x, sr = sf.read(corpus / r["audio"], dtype="float32")
        assert sr == SR and x.ndim == 1
        dur = len(x) / SR
        assert 2.0 <= dur <= 8.0
        assert abs(dur - r["duration"]) <= 1e-3
        assert np.isfinite(x).all()
        rms = float(np.sqrt(np.mean(x**2)))
        assert 0.01 < rms < 0.3, rms
        assert 0.05 < np.abs(x).max() <= 1.0
        # speech has pauses: the quietest 10 ms frames are far below the loudest
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)
        e = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
        assert np.percentile(e, 95) - np.percentile(e, 5) > 20
        total += dur
    assert 30.0 <= total <= 30.0 + 8.0
    assert sum(r["split"] == "test" for r in rows) >= 1
    assert sum(r["split"] == "train" for r in rows) >= len(rows) - len(rows) // 5 - 1
    assert not list((corpus / "audio").glob(".*")), "temporary files left behind"


def test_idempotent(corpus):
    files = sorted((corpus / "audio").glob("*.flac")) + [corpus / "manifest.jsonl",
                                                         corpus / "corpus.json"]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert make_corpus(corpus, minutes=0.5, seed=0, use_espeak=False, progress=False) == corpus
    assert {p: p.stat().st_mtime_ns for p in files} == before
    # use_espeak=None accepts the existing corpus whatever made it
    make_corpus(corpus, minutes=0.5, seed=0, use_espeak=None, progress=False)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_other_parameters_regenerate(tmp_path):
    out = tmp_path / "c"
    make_corpus(out, minutes=0.2, seed=0, use_espeak=False, progress=False)
    first = _rows(out)
    make_corpus(out, minutes=0.1, seed=1, use_espeak=False, progress=False)
    second = _rows(out)
    assert json.loads((out / "corpus.json").read_text())["seed"] == 1
    assert [r["text"] for r in second] != [r["text"] for r in first]
    # files of the larger, older corpus are gone
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(
        Path(r["audio"]).name for r in second)


def test_incomplete_corpus_is_redone(tmp_path):
    out = tmp_path / "c"
    make_corpus(out, minutes=0.1, seed=0, use_espeak=False, progress=False)
    rows = _rows(out)
    (out / rows[0]["audio"]).unlink()  # as if deleted; also: manifest missing -> redone
    make_corpus(out, minutes=0.1, seed=0, use_espeak=False, progress=False)
    assert (out / rows[0]["audio"]).is_file()
    (out / "manifest.jsonl").unlink()
    make_corpus(out, minutes=0.1, seed=0, use_espeak=False, progress=False)
    assert _rows(out) == rows


def _samples(out: Path) -> list[np.ndarray]:
    return [sf.read(out / r["audio"], dtype="int16")[0] for r in _rows(out)]


def test_deterministic_for_a_seed(tmp_path):
    a = make_corpus(tmp_path / "a", minutes=0.15, seed=3, use_espeak=False, progress=False)
    b = make_corpus(tmp_path / "b", minutes=0.15, seed=3, use_espeak=False, progress=False)
    c = make_corpus(tmp_path / "c", minutes=0.15, seed=4, use_espeak=False, progress=False)
    assert _rows(a) == _rows(b)
    xa, xb, xc = _samples(a), _samples(b), _samples(c)
    assert len(xa) == len(xb) and all(np.array_equal(u, v) for u, v in zip(xa, xb))
    assert [r["text"] for r in _rows(a)] != [r["text"] for r in _rows(c)]
    assert not np.array_equal(xa[0][: len(xc[0])], xc[0][: len(xa[0])])


def test_main_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synth.main([str(out), "--minutes", "0.05", "--no-espeak", "--quiet", "--seed", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "manifest.jsonl")
    params = json.loads((out / "corpus.json").read_text())
    assert params["minutes"] == 0.05 and params["seed"] == 2 and params["generator"] == "builtin"
    assert 1 <= len(_rows(out)) <= 2


def test_espeak_required_but_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="espeak-ng"):
        make_corpus(tmp_path / "e", minutes=0.05, use_espeak=True, progress=False)
    # auto: falls back to the built-in generator
    make_corpus(tmp_path / "auto", minutes=0.05, use_espeak=None, progress=False)
    assert json.loads((tmp_path / "auto" / "corpus.json").read_text())["generator"] == "builtin"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_corpus(tmp_path):
    out = make_corpus(tmp_path / "e", minutes=0.2, use_espeak=True, progress=False)
    for r in _rows(out):
        assert r["speaker"].startswith("espeak:") and re.fullmatch(r"[a-z' ]+", r["text"])
        x, sr = sf.read(out / r["audio"])
        assert sr == SR and x.ndim == 1 and 2.0 <= len(x) / SR <= 8.0
        assert np.sqrt(np.mean(x**2)) > 0.005


# ---------------------------------------------------------------------------------------------
# It is speech-like, not noise


def test_inventory_and_lexicon():
    assert len(PHONES) - 1 >= 20  # minus the pause
    assert all(len(p) == 1 and p.isalpha() and p.islower() for p in PHONES if p != "_")
    assert len(LEXICON) == 100 and len(set(LEXICON)) == 100
    assert all(set(w) <= set(PHONES) - {"_"} for w in LEXICON)
    spk = make_speakers(12, 0)
    assert len({s.f0 for s in spk}) == 12 and max(s.f0 for s in spk) / min(s.f0 for s in spk) > 1.6
    assert max(s.formant_scale for s in spk) / min(s.formant_scale for s in spk) > 1.15


def _log_spectrum(y: np.ndarray, start: float, end: float) -> np.ndarray:
    """Mean power spectrum in dB (512-point, 20 ms Hann frames) of the middle half of a segment."""
    a, b = start + 0.25 * (end - start), end - 0.25 * (end - start)
    seg = y[int(a * SR) : int(b * SR)].astype(np.float64)
    n = 320
    hops = range(0, max(1, len(seg) - n), 40)
    spec = [np.abs(np.fft.rfft(seg[h : h + n] * np.hanning(n), 512)) ** 2 for h in hops]
    return 10 * np.log10(np.mean(spec, axis=0) + 1e-10)


def _shape(spec: np.ndarray) -> np.ndarray:
    """Spectral shape: the level (random gain per utterance) taken out."""
    return spec - spec.mean()


def _segments(text: str, speaker: int, seed: int):
    y, segs = synthesize(text, speaker, seed=seed)
    return y, [(p, a, b) for p, a, b in segs if p != "_"]


def _band(spec: np.ndarray, lo: float, hi: float) -> float:
    f = np.fft.rfftfreq(512, 1 / SR)
    return float(10 * np.log10(np.mean(10 ** (spec[(f >= lo) & (f < hi)] / 10))))


def test_vowels_are_spectrally_distinct():
    # same speaker, different contexts and seeds: tokens of a vowel are alike, a and i are not
    specs: dict[str, list[np.ndarray]] = {"a": [], "i": [], "u": []}
    for seed, text in enumerate(["ta di ku", "ba ti gu", "ka pi du", "da ki bu"]):
        y, segs = _segments(text, 0, seed)
        for p, a, b in segs:
            if p in specs:
                specs[p].append(_shape(_log_spectrum(y, a, b)))
    mean = {p: np.mean(v, axis=0) for p, v in specs.items()}

    def dist(u, v):  # dB, rms over frequency
        return float(np.sqrt(np.mean((u - v) ** 2)))

    within = max(dist(s, mean[p]) for p, v in specs.items() for s in v)
    between = min(dist(mean[p], mean[q]) for p in mean for q in mean if p < q)
    assert between > 5.0 and between > 1.3 * within, (between, within)
    for p, v in specs.items():  # every token is nearest its own vowel's mean
        for s in v:
            assert min(mean, key=lambda q: dist(s, mean[q])) == p
    # formant structure: /a/ has a high F1, /i/ a low F1 and a high F2, /u/ a low F2
    assert _band(mean["a"], 600, 900) - _band(mean["a"], 150, 400) > \
        _band(mean["i"], 600, 900) - _band(mean["i"], 150, 400) + 6
    assert _band(mean["i"], 1900, 2800) - _band(mean["u"], 1900, 2800) > 10


def test_phone_classes():
    y, segs = _segments("asa axa ama", 2, 0)
    spec = {p: _log_spectrum(y, a, b) for p, a, b in segs if p != "a"}
    vowel = np.mean([_log_spectrum(y, a, b) for p, a, b in segs if p == "a"], axis=0)
    # /s/: energy high up; /x/ ("sh"): lower than /s/; /a/: low; nasal /m/: low and weak
    for p, lo, hi in [("s", 4500, 7500), ("x", 2500, 4000)]:
        assert _band(spec[p], lo, hi) - _band(spec[p], 100, 1000) > 10, p
    assert _band(spec["s"], 5000, 7500) - _band(spec["s"], 2500, 3500) > \
        _band(spec["x"], 5000, 7500) - _band(spec["x"], 2500, 3500) + 3
    assert _band(vowel, 100, 1000) - _band(vowel, 4500, 7500) > 20
    assert _band(spec["m"], 100, 1000) - _band(spec["m"], 4500, 7500) > 20
    rms = {p: np.sqrt(np.mean(y[int(a * SR) : int(b * SR)] ** 2)) for p, a, b in segs}
    assert rms["m"] < rms["a"]


def test_vowels_are_periodic_with_the_speaker_pitch():
    spk = make_speakers(2, 0)
    for s in (0, 1):
        y, segs = _segments("pa", s, 0)
        (a, b), = [(a, b) for p, a, b in segs if p == "a"]
        seg = y[int(a * SR) : int(b * SR)].astype(np.float64)
        seg = seg - seg.mean()
        ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
        ac /= ac[0]
        lo, hi = SR // 400, SR // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        assert ac[lag] > 0.6
        f0 = SR / lag
        assert 0.7 * spk[s].f0 < f0 < 1.4 * spk[s].f0, (f0, spk[s].f0)


def test_nearest_centroid_phone_classification_across_speakers():
    """Mean log spectra of phones identify them across speakers and contexts far above chance."""
    train, test = [], []
    for s in range(6):
        for seed in range(2):
            y, segs = _segments("sima tasu kenu foli raxo", s, seed)
            for p, a, b in segs:
                (train if seed == 0 else test).append((p, _shape(_log_spectrum(y, a, b))))
    labels = sorted({p for p, _ in train})
    cent = {p: np.mean([v for q, v in train if q == p], axis=0) for p in labels}
    correct = sum(
        min(labels, key=lambda q: np.sum((v - cent[q]) ** 2)) == p for p, v in test)
    acc = correct / len(test)
    assert acc > 0.7, acc  # chance is 1/len(labels), about 0.07
