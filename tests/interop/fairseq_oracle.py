"""fairseq checkpoints built from an HF model by transformers' own fairseq key mapping.

The oracle is the table and matching rules of transformers'
``convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py`` (the script that made
facebook/wav2vec2-base and friends from fairseq's files), not our importer's mapping:
:func:`script_route` applies the script's rules to a fairseq key and says which HF parameter
it fills. :func:`fairseq_state` proposes a fairseq key for every HF parameter (fairseq's module
layout: ``conv_layers.i.0`` conv, ``conv_layers.0.2`` GroupNorm or ``conv_layers.i.2.1``
LayerNorm inside (TransposeLast, LayerNorm, TransposeLast), the fine-tuned model under
``w2v_encoder.w2v_model.``) and keeps it only if the script routes it back to that parameter.
Loading the result with our importer and comparing outputs with the HF model then checks our
mapping against the script's.
"""

from __future__ import annotations

import argparse
import sys
import types
from typing import Any

import torch

# transformers' MAPPING: fairseq name fragment -> HF module ("*" = layer index)
MAPPING = {
    "post_extract_proj": "feature_projection.projection",
    "encoder.pos_conv.0": "encoder.pos_conv_embed.conv",
    "self_attn.k_proj": "encoder.layers.*.attention.k_proj",
    "self_attn.v_proj": "encoder.layers.*.attention.v_proj",
    "self_attn.q_proj": "encoder.layers.*.attention.q_proj",
    "self_attn.out_proj": "encoder.layers.*.attention.out_proj",
    "self_attn_layer_norm": "encoder.layers.*.layer_norm",
    "fc1": "encoder.layers.*.feed_forward.intermediate_dense",
    "fc2": "encoder.layers.*.feed_forward.output_dense",
    "final_layer_norm": "encoder.layers.*.final_layer_norm",
    "encoder.layer_norm": "encoder.layer_norm",
    "w2v_model.layer_norm": "feature_projection.layer_norm",
    "quantizer.weight_proj": "quantizer.weight_proj",
    "quantizer.vars": "quantizer.codevectors",
    "project_q": "project_q",
    "final_proj": "project_hid",
    "w2v_encoder.proj": "lm_head",
    "mask_emb": "masked_spec_embed",
}
TOP_LEVEL_KEYS = ["lm_head", "quantizer.weight_proj", "quantizer.codevectors", "project_q",
                  "project_hid"]
# the script's weight_g / weight_v are today's weight-norm parametrisation
_HF_PARAM = {"weight_g": "parametrizations.weight.original0",
             "weight_v": "parametrizations.weight.original1", "weight": "weight", "bias": "bias",
             None: None}


def script_route(name: str, group_norm: bool) -> str | None:
    """The HF parameter the conversion script fills from fairseq key ``name`` (None: unused)."""
    if "conv_layers" in name:  # load_conv_layer
        items = name.split("conv_layers.")[-1].split(".")
        layer_id, type_id = int(items[0]), int(items[1])
        kind = "bias" if "bias" in name else "weight"
        if type_id == 0:
            return f"wav2vec2.feature_extractor.conv_layers.{layer_id}.conv.{kind}"
        if type_id == 2 and (not group_norm or layer_id == 0):
            return f"wav2vec2.feature_extractor.conv_layers.{layer_id}.layer_norm.{kind}"
        return None
    routes = set()
    for key, mapped_key in MAPPING.items():  # recursively_load_weights
        mapped_key = "wav2vec2." + mapped_key if mapped_key not in TOP_LEVEL_KEYS else mapped_key
        if key in name or key.split("w2v_model.")[-1] == name.split(".")[0]:
            if "*" in mapped_key:
                mapped_key = mapped_key.replace("*", name.split(key)[0].split(".")[-2])
            if "weight_g" in name:
                weight_type = "weight_g"
            elif "weight_v" in name:
                weight_type = "weight_v"
            elif "bias" in name:
                weight_type = "bias"
            elif "weight" in name:
                weight_type = "weight"
            else:
                weight_type = None
            param = _HF_PARAM[weight_type]
            routes.add(mapped_key + ("." + param if param else ""))
    assert len(routes) <= 1, f"{name} matches several HF parameters: {routes}"
    return routes.pop() if routes else None


