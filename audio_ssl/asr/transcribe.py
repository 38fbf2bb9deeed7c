"""Speech to text with a CTC model: `audio-ssl transcribe` and `audio-ssl evaluate`.

A :class:`Transcriber` holds a model loaded by :func:`audio_ssl.interop.load_model`, the audio
and text settings it was fine-tuned with (read from its run config), and a decoder (greedy, or
beam search with an LM). Files are decoded whole, batched by length; a file that cannot be
read is reported and skipped.

``transcribe(..., output=FILE)`` appends each file's row to FILE as soon as its batch is
decoded (:class:`TranscriptionFile`), so a stopped run keeps what it did, and a rerun into the
same FILE skips the files it holds: an interrupted run, rerun, ends with the file an
uninterrupted one writes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    too_short,
)
from audio_ssl.data.text import Vocabulary, normalize_text
from audio_ssl.asr.decode import BeamSearchDecoder, greedy_decode
from audio_ssl.asr.metrics import ZERO, EditCounts, char_errors, word_errors
from audio_ssl.io import atomic_write_text
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
        loaded: a ``LoadedModel`` whose model has a CTC head and whose ``vocab`` is set (an
            ONNX export's runs onnxruntime on the CPU, whatever ``device`` and ``precision``).
        device: where the model runs.
        decoder: a :class:`BeamSearchDecoder`, or None for greedy decoding.
        max_batch_samples: padded samples per forward pass (B * S).
        precision: ``auto``, ``32`` or ``bf16-mixed`` (see :mod:`audio_ssl.precision`); the
            log-softmax and the decoding are fp32 either way.

    Attributes:
        min_samples: the model's receptive field: shorter files give no frame and are skipped
            as too short (:func:`~audio_ssl.data.manifest.too_short`, the rule of every command).
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
        if loaded.source == "onnx":  # onnxruntime on the CPU, in the file's own types
            device, precision = "cpu", "32"
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device.type)
        if loaded.source != "onnx":
            log.info(self.precision.describe())
        self.model = loaded.model.to(self.device).eval()
        self.decoder = decoder
        self.max_batch_samples = int(max_batch_samples)
        from audio_ssl.models.feature_encoder import receptive_field

        self.min_samples = receptive_field(loaded.config.encoder.conv_layers)[0]

    @classmethod
    def from_path(cls, model: str | os.PathLike, *, lm: str | os.PathLike | None = None,
                  lexicon: str | os.PathLike | None = None, beam_size: int = 50,
                  lm_weight: float = 2.0, word_score: float = 0.0,
                  device: str | None = None, max_batch_samples: int = 1_600_000,
                  precision: str = "auto") -> Transcriber:
        """Load ``model`` (any format :func:`load_model` reads, or an exported ``.onnx``
        file, run by onnxruntime); beam search when ``lm`` or ``lexicon`` is given, else
        greedy."""
        from audio_ssl.interop import load_model

        loaded = load_model(model, onnx=True)
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

    def iter_files(self, paths: Sequence[str]) -> Iterator[Transcription | Rejected]:
        """Transcribe ``paths`` batch by batch, shortest first: first a :class:`Rejected` for
        each file whose header cannot be read or that is too short, then, as each batch is
        decoded, a
        :class:`Transcription` for each of its files (in length order) or a :class:`Rejected`
        for one that failed to decode."""
        s = self.settings
        lengths: list[int] = []
        usable: list[str] = []
        for header in map(read_header, map(str, paths)):
            if not isinstance(header, Rejected):
                header = too_short(header, self.min_samples, s.sample_rate) or header
            if isinstance(header, Rejected):
                yield header
                continue
            usable.append(header.path)
            lengths.append(header.samples_at(s.sample_rate))
        from audio_ssl.data.labelled import length_batches

        for group in length_batches(lengths, self.max_batch_samples):
            decoded = load_batch([usable[i] for i in group], sample_rate=s.sample_rate,
                                 normalize=s.normalize_audio)  # (B, S), (B,)
            yield from (Rejected(usable[group[k]], reason) for k, reason in decoded.failures)
            if not decoded.kept:
                continue
            hypotheses = self.decode_batch(decoded.waveforms, decoded.lengths)
            for k, text, n in zip(decoded.kept, hypotheses, decoded.lengths.tolist()):
                yield Transcription(usable[group[k]], text, n / s.sample_rate)

    def transcribe_files(self, paths: Sequence[str]) -> tuple[list[Transcription], list[Rejected]]:
        """Transcribe ``paths`` -> (transcriptions in the order of ``paths``, files that
        failed)."""
        texts: dict[str, Transcription] = {}
        failed: list[Rejected] = []
        for r in self.iter_files(paths):
            if isinstance(r, Rejected):
                failed.append(r)
            else:
                texts[r.path] = r
        return [texts[p] for p in map(str, paths) if p in texts], failed


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


class TranscriptionFile:
    """The JSONL output of ``transcribe``, written as the run goes and resumed by a rerun.

    One line per file: ``{"path", "text", "seconds"}`` for a transcription, appended and
    flushed as soon as its batch is decoded; ``{"path", "error"}`` for a file that could not be
    used, written by :meth:`finish` at the end of the run. Opening an existing file keeps its
    transcriptions (:attr:`done`: a rerun skips them) and drops what a rerun writes again: its
    error rows (those files are tried again) and a last line a kill left torn (no newline, or
    not JSON); the kept lines are rewritten atomically (by :meth:`open`), so nothing complete is
    lost.

    Raises:
        ValueError: ``path`` is a folder, or a line before the last is not a row of this
            format (not a file this command wrote).
        OutputFolderError: (:meth:`open`) ``path`` or its folder cannot be made or written.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"--output {self.path} is a folder: expected a JSONL file")
        self.done: dict[str, Transcription] = {}
        self.kept, self.dropped = self._read()
        self.file = None

    def open(self) -> None:
        """Make the folder, rewrite the file without what a rerun writes again, open it to
        append (nothing is written before this)."""
        from audio_ssl.io import OutputFolderError, make_output_folder

        make_output_folder(self.path.parent, f"--output {self.path}: folder")
        try:
            if self.dropped:
                atomic_write_text(self.path, "".join(line + "\n" for line in self.kept),
                                  fsync=False)
            self.file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise OutputFolderError(f"--output {self.path}: cannot write it ({e.strerror or e})") \
                from e

    def _read(self) -> tuple[list[str], int]:
        """The kept lines of an existing file (its transcriptions, :attr:`done` filled) and
        how many lines were dropped."""
        if not self.path.exists():
            return [], 0
        try:
            lines = self.path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--output {self.path}: cannot read it back to resume ({e}): "
                             "expected a JSONL file transcribe wrote") from e
        torn = lines.pop()  # "" after a complete last line; else what a kill left half-written
        kept: list[str] = []
        dropped = int(bool(torn))
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                row = False
            if row is None:
                dropped += 1  # blank
            elif isinstance(row, dict) and isinstance(row.get("path"), str) and \
                    isinstance(row.get("text"), str) and \
                    isinstance(row.get("seconds"), (int, float)):
                self.done[row["path"]] = Transcription(row["path"], row["text"], row["seconds"])
                kept.append(line)
            elif isinstance(row, dict) and set(row) == {"path", "error"}:
                dropped += 1  # tried again
            elif number == len(lines) and row is False:
                dropped += 1  # the last line cut short (a kill between a write and its newline)
            else:
                raise ValueError(f"--output {self.path}:{number}: not a row of transcribe's "
                                 "output: expected JSONL of {path, text, seconds} (a file this "
                                 "command wrote, to resume); choose another --output")
        return kept, dropped

    def add(self, t: Transcription) -> None:
        """Append and flush one transcription."""
        self.file.write(json.dumps(asdict(t), ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def finish(self, failed: Iterable[Rejected]) -> None:
        """Append the run's error rows and close the file."""
        for r in failed:
            self.file.write(json.dumps({"path": r.path, "error": r.reason}, ensure_ascii=False)
                            + "\n")
        self.file.close()


@dataclass
class TranscribeResult:
    """``transcriptions``: this run's and, resuming, those already in the output (``resumed``
    of them), in the order of the inputs; ``failed``: the files skipped, with the reason."""

    transcriptions: list[Transcription]
    failed: list[Rejected]
    seconds: float  # wall time
    resumed: int = 0

    def summary(self) -> str:
        audio = sum(t.seconds for t in self.transcriptions)
        earlier = f" ({self.resumed} by an earlier run)" if self.resumed else ""
        return (f"transcribed {len(self.transcriptions)} file(s){earlier}, {audio:.1f} s of "
                f"audio, in {self.seconds:.1f} s; {len(self.failed)} skipped")


def transcribe(model: str | os.PathLike | Transcriber, inputs: Sequence[str | os.PathLike], *,
               output: str | os.PathLike | None = None,
               on_result: Callable[[Transcription | Rejected], None] | None = None,
               **decoder_options: Any) -> TranscribeResult:
    """Transcribe files and folders with ``model`` (a path, or a :class:`Transcriber`).

    Args:
        output: JSONL of ``{"path", "text", "seconds"}``, a line appended as each file is
            transcribed, then ``{"path", "error"}`` for each file skipped. An existing one is
            resumed: the files it holds are not transcribed again (see
            :class:`TranscriptionFile`).
        on_result: called with each new :class:`Transcription` or :class:`Rejected` as soon as
            it is known (the CLI prints them as they come).
        decoder_options: ``lm``, ``lexicon``, ``beam_size``, ``lm_weight``, ``word_score``,
            ``device``, ``precision``, as :meth:`Transcriber.from_path`.
    """
    start = time.perf_counter()
    out = TranscriptionFile(output) if output is not None else None  # refused before loading
    transcriber = model if isinstance(model, Transcriber) else \
        Transcriber.from_path(model, **decoder_options)
    paths, failed = expand_inputs(inputs)
    if out is not None:
        out.open()
    done = out.done if out is not None else {}
    texts = {p: done[p] for p in paths if p in done}
    resumed = len(texts)
    for r in failed:
        if on_result is not None:
            on_result(r)
    try:
        for r in transcriber.iter_files([p for p in paths if p not in texts]):
            if isinstance(r, Rejected):
                failed.append(r)
            else:
                texts[r.path] = r
                if out is not None:
                    out.add(r)
            if on_result is not None:
                on_result(r)
    except BaseException:
        if out is not None:
            out.close()  # what was appended stays; error rows are written by complete runs
        raise
    if out is not None:
        out.finish(failed)
    return TranscribeResult([texts[p] for p in paths if p in texts], failed,
                            time.perf_counter() - start, resumed)


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


def _score(kept: Sequence[tuple[Any, str]], hyps: dict[str, str], text_cfg: TextConfig
           ) -> tuple[list[UtteranceErrors], EditCounts, EditCounts]:
    """Per-utterance errors of ``hyps`` (by path) against the (item, normalised reference)
    pairs, and the sums."""
    utterances = []
    word = char = ZERO
    for it, ref in kept:
        if it.path not in hyps:
            continue
        hyp = normalize_text(hyps[it.path], text_cfg)
        u = UtteranceErrors(it.id, it.path, ref, hyp, word_errors(ref, hyp), char_errors(ref, hyp))
        word, char = word + u.word, char + u.char
        utterances.append(u)
    return utterances, word, char


def stream_files(transcriber: Transcriber, paths: Sequence[str], settings: Any
                 ) -> dict[str, str]:
    """Each file fed to a :class:`~audio_ssl.asr.streaming.StreamingTranscriber` chunk
    by chunk, as if live -> {path: its final segments joined}."""
    from audio_ssl.data.audio import load_audio
    from audio_ssl.asr.streaming import StreamingTranscriber, final_text

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
    :class:`~audio_ssl.asr.streaming.StreamSettings`: the files are also decoded as
    streams, scored in ``EvalResult.streaming`` (and ``stream_*`` fields of the report).

    The input rules of fine-tuning apply: unreadable, empty or too-short audio (shorter than
    the model's receptive field) and references that normalise to nothing are skipped, each in
    ``EvalResult.skipped`` with its reason."""
    from audio_ssl.data.labelled import read_labelled, reference_text

    start = time.perf_counter()
    transcriber = model if isinstance(model, Transcriber) else \
        Transcriber.from_path(model, **decoder_options)
    text_cfg = transcriber.settings.text
    items, skipped = read_labelled(labelled, split=split,
                                   sample_rate=transcriber.settings.sample_rate,
                                   min_samples=transcriber.min_samples)
    references = [reference_text(it, text_cfg) for it in items]
    skipped += [r for r in references if isinstance(r, Rejected)]
    kept = [(it, ref) for it, ref in zip(items, references) if not isinstance(ref, Rejected)]
    results, failed = transcriber.transcribe_files(sorted({it.path for it, _ in kept}))
    skipped += failed
    hyps = {t.path: t.text for t in results}
    utterances, word, char = _score(kept, hyps, text_cfg)
    decoder = "greedy" if transcriber.decoder is None else "beam search"
    result = EvalResult(utterances, skipped, word, char, time.perf_counter() - start, decoder)
    streamed: dict[str, UtteranceErrors] = {}
    if stream is not None:
        began = time.perf_counter()
        stream_hyps = stream_files(transcriber, list(hyps), stream)
        s_utts, s_word, s_char = _score(kept, stream_hyps, text_cfg)
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
           "expand_inputs", "TranscriptionFile", "TranscribeResult", "transcribe",
           "UtteranceErrors", "EvalResult", "stream_files", "evaluate"]
