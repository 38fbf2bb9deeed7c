"""A self-made speech-like corpus, so that the demo needs no data from the user.

:func:`make_corpus` writes ``out_dir/audio/utt_00001.flac ...`` (mono, 16 kHz, 2-8 s each), a
JSONL manifest ``out_dir/manifest.jsonl``, one object a line::

    {"audio": "audio/utt_00001.flac", "duration": 3.21, "sr": 16000, "speaker": "synth:3",
     "text": "bado kisu", "split": "train"}

and ``out_dir/corpus.json`` with the parameters it was made with (a second call with the same
parameters returns at once). Every utterance whose index is 9 modulo 10 is held out as
``"split": "test"`` (about 10 %).

Two generators:

* **espeak-ng** (when ``use_espeak`` is true, or None and ``espeak-ng`` is on the PATH): random
  sentences of the pseudo-word lexicon below, spoken by several voice variants at varied speed
  and pitch, resampled to ``sample_rate``.
* **built-in** (the default where espeak-ng is missing): a small formant synthesiser. It is not
  noise: it has 22 phones (5 vowels as 4+1 formant resonances on a glottal pulse train, 2 nasals
  with an anti-resonance, 2 liquids, 7 fricatives as band-passed noise, of which 2 voiced and
  ``h`` as aspiration, 6 stops as closure + burst + aspiration/voicing onset) with formant
  transitions between neighbours (coarticulation); words from a fixed lexicon of 100 syllable
  sequences drawn from a Zipf distribution, stress on the first syllable (longer, louder, pitch
  accent), final lengthening, short pauses between some words, declining intonation; 12 speakers
  who differ in F0, vocal-tract length (formant scale), speaking rate, breathiness, jitter,
  shimmer and open quotient; a little background noise and a random gain. The manifest's
  ``text`` spells each phone as one letter, words separated by a space, so it can serve for CTC.

Synthesis is vectorised: excitation signals are filtered in the STFT domain (5 ms hop) by
frame-wise spectral envelopes computed in closed form, so 10 minutes of audio take a few seconds.
Output is deterministic for a seed: utterance ``i`` uses ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from audio_ssl.io import atomic_path, atomic_write_text

__all__ = [
    "LEXICON",
    "PHONES",
    "Phone",
    "Speaker",
    "make_corpus",
    "make_speakers",
    "synthesize",
    "main",
]

CORPUS_VERSION = 1
MIN_DURATION = 2.0  # seconds, per file
MAX_DURATION = 8.0
TEST_EVERY = 10  # utterance i is in the test split when i % TEST_EVERY == TEST_EVERY - 1
DEFAULT_SPEAKERS = 12
LEXICON_SEED = 20240617  # the "language" is the same for every corpus seed
MANIFEST = "manifest.jsonl"
CORPUS_JSON = "corpus.json"


# ---------------------------------------------------------------------------------------------
# Phone inventory


@dataclass(frozen=True)
class Phone:
    """One phone of the built-in generator.

    Attributes:
        symbol: its letter in ``text``.
        kind: vowel, liquid, nasal, fricative, stop or pause.
        formants: F1-F4 in Hz for an adult male (scaled per speaker), or None where the phone
            takes its neighbours' (``h``, pauses).
        bandwidths: B1-B4 in Hz.
        voice: amplitude of the voiced (glottal) source.
        asp: amplitude of aspiration noise shaped by the formants.
        fric: amplitude of frication noise (for stops: the burst).
        fric_fc, fric_bw: centre and width (Hz) of the frication band.
        nasal: depth of the nasal anti-resonance at ``nasal_fz`` Hz.
        dur: typical duration in seconds at speaking rate 1.
        voiced: for stops, whether voiced (voice bar in the closure, no aspiration).
    """

    symbol: str
    kind: str
    formants: tuple[float, float, float, float] | None
    bandwidths: tuple[float, float, float, float]
    voice: float
    asp: float = 0.0
    fric: float = 0.0
    fric_fc: float = 3000.0
    fric_bw: float = 1000.0
    nasal: float = 0.0
    nasal_fz: float = 1000.0
    dur: float = 0.08
    voiced: bool = True


_BV = (70.0, 100.0, 150.0, 220.0)  # vowel bandwidths
_BL = (90.0, 130.0, 180.0, 250.0)  # liquids
_BN = (110.0, 200.0, 250.0, 300.0)  # nasals
_BC = (90.0, 120.0, 180.0, 250.0)  # obstruents (their formants mostly shape transitions)

PHONES: dict[str, Phone] = {
    p.symbol: p
    for p in [
        # vowels
        Phone("a", "vowel", (730, 1090, 2440, 3400), _BV, voice=1.00, dur=0.110),
        Phone("e", "vowel", (530, 1840, 2480, 3500), _BV, voice=0.95, dur=0.100),
        Phone("i", "vowel", (280, 2250, 2900, 3600), _BV, voice=0.85, dur=0.090),
        Phone("o", "vowel", (500, 900, 2400, 3400), _BV, voice=0.95, dur=0.110),
        Phone("u", "vowel", (310, 870, 2250, 3300), _BV, voice=0.85, dur=0.095),
        # liquids
        Phone("l", "liquid", (360, 1200, 2700, 3400), _BL, voice=0.55, dur=0.065),
        Phone("r", "liquid", (420, 1300, 1650, 3300), _BL, voice=0.60, dur=0.065),
        # nasals: a low murmur with an anti-resonance
        Phone("m", "nasal", (260, 1100, 2200, 3300), _BN, voice=0.45, nasal=0.9,
              nasal_fz=1000, dur=0.075),
        Phone("n", "nasal", (260, 1500, 2500, 3300), _BN, voice=0.45, nasal=0.9,
              nasal_fz=1700, dur=0.075),
        # fricatives (x is "sh", h is aspiration through the neighbours' formants)
        Phone("s", "fricative", (300, 1700, 2600, 3400), _BC, voice=0.0, fric=0.32,
              fric_fc=5600, fric_bw=1100, dur=0.105, voiced=False),
        Phone("x", "fricative", (300, 1900, 2500, 3400), _BC, voice=0.0, fric=0.30,
              fric_fc=3100, fric_bw=750, dur=0.105, voiced=False),
        Phone("f", "fricative", (300, 1100, 2300, 3300), _BC, voice=0.0, fric=0.10,
              fric_fc=4800, fric_bw=3000, dur=0.095, voiced=False),
        Phone("h", "fricative", None, _BC, voice=0.0, asp=0.16, dur=0.070, voiced=False),
        Phone("z", "fricative", (300, 1700, 2600, 3400), _BC, voice=0.30, fric=0.20,
              fric_fc=5600, fric_bw=1100, dur=0.085),
        Phone("v", "fricative", (300, 1100, 2300, 3300), _BC, voice=0.35, fric=0.07,
              fric_fc=4800, fric_bw=3000, dur=0.080),
        # stops: closure, burst (band in fric_*), then aspiration or voicing onset; the
        # formants are the loci that the neighbouring vowels' transitions point to
        Phone("p", "stop", (250, 900, 2200, 3300), _BC, voice=0.0, asp=0.14, fric=0.30,
              fric_fc=1200, fric_bw=1500, dur=0.095, voiced=False),
        Phone("t", "stop", (250, 1700, 2600, 3400), _BC, voice=0.0, asp=0.14, fric=0.45,
              fric_fc=4500, fric_bw=1500, dur=0.095, voiced=False),
        Phone("k", "stop", (250, 1950, 2350, 3300), _BC, voice=0.0, asp=0.16, fric=0.40,
              fric_fc=2300, fric_bw=600, dur=0.095, voiced=False),
        Phone("b", "stop", (250, 900, 2200, 3300), _BC, voice=0.0, fric=0.18,
              fric_fc=1200, fric_bw=1500, dur=0.080),
        Phone("d", "stop", (250, 1700, 2600, 3400), _BC, voice=0.0, fric=0.25,
              fric_fc=4500, fric_bw=1500, dur=0.080),
        Phone("g", "stop", (250, 1950, 2350, 3300), _BC, voice=0.0, fric=0.22,
              fric_fc=2300, fric_bw=600, dur=0.080),
        # silence between words and at the ends
        Phone("_", "pause", None, _BC, voice=0.0, dur=0.1),
    ]
}
VOWELS = "aeiou"
_F5 = 4500.0  # a fixed fifth formant (male), scaled per speaker
_B5 = 300.0


# ---------------------------------------------------------------------------------------------
# Lexicon: 100 pseudo-words of 1-3 syllables, the same for every corpus


def _make_lexicon(n: int = 100, seed: int = LEXICON_SEED) -> tuple[str, ...]:
    rng = np.random.default_rng(seed)
    onsets = list("ptkbdgmnsfxhzvlr")
    onset_w = np.array([3, 3, 3, 2, 3, 2, 3, 3, 3, 1.5, 1, 1.5, 1, 1, 2, 2], dtype=float)
    onset_w /= onset_w.sum()
    clusters = ["pl", "pr", "bl", "br", "kl", "kr", "gl", "gr", "fl", "fr", "tr", "dr"]
    codas = list("mnslrtk")
    vowel_w = np.array([3, 2, 2.5, 1.5, 1.5]) / 10.5

    def syllable(first: bool) -> str:
        v = VOWELS[rng.choice(5, p=vowel_w)]
        r = rng.random()
        if r < 0.10 and first:  # V
            return v
        if r < 0.20:  # CCV
            return clusters[rng.integers(len(clusters))] + v
        c = onsets[rng.choice(len(onsets), p=onset_w)]
        if r < 0.42:  # CVC
            return c + v + codas[rng.integers(len(codas))]
        return c + v  # CV

    words: dict[str, None] = {}
    while len(words) < n:
        nsyl = int(rng.choice([1, 2, 3], p=[0.3, 0.5, 0.2]))
        w = "".join(syllable(i == 0) for i in range(nsyl))
        if 2 <= len(w) <= 9:
            words.setdefault(w, None)
    # Zipf rank follows length: frequent words are short, as in natural language.
    return tuple(sorted(words, key=len))


LEXICON: tuple[str, ...] = _make_lexicon()
_ZIPF = 1.0 / (np.arange(len(LEXICON)) + 2.7)  # Zipf-Mandelbrot
_ZIPF /= _ZIPF.sum()


# ---------------------------------------------------------------------------------------------
# Speakers


@dataclass(frozen=True)
class Speaker:
    """Voice parameters of one synthetic speaker."""

    index: int
    f0: float  # mean F0, Hz
    formant_scale: float  # 1 / vocal tract length, relative to an adult male
    rate: float  # speaking rate, 1 = typical
    breathiness: float  # aspiration noise added to voiced sounds
    jitter: float  # frame-to-frame relative F0 perturbation
    shimmer: float  # frame-to-frame relative amplitude perturbation
    open_quotient: float  # of the glottal cycle
    f0_range: float  # relative size of the intonation movements


def make_speakers(n: int = DEFAULT_SPEAKERS, seed: int = 0) -> list[Speaker]:
    """``n`` speakers, alternately lower (male-like) and higher (female-like) voices."""
    rng = np.random.default_rng([seed, 0x5EED])
    out = []
    for i in range(n):
        high = i % 2 == 1
        out.append(
            Speaker(
                index=i,
                f0=float(rng.uniform(165, 255) if high else rng.uniform(85, 145)),
                formant_scale=float(rng.uniform(1.08, 1.22) if high else rng.uniform(0.88, 1.03)),
                rate=float(rng.uniform(0.8, 1.25)),
                breathiness=float(rng.uniform(0.04, 0.14) if high else rng.uniform(0.02, 0.08)),
                jitter=float(rng.uniform(0.004, 0.02)),
                shimmer=float(rng.uniform(0.03, 0.10)),
                open_quotient=float(rng.uniform(0.5, 0.75)),
                f0_range=float(rng.uniform(0.08, 0.22)),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Planning: words -> timed phones


def _word_phones(word: str, rng: np.random.Generator, rate: float, final: bool):
    """Phones, durations and stress flags of one word."""
    phones = list(word)
    n = len(phones)
    base = np.array([PHONES[p].dur for p in phones])
    dur = base * np.exp(rng.normal(0.0, 0.15, n)) / rate
    stress = np.zeros(n, dtype=bool)
    first_vowel = next((i for i, p in enumerate(phones) if p in VOWELS), None)
    if first_vowel is not None:
        stress[first_vowel] = True
        dur[first_vowel] *= 1.3
    dur[-1] *= 1.25 if final else 1.12  # final lengthening
    if final and phones[-1] not in VOWELS:
        last_v = max((i for i, p in enumerate(phones) if p in VOWELS), default=None)
        if last_v is not None:
            dur[last_v] *= 1.15
    return phones, np.clip(dur, 0.045, 0.22), stress


def _plan(rng: np.random.Generator, spk: Speaker, target: float, max_words: int = 60):
    """Words and timed phones (with leading/trailing pauses) lasting at most ``target`` s."""
    rate = spk.rate * rng.uniform(0.92, 1.08)
    lead, trail = rng.uniform(0.08, 0.3, 2)
    budget = target - lead - trail
    words: list[str] = []
    phones: list[str] = ["_"]
    durs: list[np.ndarray] = [np.array([lead])]
    stress: list[np.ndarray] = [np.zeros(1, dtype=bool)]
    used = 0.0
    while len(words) < max_words:
        w = LEXICON[rng.choice(len(LEXICON), p=_ZIPF)]
        ph, d, s = _word_phones(w, rng, rate, final=False)
        pause = 0.0 if not words or rng.random() < 0.4 else rng.uniform(0.04, 0.18) / rate
        if words and used + pause + d.sum() > budget:
            break
        if pause > 0:
            phones.append("_")
            durs.append(np.array([pause]))
            stress.append(np.zeros(1, dtype=bool))
        words.append(w)
        phones += ph
        durs.append(d)
        stress.append(s)
        used += pause + d.sum()
    # final lengthening of the last word
    d = durs[-1] * 1.1
    d[-1] = min(d[-1] * 1.15, 0.22)
    durs[-1] = np.clip(d, 0.045, 0.22)
    dur = np.concatenate(durs + [np.array([trail])])
    phones.append("_")
    stress.append(np.zeros(1, dtype=bool))
    total = dur.sum()
    if total < MIN_DURATION + 0.02:
        dur[-1] += MIN_DURATION + 0.02 - total
    if dur.sum() > MAX_DURATION - 0.02:  # only if a single word is absurdly long: trim pauses
        dur[-1] = max(0.02, dur[-1] - (dur.sum() - (MAX_DURATION - 0.02)))
    return words, phones, dur, np.concatenate(stress)


# ---------------------------------------------------------------------------------------------
# Rendering


def _frames_layout(sr: int) -> tuple[int, int, int]:
    hop = max(1, round(sr * 0.005))
    nper = 4 * hop  # Hann with hop = N/4: the windows sum to 2
    nfft = 1 << math.ceil(math.log2(nper * 1.6))
    return hop, nper, nfft


def _stft(x: np.ndarray, hop: int, nper: int, nfft: int, nf: int) -> np.ndarray:
    """Frames centred on ``k * hop``, Hann-windowed, zero-padded centrally to ``nfft``."""
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nper) / nper)
    xp = np.zeros((nf - 1) * hop + nper)
    m = min(len(x), len(xp) - nper // 2)
    xp[nper // 2 : nper // 2 + m] = x[:m]
    idx = np.arange(nper)[None, :] + hop * np.arange(nf)[:, None]
    frames = np.zeros((nf, nfft))
    c = (nfft - nper) // 2
    frames[:, c : c + nper] = xp[idx] * win
    return np.fft.rfft(frames, axis=1)


def _istft(X: np.ndarray, hop: int, nper: int, nfft: int, n: int) -> np.ndarray:
    """Overlap-add of the whole filtered frames (no synthesis window), inverse of :func:`_stft`."""
    frames = np.fft.irfft(X, nfft, axis=1)
    nf = frames.shape[0]
    blocks = -(-nfft // hop)
    fp = np.zeros((nf, blocks * hop))
    fp[:, :nfft] = frames
    fp = fp.reshape(nf, blocks, hop)
    out = np.zeros((nf + blocks, hop))
    for r in range(blocks):
        out[r : r + nf] += fp[:, r, :]
    out = out.reshape(-1)
    start = nper // 2 + (nfft - nper) // 2
    return out[start : start + n] / 2.0


def _resonator_mag(F: np.ndarray, B: np.ndarray, freqs: np.ndarray, sr: int) -> np.ndarray:
    """|H| of cascaded 2-pole resonators (unity gain at DC): F, B (frames, K) -> (frames, bins)."""
    r = np.exp(-np.pi * B / sr)
    b = 2 * r * np.cos(2 * np.pi * F / sr)
    c = -r * r
    a = 1 - b - c
    w = 2 * np.pi * freqs / sr
    cw, c2w, sw, s2w = np.cos(w), np.cos(2 * w), np.sin(w), np.sin(2 * w)
    out2 = np.ones((F.shape[0], len(freqs)))
    for k in range(F.shape[1]):
        bk, ck = b[:, k, None], c[:, k, None]
        re = 1 - bk * cw - ck * c2w
        im = bk * sw + ck * s2w
        mag2 = (a[:, k, None] ** 2) / (re * re + im * im)
        valid = (F[:, k] < 0.46 * sr)[:, None]
        out2 *= np.where(valid, mag2, 1.0)
    return np.sqrt(out2)


def _render(phones: Sequence[str], dur: np.ndarray, stress: np.ndarray, spk: Speaker,
            rng: np.random.Generator, sr: int) -> np.ndarray:
    """Float64 waveform of timed phones, before gain and background noise."""
    hop, nper, nfft = _frames_layout(sr)
    ends = np.cumsum(dur)
    starts = ends - dur
    n = int(round(ends[-1] * sr))
    nf = -(-n // hop) + 1
    tf = np.arange(nf) * hop / sr
    fscale = spk.formant_scale * rng.uniform(0.98, 1.02)

    # formant tracks: each phone holds its target in its middle, linear transitions between
    kt, kF, kB = [], [], []
    for i, p in enumerate(phones):
        ph = PHONES[p]
        if ph.formants is None:
            continue
        F = np.array(ph.formants) * fscale * np.exp(rng.normal(0, 0.03, 4))
        edge = 0.35 if ph.kind == "vowel" else 0.2
        for t in (starts[i] + edge * dur[i], ends[i] - edge * dur[i]):
            kt.append(t)
            kF.append(F)
            kB.append(np.array(ph.bandwidths) * (0.5 + 0.5 * fscale))
    kt = np.array(kt)
    kF = np.array(kF)
    kB = np.array(kB)
    F = np.stack([np.interp(tf, kt, kF[:, k]) for k in range(4)]
                 + [np.full(nf, _F5 * fscale)], axis=1)
    B = np.stack([np.interp(tf, kt, kB[:, k]) for k in range(4)]
                 + [np.full(nf, _B5 * (0.5 + 0.5 * fscale))], axis=1)
    F[:, 1] = np.maximum(F[:, 1], F[:, 0] + 150)  # keep the resonances ordered
    F[:, 2] = np.maximum(F[:, 2], F[:, 1] + 150)

    # source tracks, piecewise constant over sub-segments, then lightly smoothed
    sub_end: list[float] = []
    # columns: voice, asp, fric, fric_fc, fric_bw, nasal, nasal_fz
    rows: list[tuple[float, ...]] = []
    fsq = math.sqrt(fscale)
    for i, p in enumerate(phones):
        ph = PHONES[p]
        s, d = starts[i], dur[i]
        fc, bw = ph.fric_fc * fsq, ph.fric_bw * fsq
        if ph.kind == "stop":
            bar = 0.10 if ph.voiced else 0.0
            burst = min(0.015, 0.2 * d)
            clos = 0.55 * d
            sub_end += [s + clos, s + clos + burst, s + d]
            rows.append((bar, 0.0, 0.0, fc, bw, 0.0, 1000.0))
            rows.append((bar, 0.0, ph.fric, fc, bw, 0.0, 1000.0))
            if ph.voiced:
                rows.append((0.45, 0.0, 0.0, fc, bw, 0.0, 1000.0))
            else:
                rows.append((0.0, ph.asp, 0.0, fc, bw, 0.0, 1000.0))
        else:
            gain = 1.15 if stress[i] else 1.0
            sub_end.append(s + d)
            rows.append((ph.voice * gain, ph.asp, ph.fric, fc, bw, ph.nasal,
                         ph.nasal_fz * fscale))
    table = np.array(rows)
    idx = np.minimum(np.searchsorted(np.array(sub_end), tf, side="right"), len(rows) - 1)
    P = table[idx]
    kern = np.array([0.25, 0.5, 0.25])
    for col in range(P.shape[1]):
        P[:, col] = np.convolve(np.pad(P[:, col], 1, mode="edge"), kern, mode="valid")
    voice, asp, fric, fc, bw, nasal, nz = P.T
    # shimmer, amplitude declination, breathiness
    voice = voice * np.exp(rng.normal(0, spk.shimmer, nf)) * np.linspace(1.1, 0.85, nf)
    asp = asp + spk.breathiness * voice

    # F0: declination + pitch accents on stressed vowels + slow wander + jitter
    f0 = spk.f0 * rng.uniform(0.92, 1.08)
    r = spk.f0_range
    contour = np.linspace(1 + r / 2, 1 - r / 2, nf)
    acc = np.zeros(nf)
    for i in np.flatnonzero(stress):
        a = rng.uniform(0.03, 0.15) * (1.0 if rng.random() < 0.6 else 0.3) * r / 0.15
        c = 0.5 * (starts[i] + ends[i])
        acc += a * np.exp(-0.5 * ((tf - c) / 0.07) ** 2)
    fr, ph0 = rng.uniform(0.4, 2.0, 2), rng.uniform(0, 2 * np.pi, 2)
    wander = 0.03 * np.sin(2 * np.pi * fr[:, None] * tf[None, :] + ph0[:, None]).sum(0)
    f0_track = f0 * contour * (1 + acc) * (1 + wander) * np.exp(rng.normal(0, spk.jitter, nf))
    f0_s = np.interp(np.arange(n) / sr, tf, f0_track)

    # Rosenberg glottal pulse; its derivative (flow derivative + lip radiation) is the source
    phase = np.cumsum(f0_s / sr) % 1.0
    tp = spk.open_quotient * 0.7
    tn = spk.open_quotient * 0.3
    g = np.where(phase < tp, 0.5 * (1 - np.cos(np.pi * phase / tp)),
                 np.where(phase < tp + tn, np.cos(np.pi * (phase - tp) / (2 * tn)), 0.0))
    src = np.diff(g, prepend=0.0)
    src /= np.sqrt(np.mean(src**2)) + 1e-12
    noise = rng.standard_normal(n)

    freqs = np.fft.rfftfreq(nfft, 1 / sr)
    H = _resonator_mag(F, B, freqs, sr)
    tilt = 1.0 / (1.0 + (freqs / 300.0) ** 2)  # rough power spectrum of the glottal source
    Hv = H / np.sqrt((H**2 * tilt).sum(1, keepdims=True) / tilt.sum())
    Ha = H / np.sqrt((H**2).mean(1, keepdims=True))
    Z = 1.0 - nasal[:, None] * np.exp(-0.5 * ((freqs[None, :] - nz[:, None]) / 200.0) ** 2)
    G = np.exp(-0.5 * ((freqs[None, :] - fc[:, None]) / bw[:, None]) ** 2) + 0.02
    G /= np.sqrt((G**2).mean(1, keepdims=True))
    Ev = voice[:, None] * Hv * Z
    En = asp[:, None] * Ha + fric[:, None] * G
    Y = _stft(src, hop, nper, nfft, nf) * Ev + _stft(noise, hop, nper, nfft, nf) * En
    return _istft(Y, hop, nper, nfft, n)


def _finish(y: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Random gain, a little coloured background noise, peak guard; float32."""
    rms = np.sqrt(np.mean(y**2)) + 1e-12
    y = y * (10 ** (rng.uniform(-28.0, -18.0) / 20) / rms)
    snr = rng.uniform(22.0, 42.0)
    pole = rng.uniform(0.0, 0.95)  # white to brown-ish: 1 / |1 - pole e^{-jw}|
    m = 1 << math.ceil(math.log2(len(y)))  # a fast FFT length
    w = np.linspace(0, np.pi, m // 2 + 1)
    spec = np.fft.rfft(rng.standard_normal(m)) / np.abs(1 - pole * np.exp(-1j * w))
    bg = np.fft.irfft(spec, m)[: len(y)]
    bg *= np.sqrt(np.mean(y**2)) * 10 ** (-snr / 20) / (np.sqrt(np.mean(bg**2)) + 1e-12)
    y = y + bg
    peak = np.abs(y).max()
    if peak > 0.95:
        y *= 0.95 / peak
    return y.astype(np.float32)


def synthesize(text: str, speaker: Speaker | int = 0, *, sample_rate: int = 16000,
               seed: int = 0, pause: float = 0.08):
    """Render a given word sequence (letters of :data:`PHONES`, words split by spaces).

    Returns ``(wav, segments)``: float32 samples (with gain and background noise as in the
    corpus) and a list of ``(phone, start_s, end_s)`` with ``"_"`` for pauses. Meant for tests
    and inspection; the corpus uses random sentences.
    """
    spk = speaker if isinstance(speaker, Speaker) else make_speakers(max(speaker + 1, 1))[speaker]
    rng = np.random.default_rng([seed, 0x7E57])
    words = text.split()
    bad = set("".join(words)) - set(PHONES) - {"_"}
    if bad or not words:
        raise ValueError(f"text must be words of the letters {''.join(sorted(PHONES))}: {text!r}")
    phones, durs, stress = ["_"], [np.array([0.15])], [np.zeros(1, dtype=bool)]
    for j, w in enumerate(words):
        ph, d, s = _word_phones(w, rng, spk.rate, final=j == len(words) - 1)
        if j:
            phones.append("_")
            durs.append(np.array([pause]))
            stress.append(np.zeros(1, dtype=bool))
        phones += ph
        durs.append(d)
        stress.append(s)
    phones.append("_")
    durs.append(np.array([0.15]))
    stress.append(np.zeros(1, dtype=bool))
    dur = np.concatenate(durs)
    y = _render(phones, dur, np.concatenate(stress), spk, rng, sample_rate)
    y = _finish(y, rng, sample_rate)
    ends = np.cumsum(dur)
    return y, [(p, float(e - d), float(e)) for p, d, e in zip(phones, dur, ends)]


def _builtin_utterance(rng: np.random.Generator, spk: Speaker, target: float, sr: int):
    words, phones, dur, stress = _plan(rng, spk, target)
    y = _finish(_render(phones, dur, stress, spk, rng, sr), rng, sr)
    return y, " ".join(words)


# ---------------------------------------------------------------------------------------------
# espeak-ng

_ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                    "croak", "klatt", "klatt2", "whisper"]