def _candidate(hf_key: str, group_norm: bool, ctc: bool) -> str:
    """A fairseq key (fairseq's module layout) for HF parameter ``hf_key``."""
    prefix = "w2v_encoder.w2v_model." if ctc else ""
    key = hf_key.removeprefix("wav2vec2.")
    if key.startswith("feature_extractor.conv_layers."):
        layer, module, param = key.split(".")[2:5]
        if module == "conv":
            return f"{prefix}feature_extractor.conv_layers.{layer}.0.{param}"
        norm = "2" if group_norm else "2.1"
        return f"{prefix}feature_extractor.conv_layers.{layer}.{norm}.{param}"
    for fairseq_key, mapped in MAPPING.items():
        for param in ("parametrizations.weight.original0", "parametrizations.weight.original1",
                      "weight", "bias", ""):
            if "*" in mapped:
                parts = key.split(".")
                if len(parts) < 3 or mapped.replace("*", parts[2]) + "." + param != key:
                    continue
                return f"{prefix}encoder.layers.{parts[2]}.{fairseq_key}.{param}"
            if (mapped + ("." + param if param else "")) != key:
                continue
            suffix = {"parametrizations.weight.original0": "weight_g",
                      "parametrizations.weight.original1": "weight_v"}.get(param, param)
            name = fairseq_key.removeprefix("w2v_model.")
            if name == "w2v_encoder.proj":
                return f"{name}.{suffix}"
            return prefix + name + ("." + suffix if suffix else "")
    raise KeyError(f"no fairseq key for {hf_key}")


def fairseq_state(hf_model, ctc: bool = False) -> dict[str, torch.Tensor]:
    """The HF model's weights under fairseq's keys, each checked by :func:`script_route`."""
    group_norm = hf_model.config.feat_extract_norm == "group"
    out = {}
    for hf_key, value in hf_model.state_dict().items():
        name = _candidate(hf_key, group_norm, ctc)
        assert script_route(name, group_norm) == hf_key, (name, hf_key)
        out[name] = value.clone()
    return out


def conv_spec(config) -> str:
    """conv_feature_layers as fairseq writes it (a Python expression)."""
    layers = list(zip(config.conv_dim, config.conv_kernel, config.conv_stride))
    return "[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in layers[:1]) + "] + " + " + ".join(
        f"[({d}, {k}, {s})]" for d, k, s in layers[1:])


def model_cfg(config) -> dict[str, Any]:
    """cfg.model of a fairseq pretraining run with the HF config's architecture (as
    ``OmegaConf.to_container`` writes it: tuples become lists)."""
    return {
        "_name": "wav2vec2", "extractor_mode": "default" if config.feat_extract_norm == "group"
        else "layer_norm", "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size, "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads, "activation_fn": "gelu",
        "layer_type": "transformer", "dropout": 0.0, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
        "dropout_features": 0.0, "final_dim": config.proj_codevector_dim,
        "layer_norm_first": config.do_stable_layer_norm, "conv_feature_layers": conv_spec(config),
        "conv_bias": config.conv_bias, "logit_temp": config.contrastive_logits_temperature,
        "quantize_targets": True, "quantize_input": False, "same_quantizer": False,
        "target_glu": False, "feature_grad_mult": 0.1, "quantizer_depth": 1, "quantizer_factor": 3,
        "latent_vars": config.num_codevectors_per_group,
        "latent_groups": config.num_codevector_groups, "latent_dim": config.codevector_dim,
        "mask_length": 10, "mask_prob": 0.65, "mask_selection": "static", "mask_other": 0.0,
        "no_mask_overlap": False, "mask_min_space": 1, "require_same_masks": True,
        "mask_dropout": 0.0, "mask_channel_length": 10, "mask_channel_prob": 0.0,
        "mask_channel_before": False, "mask_channel_selection": "static",
        "mask_channel_other": 0.0, "no_mask_channel_overlap": False, "mask_channel_min_space": 1,
        "num_negatives": config.num_negatives, "negatives_from_everywhere": False,
        "cross_sample_negatives": 0, "codebook_negatives": 0,
        "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups, "pos_conv_depth": 1,
        "latent_temp": [2.0, 0.5, 0.999995], "max_positions": 100000,
        "checkpoint_activations": False, "required_seq_len_multiple": 2,
        "crop_seq_to_multiple": 1, "depthwise_conv_kernel_size": 31, "attn_type": "",
        "pos_enc_type": "abs", "fp16": False,
    }


