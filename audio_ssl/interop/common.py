"""What every importer shares: the loaded-model record, config errors, strict state-dict
loading, key renaming."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audio_ssl.config import ModelConfig, merge

from audio_ssl.data.text import BLANK, WORD_SEPARATOR  # noqa: F401  (re-exported)


class CheckpointError(ValueError):
    """A checkpoint we cannot load faithfully: another architecture, missing or unexpected keys,
    a shape that does not fit, or a config field we cannot represent. The message names it."""


def unsupported(where: str, name: str, value: Any, why: str | None = None) -> CheckpointError:
    """The error for a source config field whose value we cannot represent:
    ``WHERE: unsupported NAME=VALUE (WHY)``."""
    return CheckpointError(f"{where}: unsupported {name}={value!r}" + (f" ({why})" if why else ""))


def merge_config(base: ModelConfig, values: dict[str, Any], where: str,
                 path: str = "") -> ModelConfig:
    """``base`` with ``values`` (a nested dict mapped from a source config) applied; an unknown
    key or a value of the wrong type raises :class:`CheckpointError` naming ``where``."""
    try:
        return merge(base, values, path)
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from err


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what came with it."""

    model: nn.Module  # Wav2Vec2ForPretraining, Wav2Vec2ForCTC or Wav2Vec2Model (backbone only)
    config: ModelConfig
    vocab: list[str] | None  # CTC tokens (index 0 = blank), None for models without a CTC head
    source: str  # "audio-ssl", "hf", "fairseq" or "torchaudio"
    path: Path | None  # None when imported from an in-memory state dict
    # the run config stored with the model: all of it for this library's checkpoints; for
    # imports what the source says about the input, {"data": {"normalize": bool}}, or {}
    run_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()  # as HF's from_pretrained returns it; training code calls .train()

    @property
    def normalize(self) -> bool | None:
        """Whether the model expects zero-mean unit-variance input (None: unknown)."""
        value = (self.run_config.get("data") or {}).get("normalize")
        return None if value is None else bool(value)

    @property
    def expects_normalized(self) -> bool:
        """Whether to give the model zero-mean unit-variance audio: what its checkpoint says
        (the run config's ``data.normalize``, HF's ``do_normalize``, fairseq's
        ``task.normalize``), else the fairseq/HF convention that layer-norm encoders (LARGE)
        were trained on normalised audio and group-norm ones (BASE) were not. Every command
        (extract, finetune, transcribe, evaluate, pretrain --init, plot) asks this."""
        if self.normalize is not None:
            return self.normalize
        return self.config.encoder.norm == "layer"

    @property
    def backbone(self) -> nn.Module:
        """The :class:`~audio_ssl.models.Wav2Vec2Model` inside ``model`` (or ``model`` itself)."""
        return getattr(self.model, "backbone", self.model)


