"""Which representations to extract, and the inference forward that computes only those.

Layer names (the keys of every output):

- ``layer_0`` .. ``layer_L``: the context network's input (``layer_0``, after the positional
  convolution, = HF's ``hidden_states[0]``) and each Transformer layer's output (= HF's
  ``hidden_states[i]``); for pre-norm models (LARGE) ``layer_L`` is after the final layer norm,
  i.e. the context output ``c`` = HF's ``last_hidden_state`` (HF's ``hidden_states[-1]`` is
  before that norm). ``last`` means ``layer_L``, ``all`` means ``layer_0`` .. ``layer_L``.
- ``encoder``: the feature encoder's frames z AFTER its layer norm (the quantizer's input, HF's
  ``extract_features``), (T, C).
- ``codes``: the quantizer's hard choice per group (argmax of its logits, no Gumbel noise),
  (T, G) int64; only for models that have a quantizer (pretraining checkpoints).

:class:`InferenceModel` computes these with the backbone's own forward steps (``encode``,
``prepare``, the context network run up to the deepest layer asked for; later layers are not
run), under ``torch.inference_mode``, with the faster kernels of
:mod:`audio_ssl.extract.kernels` swapped in for the encoder, positional convolution and layers
(the same functions; tested against the modules). One thing differs from
``Wav2Vec2Model.forward`` on purpose: ``encoder_stats``, with which the chunks of a
long file are normalised by the group norm statistics of the WHOLE file (see
:mod:`audio_ssl.extract.chunking`), so a chunk's conv features equal the whole file's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils import parametrize

from audio_ssl.extract.kernels import (
    ChannelsLastEncoder,
    FastLayer,
    onednn_available,
    positional_conv,
)
from audio_ssl.models.cpc import CpcModel
from audio_ssl.models.feature_encoder import receptive_field
from audio_ssl.models.quantizer import GumbelQuantizer
from audio_ssl.models.wav2vec2 import Wav2Vec2Model

ENCODER, CODES = "encoder", "codes"


def layer_name(index: int) -> str:
    return f"layer_{index}"


@dataclass(frozen=True)
class LayerSelection:
    """Output names in order, and what computing them needs."""

    names: tuple[str, ...]
    num_layers: int  # L, the context network's depth

    @property
    def context_layers(self) -> tuple[int, ...]:
        return tuple(int(n.split("_")[1]) for n in self.names if n.startswith("layer_"))

    @property
    def deepest(self) -> int:
        """Transformer layers to run (0: only the context network's input, -1: none at all)."""
        return max(self.context_layers, default=-1)

    @property
    def stackable(self) -> bool:
        """Every output is a context layer (same width): they stack into (K, T, D)."""
        return all(n.startswith("layer_") for n in self.names)


def parse_layers(spec: str | int | Sequence[str | int], num_layers: int) -> LayerSelection:
    """``--layer`` -> :class:`LayerSelection`.

    ``spec``: an index (0..L), ``last``, ``all``, ``encoder``, ``codes``, or several of these as
    a list or a comma-separated string (``"encoder,6,last"``); duplicates are dropped, order kept.
    """
    parts: list[str | int]
    if isinstance(spec, (str, int)):
        parts = [p.strip() for p in str(spec).split(",")]
    else:
        parts = list(spec)
    names: list[str] = []
    for part in parts:
        token = str(part).strip().lower()
        if token == "last":
            new = [layer_name(num_layers)]
        elif token == "all":
            new = [layer_name(i) for i in range(num_layers + 1)]
        elif token in (ENCODER, CODES):
            new = [token]
        elif re.fullmatch(r"(layer_)?\d+", token):
            index = int(token.removeprefix("layer_"))
            if index > num_layers:
                raise ValueError(f"layer {index} does not exist: the model's context network has "
                                 f"{num_layers} layers (valid: 0..{num_layers}, 0 = its input)")
            new = [layer_name(index)]
        else:
            raise ValueError(f"unknown layer {part!r}: expected an index 0..{num_layers}, "
                             f"'last', 'all', 'encoder' or 'codes' (comma-separated for several)")
        names.extend(n for n in new if n not in names)
    if not names:
        raise ValueError(f"no layer selected by {spec!r}")
    return LayerSelection(tuple(names), num_layers)


def split_model(model: nn.Module) -> tuple[Wav2Vec2Model | CpcModel, GumbelQuantizer | None]:
    """(backbone, quantizer or None) of a Wav2Vec2ForPretraining, Wav2Vec2ForCTC or Wav2Vec2Model
    (or a CPC model: its :class:`CpcModel` has the same encode / prepare / context steps)."""
    if isinstance(model, (Wav2Vec2Model, CpcModel)):
        return model, None
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, (Wav2Vec2Model, CpcModel)):
        raise TypeError(f"expected a wav2vec 2.0 model of audio_ssl (Wav2Vec2ForPretraining, "
                        f"Wav2Vec2ForCTC or Wav2Vec2Model), got {type(model).__name__}")
    quantizer = getattr(model, "quantizer", None)
    return backbone, quantizer if isinstance(quantizer, GumbelQuantizer) else None


