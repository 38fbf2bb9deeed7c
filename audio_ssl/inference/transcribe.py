"""Speech to text with a CTC model: `audio-ssl transcribe` and `audio-ssl evaluate`.

A :class:`Transcriber` holds a model loaded by :func:`audio_ssl.interop.load_model`, the audio
and text settings it was fine-tuned with (read from its run config), and a decoder (greedy, or
beam search with an LM). Files are decoded whole, batched by length; a file that cannot be
read is reported and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from audio_ssl.config import TextConfig, merge
from audio_ssl.data.collate import load_batch
from audio_ssl.data.manifest import (
    AUDIO_EXTENSIONS,
    LIST_SUFFIXES,
    NoAudioError,
    Rejected,
    read_header,
    scan,
)
from audio_ssl.data.text import Vocabulary, normalize_text
from audio_ssl.inference.decode import BeamSearchDecoder, greedy_decode
from audio_ssl.inference.metrics import ZERO, EditCounts, char_errors, word_errors
from audio_ssl.precision import resolve as resolve_precision

log = logging.getLogger("audio_ssl")


def run_config_of(loaded: Any) -> dict[str, Any]:
    """The run config stored with a loaded model (empty for formats that have none).

    ``LoadedModel`` carries the model config only; this library's checkpoints also hold the
    whole run config (text and audio settings) under ``audio_ssl_config``.
    """
    cfg = getattr(loaded, "run_config", None)
    if cfg is not None:
        return dict(cfg)
    if getattr(loaded, "source", None) == "audio-ssl" and Path(loaded.path).is_file():
        from audio_ssl.interop import CONFIG_KEY

        checkpoint = torch.load(loaded.path, map_location="cpu", weights_only=False, mmap=True)
        return dict(checkpoint.get(CONFIG_KEY) or {})
    return {}


@dataclass(frozen=True)
class InferenceSettings:
    """How a model's input audio and output text are prepared."""

    sample_rate: int = 16_000
    normalize_audio: bool = False
    text: TextConfig = TextConfig()

    @classmethod
    def of(cls, loaded: Any) -> InferenceSettings:
        run = run_config_of(loaded)
        data = run.get("data") or {}
        text = merge(TextConfig(), run["text"]) if isinstance(run.get("text"), dict) else TextConfig()
        return cls(int(data.get("sample_rate", 16_000)), loaded.expects_normalized, text)


@dataclass
class Transcription:
    path: str
    text: str
    seconds: float  # audio duration


