"""The one key table (audio_ssl/interop/keys.py): every tensor of our models has a name in each
library that holds it, and the names go both ways. That the names are the libraries' own is
checked by the HF, fairseq and torchaudio round trips beside this file."""

from __future__ import annotations

from dataclasses import replace

import pytest

from audio_ssl.interop.fairseq import fairseq_keymap
from audio_ssl.interop.hf_weights import hf_keymap
from audio_ssl.interop.keys import BACKBONE_KEYS, LIBRARIES
from audio_ssl.interop.torchaudio_format import torchaudio_keymap
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2Model, pretraining_model
from tests.conftest import tiny_wav2vec2


def _models(norm: str):
    cfg = tiny_wav2vec2()
    cfg = replace(cfg, encoder=replace(cfg.encoder, norm=norm), quantize_targets=True)
    return {"backbone": Wav2Vec2Model(cfg), "pretraining": pretraining_model(cfg),
            "ctc": Wav2Vec2ForCTC(cfg, 5)}


def _keymaps(norm: str):
    """(model kind, library, its key map, our keys it has no name for)."""
    return [
        ("backbone", "hf", hf_keymap("Wav2Vec2Model"), set()),
        ("pretraining", "hf", hf_keymap("Wav2Vec2ForPreTraining"), set()),
        ("ctc", "hf", hf_keymap("Wav2Vec2ForCTC"), set()),
        ("pretraining", "fairseq", fairseq_keymap(norm, ctc=False), set()),
        ("ctc", "fairseq", fairseq_keymap(norm, ctc=True), set()),
        ("backbone", "torchaudio", torchaudio_keymap(), {"mask_embedding"}),
        ("ctc", "torchaudio", torchaudio_keymap(ctc=True), {"backbone.mask_embedding"}),
    ]


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_every_tensor_is_named_and_the_names_go_both_ways(norm):
    models = _models(norm)
    for kind, library, keymap, unnamed in _keymaps(norm):
        for key in models[kind].state_dict():
            theirs = keymap.to_theirs(key)
            if key in unnamed:
                assert theirs is None, (library, kind, key)
                continue
            assert theirs is not None, (library, kind, key)
            assert keymap.to_ours(theirs) == key, (library, kind, key, theirs)


def test_every_alias_reads_as_the_same_tensor():
    """A tuple cell's names (weight norm as parametrizations or weight_g / weight_v) all import
    as the row's tensor; the first is the one written."""
    maps = {"hf": hf_keymap("Wav2Vec2Model"), "fairseq": fairseq_keymap("group", ctc=False),
            "torchaudio": torchaudio_keymap()}
    prefix = {"hf": "", "fairseq": "backbone.", "torchaudio": ""}
    rows = [row for row in BACKBONE_KEYS if "{" not in row.ours]
    for library in LIBRARIES:
        for row in rows:
            cell = getattr(row, library)
            if cell is None:
                continue
            names = (cell,) if isinstance(cell, str) else cell
            ours = prefix[library] + row.ours
            assert maps[library].to_theirs(ours) == names[0]
            assert all(maps[library].to_ours(name) == ours for name in names)