class InferenceModel:
    """The backbone (and quantizer) in eval mode on ``device``, computing ``selection`` only.

    Args:
        model: a model from :func:`audio_ssl.interop.load_model` (its ``.model``).
        selection: the outputs to compute.
        device: where to run.
        precision: ``"fp32"``, or ``"bf16"`` (bf16 matrix products, as under autocast).
        kernels: ``"modules"`` (the backbone's own modules), ``"onednn"`` (CPU fp32: oneDNN
            linear layers), ``"channels_last"`` (frames-as-rows encoder and fused layers of
            :mod:`.kernels`), or ``"auto"``: channels_last on CUDA and in bf16 on the CPU (1.8x
            the modules under autocast for base on 2 AMX cores), onednn in fp32 on the CPU
            when available.
    """

    def __init__(self, model: nn.Module, selection: LayerSelection, device: torch.device | str,
                 precision: str = "fp32", kernels: str = "auto"):
        backbone, quantizer = split_model(model)
        causal = isinstance(backbone, CpcModel)  # no Transformer layers to swap kernels into
        if CODES in selection.names and quantizer is None:
            raise ValueError(f"layer 'codes' needs the quantizer, and this {type(model).__name__} "
                             f"has none (only pretraining checkpoints keep it)")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.device = torch.device(device)
        if kernels == "auto":
            if self.device.type == "cuda" or precision == "bf16":
                kernels = "channels_last"
            elif precision == "fp32" and onednn_available():
                kernels = "onednn"
            else:
                kernels = "modules"
        if kernels not in ("modules", "onednn", "channels_last"):
            raise ValueError(f"kernels must be 'auto', 'modules', 'onednn' or 'channels_last', "
                             f"got {kernels!r}")
        self.precision, self.kernels, self.selection = precision, kernels, selection
        self.backbone = backbone.to(self.device).eval()
        self.quantizer = quantizer.to(self.device).eval() if quantizer is not None else None
        self.cfg = backbone.cfg
        self.receptive_field, self.hop = receptive_field(self.cfg.encoder.conv_layers)
        self.compute_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # the kernels swapped into the backbone's forward (None: its own modules)
        self._layers = None
        if kernels != "modules" and not causal:
            self._layers = [FastLayer(layer, self.compute_dtype, onednn=kernels == "onednn")
                            for layer in backbone.context.layers]
        self._positional = None
        if kernels == "channels_last" and not causal:
            self._positional = partial(positional_conv, backbone.context.pos_conv,
                                       dtype=self.compute_dtype)
        # the channels-last encoder also serves chunks (whole-file group norm statistics)
        self._encoder = ChannelsLastEncoder(backbone.feature_encoder, self.compute_dtype,
                                            nhwc=kernels == "channels_last")

    @property
    def group_norm(self) -> bool:
        """The encoder normalises its first conv layer over time (needs whole-file statistics)."""
        return self._encoder.group_norm

    @property
    def whole_files_only(self) -> bool:
        """False: long files run in chunks, with whole-file statistics where needed."""
        return False

    @property
    def conv0(self) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
        """(weight (C, k), bias (C,) or None, kernel, stride) of the first conv layer."""
        enc = self._encoder
        return enc.w0, enc.b0, enc.kernel, enc.stride

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.backbone.frame_lengths(lengths)

    @property
    def frame_rate(self) -> float:
        return 16_000 / self.hop

    def output_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per output name: (shape after the time axis, dtype)."""
        dim = self.backbone.projection.out_features  # the context network's width
        channels = self.backbone.feature_encoder.out_channels
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for name in self.selection.names:
            if name == ENCODER:
                shapes[name] = ((channels,), torch.float32)
            elif name == CODES:
                shapes[name] = ((self.cfg.quantizer.groups,), torch.int64)
            else:
                shapes[name] = ((dim,), torch.float32)
        return shapes

    # -- forward --------------------------------------------------------------------------------

    def _forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, padded: bool,
                 encoder_stats: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The backbone's own steps (``encode``, ``prepare``, the context network up to the
        deepest layer asked for) with this model's kernels swapped in. Everything on the device;
        ``padded`` and the shapes are known on the host, so the forward queues its kernels
        without waiting for the device."""
        sel, bb = self.selection, self.backbone
        encoder = None
        if self.kernels == "channels_last" or encoder_stats is not None:
            encoder = partial(self._encoder, stats=encoder_stats)
        enc = bb.encode(waveforms, lengths, padded=padded, encoder=encoder)
        out: dict[str, torch.Tensor] = {}
        if ENCODER in sel.names:
            out[ENCODER] = enc.features  # (B, T, C)
        if CODES in sel.names:
            flat = rearrange(enc.features, "b t c -> (b t) c")
            codes = self.quantizer(flat, 1.0).codes  # (B*T, G): eval mode, hard argmax
            out[CODES] = rearrange(codes, "(b t) g -> b t g", b=enc.features.shape[0])
        if sel.deepest < 0:
            return out
        wanted = sel.context_layers
        only_deepest = wanted == (sel.deepest,)  # keep no other layer's output alive
        c, states = bb.context(bb.prepare(enc), enc.padding_mask, return_layers=not only_deepest,
                               num_layers=sel.deepest, positional=self._positional,
                               layers=self._layers)
        out.update({layer_name(i): c if only_deepest else states[i] for i in wanted})
        return out

    @torch.inference_mode()
    def __call__(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                 encoder_stats: torch.Tensor | None = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """waveforms (B, S) at 16 kHz; lengths (B,) real samples (None = all); encoder_stats
        (B, C, 2) per-row (mean, var) of the first conv layer's output to normalise with (None:
        computed from each row's real frames, as the model does).

        Returns ({name: (B, T, ...)} on ``device``, in the selection's order, frame_lengths (B,)
        on the CPU). On CUDA the outputs may still be being computed (no synchronisation).
        """
        batch, samples = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long)
        lengths = lengths.cpu()
        padded = bool((lengths < samples).any())
        num_frames = int(self.frame_lengths(torch.tensor([samples]))[0])
        frames = self.frame_lengths(lengths).clamp(max=num_frames)  # (B,) on the host
        waveforms = waveforms.to(self.device, non_blocking=True)
        if encoder_stats is not None:
            encoder_stats = encoder_stats.to(self.device, non_blocking=True)
        autocast = self.precision == "bf16"
        with parametrize.cached(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                  enabled=autocast):
            out = self._forward(waveforms, lengths.to(self.device, non_blocking=True), padded,
                                encoder_stats)
        ordered = {name: out[name] for name in self.selection.names}
        return ordered, frames


__all__ = ["ENCODER", "CODES", "LayerSelection", "parse_layers", "layer_name", "split_model",
           "InferenceModel"]
