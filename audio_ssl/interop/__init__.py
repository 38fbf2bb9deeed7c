"""Load any supported wav2vec 2.0 checkpoint into an audio_ssl model, and export to other formats.

:func:`load_model` is the one entry point every command that takes a checkpoint goes through.
It recognises this library's own checkpoints (pretraining and fine-tuned CTC). Other formats
(HF folders, fairseq ``.pt``, torchaudio state dicts) are recognised by the importers in this
package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from audio_ssl.config import ModelConfig, merge

CONFIG_KEY = "audio_ssl_config"  # the resolved run config (a dict with a "model" section)
VOCAB_KEY = "audio_ssl_vocab"  # fine-tuned CTC checkpoints: list of tokens, blank first


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what came with it."""

    model: nn.Module  # Wav2Vec2ForPretraining, Wav2Vec2ForCTC or Wav2Vec2Model
    config: ModelConfig
    vocab: list[str] | None  # CTC tokens (index 0 = blank), None for models without a CTC head
    source: str  # "audio-ssl", "hf", "fairseq" or "torchaudio"
    path: Path


def _load_native(path: Path, checkpoint: dict, map_location: str) -> LoadedModel:
    from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining

    model_cfg = merge(ModelConfig(), checkpoint[CONFIG_KEY].get("model", {}))
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
             if k.startswith("model.")}
    vocab = checkpoint.get(VOCAB_KEY)
    if vocab is not None:
        model = Wav2Vec2ForCTC(model_cfg, len(vocab))
    else:
        model = Wav2Vec2ForPretraining(model_cfg)
    model.load_state_dict(state)
    return LoadedModel(model, model_cfg, list(vocab) if vocab else None, "audio-ssl", path)


def load_model(path: str | Path, map_location: str = "cpu") -> LoadedModel:
    """Rebuild the model stored at ``path`` (file or folder), whatever its format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        if isinstance(checkpoint, dict) and CONFIG_KEY in checkpoint:
            return _load_native(path, checkpoint, map_location)
    raise ValueError(f"{path}: not a checkpoint format audio_ssl recognises (expected an "
                     f"audio_ssl .ckpt with an {CONFIG_KEY!r} entry)")


__all__ = ["CONFIG_KEY", "VOCAB_KEY", "LoadedModel", "load_model"]
