"""HF transformers wav2vec 2.0 folders in and out.

Reading and writing a folder needs only ``json`` and ``safetensors``; ``transformers`` (an
optional dependency) is imported only by :func:`to_hf` and :func:`hf_config`.

Module correspondence (ours -> HF), checked parameter by parameter in tests/interop:

================================================  =============================================
``feature_encoder.layers.i.conv``                 ``feature_extractor.conv_layers.i.conv``
``feature_encoder.layers.i.norm`` (group/layer)   ``feature_extractor.conv_layers.i.layer_norm``
``layer_norm``, ``projection``                    ``feature_projection.layer_norm/.projection``
``mask_embedding``                                ``masked_spec_embed`` (HF omits it when
                                                  mask_time_prob = mask_feature_prob = 0)
``context.pos_conv.conv`` (weight norm, dim 2)    ``encoder.pos_conv_embed.conv``
                                                  (``parametrizations.weight.original0/1``, or
                                                  ``weight_g/weight_v`` in older files)
``context.layer_norm``, ``context.layers.i.*``    ``encoder.layer_norm``, ``encoder.layers.i.*``
``quantizer.weight_proj``, ``.codevectors``       same names, same (1, G*V, dim/G) layout
``project_q``, ``final_proj``                     ``project_q``, ``project_hid``
``head`` (CTC)                                    ``lm_head``
================================================  =============================================
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audio_ssl.config import ModelConfig, to_dict
from audio_ssl.interop.common import (
    WORD_SEPARATOR,
    CheckpointError,
    KeyMap,
    LoadedModel,
    build_model,
    ctc_vocab_from_tokens,
    fresh_mask_embedding,
    input_run_config,
    load_exact,
    merge_config,
    unsupported,
)

ARCHITECTURES = ("Wav2Vec2Model", "Wav2Vec2ForPreTraining", "Wav2Vec2ForCTC")
EXTRA_KEY = "audio_ssl"  # our full ModelConfig inside config.json (fields HF has no place for)

# Wav2Vec2Config defaults (transformers 5.x) of the fields read here: a config.json may omit any.
HF_DEFAULTS: dict[str, Any] = {
    "model_type": "wav2vec2", "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "hidden_dropout": 0.1, "activation_dropout": 0.1, "attention_dropout": 0.1,
    "feat_proj_dropout": 0.0, "feat_quantizer_dropout": 0.0, "final_dropout": 0.1,
    "layerdrop": 0.1, "layer_norm_eps": 1e-5, "feat_extract_norm": "group",
    "feat_extract_activation": "gelu", "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_bias": False, "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16, "do_stable_layer_norm": False, "mask_time_prob": 0.05,
    "mask_time_length": 10, "mask_time_min_masks": 2, "mask_feature_prob": 0.0,
    "num_codevectors_per_group": 320, "num_codevector_groups": 2,
    "contrastive_logits_temperature": 0.1, "num_negatives": 100, "codevector_dim": 256,
    "proj_codevector_dim": 256, "diversity_loss_weight": 0.1, "use_weighted_layer_sum": False,
    "vocab_size": 32, "pad_token_id": 0, "add_adapter": False, "adapter_attn_dim": None,
    "num_adapter_layers": 3, "output_hidden_size": None,
}

# heads HF builds on the same backbone that have no counterpart here
_OTHER_HEADS = {
    "Wav2Vec2ForSequenceClassification": "a sequence classification head",
    "Wav2Vec2ForAudioFrameClassification": "a frame classification head",
    "Wav2Vec2ForXVector": "a TDNN x-vector head (tdnn_dim, xvector_output_dim)",
    "Wav2Vec2ForMaskedLM": "a masked-LM head",
}


# ---------------------------------------------------------------------------------------------
# config


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _check_supported(hf: dict[str, Any], where: str) -> None:
    """Raise for every config field whose value we cannot represent, naming it."""
    get = lambda k: hf.get(k, HF_DEFAULTS.get(k))  # noqa: E731
    if get("model_type") != "wav2vec2":
        raise CheckpointError(f"{where}: model_type {get('model_type')!r} is not wav2vec 2.0 "
                              "(expected 'wav2vec2')")

    def field_error(name: str, why: str | None = None) -> CheckpointError:
        return unsupported(where, name, get(name), why)

    for field in ("hidden_act", "feat_extract_activation"):
        if get(field) != "gelu":
            raise field_error(field, "only 'gelu'")
    if get("feat_extract_norm") not in ("group", "layer"):
        raise field_error("feat_extract_norm", "expected 'group' or 'layer'")
    if not _close(float(get("layer_norm_eps")), 1e-5):
        raise field_error("layer_norm_eps", "only 1e-05")
    if get("add_adapter"):
        raise field_error("add_adapter", f"an adapter of num_adapter_layers="
                          f"{get('num_adapter_layers')} conv layers on top of the encoder")
    if get("adapter_attn_dim") is not None:
        raise field_error("adapter_attn_dim", "attention adapters")
    if get("use_weighted_layer_sum"):
        raise field_error("use_weighted_layer_sum")
    out_size = get("output_hidden_size")
    if out_size is not None and out_size != get("hidden_size"):
        raise CheckpointError(f"{where}: unsupported output_hidden_size={out_size} != "
                              f"hidden_size={get('hidden_size')}")
    dims, kernels, strides = get("conv_dim"), get("conv_kernel"), get("conv_stride")
    if not len(dims) == len(kernels) == len(strides):
        raise CheckpointError(f"{where}: conv_dim, conv_kernel and conv_stride have different "
                              f"lengths ({len(dims)}, {len(kernels)}, {len(strides)})")
    layers = hf.get("num_feat_extract_layers", len(dims))
    if layers != len(dims):
        raise CheckpointError(f"{where}: num_feat_extract_layers={layers} but conv_dim has "
                              f"{len(dims)} layers")


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> tuple[ModelConfig, float]:
    """HF config dict -> (our ModelConfig, CTC final dropout). Raises for unsupported fields.

    Fields HF has no place for (Gumbel temperature schedule, feature penalty weight, encoder
    gradient scale...) come from the ``"audio_ssl"`` entry our exports write, else from our
    defaults (the paper's BASE values, as fairseq).
    """
    _check_supported(hf, where)
    get = lambda k: hf.get(k, HF_DEFAULTS.get(k))  # noqa: E731
    base = ModelConfig()
    if isinstance(hf.get(EXTRA_KEY), dict):
        base = merge_config(ModelConfig(), hf[EXTRA_KEY], where, path=EXTRA_KEY)
    mapped = {
        "encoder": {
            "conv_layers": [list(c) for c in zip(get("conv_dim"), get("conv_kernel"),
                                                 get("conv_stride"))],
            "norm": get("feat_extract_norm"), "conv_bias": bool(get("conv_bias")),
        },
        "context": {
            "dim": get("hidden_size"), "layers": get("num_hidden_layers"),
            "heads": get("num_attention_heads"), "ffn_dim": get("intermediate_size"),
            "dropout": get("hidden_dropout"), "attention_dropout": get("attention_dropout"),
            "activation_dropout": get("activation_dropout"), "layer_drop": get("layerdrop"),
            "layer_norm_first": bool(get("do_stable_layer_norm")),
            "pos_conv_kernel": get("num_conv_pos_embeddings"),
            "pos_conv_groups": get("num_conv_pos_embedding_groups"),
        },
        "quantizer": {"groups": get("num_codevector_groups"),
                      "codes": get("num_codevectors_per_group"), "dim": get("codevector_dim")},
        # HF (like fairseq) writes the span-start probability times the span length
        "mask": {"prob": get("mask_time_prob") / get("mask_time_length"),
                 "length": get("mask_time_length"), "min_masks": get("mask_time_min_masks")},
        "loss": {"num_negatives": get("num_negatives"),
                 "logit_temperature": get("contrastive_logits_temperature"),
                 "diversity_weight": get("diversity_loss_weight")},
        "final_dim": get("proj_codevector_dim"), "dropout_input": get("feat_proj_dropout"),
        "dropout_features": get("feat_quantizer_dropout"),
    }
    cfg = merge_config(base, _keep_close(to_dict(base), mapped), where)
    _check_divisible(cfg, where)
    return cfg, float(get("final_dropout"))


def _keep_close(base: dict, mapped: dict) -> dict:
    """``mapped`` with floats equal to ``base``'s up to rounding replaced by ``base``'s, so a
    round trip through HF's fields (prob * length / length) changes nothing."""
    out = {}
    for key, value in mapped.items():
        if isinstance(value, dict):
            out[key] = _keep_close(base[key], value)
        elif isinstance(value, float) and isinstance(base.get(key), float) and _close(
                value, base[key]):
            out[key] = base[key]
        else:
            out[key] = value
    return out


def _check_divisible(cfg: ModelConfig, where: str) -> None:
    if cfg.context.dim % cfg.context.heads:
        raise CheckpointError(f"{where}: hidden size {cfg.context.dim} is not divisible by "
                              f"{cfg.context.heads} attention heads")
    if cfg.quantizer.dim % cfg.quantizer.groups:
        raise CheckpointError(f"{where}: codevector_dim {cfg.quantizer.dim} is not divisible "
                              f"by {cfg.quantizer.groups} groups")


def _architecture_name(model: nn.Module) -> str:
    from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining, Wav2Vec2Model

    if isinstance(model, Wav2Vec2ForCTC):
        return "Wav2Vec2ForCTC"
    if isinstance(model, Wav2Vec2ForPretraining):
        return "Wav2Vec2ForPreTraining"
    if isinstance(model, Wav2Vec2Model):
        return "Wav2Vec2Model"
    raise TypeError(f"expected an audio_ssl Wav2Vec2Model, Wav2Vec2ForPretraining or "
                    f"Wav2Vec2ForCTC, got {type(model).__name__}")


def hf_config_dict(model: nn.Module, vocab: list[str] | None = None) -> dict[str, Any]:
    """The config.json of ``model`` (plain JSON values; no transformers needed)."""
    arch = _architecture_name(model)
    if arch != "Wav2Vec2ForCTC":
        return _hf_values(model.cfg, arch)
    return _hf_values(model.cfg, arch, model.vocab_size, model.dropout.p, vocab)


def _hf_values(cfg: ModelConfig, arch: str, vocab_size: int | None = None,
               final_dropout: float = 0.0, vocab: list[str] | None = None) -> dict[str, Any]:
    enc, ctx, q, m = cfg.encoder, cfg.context, cfg.quantizer, cfg.mask
    out = dict(HF_DEFAULTS)
    out.update({
        "architectures": [arch], "model_type": "wav2vec2",
        "conv_dim": [c for c, _, _ in enc.conv_layers],
        "conv_kernel": [k for _, k, _ in enc.conv_layers],
        "conv_stride": [s for _, _, s in enc.conv_layers],
        "num_feat_extract_layers": len(enc.conv_layers),
        "conv_bias": enc.conv_bias, "feat_extract_norm": enc.norm,
        "hidden_size": ctx.dim, "num_hidden_layers": ctx.layers,
        "num_attention_heads": ctx.heads, "intermediate_size": ctx.ffn_dim,
        "hidden_dropout": ctx.dropout, "activation_dropout": ctx.activation_dropout,
        "attention_dropout": ctx.attention_dropout, "layerdrop": ctx.layer_drop,
        "do_stable_layer_norm": ctx.layer_norm_first,
        "num_conv_pos_embeddings": ctx.pos_conv_kernel,
        "num_conv_pos_embedding_groups": ctx.pos_conv_groups,
        "feat_proj_dropout": cfg.dropout_input, "feat_quantizer_dropout": cfg.dropout_features,
        "num_codevector_groups": q.groups, "num_codevectors_per_group": q.codes,
        "codevector_dim": q.dim, "proj_codevector_dim": cfg.final_dim,
        "num_negatives": cfg.loss.num_negatives,
        "contrastive_logits_temperature": cfg.loss.logit_temperature,
        "diversity_loss_weight": cfg.loss.diversity_weight,
        # HF (like fairseq) writes the span-start probability times the span length
        "mask_time_prob": m.prob * m.length, "mask_time_length": m.length,
        "mask_time_min_masks": m.min_masks, "output_hidden_size": ctx.dim,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "vocab_size": None,
        EXTRA_KEY: to_dict(cfg),
    })
    if arch == "Wav2Vec2ForCTC":
        out.update({"vocab_size": vocab_size, "pad_token_id": 0, "final_dropout": final_dropout})
        if vocab is not None:
            tokens = _hf_tokens(vocab)
            for name, special in (("bos_token_id", "<s>"), ("eos_token_id", "</s>")):
                out[name] = tokens.index(special) if special in tokens else None
    return out


def hf_config(cfg: ModelConfig, **kwargs: Any):
    """The ``transformers.Wav2Vec2Config`` of the same architecture as ``cfg``."""
    from transformers import Wav2Vec2Config

    values = _hf_values(cfg, "Wav2Vec2ForPreTraining")
    values.pop(EXTRA_KEY)
    values.pop("architectures")
    values.update(kwargs)
    return Wav2Vec2Config(**values)


# ---------------------------------------------------------------------------------------------
# state dict


def _backbone_pairs(ours: str, theirs: str) -> list[tuple[str, str]]:
    fe, ctx = ours + "feature_encoder.", ours + "context."
    pos_ours = ctx + "pos_conv.conv."
    pos = theirs + "encoder.pos_conv_embed.conv."
    layer_ours, layer = ctx + "layers.{i}.", theirs + "encoder.layers.{i}."
    pairs = [
        (fe + "layers.{i}.conv.{p}", theirs + "feature_extractor.conv_layers.{i}.conv.{p}"),
        (fe + "layers.{i}.norm.{p}", theirs + "feature_extractor.conv_layers.{i}.layer_norm.{p}"),
        (ours + "layer_norm.{p}", theirs + "feature_projection.layer_norm.{p}"),
        (ours + "projection.{p}", theirs + "feature_projection.projection.{p}"),
        (ours + "mask_embedding", theirs + "masked_spec_embed"),
        (pos_ours + "bias", pos + "bias"),
        (pos_ours + "parametrizations.weight.original0", pos + "parametrizations.weight.original0"),
        (pos_ours + "parametrizations.weight.original1", pos + "parametrizations.weight.original1"),
        (pos_ours + "parametrizations.weight.original0", pos + "weight_g"),
        (pos_ours + "parametrizations.weight.original1", pos + "weight_v"),
        (ctx + "layer_norm.{p}", theirs + "encoder.layer_norm.{p}"),
    ]
    for sub in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj",
                "layer_norm", "feed_forward.intermediate_dense", "feed_forward.output_dense",
                "final_layer_norm"):
        pairs.append((layer_ours + sub + ".{p}", layer + sub + ".{p}"))
    return pairs


