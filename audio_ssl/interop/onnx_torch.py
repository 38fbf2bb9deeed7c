"""The torch side of :mod:`.onnx`: what ``audio-ssl convert CKPT OUT.onnx`` traces (the model's
own forward, fixed to the path that is right for any lengths, with weight norm folded), and an
exported file loaded back as a :class:`~audio_ssl.interop.common.LoadedModel` whose module runs
onnxruntime (:func:`load_onnx`), for the commands that take a checkpoint.

The graphs take ``waveforms`` (B, S) float32 and ``lengths`` (B,) int64 (real samples of each
row; B and S dynamic) and return, in this order:

- features graph: ``encoder`` (B, T, C) (the feature encoder's frames after its layer norm),
  ``layer_0`` .. ``layer_L`` (B, T, D) (as :mod:`audio_ssl.extract.features` names them),
  ``frame_lengths`` (B,) int64;
- logits graph: ``logits`` (B, T, V) (CTC, blank = 0), ``frame_lengths`` (B,) int64.

Both always take the padding-aware path (``padded=True``): the group norm of the first conv
layer and attention skip each row's padded frames, so a padded row equals the clip alone. Frames
past ``frame_lengths`` are padding.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from audio_ssl.config import ModelConfig
from audio_ssl.interop.common import LoadedModel, merge_config
from audio_ssl.models import CTCOutput, Wav2Vec2ForCTC, Wav2Vec2Model

ENCODER, FRAME_LENGTHS, LOGITS = "encoder", "frame_lengths", "logits"
INPUTS = ("waveforms", "lengths")


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parametrized convolutions (the positional
    convolution's weight norm) are plain ``nn.Conv1d`` holding the folded weight ``g * v / |v|``.

    Not ``parametrize.remove_parametrizations`` on a deep copy: the parametrized class is shared
    between the copies, and removing it from one breaks the other."""
    folded = copy.deepcopy(model).eval()
    for name, module in list(folded.named_modules()):
        if not parametrize.is_parametrized(module) or not isinstance(module, nn.Conv1d):
            continue
        plain = nn.Conv1d(module.in_channels, module.out_channels, module.kernel_size[0],
                          stride=module.stride[0], padding=module.padding[0],
                          dilation=module.dilation[0], groups=module.groups,
                          bias=module.bias is not None)
        with torch.no_grad():
            plain.weight.copy_(module.weight)  # the parametrization's output: g * v / |v|
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        parent_name, _, attr = name.rpartition(".")
        setattr(folded.get_submodule(parent_name) if parent_name else folded, attr, plain)
    return folded


class FeatureGraph(nn.Module):
    """Backbone -> (encoder, layer_0 .. layer_L, frame_lengths)."""

    def __init__(self, backbone: Wav2Vec2Model):
        super().__init__()
        self.backbone = backbone

    def output_names(self) -> list[str]:
        layers = self.backbone.cfg.context_layers
        return [ENCODER, *(f"layer_{i}" for i in range(layers + 1)), FRAME_LENGTHS]

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.backbone(waveforms, lengths, padded=True, return_layers=True)
        return (out.features, *out.hidden_states, out.frame_lengths)  # (B, T, C), L+1 x (B, T, D)


class LogitsGraph(nn.Module):
    """CTC model -> (logits, frame_lengths)."""

    def __init__(self, model: Wav2Vec2ForCTC):
        super().__init__()
        self.model = model

    def output_names(self) -> list[str]:
        return [LOGITS, FRAME_LENGTHS]

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(waveforms, lengths, padded=True)
        return out.logits, out.frame_lengths  # (B, T, V), (B,)


