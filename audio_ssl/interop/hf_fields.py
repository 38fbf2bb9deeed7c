"""HF ``config.json`` fields <-> our :class:`~audio_ssl.config.ModelConfig`, both ways.

Plain JSON values: ``transformers`` (an optional dependency) is imported only by
:func:`hf_config`. Which fields are checked, how they map and which of ours HF has no place for
(kept under ``"audio_ssl"``) is answered here, for import (:func:`config_from_hf`) and export
(:func:`hf_config_dict`) alike.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from audio_ssl.config import ModelConfig, to_dict
from audio_ssl.interop.common import CheckpointError, merge_config, unsupported

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


def architecture_of(model: nn.Module) -> str:
    """HF's class name for ``model`` (one of :data:`ARCHITECTURES`)."""
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
    arch = architecture_of(model)
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
            tokens = hf_tokens(vocab)
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


def hf_tokens(vocab: list[str]) -> list[str]:
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


__all__ = ["ARCHITECTURES", "EXTRA_KEY", "HF_DEFAULTS", "config_from_hf", "hf_config",
           "hf_config_dict", "architecture_of", "hf_tokens"]