class Transcriber:
    """A CTC model and a decoder: waveforms or files in, text out.

    Args:
        loaded: a ``LoadedModel`` whose model has a CTC head and whose ``vocab`` is set.
        device: where the model runs.
        decoder: a :class:`BeamSearchDecoder`, or None for greedy decoding.
        max_batch_samples: padded samples per forward pass (B * S).
        precision: ``auto``, ``32`` or ``bf16-mixed`` (see :mod:`audio_ssl.precision`); the
            log-softmax and the decoding are fp32 either way.
    """

    def __init__(self, loaded: Any, *, device: str | torch.device = "cpu",
                 decoder: BeamSearchDecoder | None = None,
                 max_batch_samples: int = 1_600_000, precision: str = "auto") -> None:
        if loaded.vocab is None:
            raise ValueError(f"{loaded.path} holds a {type(loaded.model).__name__} without a CTC "
                             "head: fine-tune it first (audio-ssl finetune)")
        self.loaded = loaded
        self.vocab = Vocabulary(tuple(loaded.vocab))
        self.settings = InferenceSettings.of(loaded)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device.type)
        log.info(self.precision.describe())
        self.model = loaded.model.to(self.device).eval()
        self.decoder = decoder
        self.max_batch_samples = int(max_batch_samples)

    @classmethod
    def from_path(cls, model: str | os.PathLike, *, lm: str | os.PathLike | None = None,
                  lexicon: str | os.PathLike | None = None, beam_size: int = 50,
                  lm_weight: float = 2.0, word_score: float = 0.0,
                  device: str | None = None, max_batch_samples: int = 1_600_000,
                  precision: str = "auto") -> Transcriber:
        """Load ``model`` (any format :func:`load_model` reads); beam search when ``lm`` or
        ``lexicon`` is given, else greedy."""
        from audio_ssl.interop import load_model

        loaded = load_model(model)
        decoder = None
        if lm is not None or lexicon is not None:
            if loaded.vocab is None:
                raise ValueError(f"{model} has no CTC vocabulary")
            decoder = BeamSearchDecoder(loaded.vocab, lm=lm, lexicon=lexicon, beam_size=beam_size,
                                        lm_weight=lm_weight, word_score=word_score)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(loaded, device=device, decoder=decoder, max_batch_samples=max_batch_samples,
                   precision=precision)

    @torch.inference_mode()
    def decode_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """waveforms: (B, S) at the model's rate, already normalised if it expects it;
        lengths: (B,) -> B strings."""
        waveforms, lengths = waveforms.to(self.device), lengths.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision.bf16):
            out = self.model(waveforms, lengths)
        log_probs = out.logits.float().log_softmax(-1)  # (B, T, V)
        if self.decoder is None:
            return greedy_decode(log_probs, out.frame_lengths, self.vocab)
        return self.decoder(log_probs, out.frame_lengths)

    def transcribe_files(self, paths: Sequence[str]) -> tuple[list[Transcription], list[Rejected]]:
        """Transcribe ``paths`` (in their order) -> (transcriptions, files that failed)."""
        s = self.settings
        lengths: list[int] = []
        usable: list[str] = []
        failed: list[Rejected] = []
        for header in map(read_header, map(str, paths)):
            if isinstance(header, Rejected):
                failed.append(header)
                continue
            usable.append(header.path)
            lengths.append(header.samples_at(s.sample_rate))
        from audio_ssl.data.labelled import length_batches

        texts: dict[str, Transcription] = {}
        for group in length_batches(lengths, self.max_batch_samples):
            decoded = load_batch([usable[i] for i in group], sample_rate=s.sample_rate,
                                 normalize=s.normalize_audio)  # (B, S), (B,)
            failed.extend(Rejected(usable[group[k]], reason) for k, reason in decoded.failures)
            if not decoded.kept:
                continue
            hypotheses = self.decode_batch(decoded.waveforms, decoded.lengths)
            for k, text, n in zip(decoded.kept, hypotheses, decoded.lengths.tolist()):
                name = usable[group[k]]
                texts[name] = Transcription(name, text, n / s.sample_rate)
        return [texts[p] for p in usable if p in texts], failed


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[str], list[Rejected]]:
    """Audio files of ``inputs``: files as given, folders scanned, ``.jsonl`` / ``.txt`` lists
    read -> (paths, sources that held nothing usable)."""
    paths: list[str] = []
    bad: list[Rejected] = []
    for entry in inputs:
        p = Path(entry)
        if p.is_dir() or p.suffix.lower() in (".jsonl", *LIST_SUFFIXES):
            try:
                items, rejected = scan(p, progress=False)
            except (NoAudioError, FileNotFoundError) as e:
                bad.append(Rejected(str(p), str(e)))
                continue
            paths.extend(it.path for it in items)
            bad.extend(rejected)
        elif p.is_file():
            if not p.name.lower().endswith(AUDIO_EXTENSIONS):
                bad.append(Rejected(str(p), f"not an audio file ({', '.join(AUDIO_EXTENSIONS)})"))
            else:
                paths.append(str(p.absolute()))
        else:
            bad.append(Rejected(str(p), "does not exist"))
    return paths, bad