@dataclass(frozen=True)
class _EspeakVoice:
    index: int
    voice: str
    speed: int  # words per minute
    pitch: int  # 0-99
    gap: int  # extra pause between words, in units of 10 ms


def _espeak_voices(n: int, seed: int) -> list[_EspeakVoice]:
    rng = np.random.default_rng([seed, 0xE5])
    variants = [v for v in _ESPEAK_VARIANTS if v != "whisper"]
    return [
        _EspeakVoice(i, f"en+{variants[i % len(variants)]}", int(rng.integers(130, 200)),
                     int(rng.integers(20, 80)), int(rng.integers(0, 6)))
        for i in range(n)
    ]


def _espeak_say(text: str, v: _EspeakVoice, speed: int, pitch: int, sr: int) -> np.ndarray:
    from scipy.signal import resample_poly

    cmd = ["espeak-ng", "--stdout", "-v", v.voice, "-s", str(speed), "-p", str(pitch),
           "-a", "120", "-g", str(v.gap), text]
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    if res.returncode != 0 or len(res.stdout) < 64:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.decode(errors='replace').strip()}")
    x, sr0 = _read_stream_wav(res.stdout)
    if sr0 != sr:
        g = math.gcd(sr0, sr)
        x = resample_poly(x, sr // g, sr0 // g)
    return x


def _read_stream_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a WAV written to a pipe (``espeak-ng --stdout``: its RIFF and data sizes are
    placeholders, which libsndfile rejects): mono float64 samples and the rate."""
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
        return x.mean(axis=1), int(sr)
    except (sf.LibsndfileError, RuntimeError):
        pass
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not write a WAV stream")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if cid == b"fmt ":
            fmt = data[pos + 8 : pos + 8 + 16]
        elif cid == b"data":
            if fmt is None:
                break
            tag, ch, sr = (int.from_bytes(fmt[0:2], "little"), int.from_bytes(fmt[2:4], "little"),
                           int.from_bytes(fmt[4:8], "little"))
            bits = int.from_bytes(fmt[14:16], "little")
            if tag != 1 or bits != 16:
                raise ValueError(f"unexpected WAV format from espeak-ng: tag {tag}, {bits} bits")
            body = data[pos + 8 :]
            body = body[: len(body) // (2 * ch) * 2 * ch]
            x = np.frombuffer(body, dtype="<i2").reshape(-1, ch).mean(axis=1) / 32768.0
            return x, sr
        pos += 8 + size + (size & 1)
    raise ValueError("no data chunk in espeak-ng's WAV stream")


def _espeak_utterance(rng: np.random.Generator, v: _EspeakVoice, target: float, sr: int):
    speed = int(v.speed * rng.uniform(0.9, 1.1))
    pitch = int(np.clip(v.pitch + rng.integers(-8, 9), 0, 99))
    n_words = max(1, int(round((target - 0.4) * speed / 60 * 1.6)))  # pseudo-words are short
    words = [LEXICON[i] for i in rng.choice(len(LEXICON), size=n_words, p=_ZIPF)]
    while True:
        x = _espeak_say(" ".join(words), v, speed, pitch, sr)
        # trim espeak's own silence, then add our own
        nz = np.flatnonzero(np.abs(x) > 1e-3 * (np.abs(x).max() + 1e-12))
        if len(nz):
            x = x[nz[0] : nz[-1] + 1]
        lead, trail = rng.uniform(0.08, 0.3, 2)
        total = len(x) / sr + lead + trail
        if total <= MAX_DURATION - 0.02 or len(words) == 1:
            break
        words = words[: max(1, int(len(words) * (MAX_DURATION - 0.6) / total))]
    trail = max(trail, MIN_DURATION + 0.02 - len(x) / sr - lead)
    x = np.concatenate([np.zeros(int(lead * sr)), x, np.zeros(int(trail * sr))])
    x = x[: int((MAX_DURATION - 0.01) * sr)]
    return _finish(x, rng, sr), " ".join(words)


# ---------------------------------------------------------------------------------------------
# Corpus


def _is_complete(out: Path, params: dict, ignore: Sequence[str] = ()) -> bool:
    try:
        stored = json.loads((out / CORPUS_JSON).read_text(encoding="utf-8"))
        if {k: v for k, v in stored.items() if k not in ignore} != {
            k: v for k, v in params.items() if k not in ignore
        }:
            return False
        with open(out / MANIFEST, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return bool(rows) and all((out / r["audio"]).is_file() for r in rows)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def make_corpus(
    out_dir: str | os.PathLike,
    *,
    minutes: float = 10.0,
    sample_rate: int = 16000,
    seed: int = 0,
    use_espeak: bool | None = None,
    progress: bool = True,
    num_speakers: int = DEFAULT_SPEAKERS,
) -> Path:
    """Write a synthetic speech corpus of about ``minutes`` minutes under ``out_dir``.

    Files: ``audio/utt_NNNNN.flac`` (mono, ``sample_rate``, 2-8 s each, 16-bit),
    ``manifest.jsonl`` (keys audio, duration, sr, speaker, text, split) and ``corpus.json``
    (the parameters). If the corpus there is complete and was made with the same parameters,
    returns at once without touching it (with ``use_espeak=None`` either generator's corpus is
    accepted). Every file is written under a temporary name and renamed, and the manifest is
    written last, so an interrupted run is simply redone.

    Args:
        out_dir: folder to write (created).
        minutes: total audio, at least; the last file may end the corpus up to 8 s beyond it.
        sample_rate: output rate in Hz.
        seed: the same seed gives the same audio samples and texts.
        use_espeak: True: espeak-ng (error if missing); False: the built-in formant synthesiser;
            None: espeak-ng when on the PATH, else built-in.
        progress: show a progress bar on stderr.
        num_speakers: distinct voices.

    Returns:
        ``Path(out_dir)``.
    """
    out = Path(out_dir)
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    have_espeak = shutil.which("espeak-ng") is not None
    if use_espeak and not have_espeak:
        raise RuntimeError("use_espeak=True but espeak-ng is not on the PATH "
                           "(apt-get install espeak-ng, or use_espeak=False)")
    espeak = have_espeak if use_espeak is None else bool(use_espeak)
    params = {
        "version": CORPUS_VERSION,
        "generator": "espeak-ng" if espeak else "builtin",
        "minutes": float(minutes),
        "sample_rate": int(sample_rate),
        "seed": int(seed),
        "num_speakers": int(num_speakers),
    }
    if _is_complete(out, params, ignore=("generator",) if use_espeak is None else ()):
        return out

    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    (out / CORPUS_JSON).unlink(missing_ok=True)
    for p in audio_dir.glob(".utt_*.tmp"):  # left by a run that was killed
        p.unlink(missing_ok=True)
    if espeak:
        voices = _espeak_voices(num_speakers, seed)
        prefix = "espeak"
    else:
        speakers = make_speakers(num_speakers, seed)
        prefix = "synth"

    total_s = float(minutes) * 60.0
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=round(total_s), unit="s", desc="synth corpus", file=sys.stderr)
        except ImportError:
            bar = None
    rows: list[dict] = []
    done = 0.0
    i = 0
    try:
        while done < total_s:
            rng = np.random.default_rng([seed, i])
            target = rng.uniform(MIN_DURATION + 0.2, MAX_DURATION - 0.2)
            remaining = total_s - done
            if remaining < target:
                target = max(remaining, MIN_DURATION + 0.2)
            spk = int(rng.integers(num_speakers))
            if espeak:
                y, text = _espeak_utterance(rng, voices[spk], target, sample_rate)
            else:
                y, text = _builtin_utterance(rng, speakers[spk], target, sample_rate)
            name = f"audio/utt_{i + 1:05d}.flac"
            with atomic_path(out / name, fsync=False) as tmp:
                sf.write(tmp, y, sample_rate, format="FLAC", subtype="PCM_16")
            dur = len(y) / sample_rate
            rows.append({
                "audio": name,
                "duration": round(dur, 3),
                "sr": sample_rate,
                "speaker": f"{prefix}:{spk}",
                "text": text,
                "split": "test" if i % TEST_EVERY == TEST_EVERY - 1 else "train",
            })
            done += dur
            i += 1
            if bar is not None:
                bar.update(min(round(done), bar.total) - bar.n)
    finally:
        if bar is not None:
            bar.close()
    if len(rows) >= 2 and not any(r["split"] == "test" for r in rows):
        rows[-1]["split"] = "test"

    keep = {Path(r["audio"]).name for r in rows}
    for p in audio_dir.glob("utt_*.flac"):  # left over from a larger corpus made here before
        if p.name not in keep:
            p.unlink(missing_ok=True)
    atomic_write_text(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows), fsync=False)
    atomic_write_text(out / CORPUS_JSON, json.dumps(params, indent=2) + "\n", fsync=False)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m audio_ssl.data.synth",
        description="Write a synthetic speech-like corpus (FLAC + manifest.jsonl).",
    )
    ap.add_argument("out_dir")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speakers", type=int, default=DEFAULT_SPEAKERS)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--espeak", dest="use_espeak", action="store_true", default=None,
                   help="use espeak-ng (default: when installed)")
    g.add_argument("--no-espeak", dest="use_espeak", action="store_false",
                   help="use the built-in formant synthesiser")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    out = make_corpus(a.out_dir, minutes=a.minutes, sample_rate=a.sample_rate, seed=a.seed,
                      use_espeak=a.use_espeak, progress=not a.quiet, num_speakers=a.speakers)
    print(out / MANIFEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