def hf_keymap(architecture: str) -> KeyMap:
    """Our state-dict names <-> HF's, for one of :data:`ARCHITECTURES`."""
    if architecture == "Wav2Vec2Model":
        return KeyMap(_backbone_pairs("", ""))
    pairs = _backbone_pairs("backbone.", "wav2vec2.")
    if architecture == "Wav2Vec2ForPreTraining":
        pairs += [("quantizer.weight_proj.{p}", "quantizer.weight_proj.{p}"),
                  ("quantizer.codevectors", "quantizer.codevectors"),
                  ("project_q.{p}", "project_q.{p}"), ("final_proj.{p}", "project_hid.{p}")]
    elif architecture == "Wav2Vec2ForCTC":
        pairs += [("head.{p}", "lm_head.{p}")]
    return KeyMap(pairs)


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under HF's names (contiguous CPU tensors)."""
    keymap = hf_keymap(_architecture_name(model))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.mask.prob == 0:  # HF builds no masked_spec_embed when nothing is masked
        state = {k: v for k, v in state.items() if not k.endswith("mask_embedding")}
    return keymap.export_state(state)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
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


def _architecture(hf: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> str:
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


# ---------------------------------------------------------------------------------------------
# vocabulary


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def _hf_ctc_vocab(folder: Path, hf: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """(our vocab, head row permutation) from vocab.json and the tokenizer files."""
    vocab_path = folder / "vocab.json"
    if not vocab_path.is_file():
        raise FileNotFoundError(f"{vocab_path} not found: an HF Wav2Vec2ForCTC folder needs its "
                                "tokenizer's vocab.json")
    token_ids = _read_json(vocab_path)
    if any(isinstance(v, dict) for v in token_ids.values()):
        raise CheckpointError(f"{vocab_path}: one vocabulary per language (adapter models) is "
                              "not supported")
    added = folder / "added_tokens.json"
    if added.is_file():
        token_ids = {**token_ids, **_read_json(added)}
    tokenizer_cfg = _read_json(folder / "tokenizer_config.json") if (
        folder / "tokenizer_config.json").is_file() else {}
    by_id: dict[int, str] = {}
    for token, i in token_ids.items():
        by_id.setdefault(int(i), token)
    missing = [i for i in range(vocab_size) if i not in by_id]
    if missing:
        raise CheckpointError(f"{vocab_path}: no token for output ids {missing[:10]} of the "
                              f"CTC head's {vocab_size}")
    tokens = [by_id[i] for i in range(vocab_size)]
    blank = hf.get("pad_token_id", HF_DEFAULTS["pad_token_id"])
    if blank is None:
        pad = tokenizer_cfg.get("pad_token", "<pad>")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if pad not in tokens:
            raise CheckpointError(f"{folder}: config.json has no pad_token_id and the pad token "
                                  f"{pad!r} is not in vocab.json: cannot tell the CTC blank")
        blank = tokens.index(pad)
    delimiter = tokenizer_cfg.get("word_delimiter_token", WORD_SEPARATOR)
    if isinstance(delimiter, dict):
        delimiter = delimiter.get("content")
    return ctc_vocab_from_tokens(tokens, int(blank), delimiter)


def _hf_tokens(vocab: list[str]) -> list[str]:
    """Our vocab -> HF token names: the blank becomes ``<pad>`` (HF's CTC blank is the pad
    token); a different token already named ``<pad>`` (fairseq's padding symbol) becomes
    ``<s>``, as transformers' fairseq conversion names them."""
    tokens = list(vocab)
    if "<pad>" in tokens[1:]:
        if "<s>" in tokens:
            raise ValueError("vocabulary has '<pad>' and '<s>' besides the blank: no HF name is "
                             "left for the blank")
        tokens[tokens.index("<pad>", 1)] = "<s>"
    tokens[0] = "<pad>"
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"vocabulary has duplicate tokens: {tokens}")
    return tokens


def _write_processor_files(folder: Path, model: nn.Module, vocab: list[str] | None,
                           normalize: bool) -> None:
    layer_norm = model.cfg.encoder.norm == "layer"
    preprocessor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "sampling_rate": 16_000, "padding_value": 0.0, "padding_side": "right",
        "do_normalize": normalize,
        # HF's group norm counts padded frames: its convention is no attention mask there
        "return_attention_mask": layer_norm, "processor_class": "Wav2Vec2Processor",
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    if vocab is None:
        return
    tokens = _hf_tokens(vocab)
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, indent=2, ensure_ascii=False),
        encoding="utf-8")
    special = {"pad_token": "<pad>", "unk_token": "<unk>",
               "bos_token": "<s>" if "<s>" in tokens else None,
               "eos_token": "</s>" if "</s>" in tokens else None}
    tokenizer = {"tokenizer_class": "Wav2Vec2CTCTokenizer", **special,
                 "word_delimiter_token": WORD_SEPARATOR, "replace_word_delimiter_char": " ",
                 "do_lower_case": False, "processor_class": "Wav2Vec2Processor"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({k: v for k, v in special.items() if v is not None}, indent=2))


