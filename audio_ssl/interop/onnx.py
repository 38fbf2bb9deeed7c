"""ONNX: export a model (``audio-ssl convert CKPT OUT.onnx``) and run it with numpy and
onnxruntime only (:class:`OnnxModel`).

```python
from audio_ssl.interop.onnx import OnnxModel

model = OnnxModel("asr.onnx")          # reads everything it needs from the file
text = model.transcribe(samples)       # samples: (S,) float32 at 16 kHz; greedy CTC
feats = OnnxModel("ssl.onnx").features(samples)  # {"encoder": (T, C), "layer_0": (T, D), ...}
```

The file holds the graph (see :mod:`.onnx_torch` for its inputs and outputs) and, in its
``metadata_props`` (keys ``audio_ssl.*``, :class:`OnnxMetadata`), what running it needs: the
sample rate, whether the audio is normalised first, the frame rate, the output and layer names,
the CTC vocabulary and text settings. This module imports neither torch nor onnx at import
time: the runner needs numpy and onnxruntime (the ``[onnx]`` extra); export needs torch, onnx and
onnxscript as well.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "audio_ssl."
FORMAT_VERSION = "1"
KINDS = ("features", "logits")
OUTPUT_CHOICES = ("auto", *KINDS)
QUANTIZE_CHOICES = ("int8",)
NORMALIZE_EPS = 1e-5  # as audio_ssl.data.audio (F.layer_norm over the clip)


class OptionalDependencyError(ImportError):
    """A module of the ``[onnx]`` extra is not installed; the message says how to install it."""


class OnnxError(ValueError):
    """An ONNX file this library cannot run: not ONNX, or without audio_ssl's metadata."""