@dataclass
class TranscribeResult:
    transcriptions: list[Transcription]
    failed: list[Rejected]
    seconds: float  # wall time

    def summary(self) -> str:
        audio = sum(t.seconds for t in self.transcriptions)
        return (f"transcribed {len(self.transcriptions)} file(s), {audio:.1f} s of audio, in "
                f"{self.seconds:.1f} s; {len(self.failed)} skipped")


def transcribe(model: str | os.PathLike | Transcriber, inputs: Sequence[str | os.PathLike], *,
               output: str | os.PathLike | None = None, **decoder_options: Any) -> TranscribeResult:
    """Transcribe files and folders with ``model`` (a path, or a :class:`Transcriber`).
    ``output``: JSONL of ``{"path", "text", "seconds"}`` (failures as ``{"path", "error"}``).
    ``decoder_options``: ``lm``, ``lexicon``, ``beam_size``, ``lm_weight``, ``word_score``,
    ``device``, ``precision``, as :meth:`Transcriber.from_path`."""
    start = time.perf_counter()
    transcriber = model if isinstance(model, Transcriber) else \
        Transcriber.from_path(model, **decoder_options)
    paths, bad = expand_inputs(inputs)
    results, failed = transcriber.transcribe_files(paths)
    failed = bad + failed
    if output is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            for t in results:
                f.write(json.dumps(asdict(t), ensure_ascii=False) + "\n")
            for r in failed:
                f.write(json.dumps({"path": r.path, "error": r.reason}, ensure_ascii=False) + "\n")
    return TranscribeResult(results, failed, time.perf_counter() - start)


@dataclass
class UtteranceErrors:
    id: str
    path: str
    reference: str
    hypothesis: str
    word: EditCounts
    char: EditCounts


@dataclass
class EvalResult:
    """Corpus WER and CER (errors over reference words / characters, summed)."""

    utterances: list[UtteranceErrors]
    skipped: list[Rejected]
    word: EditCounts = ZERO
    char: EditCounts = ZERO
    seconds: float = 0.0
    decoder: str = "greedy"
    extra: dict[str, Any] = field(default_factory=dict)
    streaming: EvalResult | None = None  # the same files decoded as streams (evaluate --stream)
    stream_settings: Any = None  # their StreamSettings

    @property
    def wer(self) -> float:
        return self.word.rate

    @property
    def cer(self) -> float:
        return self.char.rate

    def summary(self) -> str:
        w, c = self.word, self.char
        text = (f"WER {100 * self.wer:.2f}% ({w.errors} errors / {w.reference_length} words: "
                f"{w.substitutions} sub, {w.deletions} del, {w.insertions} ins)\n"
                f"CER {100 * self.cer:.2f}% ({c.errors} errors / {c.reference_length} characters)\n"
                f"{len(self.utterances)} utterance(s) decoded ({self.decoder}) in "
                f"{self.seconds:.1f} s; {len(self.skipped)} skipped")
        if self.streaming is not None:
            s, st = self.streaming, self.stream_settings
            text += (f"\nstreaming (chunk {st.chunk_seconds:g} s, left {st.left_seconds:g} s, "
                     f"right {st.right_seconds:g} s; latency {st.latency_seconds:.2f} s): "
                     f"WER {100 * s.wer:.2f}% ({s.word.errors} errors), CER {100 * s.cer:.2f}% "
                     f"({s.char.errors} errors); offline WER {100 * self.wer:.2f}%, CER "
                     f"{100 * self.cer:.2f}%; streamed in {s.seconds:.1f} s")
        return text


def _score(items: Sequence[Any], hyps: dict[str, str], text_cfg: TextConfig
           ) -> tuple[list[UtteranceErrors], EditCounts, EditCounts]:
    """Per-utterance errors of ``hyps`` (by path) against the items' references, and the sums."""
    utterances = []
    word = char = ZERO
    for it in items:
        if it.path not in hyps:
            continue
        ref = normalize_text(it.text, text_cfg)
        hyp = normalize_text(hyps[it.path], text_cfg)
        u = UtteranceErrors(it.id, it.path, ref, hyp, word_errors(ref, hyp), char_errors(ref, hyp))
        word, char = word + u.word, char + u.char
        utterances.append(u)
    return utterances, word, char