# ---------------------------------------------------------------------------------------------
# public API


def from_hf(folder: str | Path) -> LoadedModel:
    """Import an HF folder (config.json + model.safetensors or pytorch_model.bin, and vocab.json
    for CTC) as an audio_ssl model: Wav2Vec2Model -> our Wav2Vec2Model, Wav2Vec2ForPreTraining
    -> Wav2Vec2ForPretraining (quantizer included), Wav2Vec2ForCTC -> Wav2Vec2ForCTC with the
    vocabulary mapped to ours (blank first, head rows permuted to match)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found (expected an HF wav2vec 2.0 folder)")
    hf = _read_json(config_path)
    where = str(folder)
    cfg, final_dropout = config_from_hf(hf, str(config_path))
    raw = _read_weights(folder)
    arch = _architecture(hf, raw, str(config_path))
    if arch == "Wav2Vec2Model" and all(k.startswith("wav2vec2.") for k in raw):
        raw = {k.removeprefix("wav2vec2."): v for k, v in raw.items()}
    keymap = hf_keymap(arch)
    state = keymap.import_state(raw, where)
    backbone = "" if arch == "Wav2Vec2Model" else "backbone."
    get = lambda k: hf.get(k, HF_DEFAULTS.get(k))  # noqa: E731
    if backbone + "mask_embedding" not in state and get("mask_time_prob") == 0 and get(
            "mask_feature_prob") == 0:
        # HF builds no masked_spec_embed when no masking is configured
        state[backbone + "mask_embedding"] = fresh_mask_embedding(cfg.context.dim)
    vocab = None
    vocab_size = None
    if arch == "Wav2Vec2ForCTC":
        if "head.weight" not in state:
            raise CheckpointError(f"{where}: missing keys lm_head.weight")
        vocab_size = state["head.weight"].shape[0]
        if vocab_size != get("vocab_size"):
            raise CheckpointError(f"{where}: lm_head has {vocab_size} rows but config.json "
                                  f"says vocab_size={get('vocab_size')}")
        vocab, perm = _hf_ctc_vocab(folder, hf, vocab_size)
        state["head.weight"] = state["head.weight"][perm]
        state["head.bias"] = state["head.bias"][perm]
    model = build_model(cfg, vocab_size, arch == "Wav2Vec2ForPreTraining", final_dropout)
    load_exact(model, state, where, keymap)
    return LoadedModel(model, cfg, vocab, "hf", folder,
                       input_run_config(hf_do_normalize(folder)))


def hf_do_normalize(folder: Path) -> bool | None:
    """The folder's ``do_normalize``: from preprocessor_config.json (transformers 4), or from
    processor_config.json's feature extractor (transformers 5 saves a processor there only);
    True where a file names none (HF's default), None where there is no such file."""
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        return bool(_read_json(pre).get("do_normalize", True))
    processor = folder / "processor_config.json"
    if processor.is_file():
        data = _read_json(processor)
        extractor = data.get("feature_extractor", data)
        if isinstance(extractor, dict):
            return bool(extractor.get("do_normalize", True))
    return None


def save_hf(model: nn.Module, folder: str | Path, vocab: list[str] | None = None,
            normalize: bool | None = None) -> Path:
    """Write ``model`` as an HF folder that ``transformers`` loads with ``from_pretrained``:
    config.json, model.safetensors, preprocessor_config.json and, for CTC models, vocab.json,
    tokenizer_config.json and special_tokens_map.json (``Wav2Vec2Processor`` files).

    ``vocab`` (ours: blank first) is required for CTC models. ``normalize`` is the input
    normalisation the model expects (written as ``do_normalize``; None: HF's default, True).
    Needs no transformers. A pretraining model whose head HF's ``Wav2Vec2ForPreTraining`` cannot
    hold (BEST-RQ, continuous targets) is written as its backbone, a ``Wav2Vec2Model``.
    """
    from safetensors.torch import save_file

    from audio_ssl.models import PRETRAINING_MODELS, Wav2Vec2ForPretraining

    if isinstance(model, PRETRAINING_MODELS) and (
            not isinstance(model, Wav2Vec2ForPretraining) or model.quantizer is None):
        model = model.backbone
    arch = _architecture_name(model)
    if arch == "Wav2Vec2ForCTC":
        if vocab is None:
            raise ValueError("save_hf: a CTC model needs its vocab (blank first) to write "
                             "vocab.json")
        if len(vocab) != model.vocab_size:
            raise ValueError(f"save_hf: vocab has {len(vocab)} tokens, the CTC head "
                             f"{model.vocab_size}")
    elif vocab is not None:
        raise ValueError(f"save_hf: a vocab was given for a {arch}, which has no CTC head")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config_dict(model, vocab), indent=2))
    save_file(hf_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_processor_files(folder, model, vocab, True if normalize is None else normalize)
    return folder


def to_hf(model: nn.Module, vocab: list[str] | None = None, **config_kwargs: Any):
    """The equivalent in-memory ``transformers`` model (Wav2Vec2Model, Wav2Vec2ForPreTraining or
    Wav2Vec2ForCTC) carrying ``model``'s weights, in the same train/eval mode.
    ``config_kwargs`` override HF config fields (e.g. ``attn_implementation``)."""
    import transformers

    arch = _architecture_name(model)
    values = hf_config_dict(model, vocab)
    values.pop(EXTRA_KEY)
    values.update(config_kwargs)
    hf_model = getattr(transformers, arch)(transformers.Wav2Vec2Config(**values))
    state = hf_state_dict(model)
    result = hf_model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:  # would be a bug in hf_keymap
        raise RuntimeError(f"to_hf: missing {result.missing_keys}, unexpected "
                           f"{result.unexpected_keys}")
    return hf_model.train(model.training)


__all__ = ["ARCHITECTURES", "HF_DEFAULTS", "config_from_hf", "hf_config", "hf_config_dict",
           "hf_keymap", "hf_state_dict", "from_hf", "save_hf", "to_hf"]
