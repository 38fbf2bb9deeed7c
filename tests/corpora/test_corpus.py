"""The eSpeak NG corpus: deterministic for a seed, unseen voices only in test, files as listed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from audio_ssl.corpora.corpus import DIGITS, make_corpus, make_voices
from audio_ssl.corpora.espeak import Espeak, EspeakError, Voice


def _rows(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("c") / "corpus", minutes=0.5, seed=3,
                       num_voices=12, test_voices=3, progress=False)


def test_espeak_speaks_english_at_its_rate():
    tts = Espeak()
    audio = tts.say("seven", Voice("en-us", "Annie", rate=160, pitch=50))
    assert tts.sample_rate == 22_050
    assert audio.dtype == np.float32 and 0.2 * 22_050 < len(audio) < 1.5 * 22_050
    assert 0.05 < np.abs(audio).max() <= 1.0
    # a slower rate speaks longer; another variant sounds different
    slow = tts.say("seven", Voice("en-us", "Annie", rate=100, pitch=50))
    assert len(slow) > 1.2 * len(audio)
    other = tts.say("seven", Voice("en-us", "m3", rate=160, pitch=50))
    n = min(len(other), len(audio))
    assert not np.allclose(other[:n], audio[:n])


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(EspeakError, match="no voice 'xx-nowhere\\+Annie'"):
        Espeak().say("one", Voice("xx-nowhere", "Annie"))


def test_files_manifest_and_splits(corpus):
    rows = _rows(corpus)
    assert len(rows) >= 10
    train_voices = {r["speaker"] for r in rows if r["split"] == "train"}
    test_voices = {r["speaker"] for r in rows if r["split"] == "test"}
    assert test_voices and train_voices and not train_voices & test_voices
    held_out = {v.id for v in make_voices(12, 3)[-3:]}
    assert test_voices <= held_out
    for r in rows:
        audio, sr = sf.read(corpus / r["audio"])
        assert sr == 16_000 and audio.ndim == 1
        assert abs(len(audio) / sr - r["duration"]) < 1e-3 and r["duration"] >= 1.0
        assert set(r["text"].split()) <= set(DIGITS)
    assert any(len(r["text"].split()) == 1 for r in rows)  # the probe's words
    assert sum(r["duration"] for r in rows) >= 30


def test_same_seed_same_corpus_other_seed_other(corpus, tmp_path):
    again = make_corpus(tmp_path / "again", minutes=0.5, seed=3, num_voices=12, test_voices=3,
                        progress=False)
    assert _rows(again) == _rows(corpus)
    for r in _rows(corpus)[:5]:
        a, _ = sf.read(corpus / r["audio"], dtype="int16")
        b, _ = sf.read(again / r["audio"], dtype="int16")
        assert np.array_equal(a, b)
    other = make_corpus(tmp_path / "other", minutes=0.5, seed=4, num_voices=12, test_voices=3,
                        progress=False)
    assert [r["text"] for r in _rows(other)] != [r["text"] for r in _rows(corpus)]


def test_a_finished_corpus_is_left_alone_and_an_interrupted_one_redone(corpus, tmp_path):
    before = (corpus / "manifest.jsonl").stat().st_mtime_ns
    make_corpus(corpus, minutes=0.5, seed=3, num_voices=12, test_voices=3, progress=False)
    assert (corpus / "manifest.jsonl").stat().st_mtime_ns == before
    partial = make_corpus(tmp_path / "p", minutes=0.2, seed=3, num_voices=12, test_voices=3,
                          progress=False)
    (partial / "manifest.jsonl").unlink()  # as if killed before the manifest was written
    make_corpus(partial, minutes=0.2, seed=3, num_voices=12, test_voices=3, progress=False)
    assert all((partial / r["audio"]).is_file() for r in _rows(partial))


def test_voices_are_distinct_and_many_by_default():
    voices = make_voices(40, 0)
    assert len({(v.accent, v.variant) for v in voices}) == 40
    assert len({v.variant for v in voices}) >= 30
    assert make_voices(40, 0) == voices
    with pytest.raises(ValueError, match="num_voices"):
        make_voices(1, 0)


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="minutes must be positive"):
        make_corpus(tmp_path / "x", minutes=0)
    with pytest.raises(ValueError, match="test_voices"):
        make_corpus(tmp_path / "x", minutes=1, num_voices=5, test_voices=5)
