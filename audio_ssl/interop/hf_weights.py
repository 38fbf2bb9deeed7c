"""HF wav2vec 2.0 weights: our state-dict names <-> HF's (:func:`hf_keymap`, from the table in
:mod:`.keys`), reading a folder's weight files, and telling its architecture from its config and
weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audio_ssl.interop.common import CheckpointError, KeyMap
from audio_ssl.interop.hf_fields import ARCHITECTURES, architecture_of
from audio_ssl.interop.keys import keymap_for

# heads HF builds on the same backbone that have no counterpart here
_OTHER_HEADS = {
    "Wav2Vec2ForSequenceClassification": "a sequence classification head",
    "Wav2Vec2ForAudioFrameClassification": "a frame classification head",
    "Wav2Vec2ForXVector": "a TDNN x-vector head (tdnn_dim, xvector_output_dim)",
    "Wav2Vec2ForMaskedLM": "a masked-LM head",
}


def hf_keymap(architecture: str) -> KeyMap:
    """Our state-dict names <-> HF's, for one of :data:`ARCHITECTURES` (the HF column of
    :mod:`.keys`)."""
    if architecture == "Wav2Vec2Model":
        return keymap_for("hf")
    head = {"Wav2Vec2ForPreTraining": "pretraining", "Wav2Vec2ForCTC": "ctc"}.get(architecture)
    return keymap_for("hf", ("backbone.", "wav2vec2."), head)


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under HF's names (contiguous CPU tensors)."""
    keymap = hf_keymap(architecture_of(model))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.mask.prob == 0:  # HF builds no masked_spec_embed when nothing is masked
        state = {k: v for k, v in state.items() if not k.endswith("mask_embedding")}
    return keymap.export_state(state)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        single_path, index_path = folder / single, folder / index_name
        if single_path.is_file():
            files = [single_path]
        elif index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = [folder / f for f in sorted(set(weight_map.values()))]
        else:
            continue
        state: dict[str, torch.Tensor] = {}
        for f in files:
            if f.suffix == ".safetensors":
                state.update(load_file(str(f)))
            else:
                state.update(torch.load(f, map_location="cpu", weights_only=True))
        return state
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin (expected an HF "
                            "wav2vec 2.0 folder)")


def folder_architecture(hf: dict[str, Any], state: dict[str, torch.Tensor],
                        where: str) -> str:
    """The folder's architecture: config.json's ``architectures``, else told from the weights."""
    names = hf.get("architectures") or []
    if names:
        name = names[0]
        if name in _OTHER_HEADS:
            raise CheckpointError(f"{where}: architecture {name} ({_OTHER_HEADS[name]}) is not "
                                  f"supported; expected one of {list(ARCHITECTURES)}")
        if name not in ARCHITECTURES:
            raise CheckpointError(f"{where}: architecture {name!r} is not wav2vec 2.0; expected "
                                  f"one of {list(ARCHITECTURES)}")
        return name
    if any(k.startswith("lm_head.") for k in state):
        return "Wav2Vec2ForCTC"
    if any(k.startswith("quantizer.") for k in state):
        return "Wav2Vec2ForPreTraining"
    return "Wav2Vec2Model"


__all__ = ["hf_keymap", "hf_state_dict", "read_weights", "folder_architecture"]
