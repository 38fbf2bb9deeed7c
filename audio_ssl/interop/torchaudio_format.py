"""State dicts of ``torchaudio.models.wav2vec2_model`` in.

A torchaudio state dict carries no config. Everything the tensor shapes determine is read from
them (conv channels and kernels, conv bias, encoder norm mode, model width, positional conv
kernel and groups, layer count, FFN width, CTC outputs). Three things shapes cannot tell are
taken from ``config`` (``wav2vec2_model``'s keyword arguments) when given, else from the
convention every torchaudio factory follows: conv strides of the paper's stack for kernels
(10, 3, 3, 3, 3, 2, 2), the head count of the factory model with the same width, depth and
feed-forward width (``FACTORY_HEADS``; other shapes need ``config``), and pre-norm Transformer
layers exactly when the encoder uses layer norm. Dropouts default to ``wav2vec2_base``'s.

torchaudio models have no mask embedding (they are not built for pretraining): the imported one
is freshly initialised, uniform(0, 1) from a fixed seed, as fairseq and HF initialise it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from audio_ssl.config import ModelConfig, merge
from audio_ssl.interop.common import (
    BLANK,
    CheckpointError,
    KeyMap,
    LoadedModel,
    build_model,
    fresh_mask_embedding,
    load_exact,
)
from audio_ssl.interop.keys import keymap_for

PAPER_KERNELS = (10, 3, 3, 3, 3, 2, 2)
PAPER_STRIDES = (5, 2, 2, 2, 2, 2, 2)
# torchaudio's factories (wav2vec2_*, hubert_*; torchaudio/models/wav2vec2/model.py):
# (encoder_embed_dim, encoder_num_layers, encoder_ff_interm_features) -> encoder_num_heads.
# A state dict holds no head count, and width / 64 is wrong for XLS-R 1B and 2B (16 heads).
FACTORY_HEADS = {
    (768, 12, 3072): 12,    # wav2vec2_base, hubert_base
    (1024, 24, 4096): 16,   # wav2vec2_large, wav2vec2_large_lv60k, wav2vec2_xlsr_300m, hubert_large
    (1280, 48, 5120): 16,   # wav2vec2_xlsr_1b, hubert_xlarge
    (1920, 48, 7680): 16,   # wav2vec2_xlsr_2b
}
# torchaudio.models.wav2vec2_base's dropouts
DEFAULTS = {"encoder_projection_dropout": 0.1, "encoder_attention_dropout": 0.1,
            "encoder_ff_interm_dropout": 0.1, "encoder_dropout": 0.1, "encoder_layer_drop": 0.1}
CONFIG_FIELDS = (
    "extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
    "encoder_projection_dropout", "encoder_pos_conv_kernel", "encoder_pos_conv_groups",
    "encoder_num_layers", "encoder_num_heads", "encoder_attention_dropout",
    "encoder_ff_interm_features", "encoder_ff_interm_dropout", "encoder_dropout",
    "encoder_layer_norm_first", "encoder_layer_drop", "aux_num_out",
)

FE = "feature_extractor.conv_layers."
TR = "encoder.transformer."


def torchaudio_keymap(ctc: bool = False) -> KeyMap:
    """Our state-dict names <-> torchaudio's (the torchaudio column of :mod:`.keys`): a bare
    backbone, or with ``ctc`` our Wav2Vec2ForCTC (backbone under ``backbone.``, head ``aux``)."""
    if ctc:
        return keymap_for("torchaudio", ("backbone.", ""), "ctc")
    return keymap_for("torchaudio")


def _pos_conv_weight(state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    for name in ("parametrizations.weight.original1", "weight_v", "weight"):
        key = TR + "pos_conv_embed.conv." + name
        if key in state:
            return state[key]
    return None


def _from_shapes(state: dict[str, torch.Tensor],
                 where: str) -> tuple[dict[str, Any], list[torch.Size]]:
    """(the ``wav2vec2_model`` arguments ``state``'s shapes determine, the conv weights' shapes
    (out channels, in channels, kernel) per layer)."""
    convs = []
    while f"{FE}{len(convs)}.conv.weight" in state:
        convs.append(state[f"{FE}{len(convs)}.conv.weight"].shape)  # (out, in, kernel)
    if not convs or "encoder.feature_projection.projection.weight" not in state:
        raise CheckpointError(f"{where}: no {FE}0.conv.weight or feature projection: not a "
                              "torchaudio wav2vec2_model state dict")
    inferred: dict[str, Any] = {}
    if f"{FE}1.layer_norm.weight" in state:
        inferred["extractor_mode"] = "layer_norm"
    elif f"{FE}0.layer_norm.weight" in state:
        inferred["extractor_mode"] = "group_norm"
    else:
        raise CheckpointError(f"{where}: no normalisation in the feature extractor "
                              f"({FE}0.layer_norm.weight missing)")
    inferred["extractor_conv_bias"] = f"{FE}0.conv.bias" in state
    dim = int(state["encoder.feature_projection.projection.weight"].shape[0])
    inferred["encoder_embed_dim"] = dim
    pos = _pos_conv_weight(state)  # (D, D / groups, kernel)
    if pos is None:
        raise CheckpointError(f"{where}: missing keys {TR}pos_conv_embed.conv."
                              "parametrizations.weight.original1")
    inferred["encoder_pos_conv_kernel"] = int(pos.shape[2])
    inferred["encoder_pos_conv_groups"] = dim // int(pos.shape[1])
    if any(".attention.rel_attn_embed." in k or ".attention.gru_rel_pos" in k for k in state):
        raise CheckpointError(f"{where}: a torchaudio WavLM state dict (gated relative position "
                              "attention); audio-ssl reads wav2vec 2.0 and HuBERT models only")
    layers = 0
    while f"{TR}layers.{layers}.attention.q_proj.weight" in state:
        layers += 1
    if not layers:
        raise CheckpointError(f"{where}: no transformer layers ({TR}layers.0.attention.q_proj."
                              "weight missing): not a torchaudio wav2vec2_model state dict")
    inferred["encoder_num_layers"] = layers
    inferred["encoder_ff_interm_features"] = int(
        state[f"{TR}layers.0.feed_forward.intermediate_dense.weight"].shape[0])
    inferred["aux_num_out"] = int(state["aux.weight"].shape[0]) if "aux.weight" in state else None
    return inferred, convs


def _conv_layer_config(convs: list[torch.Size], config: dict[str, Any],
                       where: str) -> list[tuple[int, int, int]]:
    """(channels, kernel, stride) per conv layer: ``config``'s, checked against the weights'
    shapes (out, in, kernel), else the paper's strides for the paper's kernels."""
    kernels = tuple(int(s[2]) for s in convs)
    if "extractor_conv_layer_config" in config:
        spec = [tuple(int(v) for v in c) for c in config["extractor_conv_layer_config"]]
        shapes = [(int(s[0]), int(s[2])) for s in convs]
        if [(c, k) for c, k, _ in spec] != shapes:
            raise CheckpointError(f"{where}: extractor_conv_layer_config={spec} does not match "
                                  f"the conv weights' (channels, kernel) {shapes}")
        return config["extractor_conv_layer_config"]
    if kernels == PAPER_KERNELS:
        return [(int(s[0]), k, st) for s, k, st in zip(convs, kernels, PAPER_STRIDES)]
    raise CheckpointError(f"{where}: conv kernels {kernels} are not the paper's "
                          f"{PAPER_KERNELS}, so the strides cannot be inferred; pass "
                          "config={'extractor_conv_layer_config': [(dim, kernel, stride), "
                          "...]}")


def infer_config(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None,
                 where: str = "torchaudio state dict") -> dict[str, Any]:
    """``wav2vec2_model`` keyword arguments of ``state``: shapes, then ``config``, then the
    torchaudio factories' conventions (see the module docstring). Raises naming what is
    inconsistent or cannot be told."""
    config = dict(config or {})
    unknown = set(config) - set(CONFIG_FIELDS)
    if unknown:
        raise CheckpointError(f"{where}: unknown config fields {sorted(unknown)}; expected "
                              f"wav2vec2_model's arguments {list(CONFIG_FIELDS)}")
    inferred, convs = _from_shapes(state, where)
    for field, value in inferred.items():
        if field in config and config[field] != value:
            raise CheckpointError(f"{where}: config says {field}={config[field]!r} but the "
                                  f"weights have {value!r}")
    out = {**DEFAULTS, **inferred, **config}
    out["extractor_conv_layer_config"] = _conv_layer_config(convs, config, where)
    if "encoder_num_heads" not in config:
        shape = (inferred["encoder_embed_dim"], inferred["encoder_num_layers"],
                 out["encoder_ff_interm_features"])
        if shape not in FACTORY_HEADS:
            raise CheckpointError(f"{where}: width {shape[0]}, {shape[1]} layers and "
                                  f"feed-forward {shape[2]} match none of torchaudio's factory "
                                  "models, and a state dict does not hold the number of "
                                  "attention heads; pass config={'encoder_num_heads': ...}")
        out["encoder_num_heads"] = FACTORY_HEADS[shape]
    if "encoder_layer_norm_first" not in config:
        out["encoder_layer_norm_first"] = out["extractor_mode"] == "layer_norm"
    return out


def model_config(ta: dict[str, Any]) -> ModelConfig:
    """``wav2vec2_model`` keyword arguments -> our ModelConfig (pretraining-only fields keep
    our defaults)."""
    return merge(ModelConfig(), {
        "encoder": {"conv_layers": [list(c) for c in ta["extractor_conv_layer_config"]],
                    "norm": "group" if ta["extractor_mode"] == "group_norm" else "layer",
                    "conv_bias": bool(ta["extractor_conv_bias"])},
        "context": {"dim": ta["encoder_embed_dim"], "layers": ta["encoder_num_layers"],
                    "heads": ta["encoder_num_heads"], "ffn_dim": ta["encoder_ff_interm_features"],
                    "dropout": ta["encoder_dropout"],
                    "attention_dropout": ta["encoder_attention_dropout"],
                    "activation_dropout": ta["encoder_ff_interm_dropout"],
                    "layer_drop": ta["encoder_layer_drop"],
                    "layer_norm_first": bool(ta["encoder_layer_norm_first"]),
                    "pos_conv_kernel": ta["encoder_pos_conv_kernel"],
                    "pos_conv_groups": ta["encoder_pos_conv_groups"]},
        "dropout_input": ta["encoder_projection_dropout"],
    })


def _unwrap(obj: Any, where: str) -> tuple[dict[str, torch.Tensor], dict | None, list | None]:
    """A plain state dict, or {"state_dict": ..., "config": {...}, "vocab"/"labels": [...]}."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        labels = obj.get("vocab", obj.get("labels"))
        return obj["state_dict"], obj.get("config"), list(labels) if labels else None
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None, None
    raise CheckpointError(f"{where}: expected a torchaudio wav2vec2_model state dict")


