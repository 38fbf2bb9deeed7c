"""English speech from eSpeak NG, installed by pip (``espeakng-loader``), driven through ctypes.

``espeakng-loader`` ships ``libespeak-ng.so`` (1.52) and its voice data, so no system package is
needed. The library keeps one global state per process: :class:`Espeak` initialises it once (in
synchronous mode, with a callback that collects the 16-bit samples) and sets the voice, rate and
pitch before each utterance. Output is mono float32 at the library's rate (22,050 Hz).

    >>> tts = Espeak()
    >>> audio = tts.say("three one four", Voice("en-us", "Annie", rate=160, pitch=50))
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


class EspeakError(RuntimeError):
    """eSpeak NG could not be loaded or refused a voice or a text."""


@dataclass(frozen=True)
class Voice:
    """One speaker: an English accent (``en-us``, ``en-gb-scotland``...), a voice variant
    (``Annie``, ``m3``...; espeak-ng-data/voices/!v), speaking rate in words per minute, base
    pitch (0-99) and pitch range (0-99)."""

    accent: str
    variant: str
    rate: int = 160
    pitch: int = 50
    range: int = 50

    @property
    def name(self) -> str:
        """What ``espeak_SetVoiceByName`` takes: ``accent+variant``."""
        return f"{self.accent}+{self.variant}"

    @property
    def id(self) -> str:
        """A stable speaker id for manifests."""
        return f"espeak:{self.accent}+{self.variant}"


class Espeak:
    """The process's eSpeak NG engine. Not reentrant: calls are serialised by a lock."""

    _lib: ctypes.CDLL | None = None
    _sample_rate = 0
    _lock = threading.Lock()
    _chunks: list[np.ndarray] = []

    def __init__(self) -> None:
        with Espeak._lock:
            if Espeak._lib is None:
                Espeak._lib, Espeak._sample_rate = _load()

    @property
    def sample_rate(self) -> int:
        return Espeak._sample_rate

    def say(self, text: str, voice: Voice, seed: int = 0) -> np.ndarray:
        """Speak ``text`` with ``voice``: (S,) float32 in [-1, 1] at :attr:`sample_rate`.
        ``seed`` seeds the noise of breathy voices (eSpeak's and the C library's generator)."""
        lib = Espeak._lib
        with Espeak._lock:
            lib.espeak_ng_SetRandSeed(int(seed))
            _libc().srand(int(seed) & 0xFFFFFFFF)
            if lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
                raise EspeakError(f"eSpeak NG has no voice {voice.name!r}")
            for param, value in ((_RATE, voice.rate), (_PITCH, voice.pitch),
                                 (_RANGE, voice.range), (_VOLUME, 100), (_WORDGAP, 0)):
                lib.espeak_SetParameter(param, int(value), 0)
            Espeak._chunks = []
            data = text.encode("utf-8") + b"\0"
            status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                      None, None)
            lib.espeak_Synchronize()
            if status != _EE_OK:
                raise EspeakError(f"eSpeak NG could not speak {text!r} (error {status})")
            chunks, Espeak._chunks = Espeak._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(chunks).astype(np.float32) / 32768.0)


def speak_fresh(jobs: list[tuple[str, Voice, int]]) -> tuple[int, list[np.ndarray]]:
    """Speak ``(text, voice, seed)`` jobs in order: (sample rate, [(S,) float32 per job]).

    Meant for a fresh process (a worker that runs one task): eSpeak NG keeps state from one
    utterance to the next, so the same call twice gives slightly different audio, but a sequence
    spoken from a fresh start is always the same. This module imports only numpy, so a spawned
    worker starts in a fraction of a second.
    """
    tts = Espeak()
    return tts.sample_rate, [tts.say(text, voice, seed) for text, voice, seed in jobs]


@_SYNTH_CALLBACK
def _collect(wav, num_samples, events):
    if wav and num_samples > 0:
        Espeak._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # the process's C library: eSpeak NG's rand() is its rand()


def _load() -> tuple[ctypes.CDLL, int]:
    try:
        import espeakng_loader
    except ImportError as err:  # pragma: no cover - a core dependency
        raise EspeakError("espeakng-loader is not installed (pip install espeakng-loader)") from err
    lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                 espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise EspeakError(f"espeak_Initialize failed ({rate}) with data at "
                          f"{espeakng_loader.get_data_path()}")
    lib.espeak_SetSynthCallback(_collect)
    return lib, int(rate)


__all__ = ["Espeak", "EspeakError", "Voice", "speak_fresh"]
