"""Load any supported wav2vec 2.0 checkpoint into an audio_ssl model, and export to other formats.

:func:`load_model` is the one entry point every command that takes a checkpoint goes through.
It recognises, by content rather than by name:

- this library's own checkpoints (``.ckpt``: pretraining, fine-tuned CTC, bare backbone);
- HF folders (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, and
  ``vocab.json`` for CTC): :func:`~audio_ssl.interop.hf.from_hf`;
- fairseq ``.pt`` files (pretraining, or fine-tuned CTC with ``dict.ltr.txt`` beside it), read
  without fairseq: :func:`~audio_ssl.interop.fairseq.from_fairseq`;
- ``torchaudio.models.wav2vec2_model`` state dicts (``.pt``/``.pth``):
  :func:`~audio_ssl.interop.torchaudio_format.from_torchaudio`;
- ONNX files this library exported (``.onnx``), only when the caller runs models without
  training them (``onnx=True``: extract, transcribe, evaluate): the model is then onnxruntime
  behind a module (:func:`~audio_ssl.interop.onnx_torch.load_onnx`).

Exports: :func:`~audio_ssl.interop.hf.save_hf` (an HF folder), :func:`~audio_ssl.interop.hf.to_hf`
(the in-memory ``transformers`` model), :func:`~audio_ssl.interop.export.save_native`,
:func:`~audio_ssl.interop.onnx.export_onnx`.

Importing this package imports no torch (the ONNX runner, :mod:`.onnx`, runs without it): the
loaders and records are imported on first use.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from audio_ssl.config import ModelConfig, merge

if TYPE_CHECKING:
    from audio_ssl.interop.common import LoadedModel

CONFIG_KEY = "audio_ssl_config"  # the resolved run config (a dict with a "model" section)
VOCAB_KEY = "audio_ssl_vocab"  # fine-tuned CTC checkpoints: list of tokens, blank first
ARCHITECTURE_KEY = "audio_ssl_architecture"  # "Wav2Vec2Model" for backbone-only files
FINAL_DROPOUT_KEY = "audio_ssl_final_dropout"  # CTC head dropout, when known


def _load_native(path: Path, checkpoint: dict) -> LoadedModel:
    from audio_ssl.interop.common import LoadedModel, build_model, load_exact
    from audio_ssl.models.ctc import head_kernel_of

    run_cfg = checkpoint[CONFIG_KEY]
    model_cfg = merge(ModelConfig(), run_cfg.get("model", {}))
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
             if k.startswith("model.")}
    vocab = checkpoint.get(VOCAB_KEY)
    backbone_only = checkpoint.get(ARCHITECTURE_KEY) == "Wav2Vec2Model" or (
        vocab is None and state and not any(k.startswith("backbone.") for k in state))
    model = build_model(model_cfg, len(vocab) if vocab is not None else None,
                        pretraining=not backbone_only,
                        final_dropout=float(checkpoint.get(FINAL_DROPOUT_KEY, 0.0)),
                        head_kernel=head_kernel_of(state))
    load_exact(model, state, str(path))
    return LoadedModel(model, model_cfg, list(vocab) if vocab is not None else None,
                       "audio-ssl", path, dict(run_cfg))


def load_model(path: str | Path, map_location: str = "cpu",
               dictionary: str | Path | None = None, *, onnx: bool = False) -> LoadedModel:
    """Rebuild the model stored at ``path`` (file or folder), whatever its format, as a
    :class:`~audio_ssl.interop.common.LoadedModel`.

    ``dictionary``: the letter dictionary of a fine-tuned fairseq checkpoint, when it is not
    ``dict.ltr.txt`` beside it. ``LoadedModel.source`` says which format it was.
    ``onnx``: accept an exported ``.onnx`` file (run by onnxruntime, no weights to train); a
    command that trains or converts leaves it False and gets a one-line refusal.
    """
    from audio_ssl.interop.common import CheckpointError
    from audio_ssl.interop.fairseq import from_fairseq, is_fairseq_checkpoint
    from audio_ssl.interop.hf import from_hf
    from audio_ssl.interop.safe_load import safe_torch_load
    from audio_ssl.interop.torchaudio_format import from_torchaudio_object, is_torchaudio_state

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if (path / "config.json").is_file():
            return from_hf(path)
        raise ValueError(f"{path}: a folder must be an HF wav2vec 2.0 model (config.json + "
                         "model.safetensors or pytorch_model.bin); no config.json there")
    if path.suffix.lower() == ".onnx":
        if not onnx:
            raise ValueError(f"{path}: an ONNX export runs with extract, transcribe and "
                             "evaluate only; this command needs the checkpoint it was exported "
                             "from")
        from audio_ssl.interop.onnx_torch import load_onnx

        return load_onnx(path)
    if path.name == "config.json" or path.suffix == ".safetensors" or (
            path.suffix == ".bin" and (path.parent / "config.json").is_file()):
        return from_hf(path.parent)
    try:
        checkpoint = safe_torch_load(path, map_location)
    except (pickle.UnpicklingError, EOFError, RuntimeError, UnicodeDecodeError, ValueError,
            ImportError, AttributeError, IndexError, KeyError, TypeError) as err:
        reason = str(err).split(". ")[0] or type(err).__name__
        raise CheckpointError(f"{path}: not a checkpoint torch can read (random bytes, text or a "
                              f"truncated file?): {reason}") from None
    if isinstance(checkpoint, dict):
        if CONFIG_KEY in checkpoint:
            return _load_native(path, checkpoint)
        if is_fairseq_checkpoint(checkpoint):
            return from_fairseq(path, dictionary, checkpoint=checkpoint)
        if is_torchaudio_state(checkpoint):
            return from_torchaudio_object(checkpoint, path=path)
        keys = checkpoint.get("state_dict", checkpoint)
        if isinstance(keys, dict) and any("feature_projection.projection" in str(k) for k in keys):
            raise ValueError(f"{path}: looks like an HF state dict without its config: load the "
                             "HF folder (config.json beside the weights) instead")
    raise ValueError(f"{path}: not a checkpoint format audio_ssl recognises (expected an "
                     f"audio_ssl .ckpt with an {CONFIG_KEY!r} entry, an HF folder, a fairseq "
                     "wav2vec 2.0 .pt with 'cfg' or 'args', or a torchaudio wav2vec2_model "
                     "state dict)")


def __getattr__(name: str):
    """Importers and exporters, imported on first use (transformers stays optional)."""
    lazy = {"from_hf": "hf", "save_hf": "hf", "to_hf": "hf", "from_fairseq": "fairseq",
            "from_torchaudio": "torchaudio_format", "save_native": "export", "convert": "export",
            "export_onnx": "onnx", "BLANK": "common", "WORD_SEPARATOR": "common",
            "CheckpointError": "common", "LoadedModel": "common"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f"audio_ssl.interop.{lazy[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONFIG_KEY", "VOCAB_KEY", "BLANK", "WORD_SEPARATOR", "CheckpointError", "LoadedModel",
           "load_model", "from_hf", "save_hf", "to_hf", "from_fairseq", "from_torchaudio",
           "save_native", "convert", "export_onnx"]