def is_torchaudio_state(obj: Any) -> bool:
    state = obj.get("state_dict") if isinstance(obj, dict) and "state_dict" in obj else obj
    return isinstance(state, dict) and f"{FE}0.conv.weight" in state and any(
        k.startswith(TR) for k in state)


def from_torchaudio(state_dict_or_path: dict[str, torch.Tensor] | str | Path,
                    config: dict[str, Any] | None = None,
                    vocab: list[str] | None = None) -> LoadedModel:
    """Import a ``torchaudio.models.wav2vec2_model`` state dict (or a ``.pt``/``.pth`` holding
    one, optionally as {"state_dict", "config", "vocab"}): with an ``aux`` head -> our
    Wav2Vec2ForCTC, else our Wav2Vec2Model. ``config``: ``wav2vec2_model`` keyword arguments
    for what shapes cannot tell. ``vocab``: the labels, blank first (torchaudio's ASR bundles
    use "-" at 0, renamed "<blank>"); without one the CTC tokens are named "<blank>", "<1>"...
    """
    if isinstance(state_dict_or_path, (str, Path)):
        path = Path(state_dict_or_path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return from_torchaudio_object(obj, config, vocab, path)
    return from_torchaudio_object(state_dict_or_path, config, vocab)


def from_torchaudio_object(obj: Any, config: dict[str, Any] | None = None,
                           vocab: list[str] | None = None,
                           path: Path | None = None) -> LoadedModel:
    """:func:`from_torchaudio` of an already loaded file (``path`` names it in errors)."""
    where = str(path) if path is not None else "torchaudio state dict"
    raw, file_config, file_vocab = _unwrap(obj, where)
    ta = infer_config(raw, {**(file_config or {}), **(config or {})}, where)
    cfg = model_config(ta)
    ctc = ta["aux_num_out"] is not None
    keymap = torchaudio_keymap(ctc)
    state = keymap.import_state(raw, where)
    prefix = "backbone." if ctc else ""
    state.setdefault(prefix + "mask_embedding", fresh_mask_embedding(cfg.context.dim))
    tokens = None
    if ctc:
        tokens = list(vocab if vocab is not None else file_vocab or
                      [BLANK] + [f"<{i}>" for i in range(1, ta["aux_num_out"])])
        if len(tokens) != ta["aux_num_out"]:
            raise CheckpointError(f"{where}: vocab has {len(tokens)} labels, the aux head "
                                  f"{ta['aux_num_out']} outputs")
        tokens[0] = BLANK
    model = build_model(cfg, ta["aux_num_out"], pretraining=False)
    load_exact(model, state, where, keymap)
    return LoadedModel(model, cfg, tokens, "torchaudio", path)


__all__ = ["infer_config", "model_config", "torchaudio_keymap", "from_torchaudio",
           "from_torchaudio_object", "is_torchaudio_state"]