def stream_files(transcriber: Transcriber, paths: Sequence[str], settings: Any
                 ) -> dict[str, str]:
    """Each file fed to a :class:`~audio_ssl.inference.streaming.StreamingTranscriber` chunk
    by chunk, as if live -> {path: its final segments joined}."""
    from audio_ssl.data.audio import load_audio
    from audio_ssl.inference.streaming import StreamingTranscriber, final_text

    stream = StreamingTranscriber(transcriber, settings)
    return {path: final_text(stream.transcribe(load_audio(path, sample_rate=stream.sample_rate)))
            for path in paths}


def evaluate(model: str | os.PathLike | Transcriber, labelled: str | os.PathLike, *,
             split: str | None = None, report: str | os.PathLike | None = None,
             stream: Any = None, **decoder_options: Any) -> EvalResult:
    """WER and CER of ``model`` on a labelled corpus (JSONL, LibriSpeech folder or TSV; see
    :func:`audio_ssl.data.labelled.read_labelled`). References and hypotheses are normalised
    with the model's text settings. ``report``: JSONL, one line per utterance (reference,
    hypothesis, errors), skipped ones with their reason. ``stream``: a
    :class:`~audio_ssl.inference.streaming.StreamSettings`: the files are also decoded as
    streams, scored in ``EvalResult.streaming`` (and ``stream_*`` fields of the report)."""
    from audio_ssl.data.labelled import read_labelled

    start = time.perf_counter()
    transcriber = model if isinstance(model, Transcriber) else \
        Transcriber.from_path(model, **decoder_options)
    text_cfg = transcriber.settings.text
    items, skipped = read_labelled(labelled, split=split,
                                   sample_rate=transcriber.settings.sample_rate, min_samples=1)
    results, failed = transcriber.transcribe_files([it.path for it in items])
    skipped = skipped + failed
    hyps = {t.path: t.text for t in results}
    utterances, word, char = _score(items, hyps, text_cfg)
    decoder = "greedy" if transcriber.decoder is None else "beam search"
    result = EvalResult(utterances, skipped, word, char, time.perf_counter() - start, decoder)
    streamed: dict[str, UtteranceErrors] = {}
    if stream is not None:
        began = time.perf_counter()
        stream_hyps = stream_files(transcriber, list(hyps), stream)
        s_utts, s_word, s_char = _score(items, stream_hyps, text_cfg)
        result.streaming = EvalResult(s_utts, [], s_word, s_char, time.perf_counter() - began,
                                      decoder)
        result.stream_settings = stream
        streamed = {u.path: u for u in s_utts}
    if report is not None:
        out = Path(report)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            for u in utterances:
                f.write(json.dumps({
                    "id": u.id, "path": u.path, "reference": u.reference,
                    "hypothesis": u.hypothesis, "word_errors": u.word.errors,
                    "words": u.word.reference_length, "char_errors": u.char.errors,
                    "chars": u.char.reference_length, "substitutions": u.word.substitutions,
                    "deletions": u.word.deletions, "insertions": u.word.insertions,
                    **({"stream_hypothesis": streamed[u.path].hypothesis,
                        "stream_word_errors": streamed[u.path].word.errors,
                        "stream_char_errors": streamed[u.path].char.errors}
                       if u.path in streamed else {}),
                }, ensure_ascii=False) + "\n")
            for r in skipped:
                f.write(json.dumps({"path": r.path, "error": r.reason}, ensure_ascii=False) + "\n")
    return result


__all__ = ["run_config_of", "InferenceSettings", "Transcription", "Transcriber",
           "expand_inputs", "TranscribeResult", "transcribe", "UtteranceErrors", "EvalResult",
           "stream_files", "evaluate"]