def graph_of(model: nn.Module, kind: str) -> FeatureGraph | LogitsGraph:
    """The module to export for ``kind`` ("features" or "logits") of a loaded model, weight norm
    folded; a copy, ``model`` is left as it is."""
    folded = fold_weight_norm(model)
    if kind == LOGITS:
        if not isinstance(folded, Wav2Vec2ForCTC):
            raise ValueError(f"outputs 'logits' need a CTC head, and this "
                             f"{type(model).__name__} has none: export its features, or "
                             f"fine-tune it first (audio-ssl finetune)")
        return LogitsGraph(folded).eval()
    backbone = folded if isinstance(folded, Wav2Vec2Model) else folded.backbone
    return FeatureGraph(backbone).eval()


def export_graph(graph: FeatureGraph | LogitsGraph, path: Path, receptive_field: int,
                 opset: int = 18) -> str:
    """Trace ``graph`` to ``path`` with the dynamo exporter (dynamic batch and samples); returns
    the exporter used. Example input: two rows of 1 s, one of them padded."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=receptive_field, max=16_000 * 3600)
    waveforms = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([16_000, 9_000])
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (waveforms, lengths), dynamo=True, opset_version=opset,
            input_names=list(INPUTS), output_names=graph.output_names(),
            dynamic_shapes={"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}},
            optimize=True, verbose=False)
    program.save(str(path))
    return "dynamo"


class OnnxCTC(nn.Module):
    """A logits file run by onnxruntime, called as :class:`Wav2Vec2ForCTC` is: (waveforms (B, S),
    lengths (B,)) -> :class:`CTCOutput` on the CPU (no hidden states, no padding mask). It has
    no parameters: ``.to(device)`` leaves it on the CPU, inputs are copied there."""

    def __init__(self, runner, cfg: ModelConfig):
        super().__init__()
        self.runner, self.cfg = runner, cfg
        self.vocab_size = len(runner.metadata.vocab)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                **_) -> CTCOutput:
        out = self.runner.run(waveforms.detach().float().cpu().numpy(),
                              None if lengths is None else lengths.cpu().numpy())
        return CTCOutput(torch.from_numpy(out[LOGITS]), torch.from_numpy(out[FRAME_LENGTHS]),
                         None, [])


class OnnxFeatures(nn.Module):
    """A features file run by onnxruntime: (waveforms (B, S), lengths (B,)) -> ({output: (B, T,
    ...)}, frame_lengths (B,)), torch tensors on the CPU. ``cfg``: the exported model's config."""

    def __init__(self, runner, cfg: ModelConfig):
        super().__init__()
        self.runner, self.cfg = runner, cfg

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                outputs: list[str] | None = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out = self.runner.run(waveforms.detach().float().cpu().numpy(),
                              None if lengths is None else lengths.cpu().numpy(), outputs)
        frames = torch.from_numpy(out.pop(FRAME_LENGTHS))
        return {name: torch.from_numpy(a) for name, a in out.items()}, frames


def load_onnx(path: str | Path, threads: int | None = None) -> LoadedModel:
    """An exported file as a :class:`LoadedModel`: its module runs onnxruntime
    (:class:`OnnxCTC` or :class:`OnnxFeatures`), its config, vocabulary and run config (sample
    rate, normalisation, text settings) come from the file's metadata."""
    from audio_ssl.interop.onnx import OnnxModel

    runner = OnnxModel(path, threads=threads)
    meta = runner.metadata
    cfg = merge_config(ModelConfig(), meta.model_config, f"{path} (metadata model_config)")
    module = OnnxCTC(runner, cfg) if meta.kind == LOGITS else OnnxFeatures(runner, cfg)
    run_config = {"data": {"normalize": meta.normalize, "sample_rate": meta.sample_rate},
                  "model": meta.model_config}
    if meta.kind == LOGITS:
        run_config["text"] = dict(meta.text)
    return LoadedModel(module, cfg, list(meta.vocab) if meta.vocab else None, "onnx",
                       Path(path), run_config)


__all__ = ["fold_weight_norm", "FeatureGraph", "LogitsGraph", "graph_of", "export_graph",
           "OnnxCTC", "OnnxFeatures", "load_onnx",
           "ENCODER", "FRAME_LENGTHS", "LOGITS", "INPUTS"]
