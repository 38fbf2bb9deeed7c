"""Features from a checkpoint: one waveform or file (:class:`FeatureExtractor`), or a whole
collection to disk (:func:`extract_folder`, the ``audio-ssl extract`` command).

```python
from audio_ssl.extract import FeatureExtractor

extractor = FeatureExtractor.from_checkpoint("runs/demo/pretrain/checkpoints/last.ckpt",
                                             layers="last")
features = extractor("speech.flac")  # (T, D) float32 at 50 frames per second
```

Audio is decoded as for pretraining (any format libsndfile reads, mixed down to mono, resampled
to 16 kHz) and normalised to zero mean and unit variance when the checkpoint was trained on
normalised audio. Files longer than ``chunk_seconds + 2 * context_seconds`` are processed in
chunks (:mod:`audio_ssl.extract.chunking`); the result has the whole file's frame count.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audio_ssl.precision import resolve as resolve_precision
from audio_ssl.data.audio import NORMALIZE_EPS, audio_info, load_audio, resampled_length
from audio_ssl.data.collate import pad_batch
from audio_ssl.extract.chunking import (
    Chunk,
    Reader,
    group_chunks,
    group_norm_stats,
    num_frames,
    plan_chunks,
    prepare_file,
    read_chunk,
)
from audio_ssl.extract.features import InferenceModel, parse_layers, split_model

SAMPLE_RATE = 16_000
log = logging.getLogger("audio_ssl")


@dataclass
class Features:
    """One input's features.

    Attributes:
        arrays: {layer name: (T, ...)} on the CPU: float32 features, int64 ``codes``.
        num_samples: length of the input at 16 kHz.
        frame_rate: frames per second (50 for the paper's conv stack).
    """

    arrays: dict[str, torch.Tensor]
    num_samples: int
    frame_rate: float

    @property
    def num_frames(self) -> int:
        return next(iter(self.arrays.values())).shape[0]


class FeatureExtractor:
    """A model in inference mode that turns audio into the selected layers' features.

    Args:
        model: Wav2Vec2ForPretraining, Wav2Vec2ForCTC or Wav2Vec2Model, or an ONNX features
            export's :class:`~audio_ssl.interop.onnx_torch.OnnxFeatures` (onnxruntime on the
            CPU in fp32, whatever ``device`` and ``precision``).
        layers: index, list, ``last``, ``all``, ``encoder``, ``codes`` (see
            :func:`audio_ssl.extract.features.parse_layers`).
        device: default CUDA when available, else the CPU.
        precision: ``auto`` (bf16 autocast on CUDA and on CPUs with bf16 units, else fp32),
            ``32`` or ``bf16-mixed`` (see :mod:`audio_ssl.precision`).
        normalize: zero-mean unit-variance audio (what the model was trained on).
        chunk_seconds: frames kept per chunk of a long file.
        context_seconds: context computed and dropped on each side of a chunk.
        batch_seconds: padded audio per forward (default 160 s on CUDA, 32 s on the CPU).
        max_batch_size: files per forward at most.
    """

    def __init__(self, model: nn.Module, *, layers: str | int | list = "last",
                 device: str | torch.device | None = None, precision: str = "auto",
                 normalize: bool = False, chunk_seconds: float = 30.0,
                 context_seconds: float = 5.0, batch_seconds: float | None = None,
                 max_batch_size: int = 64):
        from audio_ssl.interop.onnx_torch import OnnxCTC, OnnxFeatures

        if isinstance(model, OnnxCTC):
            raise ValueError("this ONNX file holds CTC logits only: export the features "
                             "(audio-ssl convert CKPT OUT.onnx --outputs features)")
        onnx = isinstance(model, OnnxFeatures)
        if onnx:  # onnxruntime on the CPU, in the file's own types
            device, precision = "cpu", "32"
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, device.type)
        if not onnx:
            log.info(self.precision.describe())
        if chunk_seconds <= 0 or context_seconds < 0:
            raise ValueError(f"chunk_seconds must be > 0 and context_seconds >= 0, got "
                             f"{chunk_seconds}, {context_seconds}")
        if batch_seconds is None:
            batch_seconds = 160.0 if device.type == "cuda" else 32.0
        if batch_seconds <= 0 or max_batch_size < 1:
            raise ValueError(f"batch_seconds must be > 0 and max_batch_size >= 1, got "
                             f"{batch_seconds}, {max_batch_size}")
        if onnx:
            from audio_ssl.extract.onnx_model import OnnxInferenceModel

            self.model = OnnxInferenceModel(model, parse_layers(layers, model.cfg.context_layers))
        else:
            backbone, _ = split_model(model)
            selection = parse_layers(layers, len(backbone.context.layers))
            self.model = InferenceModel(model, selection, device,
                                        "bf16" if self.precision.bf16 else "fp32")
        self.normalize = bool(normalize)
        self.chunk_seconds, self.context_seconds = float(chunk_seconds), float(context_seconds)
        self.chunk_frames = max(1, round(chunk_seconds * self.frame_rate))
        self.context_frames = round(context_seconds * self.frame_rate)
        self.max_batch_samples = int(batch_seconds * SAMPLE_RATE)
        self.max_batch_size = int(max_batch_size)
        self.checkpoint: Path | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, normalize: bool | None = None,
                        **kwargs) -> FeatureExtractor:
        """Load any checkpoint :func:`audio_ssl.interop.load_model` reads; ``normalize=None``
        takes the setting the model was trained with (``LoadedModel.expects_normalized``). Other
        arguments as the constructor's."""
        from audio_ssl.interop import load_model

        loaded = load_model(path, onnx=True)
        if normalize is None:
            normalize = loaded.expects_normalized
        extractor = cls(loaded.model, normalize=normalize, **kwargs)
        extractor.checkpoint = Path(path).absolute()
        return extractor

    # -- properties -----------------------------------------------------------------------------

    @property
    def layers(self) -> tuple[str, ...]:
        """Output names in order (``layer_12``, ``encoder``, ``codes``, ...)."""
        return self.model.selection.names

    @property
    def frame_rate(self) -> float:
        return self.model.frame_rate

    @property
    def device(self) -> torch.device:
        return self.model.device

    def plan(self, num_samples: int) -> list[Chunk]:
        """Windows of a file of ``num_samples`` samples (one for short files, [] if too short;
        always one for a model that cannot take whole-file statistics, ``whole_files_only``)."""
        chunk_frames = 2**62 if self.model.whole_files_only else self.chunk_frames
        return plan_chunks(num_samples, self.model.cfg.encoder.conv_layers, chunk_frames,
                           self.context_frames)

    def num_frames(self, num_samples: int) -> int:
        return num_frames(num_samples, self.model.cfg.encoder.conv_layers)

    # -- one input ------------------------------------------------------------------------------

    def __call__(self, audio: str | os.PathLike | torch.Tensor | np.ndarray,
                 sample_rate: int | None = None) -> torch.Tensor:
        """Features of a file or a waveform as one tensor: (T, D) for one layer, (K, T, D) for K
        context layers (what ``--format npy`` stores). Use :meth:`extract` for ``encoder`` or
        ``codes`` together with other layers."""
        features = self.extract(audio, sample_rate)
        if len(self.layers) == 1:
            return features.arrays[self.layers[0]]
        if not self.model.selection.stackable:
            raise ValueError(f"layers {list(self.layers)} have different widths and do not stack "
                             f"into one tensor: use FeatureExtractor.extract(...).arrays")
        return torch.stack([features.arrays[n] for n in self.layers])  # (K, T, D)

    def extract(self, audio: str | os.PathLike | torch.Tensor | np.ndarray,
                sample_rate: int | None = None) -> Features:
        """Features of one input.

        Args:
            audio: a path (decoded, mixed down and resampled to 16 kHz), or a mono waveform
                (S,) as a tensor or array.
            sample_rate: the waveform's rate (default 16 kHz); ignored for paths.
        """
        if isinstance(audio, (str, os.PathLike)):
            path = os.fspath(audio)
            # one file asked for by name: a bad header raises here, where a collection's files
            # go through data.manifest.read_header and are reported
            frames, rate, _ = audio_info(path)
            num_samples = resampled_length(frames, rate, SAMPLE_RATE)

            def read(start: int, n: int) -> torch.Tensor:
                return load_audio(path, sample_rate=SAMPLE_RATE, start=start, num_samples=n)

            def whole() -> torch.Tensor:
                return load_audio(path, sample_rate=SAMPLE_RATE, normalize=self.normalize)

            what = path
        else:
            wav = torch.as_tensor(np.asarray(audio) if not torch.is_tensor(audio) else audio)
            wav = wav.detach().to("cpu", torch.float32)
            if wav.ndim == 2 and wav.shape[0] == 1:
                wav = wav[0]
            if wav.ndim != 1:
                raise ValueError(f"expected a mono waveform (S,) or (1, S), got shape "
                                 f"{tuple(wav.shape)}")
            if sample_rate is not None and sample_rate != SAMPLE_RATE:
                import torchaudio.functional as AF

                wav = AF.resample(wav, int(sample_rate), SAMPLE_RATE)
            num_samples = wav.numel()

            def read(start: int, n: int) -> torch.Tensor:
                return wav[start:start + n]

            def whole() -> torch.Tensor:
                if self.normalize:
                    return F.layer_norm(wav, wav.shape, eps=NORMALIZE_EPS)
                return wav

            what = f"waveform of {num_samples} samples"
        return self._extract_one(read, whole, num_samples, what)

    def _extract_one(self, read: Reader, whole, num_samples: int, what: str) -> Features:
        chunks = self.plan(num_samples)
        if not chunks:
            raise ValueError(f"{what}: {num_samples} samples at 16 kHz is shorter than the "
                             f"model's receptive field ({self.model.receptive_field} samples): "
                             f"no frame")
        if len(chunks) == 1:
            out, frames = self.model(whole()[None])  # (1, S)
            arrays = {name: _to_cpu(a[0, : int(frames[0])]) for name, a in out.items()}
            return Features(arrays, num_samples, self.frame_rate)
        stats = self.long_file_stats(read, num_samples)
        total = self.num_frames(num_samples)
        arrays = {name: torch.empty((total, *shape), dtype=dtype)
                  for name, (shape, dtype) in self.model.output_shapes().items()}
        for group in group_chunks(chunks, self.max_batch_samples):
            rows = [read_chunk(read, chunks[i], stats.mean, stats.scale) for i in group]
            waveforms, lengths = collate(rows)
            encoder_stats = stats.encoder_rows(len(rows))
            out, _ = self.model(waveforms, lengths, encoder_stats)
            for r, i in enumerate(group):
                (k0, k1), (f0, f1) = chunks[i].keep, chunks[i].frames
                for name, a in out.items():
                    arrays[name][f0:f1] = _to_cpu(a[r, k0:k1])
        return Features(arrays, num_samples, self.frame_rate)

    def long_file_stats(self, read: Reader, num_samples: int) -> LongFileStats:
        """The whole-file statistics a long file's chunks are computed with."""
        weight, bias, kernel, stride = self.model.conv0
        mean, scale, moments = prepare_file(read, num_samples, kernel, stride, self.normalize,
                                            self.model.group_norm)
        encoder = group_norm_stats(moments, weight, bias) if moments is not None else None
        return LongFileStats(mean, scale, encoder)


@dataclass
class LongFileStats:
    """Whole-file statistics of a long file: waveform ``(x - mean) * scale``; ``encoder`` (C, 2)
    group-norm (mean, var) of the first conv layer, None for layer-norm encoders."""

    mean: float
    scale: float
    encoder: torch.Tensor | None

    def encoder_rows(self, rows: int) -> torch.Tensor | None:
        return None if self.encoder is None else self.encoder.expand(rows, -1, -1)  # (B, C, 2)


def collate(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms (B, S) zero padded at the end, and lengths (B,)."""
    return pad_batch(rows)


def _to_cpu(a: torch.Tensor) -> torch.Tensor:
    return a.to("cpu", torch.int64 if a.dtype == torch.int64 else torch.float32)


__all__ = ["Features", "FeatureExtractor", "LongFileStats", "collate", "SAMPLE_RATE"]
