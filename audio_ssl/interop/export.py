"""Write a loaded model in this library's format, and ``audio-ssl convert``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from audio_ssl.config import ModelConfig, to_dict
from audio_ssl.interop import (
    ARCHITECTURE_KEY,
    CONFIG_KEY,
    FINAL_DROPOUT_KEY,
    VOCAB_KEY,
    CheckpointError,
    LoadedModel,
    load_model,
)

FORMATS = ("hf", "audio-ssl")


def save_native(model: nn.Module, path: str | Path, vocab: list[str] | None = None,
                run_config: dict | None = None) -> Path:
    """Write ``model`` as an audio_ssl ``.ckpt`` that :func:`~audio_ssl.interop.load_model`
    (and so every command) reads: the run config (``run_config``, e.g. a ``LoadedModel``'s,
    with its ``model`` section replaced by ``model``'s config), the weights under ``model.``,
    and the CTC vocabulary."""
    from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2Model

    cfg: ModelConfig = model.cfg
    run_cfg = {**(run_config or {}), "model": to_dict(cfg)}
    checkpoint: dict = {
        CONFIG_KEY: run_cfg,
        "state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
        ARCHITECTURE_KEY: type(model).__name__,
    }
    if isinstance(model, Wav2Vec2ForCTC):
        if vocab is None or len(vocab) != model.vocab_size:
            raise ValueError(f"save_native: a CTC model needs its vocab of {model.vocab_size} "
                             f"tokens (blank first), got {None if vocab is None else len(vocab)}")
        checkpoint[VOCAB_KEY] = list(vocab)
        checkpoint[FINAL_DROPOUT_KEY] = model.dropout.p
    elif not isinstance(model, Wav2Vec2Model) and vocab is not None:
        raise ValueError("save_native: a vocab was given for a model without a CTC head")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)
    return path


def convert(src: str | Path, dst: str | Path, to: str, dictionary: str | Path | None = None,
            overwrite: bool = False) -> tuple[LoadedModel, Path]:
    """Load ``src`` (any format :func:`load_model` reads) and write it to ``dst`` as an HF
    folder (``to="hf"``) or an audio_ssl ``.ckpt`` (``to="audio-ssl"``)."""
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}: expected one of {list(FORMATS)}")
    dst = Path(dst)
    loaded = load_model(src, dictionary=dictionary)
    if to == "hf":
        from audio_ssl.interop.hf import save_hf

        if dst.is_file() or (dst.is_dir() and any(dst.iterdir()) and not overwrite):
            raise FileExistsError(f"{dst} exists and is not an empty folder (use --overwrite)")
        written = save_hf(loaded.model, dst, loaded.vocab, loaded.normalize)
    else:
        if dst.is_dir():
            dst = dst / "model.ckpt"
        if dst.exists() and not overwrite:
            raise FileExistsError(f"{dst} exists (use --overwrite)")
        written = save_native(loaded.model, dst, loaded.vocab, loaded.run_config)
    return loaded, written


def describe(loaded: LoadedModel) -> str:
    """One line about a loaded model, for the CLI."""
    cfg = loaded.config
    params = sum(p.numel() for p in loaded.model.parameters())
    vocab = f", {len(loaded.vocab)} CTC tokens" if loaded.vocab else ""
    if cfg.objective == "cpc":
        return (f"{type(loaded.model).__name__} from {loaded.source}: CPC, {cfg.cpc.layers} x "
                f"{cfg.cpc.dim} causal {cfg.cpc.context} context, {cfg.encoder.norm}-norm "
                f"encoder, {params / 1e6:.1f}M parameters{vocab}")
    return (f"{type(loaded.model).__name__} from {loaded.source}: {cfg.context.layers} x "
            f"{cfg.context.dim}, {cfg.encoder.norm}-norm encoder, "
            f"{'pre' if cfg.context.layer_norm_first else 'post'}-norm Transformer, "
            f"{params / 1e6:.1f}M parameters{vocab}")


def run_convert(src: str | Path, dst: str | Path, to: str | None,
                dictionary: str | Path | None = None, overwrite: bool = False, *,
                outputs: str = "auto", quantize: str | None = None) -> int:
    """``audio-ssl convert``: convert, print what was written, return the exit status.
    ``to`` None: ``onnx`` for a ``dst`` ending in ``.onnx``; ``outputs`` and ``quantize`` are
    the ONNX export's (:func:`~audio_ssl.interop.onnx.export_onnx`)."""
    from audio_ssl.interop.onnx import OptionalDependencyError, export_onnx, is_onnx_path

    try:
        if to is None:
            if not is_onnx_path(dst):
                raise ValueError(f"convert {dst}: give --to hf or --to audio-ssl (or a DST "
                                 "ending in .onnx)")
            to = "onnx"
        if (to == "onnx") != is_onnx_path(dst):
            raise ValueError(f"--to {to} with DST {dst}: an ONNX export is a .onnx file, and "
                             "only an ONNX export is")
        if to != "onnx" and (outputs != "auto" or quantize is not None):
            raise ValueError("--outputs and --quantize apply to ONNX exports (DST.onnx) only")
        if to == "onnx":
            loaded = load_model(src, dictionary=dictionary)
            report = export_onnx(loaded, dst, outputs=outputs, quantize=quantize,
                                 overwrite=overwrite)
            print(f"{describe(loaded)}\nwritten to {report.path}: {report.summary()}")
            return 0
        loaded, written = convert(src, dst, to, dictionary, overwrite)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError,
            OptionalDependencyError) as err:
        print(f"audio-ssl: error: {err}", file=sys.stderr)
        return 2
    kind = "HF folder" if to == "hf" else "audio_ssl checkpoint"
    print(f"{describe(loaded)}\nwritten to {written} ({kind})")
    return 0


__all__ = ["FORMATS", "save_native", "convert", "describe", "run_convert"]