def pretraining_cfg(config) -> dict[str, Any]:
    """The whole cfg of a fairseq pretraining checkpoint (the sections read, and a few more)."""
    return {
        "_name": None,
        "common": {"_name": None, "fp16": True, "log_interval": 200, "seed": 1},
        "task": {"_name": "audio_pretraining", "data": "/data/librispeech", "labels": None,
                 "sample_rate": 16000, "normalize": config.feat_extract_norm == "layer",
                 "enable_padding": False, "max_sample_size": 250000, "min_sample_size": 32000},
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10.0],
                      "log_keys": ["prob_perplexity", "code_perplexity", "temp"]},
        "model": model_cfg(config),
        "optimization": {"_name": None, "max_update": 400000, "lr": [0.0005]},
    }


def ctc_cfg(config, dropout: float = 0.0) -> dict[str, Any]:
    """The cfg of a fine-tuned CTC checkpoint; w2v_args is the pretraining run's cfg."""
    return {
        "_name": None,
        "task": {"_name": "audio_finetuning", "data": "/data/ls-10h", "labels": "ltr",
                 "normalize": config.feat_extract_norm == "layer", "sample_rate": 16000},
        "criterion": {"_name": "ctc", "zero_infinity": True, "post_process": "letter"},
        "model": {
            "_name": "wav2vec_ctc", "w2v_path": "/models/wav2vec_small.pt",
            "no_pretrained_weights": False, "dropout_input": dropout, "final_dropout": dropout,
            "dropout": dropout, "attention_dropout": dropout, "activation_dropout": dropout,
            "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
            "encoder_embed_dim": 768, "apply_mask": True, "mask_length": 10, "mask_prob": 0.5,
            "mask_selection": "static", "mask_other": 0.0, "no_mask_overlap": False,
            "mask_channel_length": 64, "mask_channel_prob": 0.1, "freeze_finetune_updates": 0,
            "feature_grad_mult": 0.0, "layerdrop": 0.0, "normalize": False,
            "data": "/data/ls-10h", "w2v_args": pretraining_cfg(config),
            "blank_weight": 0.0, "blank_mode": "add",
        },
    }


def checkpoint(state: dict[str, torch.Tensor], cfg: dict | None = None,
               args: argparse.Namespace | None = None, extra: dict | None = None) -> dict:
    """The dict fairseq's trainer saves."""
    return {"args": args, "cfg": cfg, "model": state, "criterion": None,
            "optimizer_history": [{"criterion_name": "Wav2vecCriterion",
                                   "optimizer_name": "FairseqAdam", "num_updates": 400000}],
            "task_state": {}, "extra_state": extra or {"epoch": 1},
            "last_optimizer_state": None}


def save_with_absent_modules(obj: Any, path, classes: dict[str, dict[str, type]]) -> None:
    """torch.save ``obj`` whose objects are of ``classes`` ({module: {name: class}}), from
    modules that exist only while saving: afterwards nothing can import them."""
    created = []
    for module_name, members in classes.items():
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                created.append(name)
        for attr, cls in members.items():
            cls.__module__, cls.__qualname__ = module_name, attr
            setattr(sys.modules[module_name], attr, cls)
    try:
        torch.save(obj, path)
    finally:
        for name in created:
            del sys.modules[name]