def build_model(cfg: ModelConfig, vocab_size: int | None, pretraining: bool,
                final_dropout: float = 0.0, head_kernel: int = 1) -> nn.Module:
    """CTC model when ``vocab_size`` is given, else the pretraining model or the bare backbone."""
    from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2Model, pretraining_model

    if vocab_size is not None:
        return Wav2Vec2ForCTC(cfg, vocab_size, final_dropout, head_kernel)
    return pretraining_model(cfg) if pretraining else Wav2Vec2Model(cfg)


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], where: str,
               keymap: KeyMap | None = None) -> None:
    """Load ``state`` (our key names) into ``model`` requiring the same keys and shapes.

    Errors name keys as the source checkpoint spells them (through ``keymap``), so the user can
    find them in their file. Values are cast to the model's dtype (fp32).
    """
    def name(key: str) -> str:
        return (keymap.to_theirs(key) if keymap is not None else None) or key

    expected = model.state_dict()
    missing = [name(k) for k in expected if k not in state]
    unexpected = [name(k) for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{where}: missing keys {_names(missing)}")
    if unexpected:
        raise CheckpointError(f"{where}: unexpected keys {_names(unexpected)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{where}: {name(key)} has shape {tuple(value.shape)}, the config implies "
                f"{tuple(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def input_run_config(normalize: bool | None) -> dict:
    """The run config of an imported model: only what is known about its input."""
    return {} if normalize is None else {"data": {"normalize": bool(normalize)}}


def fresh_mask_embedding(dim: int, seed: int = 0) -> torch.Tensor:
    """A mask embedding for checkpoints that carry none (torchaudio; HF without masking):
    uniform(0, 1) as fairseq and HF initialise it, from a fixed seed so imports are repeatable."""
    return torch.rand(dim, generator=torch.Generator().manual_seed(seed))


def ctc_vocab_from_tokens(tokens: list[str], blank: int,
                          separator: str | None = WORD_SEPARATOR) -> tuple[list[str], list[int]]:
    """Tokens in head-row order with the blank at ``blank`` -> (our vocab, row permutation).

    Our vocab has ``"<blank>"`` first and the others in their original order; ``perm[i]`` is the
    original row of our row ``i``, so ``head.weight = weight[perm]`` gives identical greedy
    transcripts. ``separator`` (the source's word delimiter) is renamed ``"|"``.
    """
    if not 0 <= blank < len(tokens):
        raise CheckpointError(f"CTC blank index {blank} is outside the vocabulary of "
                              f"{len(tokens)} tokens")
    perm = [blank] + [i for i in range(len(tokens)) if i != blank]
    vocab = [BLANK] + [tokens[i] for i in perm[1:]]
    if separator is not None and separator != WORD_SEPARATOR and separator in vocab[1:]:
        if WORD_SEPARATOR in vocab[1:]:
            raise CheckpointError(f"vocabulary has both the word delimiter {separator!r} and "
                                  f"{WORD_SEPARATOR!r}; cannot map the delimiter to "
                                  f"{WORD_SEPARATOR!r}")
        vocab = [WORD_SEPARATOR if t == separator else t for t in vocab]
    if len(set(vocab)) != len(vocab):
        dupes = sorted({t for t in vocab if vocab.count(t) > 1})
        raise CheckpointError(f"vocabulary has duplicate tokens {dupes}")
    return vocab, perm


_PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias"}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, regex in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
    return re.compile(pattern)


class KeyMap:
    """Key names of our state dict <-> another library's, from (ours, theirs) templates.

    Templates use ``{i}`` for a layer index and ``{p}`` for ``weight``/``bias``. Several pairs
    may share our side (aliases the other library wrote at different times, e.g. HF's
    ``weight_g`` and ``parametrizations.weight.original0``): importing accepts each, exporting
    writes the first.
    """

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = [(ours, theirs, _compile(ours), _compile(theirs)) for ours, theirs in pairs]

    def to_theirs(self, key: str) -> str | None:
        for _, theirs, ours_re, _ in self.pairs:
            match = ours_re.fullmatch(key)
            if match:
                return theirs.format(**match.groupdict())
        return None

    def to_ours(self, key: str) -> str | None:
        for ours, _, _, theirs_re in self.pairs:
            match = theirs_re.fullmatch(key)
            if match:
                return ours.format(**match.groupdict())
        return None

    def import_state(self, state: dict[str, torch.Tensor],
                     where: str) -> dict[str, torch.Tensor]:
        """Their state dict -> ours; a key no pair matches raises, naming it."""
        out, unexpected = {}, []
        for key, value in state.items():
            ours = self.to_ours(key)
            if ours is None:
                unexpected.append(key)
            elif ours in out:
                raise CheckpointError(f"{where}: {key} duplicates another key for {ours}")
            else:
                out[ours] = value
        if unexpected:
            raise CheckpointError(f"{where}: unexpected keys {_names(unexpected)} (not part of "
                                  "a wav2vec 2.0 model this library can represent)")
        return out

    def export_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in state.items():
            theirs = self.to_theirs(key)
            assert theirs is not None, f"no export name for {key}"
            out[theirs] = value
        return out
