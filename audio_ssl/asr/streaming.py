"""Transcribe as audio arrives: streaming CTC (`audio-ssl transcribe --stream`).

A stream is the long-file plan of :mod:`audio_ssl.extract.chunking` with the future arriving
late. Frames are kept ``chunk`` at a time; the chunk ``[a, b)`` is computed on the window of
frames ``[a - left, b + right)`` (:func:`~audio_ssl.extract.chunking.chunk_window`) as soon as
its right context has arrived, so the algorithmic latency is ``chunk + right`` seconds. A kept
frame is never revised.

Statistics over the whole clip are what a stream cannot have. Where the model normalises the
waveform, or normalises its first conv layer over time (group-norm encoders: BASE, tiny), a
chunk uses the running statistics of everything received up to its window's end (its right
context included), from a :class:`~audio_ssl.extract.chunking.MomentAccumulator`; at
:meth:`LogitStream.finish` the remaining chunks use all of it. So when ``left`` and ``right``
cover a whole clip, every window is the whole clip with its whole statistics: the stream equals
the offline forward. Layer-norm encoders without waveform normalisation need no statistics.

State is bounded: the samples of one window (``left + chunk + right``), the accumulator's sums,
and the open segment's tokens (closed after ``max_segment_seconds`` at the latest).

```python
from audio_ssl.asr.streaming import StreamingTranscriber

stream = StreamingTranscriber("runs/demo/finetune/checkpoints/best.ckpt")
for samples in microphone_blocks():  # float32 or int16 at the model's rate, any block size
    for event in stream.feed(samples):
        print(event.final, event.start, event.end, event.text)
events = stream.finish()  # the last partial audio, and the open segment closed
```
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audio_ssl.extract.chunking import (
    MomentAccumulator,
    chunk_window,
    group_norm_stats,
    num_frames,
    read_chunk,
    statistics,
)
from audio_ssl.extract.features import InferenceModel, layer_name, parse_layers

# -------------------------------------------------------------------------------------------
# Settings and records


@dataclass(frozen=True)
class StreamSettings:
    """How a stream is cut and when its segments close.

    Attributes:
        chunk_seconds: frames kept per forward (at least one encoder frame).
        left_seconds: context before a chunk (the past: costs compute, not latency).
        right_seconds: context after a chunk (the future: adds to the latency).
        endpoint_seconds: blank or word-separator frames after a token that close a segment
            (None: one segment per stream).
        max_segment_seconds: a segment longer than this is closed anyway (bounds the state).
    """

    chunk_seconds: float = 1.0
    left_seconds: float = 8.0
    right_seconds: float = 1.28
    endpoint_seconds: float | None = 0.8
    max_segment_seconds: float = 30.0

    @property
    def latency_seconds(self) -> float:
        """Algorithmic latency: a frame waits for the rest of its chunk and the right context."""
        return self.chunk_seconds + self.right_seconds

    def frames(self, frame_rate: float) -> tuple[int, int, int]:
        """(chunk, left, right) in encoder frames; bad values raise, naming the value."""
        frame = 1.0 / frame_rate
        if not self.chunk_seconds >= frame - 1e-9:
            raise ValueError(f"--chunk {self.chunk_seconds:g}: shorter than one encoder frame; "
                             f"expected at least {frame:g} s")
        chunk = max(1, round(self.chunk_seconds * frame_rate))
        for name, value in (("--left", self.left_seconds), ("--right", self.right_seconds)):
            if not value >= 0:
                raise ValueError(f"{name} {value:g}: expected 0 or more seconds")
        if self.endpoint_seconds is not None and not self.endpoint_seconds > 0:
            raise ValueError(f"endpoint {self.endpoint_seconds:g} s: expected more than 0")
        if not self.max_segment_seconds >= frame:
            raise ValueError(f"max_segment_seconds {self.max_segment_seconds:g}: expected at "
                             f"least one frame ({frame:g} s)")
        return chunk, round(self.left_seconds * frame_rate), round(self.right_seconds * frame_rate)


@dataclass(frozen=True)
class TranscriptEvent:
    """A partial hypothesis of the open segment (``final`` False: it may still grow), or a
    closed segment (``final`` True). Times in seconds from the start of the stream: ``start`` at
    the segment's first token, ``end`` after its last."""

    final: bool
    text: str
    start: float
    end: float

    def to_dict(self) -> dict[str, Any]:
        return {"event": "final" if self.final else "partial", "text": self.text,
                "start": round(self.start, 3), "end": round(self.end, 3)}