def require(module: str):
    """Import ``module`` of the ``[onnx]`` extra, or raise a one-line install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OptionalDependencyError(
            f"ONNX support needs {module.split('.')[0]}, which is not installed: "
            "pip install 'audio-ssl[onnx]'") from None


def is_onnx_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


# ---------------------------------------------------------------------------------------------
# Metadata


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself (``metadata_props``, keys ``audio_ssl.*``)."""

    kind: str  # "features" (encoder + every context layer) or "logits" (CTC)
    outputs: tuple[str, ...]  # graph outputs in order, frame_lengths last
    sample_rate: int
    normalize: bool  # zero-mean unit-variance audio (per clip) before the graph
    frame_rate: float  # frames per second
    receptive_field: int  # samples of the first frame (shorter clips give no frame)
    hop: int  # samples between frames
    group_norm: bool  # the first conv layer is normalised over time (whole clips only)
    architecture: str  # the torch class exported (Wav2Vec2ForCTC, Wav2Vec2Model, ...)
    source: str  # the checkpoint's format (audio-ssl, hf, fairseq, torchaudio)
    vocab: tuple[str, ...] | None = None  # logits: CTC tokens, blank first
    text: dict = field(default_factory=dict)  # logits: TextConfig fields (evaluate's normalisation)
    model_config: dict = field(default_factory=dict)  # the ModelConfig, as a dict
    quantized: str = "none"  # "none" or "int8" (dynamic, weights of MatMul/Gemm)
    exporter: str = "dynamo"
    opset: int = 18

    @property
    def layers(self) -> tuple[str, ...]:
        """Feature outputs (``encoder``, ``layer_0`` .. ``layer_L``); () for logits files."""
        return tuple(o for o in self.outputs if o not in ("frame_lengths", "logits"))

    def to_props(self) -> dict[str, str]:
        values: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "kind": self.kind,
            "outputs": json.dumps(list(self.outputs)), "layers": json.dumps(list(self.layers)),
            "sample_rate": str(self.sample_rate), "normalize": json.dumps(self.normalize),
            "frame_rate": repr(self.frame_rate), "receptive_field": str(self.receptive_field),
            "hop": str(self.hop), "group_norm": json.dumps(self.group_norm),
            "architecture": self.architecture, "source": self.source,
            "text": json.dumps(self.text), "model_config": json.dumps(self.model_config),
            "quantized": self.quantized, "exporter": self.exporter, "opset": str(self.opset),
        }
        if self.vocab is not None:
            values["vocab"] = json.dumps(list(self.vocab), ensure_ascii=False)
        return {PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> OnnxMetadata:
        ours = {k.removeprefix(PREFIX): v for k, v in props.items() if k.startswith(PREFIX)}
        if "kind" not in ours:
            raise OnnxError(f"{where}: an ONNX file without audio_ssl metadata (no "
                            f"'{PREFIX}kind' in its metadata_props): export it with "
                            "`audio-ssl convert CHECKPOINT OUT.onnx`")
        if ours.get("format_version") != FORMAT_VERSION or ours["kind"] not in KINDS:
            raise OnnxError(f"{where}: audio_ssl ONNX metadata version "
                            f"{ours.get('format_version')!r} kind {ours['kind']!r}: expected "
                            f"version {FORMAT_VERSION} and a kind in {list(KINDS)}")
        try:
            return cls(
                kind=ours["kind"], outputs=tuple(json.loads(ours["outputs"])),
                sample_rate=int(ours["sample_rate"]), normalize=json.loads(ours["normalize"]),
                frame_rate=float(ours["frame_rate"]),
                receptive_field=int(ours["receptive_field"]), hop=int(ours["hop"]),
                group_norm=json.loads(ours["group_norm"]), architecture=ours["architecture"],
                source=ours["source"],
                vocab=tuple(json.loads(ours["vocab"])) if "vocab" in ours else None,
                text=json.loads(ours.get("text", "{}")),
                model_config=json.loads(ours.get("model_config", "{}")),
                quantized=ours.get("quantized", "none"), exporter=ours.get("exporter", "?"),
                opset=int(ours.get("opset", 0)))
        except (KeyError, ValueError) as err:
            raise OnnxError(f"{where}: incomplete audio_ssl ONNX metadata ({err})") from None


# ---------------------------------------------------------------------------------------------
# Running (numpy + onnxruntime)


def normalize_clip(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the clip (``F.layer_norm`` with eps 1e-5, as training)."""
    samples = samples.astype(np.float64)
    out = (samples - samples.mean()) / np.sqrt(samples.var() + NORMALIZE_EPS)
    return out.astype(np.float32)


def greedy_ctc(logits: np.ndarray, vocab: tuple[str, ...]) -> str:
    """Best path of one row's logits (T, V): argmax, merge repeats, drop the blank (0); ``|`` is
    a space and tokens of several characters (``<pad>``, ``<unk>``) are dropped, as
    :meth:`audio_ssl.data.text.Vocabulary.decode`."""
    best = logits.argmax(-1)  # (T,)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    chars = []
    for i in best[keep & (best != 0)]:
        token = vocab[int(i)]
        chars.append(" " if token == "|" else token if len(token) == 1 else "")
    return re.sub(r"\s+", " ", "".join(chars)).strip()


class OnnxModel:
    """An exported model run with onnxruntime on the CPU; needs numpy and onnxruntime only.

    Args:
        path: a ``.onnx`` file written by ``audio-ssl convert``.
        threads: intra-op threads (default: onnxruntime's choice, one per core).
        providers: onnxruntime execution providers (default: CPU).

    Raises:
        OnnxError: the file is not ONNX, or carries no audio_ssl metadata.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 providers: list[str] | None = None):
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail)
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise OnnxError(f"{self.path}: not an ONNX model onnxruntime can load "
                            f"({type(err).__name__}: {reason})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = OnnxMetadata.from_props(props, str(self.path))
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["waveforms", "lengths"]:
            raise OnnxError(f"{self.path}: graph inputs {inputs}, expected "
                            "['waveforms', 'lengths']")

    @property
    def vocab(self) -> tuple[str, ...] | None:
        return self.metadata.vocab

    def prepare(self, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Mono clips (S_i,) at the model's rate -> padded (B, S) float32 (each normalised when
        the model expects it) and lengths (B,) int64."""
        rows = []
        for i, clip in enumerate(clips):
            clip = np.asarray(clip, dtype=np.float32)
            if clip.ndim == 2 and clip.shape[0] == 1:
                clip = clip[0]
            if clip.ndim != 1:
                raise ValueError(f"clip {i}: expected a mono waveform (S,), got shape "
                                 f"{clip.shape}")
            if clip.shape[0] < self.metadata.receptive_field:
                raise ValueError(f"clip {i}: {clip.shape[0]} samples is shorter than the model's "
                                 f"receptive field ({self.metadata.receptive_field} samples)")
            rows.append(normalize_clip(clip) if self.metadata.normalize else clip)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        waveforms = np.zeros((len(rows), int(lengths.max())), dtype=np.float32)
        for i, r in enumerate(rows):
            waveforms[i, : len(r)] = r
        return waveforms, lengths

    def run(self, waveforms: np.ndarray, lengths: np.ndarray | None = None,
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The graph on prepared input: waveforms (B, S) float32 (normalised if the model
        expects it), lengths (B,) int64 (None: all S) -> {output: array}, with
        ``frame_lengths`` (B,); frames past a row's length are padding."""
        waveforms = np.ascontiguousarray(waveforms, dtype=np.float32)
        if lengths is None:
            lengths = np.full((waveforms.shape[0],), waveforms.shape[1], dtype=np.int64)
        names = list(self.metadata.outputs) if outputs is None else \
            list(dict.fromkeys([*outputs, "frame_lengths"]))
        values = self.session.run(names, {"waveforms": waveforms,
                                          "lengths": np.asarray(lengths, dtype=np.int64)})
        return dict(zip(names, values))

    def _one(self, samples: np.ndarray, sample_rate: int | None,
             outputs: list[str]) -> dict[str, np.ndarray]:
        if sample_rate is not None and int(sample_rate) != self.metadata.sample_rate:
            raise ValueError(f"audio at {sample_rate} Hz: this model takes "
                             f"{self.metadata.sample_rate} Hz (resample first)")
        out = self.run(*self.prepare([samples]), outputs=outputs)
        n = int(out["frame_lengths"][0])
        return {name: a[0, :n] for name, a in out.items() if name != "frame_lengths"}

    def features(self, samples: np.ndarray, layers: list[str] | None = None,
                 sample_rate: int | None = None) -> dict[str, np.ndarray]:
        """One clip (S,) -> {name: (T, ...)} of ``layers`` (default: every output)."""
        if self.metadata.kind != "features":
            raise ValueError(f"{self.path} holds CTC logits only: export the features "
                             "(audio-ssl convert --outputs features)")
        wanted = list(layers or self.metadata.layers)
        unknown = [n for n in wanted if n not in self.metadata.layers]
        if unknown:
            raise ValueError(f"layers {unknown} are not in {self.path}: it has "
                             f"{list(self.metadata.layers)}")
        return self._one(samples, sample_rate, wanted)

    def logits(self, samples: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """One clip (S,) -> CTC logits (T, V)."""
        if self.metadata.kind != "logits":
            raise ValueError(f"{self.path} holds features, no CTC head: export a fine-tuned "
                             "model to transcribe")
        return self._one(samples, sample_rate, ["logits"])["logits"]

    def transcribe(self, samples: np.ndarray, sample_rate: int | None = None) -> str:
        """One clip (S,) -> text, greedy CTC."""
        return greedy_ctc(self.logits(samples, sample_rate), self.metadata.vocab or ())


# ---------------------------------------------------------------------------------------------
# Export (torch, onnx, onnxscript)


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote, and how close the file is to the torch model."""

    path: Path
    metadata: OnnxMetadata
    seconds: float  # export time
    size_bytes: int
    max_abs_diff: dict[str, float]  # per output: max |ORT - torch fp32| on a 2-row test batch

    def summary(self) -> str:
        worst = max(self.max_abs_diff.items(), key=lambda kv: kv[1])
        m = self.metadata
        return (f"ONNX ({m.kind}: {', '.join(m.outputs)}; opset {m.opset}, {m.exporter} "
                f"exporter, {'int8 dynamic' if m.quantized == 'int8' else 'fp32'}) "
                f"{self.size_bytes / 2**20:.1f} MiB in {self.seconds:.1f} s; check against torch "
                f"fp32 on 1 s + 0.6 s of noise: max|diff| {worst[1]:.3g} ({worst[0]})")


def _metadata(loaded, kind: str, outputs: list[str], quantized: str, opset: int) -> OnnxMetadata:
    from audio_ssl.config import to_dict
    from audio_ssl.models.feature_encoder import receptive_field

    cfg = loaded.config
    field_, hop = receptive_field(cfg.encoder.conv_layers)
    run = dict(loaded.run_config or {})
    sample_rate = int((run.get("data") or {}).get("sample_rate", 16_000))
    text = run.get("text") if isinstance(run.get("text"), dict) else {}
    return OnnxMetadata(
        kind=kind, outputs=tuple(outputs), sample_rate=sample_rate,
        normalize=bool(loaded.expects_normalized), frame_rate=sample_rate / hop,
        receptive_field=field_, hop=hop, group_norm=cfg.encoder.norm == "group",
        architecture=type(loaded.model).__name__, source=loaded.source,
        vocab=tuple(loaded.vocab) if kind == "logits" else None,
        text=dict(text) if kind == "logits" else {}, model_config=to_dict(cfg),
        quantized=quantized, opset=opset)


def write_metadata(path: Path, metadata: OnnxMetadata) -> None:
    """Set ``metadata``'s ``audio_ssl.*`` entries in the file's ``metadata_props``; check it."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of ``src``'s MatMul/Gemm weights (activations quantised per
    batch at run time; convolutions stay fp32) -> ``dst``."""
    quantization = require("onnxruntime.quantization")
    quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8,
                                  op_types_to_quantize=["MatMul", "Gemm"])


def check_against_torch(loaded, path: Path, kind: str) -> dict[str, float]:
    """max |ORT - torch fp32| per output on two rows of noise (1 s, and 0.6 s padded to 1 s)."""
    import torch

    from audio_ssl.interop.onnx_torch import graph_of

    graph = graph_of(loaded.model, kind)
    waveforms = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([16_000, 9_600])
    waveforms[1, 9_600:] = 0
    with torch.no_grad():
        ref = dict(zip(graph.output_names(), graph(waveforms, lengths)))
    got = OnnxModel(path).run(waveforms.numpy(), lengths.numpy())
    frames = ref["frame_lengths"].tolist()
    diffs = {}
    for name, r in ref.items():
        if name == "frame_lengths":
            continue
        diffs[name] = max(float(np.abs(got[name][b, :n] - r[b, :n].numpy()).max())
                          for b, n in enumerate(frames))
    return diffs


def export_onnx(src, dst: str | os.PathLike, *, outputs: str = "auto",
                quantize: str | None = None, opset: int = 18,
                overwrite: bool = False, dictionary: str | os.PathLike | None = None
                ) -> OnnxExport:
    """Export ``src`` (a path :func:`~audio_ssl.interop.load_model` reads, or a
    ``LoadedModel``) to ``dst`` (.onnx), fp32 or ``quantize="int8"``.

    outputs: ``logits`` (CTC models), ``features`` (encoder and every context layer), or
    ``auto``: logits when the model has a CTC head, else features.
    """
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module)
    from audio_ssl.interop import load_model
    from audio_ssl.interop.onnx_torch import export_graph, graph_of

    if outputs not in OUTPUT_CHOICES:
        raise ValueError(f"outputs must be one of {list(OUTPUT_CHOICES)}, got {outputs!r}")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {list(QUANTIZE_CHOICES)}, got {quantize!r}")
    if opset < 18:
        raise ValueError(f"opset must be at least 18 (the dynamo exporter's), got {opset}")
    dst = Path(dst)
    if not is_onnx_path(dst):
        raise ValueError(f"{dst}: an ONNX export is written to a .onnx file")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists (use --overwrite)")
    loaded = src if hasattr(src, "model") else load_model(src, dictionary=dictionary)
    kind = outputs if outputs != "auto" else ("logits" if loaded.vocab else "features")
    start = time.perf_counter()
    graph = graph_of(loaded.model, kind)  # raises for logits without a CTC head
    meta = _metadata(loaded, kind, graph.output_names(), quantize or "none", opset)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fp32 = dst.with_name(f".{dst.name}.fp32.tmp")
    final_tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        meta = OnnxMetadata(**{**vars(meta), "exporter": export_graph(
            graph, fp32, meta.receptive_field, opset)})
        if quantize == "int8":
            quantize_int8(fp32, final_tmp)
            fp32.unlink()
        else:
            fp32.replace(final_tmp)
        write_metadata(final_tmp, meta)
        seconds = time.perf_counter() - start
        diffs = check_against_torch(loaded, final_tmp, kind)
        final_tmp.replace(dst)
    finally:
        for tmp in (fp32, final_tmp, fp32.with_name(fp32.name + ".data")):
            tmp.unlink(missing_ok=True)
    return OnnxExport(dst, meta, seconds, dst.stat().st_size, diffs)


__all__ = ["OnnxModel", "OnnxMetadata", "OnnxExport", "OnnxError", "OptionalDependencyError",
           "export_onnx", "quantize_int8", "greedy_ctc", "normalize_clip", "is_onnx_path",
           "OUTPUT_CHOICES", "QUANTIZE_CHOICES"]
