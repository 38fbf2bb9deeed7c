"""An ONNX features export in place of :class:`~audio_ssl.extract.features.InferenceModel`:
the same calls (``extract`` runs it as it runs a checkpoint), onnxruntime underneath.

Differences from a checkpoint: onnxruntime on the CPU in fp32 (``--device`` and ``--precision``
do not apply); no ``codes`` (the export has no quantizer); and a group-norm encoder's file runs
long files whole (exact, memory grows with the length) instead of in chunks, because its graph
takes no whole-file group-norm statistics (:mod:`audio_ssl.extract.chunking`). Layer-norm
encoders need none and are chunked as usual.
"""

from __future__ import annotations

import torch

from audio_ssl.extract.features import CODES, ENCODER, LayerSelection
from audio_ssl.interop.onnx_torch import OnnxFeatures
from audio_ssl.models.feature_encoder import frame_lengths


class OnnxInferenceModel:
    """``module`` (an exported features file) computing ``selection``."""

    def __init__(self, module: OnnxFeatures, selection: LayerSelection):
        if CODES in selection.names:
            raise ValueError("layer 'codes' needs the quantizer, and an ONNX export has none: "
                             "extract codes from the checkpoint")
        meta = module.runner.metadata
        self.module, self.selection, self.cfg = module, selection, module.cfg
        self.receptive_field, self.hop = meta.receptive_field, meta.hop
        self.frame_rate = meta.frame_rate
        self.whole_files_only = meta.group_norm
        self.device = torch.device("cpu")
        self.precision = "onnx-int8" if meta.quantized == "int8" else "onnx-fp32"
        self.kernels = "onnxruntime"

    @property
    def group_norm(self) -> bool:
        """Whether chunks need whole-file group-norm statistics: never here (such files are not
        chunked, ``whole_files_only``)."""
        return False

    @property
    def conv0(self) -> tuple[None, None, int, int]:
        """(None, None, kernel, stride) of the first conv layer: the weights stay in the graph."""
        _, kernel, stride = self.cfg.encoder.conv_layers[0]
        return None, None, kernel, stride

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return frame_lengths(lengths, self.cfg.encoder.conv_layers)

    def output_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        channels = self.cfg.encoder.conv_layers[-1][0]
        return {name: ((channels if name == ENCODER else self.cfg.context_dim,), torch.float32)
                for name in self.selection.names}

    def __call__(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                 encoder_stats: torch.Tensor | None = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """As :meth:`InferenceModel.__call__` (``encoder_stats`` must be None: long files of a
        group-norm encoder are never chunked here)."""
        if encoder_stats is not None:
            raise ValueError("an ONNX export takes no whole-file group-norm statistics")
        out, frames = self.module(waveforms, lengths, list(self.selection.names))
        return {name: out[name] for name in self.selection.names}, frames


__all__ = ["OnnxInferenceModel"]