@dataclass(frozen=True)
class StreamStats:
    """What a stream cost: audio received, compute time, chunks run."""

    audio_seconds: float
    compute_seconds: float
    chunks: int
    max_chunk_seconds: float
    latency_seconds: float

    @property
    def real_time_factor(self) -> float:
        """Compute time over audio time (below 1: keeps up with live audio)."""
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"audio_seconds": round(self.audio_seconds, 3),
                "compute_seconds": round(self.compute_seconds, 3),
                "real_time_factor": round(self.real_time_factor, 4), "chunks": self.chunks,
                "mean_chunk_seconds": round(self.compute_seconds / max(self.chunks, 1), 4),
                "max_chunk_seconds": round(self.max_chunk_seconds, 4),
                "latency_seconds": round(self.latency_seconds, 3)}

    def summary(self) -> str:
        return (f"streamed {self.audio_seconds:.1f} s of audio in {self.compute_seconds:.1f} s: "
                f"real-time factor {self.real_time_factor:.3f}, {self.chunks} chunk(s) "
                f"(longest {1000 * self.max_chunk_seconds:.0f} ms); algorithmic latency "
                f"{self.latency_seconds:.2f} s (chunk + right context)")


def as_samples(samples: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A block of mono audio (S,) as float32 on the CPU; int16 PCM is scaled to [-1, 1)."""
    if isinstance(samples, np.ndarray):
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        samples = torch.from_numpy(np.ascontiguousarray(samples))
    if samples.dtype == torch.int16:
        samples = samples.float() / 32768.0
    x = samples.detach().to("cpu", torch.float32)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples (S,), got shape {tuple(x.shape)}")
    return x


# -------------------------------------------------------------------------------------------
# Frames of log-probabilities as the audio arrives


class LogitStream:
    """CTC log-probabilities of a stream, chunk by chunk.

    Args:
        model: the backbone's inference forward, computing the last context layer.
        head: the CTC head (context vectors (T, D) -> logits (T, V)): ``head_logits``.
        normalize: the model expects zero-mean unit-variance audio.
        chunk_frames, left_frames, right_frames: as :meth:`StreamSettings.frames`.
    """

    def __init__(self, model: InferenceModel, head: Callable[[torch.Tensor], torch.Tensor], *,
                 normalize: bool,
                 chunk_frames: int, left_frames: int, right_frames: int):
        self.model, self.head, self.normalize = model, head, bool(normalize)
        self.conv_layers = model.cfg.encoder.conv_layers
        self.chunk, self.left, self.right = chunk_frames, left_frames, right_frames
        self.hop, self.field = model.hop, model.receptive_field
        self.w0, self.b0, self.kernel, self.stride = model.conv0
        self.group_norm = model.group_norm
        self.output = layer_name(model.cfg.context_layers)
        self.chunks_run, self.compute_seconds, self.max_chunk_seconds = 0, 0.0, 0.0
        self.reset()

    def reset(self) -> None:
        """Forget the stream (the counters of :attr:`chunks_run` and time stay)."""
        self._buffer = torch.zeros(0)  # samples [buffer_start, received)
        self._buffer_start = 0
        self.received = 0
        self._next = 0  # first frame not yet emitted
        self._moments = MomentAccumulator(self.kernel, self.stride)
        self._cached: tuple[tuple[int, int, int], torch.Tensor] | None = None

    @property
    def needs_statistics(self) -> bool:
        return self.normalize or self.group_norm

    @property
    def buffered_samples(self) -> int:
        return self._buffer.numel()

    @property
    def max_buffered_samples(self) -> int:
        """The most samples ever held: one window of ``left + chunk + right`` frames."""
        return (self.left + self.chunk + self.right - 1) * self.hop + self.field

    def _ready_at(self) -> int:
        """Samples the stream needs before the next chunk can run (its right context whole)."""
        return (self._next + self.chunk + self.right - 1) * self.hop + self.field

    def feed(self, samples: torch.Tensor) -> list[torch.Tensor]:
        """The next samples (S,) at the model's rate -> log-probabilities (n, V) of the frames
        that became final, in order (none until a chunk and its right context have arrived)."""
        x = as_samples(samples)
        out = []
        while x.numel():
            take = max(self._ready_at() - self.received, 1)  # never more than one window held
            self._append(x[:take])
            x = x[take:]
            while self.received >= self._ready_at():
                total = num_frames(self.received, self.conv_layers)
                out.append(self._run(self._next, self._next + self.chunk, total, final=False))
        return out

    def finish(self) -> list[torch.Tensor]:
        """The frames still open (the last partial chunk included), with the statistics of the
        whole stream; then :meth:`reset`. A stream shorter than one frame gives none."""
        total = num_frames(self.received, self.conv_layers)
        out = []
        while self._next < total:
            out.append(self._run(self._next, min(self._next + self.chunk, total), total,
                                 final=True))
        self.reset()
        return out

    def _append(self, x: torch.Tensor) -> None:
        self._buffer = torch.cat([self._buffer, x])
        self.received += x.numel()

    def _read(self, start: int, n: int) -> torch.Tensor:
        offset = start - self._buffer_start
        assert offset >= 0, "a window starts before the buffered samples"
        return self._buffer[offset:offset + n]

    @torch.inference_mode()
    def _run(self, a: int, b: int, total: int, final: bool) -> torch.Tensor:
        """Frames [a, b) of the ``total`` received, computed on their window."""
        began = time.perf_counter()
        chunk = chunk_window(a, b, total, self.conv_layers, self.left, self.right)
        seen = self.received if final else chunk.start + chunk.num_samples  # statistics' reach
        key = (chunk.start, chunk.num_samples, seen)
        if self._cached is not None and self._cached[0] == key:
            log_probs = self._cached[1]  # the same window (a stream within the context)
        else:
            mean, scale, encoder_stats = 0.0, 1.0, None
            if self.needs_statistics:
                consumed = self._moments.count
                self._moments.add(self._read(consumed, seen - consumed))
                mean, scale, moments = statistics(self._moments.moments(), self.normalize,
                                                  self.group_norm)
                if moments is not None:
                    encoder_stats = group_norm_stats(moments, self.w0, self.b0)[None]  # (1, C, 2)
            window = read_chunk(self._read, chunk, mean, scale)  # (S_w,)
            out, _ = self.model(window[None], None, encoder_stats)
            context = out[self.output][0].float()  # (T_w, D)
            log_probs = self.head(context).float().log_softmax(-1).cpu()  # (T_w, V)
            self._cached = (key, log_probs)
        k0, k1 = chunk.keep
        self._next = b
        drop = max(0, (b - self.left) * self.hop) - self._buffer_start  # before the next window
        if drop > 0:
            self._buffer = self._buffer[drop:].clone()
            self._buffer_start += drop
        elapsed = time.perf_counter() - began
        self.chunks_run += 1
        self.compute_seconds += elapsed
        self.max_chunk_seconds = max(self.max_chunk_seconds, elapsed)
        return log_probs[k0:k1]


# -------------------------------------------------------------------------------------------
# Text as it becomes final


class StreamingTranscriber:
    """Audio in as it arrives, transcript events out: ``feed(samples) -> [events]``,
    ``finish() -> [events]``; then the next stream may start. Usable from a microphone callback
    or a web socket handler (one instance per stream).

    Args:
        model: a :class:`~audio_ssl.asr.transcribe.Transcriber` (its decoder closes the
            segments: greedy, or beam search with an LM), a ``LoadedModel``, or a checkpoint path.
        settings: chunk, context and endpointing (:class:`StreamSettings`).
        device, precision: for a path or ``LoadedModel``, as :class:`Transcriber`.

    Partial hypotheses are greedy (cheap, every chunk); a closed segment is decoded with the
    transcriber's decoder over the segment's frames.
    """

    def __init__(self, model: Any, settings: StreamSettings = StreamSettings(), *,
                 device: str | None = None, precision: str = "auto"):
        from audio_ssl.asr.transcribe import Transcriber

        if isinstance(model, (str, os.PathLike)):
            model = Transcriber.from_path(model, device=device, precision=precision)
        elif not isinstance(model, Transcriber):
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = Transcriber(model, device=device, precision=precision)
        self.transcriber = model
        self.settings = settings
        self.vocab = model.vocab
        self.sample_rate = model.settings.sample_rate
        backbone_model = model.model
        selection = parse_layers("last", backbone_model.cfg.context_layers)
        inference = InferenceModel(backbone_model, selection, model.device,
                                   "bf16" if model.precision.bf16 else "fp32")
        self.frame_seconds = inference.hop / self.sample_rate
        chunk, left, right = settings.frames(1.0 / self.frame_seconds)
        self.logits = LogitStream(inference, backbone_model.head_logits,
                                  normalize=model.settings.normalize_audio, chunk_frames=chunk,
                                  left_frames=left, right_frames=right)
        self.endpoint_frames = (None if settings.endpoint_seconds is None
                                else max(1, round(settings.endpoint_seconds / self.frame_seconds)))
        self.max_segment_frames = max(1, round(settings.max_segment_seconds / self.frame_seconds))
        self._separator = self.vocab.tokens.index("|") if "|" in self.vocab.tokens else None
        self._began: float | None = None
        self._audio_samples = 0
        self._reset_stream()

    # -- state ----------------------------------------------------------------------------------
    def _reset_stream(self) -> None:
        self._frame = 0  # frames decoded so far
        self._previous = self.vocab.blank  # last frame's best id (CTC collapse across chunks)
        self._new_segment(self._frame)

    def _new_segment(self, first_frame: int) -> None:
        self._ids: list[int] = []  # collapsed token ids of the open segment
        self._seg_first = first_frame  # first frame of the open segment
        self._log_probs: list[torch.Tensor] = []  # its frames, for a beam search decoder
        self._token_start: int | None = None  # frame of its first token
        self._token_end = 0  # frame after its last token
        self._silence = 0  # blank or separator frames since the last token
        self._shown = ""  # the last partial text sent

    @property
    def buffered_samples(self) -> int:
        return self.logits.buffered_samples

    @property
    def max_buffered_samples(self) -> int:
        return self.logits.max_buffered_samples

    def stats(self) -> StreamStats:
        return StreamStats(self._audio_samples / self.sample_rate,
                           self.logits.compute_seconds, self.logits.chunks_run,
                           self.logits.max_chunk_seconds, self.settings.latency_seconds)

    # -- feeding ----------------------------------------------------------------------------------
    def feed(self, samples: torch.Tensor | np.ndarray) -> list[TranscriptEvent]:
        """A block of mono samples at the model's rate (float, or int16 PCM) -> the events it
        caused: partial hypotheses that changed, segments that closed."""
        x = as_samples(samples)
        self._audio_samples += x.numel()
        events: list[TranscriptEvent] = []
        for block in self.logits.feed(x):
            events.extend(self._frames(block))
        return events + self._partial()

    def finish(self) -> list[TranscriptEvent]:
        """End of the stream: the remaining audio (a partial chunk too) decoded, the open
        segment closed. The transcriber is then ready for a new stream."""
        events: list[TranscriptEvent] = []
        for block in self.logits.finish():
            events.extend(self._frames(block))
        events.extend(self._close())
        self._reset_stream()
        return events

    def transcribe(self, samples: torch.Tensor | np.ndarray,
                   block_samples: int | None = None) -> list[TranscriptEvent]:
        """A whole waveform fed as if live, ``block_samples`` at a time (default one chunk),
        then finished -> every event."""
        x = as_samples(samples)
        step = block_samples or max(1, round(self.settings.chunk_seconds * self.sample_rate))
        events: list[TranscriptEvent] = []
        for start in range(0, x.numel(), step):
            events.extend(self.feed(x[start:start + step]))
        return events + self.finish()

    # -- decoding -------------------------------------------------------------------------------
    def _frames(self, log_probs: torch.Tensor) -> list[TranscriptEvent]:
        """Final frames (n, V) into the open segment; segments close at pauses."""
        events = []
        best = log_probs.argmax(-1).tolist()  # (n,) on the host: the decoding is sequential
        start = 0
        for i, token in enumerate(best):
            frame = self._frame + i
            if token != self._previous and token != self.vocab.blank:
                self._ids.append(token)
            if token == self.vocab.blank or token == self._separator:
                self._silence += 1
            else:
                if self._token_start is None:
                    self._token_start = frame
                self._token_end, self._silence = frame + 1, 0
            self._previous = token
            pause = (self.endpoint_frames is not None and self._token_start is not None
                     and self._silence >= self.endpoint_frames)
            if pause or frame + 1 - self._seg_first >= self.max_segment_frames:
                self._log_probs.append(log_probs[start:i + 1])
                events.extend(self._close())
                self._new_segment(frame + 1)
                start = i + 1
        if self.transcriber.decoder is not None and start < len(best):
            self._log_probs.append(log_probs[start:])
        self._frame += len(best)
        return events

    def _text(self) -> str:
        return self.vocab.decode(self._ids)

    def _partial(self) -> list[TranscriptEvent]:
        text = self._text()
        if text == self._shown or self._token_start is None:
            return []
        self._shown = text
        return [TranscriptEvent(False, text, self._token_start * self.frame_seconds,
                                self._token_end * self.frame_seconds)]

    def _close(self) -> list[TranscriptEvent]:
        """The open segment as a final event (none when it holds no token)."""
        if self._token_start is None:
            return []
        text = self._text()
        decoder = self.transcriber.decoder
        if decoder is not None and self._log_probs:
            frames = torch.cat(self._log_probs)[None]  # (1, T_seg, V)
            text = decoder(frames, torch.tensor([frames.shape[1]]))[0]
        return [TranscriptEvent(True, text, self._token_start * self.frame_seconds,
                                self._token_end * self.frame_seconds)]


def final_text(events: list[TranscriptEvent]) -> str:
    """The transcript of a stream: its closed segments' texts joined by spaces."""
    return " ".join(e.text for e in events if e.final and e.text)


__all__ = ["StreamSettings", "TranscriptEvent", "StreamStats", "as_samples", "LogitStream",
           "StreamingTranscriber", "final_text"]
