"""A spoken-digit corpus from eSpeak NG, so that the demo and the studies need no data.

:func:`make_corpus` writes ``out_dir/audio/utt_00001.flac ...`` (mono, 16 kHz, 16-bit FLAC), a
JSONL manifest ``out_dir/manifest.jsonl``, one object a line::

    {"audio": "audio/utt_00001.flac", "duration": 2.41, "sr": 16000,
     "speaker": "espeak:en-gb-scotland+m3", "text": "three one four", "split": "train"}

and ``out_dir/corpus.json`` with the parameters it was made with (a second call with the same
parameters returns at once, without touching the files).

What is spoken: connected digit strings ("zero" to "nine" and "oh", 2 to 7 of them, like TIDIGITS)
and, one utterance in four, a single digit (the words the demo's probe classifies). Who speaks:
``num_voices`` distinct combinations of an English accent (American, British RP, Scottish,
Caribbean, New York...) and a voice variant (espeak-ng's ``!v`` folder: Annie, m3, f2,
grandma...), each with its own speaking rate, pitch and pitch range, jittered per utterance.
The last ``test_voices`` voices speak only in the ``test`` split, so the test split measures
voices a model never heard. Each file gets a random gain, 0.1-0.4 s of silence either side and
faint white noise (40-60 dB below the speech).

Output is deterministic for a seed: the voices come from ``default_rng([seed, 0xE5])`` and
utterance ``i`` from ``default_rng([seed, i])``. eSpeak NG keeps state from one utterance to the
next (the same call twice gives slightly different audio) but is deterministic from a fresh
start, so every chunk of 64 utterances is spoken by a fresh worker process.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np
import soundfile as sf

from audio_ssl.corpora.espeak import Voice, speak_fresh
from audio_ssl.io import atomic_path, atomic_write_text

CORPUS_VERSION = 2
MANIFEST = "manifest.jsonl"
CORPUS_JSON = "corpus.json"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh")
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("Annie", "Alex", "Andy", "adam", "anika", "aunty", "belinda", "benjamin", "caleb",
            "david", "ed", "edward", "f1", "f2", "f3", "f4", "f5", "grandma", "grandpa", "ian",
            "john", "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "max", "michel", "norbert",
            "paul", "quincy", "rob", "robert", "shelby", "steph", "travis", "Lee", "Mike")
SINGLE_WORD_FRACTION = 0.25
MIN_DIGITS, MAX_DIGITS = 2, 7
MIN_SECONDS = 1.0  # every file is at least this long (silence added)
CHUNK = 64  # utterances spoken by one fresh eSpeak NG process


def make_voices(num_voices: int, seed: int) -> list[Voice]:
    """``num_voices`` distinct accent+variant combinations with their own rate and pitch."""
    combos = [(a, v) for a in ACCENTS for v in VARIANTS]
    if not 2 <= num_voices <= len(combos):
        raise ValueError(f"num_voices must be between 2 and {len(combos)}, got {num_voices}")
    rng = np.random.default_rng([seed, 0xE5])
    # spread the variants: each variant once before any repeats, accents drawn per variant
    order = rng.permutation(len(VARIANTS))
    picked: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    while len(picked) < num_voices:
        for vi in order:
            combo = (ACCENTS[int(rng.integers(len(ACCENTS)))], VARIANTS[vi])
            if combo not in seen and len(picked) < num_voices:
                seen.add(combo)
                picked.append(combo)
    return [Voice(a, v, rate=int(rng.integers(130, 201)), pitch=int(rng.integers(25, 76)),
                  range=int(rng.integers(30, 81)))
            for a, v in picked]


@dataclass(frozen=True)
class _Plan:
    """Everything utterance ``index`` is, drawn from ``default_rng([seed, index])``."""

    index: int
    voice: Voice  # the speaker's voice with this utterance's rate and pitch
    speaker: str
    text: str
    lead: float  # seconds of silence before
    trail: float  # and after
    snr_db: float
    peak: float


def _plan(index: int, seed: int, voices: list[Voice], test_ids: set[str],
          sentences: tuple[Sequence[str], Sequence[str]] | None) -> _Plan:
    rng = np.random.default_rng([seed, index])
    voice = voices[int(rng.integers(len(voices)))]
    if sentences is not None:  # (train sentences, test sentences)
        pool = sentences[voice.id in test_ids]
        text = pool[int(rng.integers(len(pool)))]
    else:
        n = 1 if rng.random() < SINGLE_WORD_FRACTION else \
            int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
        text = " ".join(DIGITS[int(i)] for i in rng.integers(len(DIGITS), size=n))
    jittered = Voice(voice.accent, voice.variant,
                     rate=int(np.clip(voice.rate * rng.uniform(0.9, 1.1), 80, 400)),
                     pitch=int(np.clip(voice.pitch + rng.integers(-6, 7), 0, 99)),
                     range=voice.range)
    lead, trail = rng.uniform(0.1, 0.4, 2)
    return _Plan(index, jittered, voice.id, text, float(lead), float(trail),
                 float(rng.uniform(40, 60)), float(rng.uniform(0.3, 0.9)))


def _jobs(plans: list[_Plan]) -> list[tuple[str, Voice, int]]:
    return [(p.text, p.voice, p.index) for p in plans]


def _finish(plan: _Plan, y: np.ndarray, espeak_rate: int, sample_rate: int,
            seed: int) -> np.ndarray:
    """Trim eSpeak's silence, resample, add our silence, faint noise and a gain: (S,)."""
    # imported here, not above: spawned eSpeak workers import this module when it is run as
    # `python -m audio_ssl.corpora.corpus`, and must not pay for torch
    import torch
    import torchaudio.functional as AF

    nz = np.flatnonzero(np.abs(y) > 1e-3 * (np.abs(y).max() + 1e-12))
    if len(nz):
        y = y[nz[0] : nz[-1] + 1]
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(y)), espeak_rate, sample_rate).numpy()
    trail = max(plan.trail, MIN_SECONDS - len(y) / sample_rate - plan.lead)
    y = np.concatenate([np.zeros(int(plan.lead * sample_rate), np.float32), y,
                        np.zeros(int(round(trail * sample_rate)) + 1, np.float32)])
    noise = np.random.default_rng([seed, plan.index, 1]).standard_normal(len(y)).astype(np.float32)
    speech_rms = float(np.sqrt(np.mean(y**2))) + 1e-8
    y = y + noise * speech_rms * 10 ** (-plan.snr_db / 20)
    return (y * plan.peak / (np.abs(y).max() + 1e-8)).astype(np.float32)


def _is_complete(out: Path, params: dict) -> bool:
    try:
        if json.loads((out / CORPUS_JSON).read_text(encoding="utf-8")) != params:
            return False
        with open(out / MANIFEST, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return bool(rows) and all((out / r["audio"]).is_file() for r in rows)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _corpus_params(minutes: float, seed: int, num_voices: int, test_voices: int,
                   sample_rate: int, sentences: Sequence[str] | None
                   ) -> tuple[dict, tuple[list[str], list[str]] | None]:
    """(what ``corpus.json`` records, (train sentences, test sentences) or None for digits);
    bad values raise, naming them."""
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    if not 1 <= test_voices < num_voices:
        raise ValueError(f"test_voices must be between 1 and num_voices - 1 = {num_voices - 1}, "
                         f"got {test_voices}")
    params = {"version": CORPUS_VERSION, "generator": "espeak-ng (espeakng-loader)",
              "minutes": float(minutes), "seed": int(seed), "num_voices": int(num_voices),
              "test_voices": int(test_voices), "sample_rate": int(sample_rate)}
    if sentences is None:
        return params, None
    texts = [" ".join(t.split()) for t in sentences if t.strip()]
    split_sentences = ([t for i, t in enumerate(texts) if i % 10 != 9],
                       [t for i, t in enumerate(texts) if i % 10 == 9])
    if not split_sentences[0] or not split_sentences[1]:
        raise ValueError(f"sentences: need at least 10 non-empty ones, got {len(texts)}")
    params["sentences"] = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    return params, split_sentences


def _speak(out: Path, chunks: Iterator[list[_Plan]], seconds: float, sample_rate: int,
           seed: int, test_ids: set[str], workers: int, progress: bool) -> list[dict]:
    """Speak ``chunks`` of planned utterances, each chunk in a fresh worker process, ``workers``
    chunks ahead, and write them under ``out/audio/`` until ``seconds`` of audio are written;
    returns their manifest rows."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=round(seconds), unit="s", desc="corpus (audio seconds)",
                   file=sys.stderr, leave=False)
    rows: list[dict] = []
    done = 0.0
    pool = ProcessPoolExecutor(max_workers=max(1, workers), max_tasks_per_child=1,
                               mp_context=multiprocessing.get_context("spawn"))
    pending: deque = deque()
    try:
        for _ in range(max(1, workers)):
            plans = next(chunks)
            pending.append((plans, pool.submit(speak_fresh, _jobs(plans))))
        while done < seconds:
            plans, future = pending.popleft()
            rate, spoken = future.result()
            more = next(chunks)
            pending.append((more, pool.submit(speak_fresh, _jobs(more))))
            for plan, raw in zip(plans, spoken):
                if done >= seconds:
                    break
                y = _finish(plan, raw, rate, sample_rate, seed)
                name = f"audio/utt_{plan.index + 1:05d}.flac"
                with atomic_path(out / name, fsync=False) as tmp:
                    sf.write(tmp, y, sample_rate, format="FLAC", subtype="PCM_16")
                duration = len(y) / sample_rate
                rows.append({"audio": name, "duration": round(duration, 3), "sr": sample_rate,
                             "speaker": plan.speaker, "text": plan.text,
                             "split": "test" if plan.speaker in test_ids else "train"})
                done += duration
                if bar is not None:
                    bar.update(min(round(done), bar.total) - bar.n)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    return rows


def make_corpus(out_dir: str | os.PathLike, *, minutes: float = 10.0, seed: int = 0,
                num_voices: int = 40, test_voices: int = 6, sample_rate: int = 16_000,
                progress: bool = True, workers: int = 2,
                sentences: Sequence[str] | None = None) -> Path:
    """Write about ``minutes`` of spoken digits under ``out_dir`` (see the module docstring).

    Files are written under temporary names and renamed, and the manifest is written last, so an
    interrupted run is simply redone; a complete corpus with the same parameters is left as is.

    Args:
        out_dir: folder to write (created).
        minutes: total audio, at least.
        seed: the same seed gives the same voices, texts and samples.
        num_voices: distinct speakers (accent + variant + rate + pitch), 2 to 328.
        test_voices: how many of them speak only in the ``test`` split.
        sample_rate: output rate in Hz.
        progress: a progress bar on stderr.
        workers: processes that run eSpeak NG (the output does not depend on it).
        sentences: speak these (normalised: lower case, a-z, apostrophe, space) instead of
            digits; every tenth one (index 9 mod 10) is kept for the test voices, so the test
            split is unseen in both voice and sentence.

    Returns:
        ``Path(out_dir)``.
    """
    out = Path(out_dir)
    params, split_sentences = _corpus_params(minutes, seed, num_voices, test_voices,
                                             sample_rate, sentences)
    if _is_complete(out, params):
        return out
    voices = make_voices(num_voices, seed)
    test_ids = {v.id for v in voices[-test_voices:]}
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    (out / CORPUS_JSON).unlink(missing_ok=True)

    chunks = (  # CHUNK utterances a chunk, planned here, spoken in fresh worker processes
        [_plan(i, seed, voices, test_ids, split_sentences)
         for i in range(k * CHUNK, (k + 1) * CHUNK)] for k in count())
    rows = _speak(out, chunks, minutes * 60, sample_rate, seed, test_ids, workers, progress)
    keep = {Path(r["audio"]).name for r in rows}
    for p in audio_dir.glob("utt_*.flac"):  # left over from a larger corpus made here before
        if p.name not in keep:
            p.unlink(missing_ok=True)
    atomic_write_text(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows), fsync=False)
    atomic_write_text(out / CORPUS_JSON, json.dumps(params, indent=2) + "\n", fsync=False)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m audio_ssl.corpora.corpus",
        description="Write a spoken-digit corpus made with eSpeak NG (FLAC + manifest.jsonl); "
        "the last --test-voices voices speak only in the test split.")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--voices", type=int, default=40)
    ap.add_argument("--test-voices", type=int, default=6)
    ap.add_argument("--sentences", type=Path, default=None,
                    help="a text file, one sentence a line, to speak instead of digits")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    try:
        sentences = None
        if a.sentences is not None:
            sentences = a.sentences.read_text(encoding="utf-8").splitlines()
        out = make_corpus(a.out_dir, minutes=a.minutes, seed=a.seed, num_voices=a.voices,
                          test_voices=a.test_voices, progress=not a.quiet, sentences=sentences)
    except (ValueError, OSError) as err:
        print(f"audio_ssl.corpora.corpus: error: {err}", file=sys.stderr)
        return 2
    print(out / MANIFEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
