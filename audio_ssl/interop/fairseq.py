"""fairseq wav2vec 2.0 checkpoints (``.pt``) in, without fairseq installed.

Two kinds: a pretraining checkpoint (model ``wav2vec2``: feature encoder, Transformer,
quantizer, ``project_q``, ``final_proj``) and a fine-tuned CTC checkpoint (``wav2vec_ctc``: the
same backbone under ``w2v_encoder.w2v_model.`` plus ``w2v_encoder.proj``, with the letter
dictionary ``dict.ltr.txt`` beside it). The architecture comes from the checkpoint's ``cfg``
(a dict, as fairseq >= 0.10 writes it, possibly still an omegaconf ``DictConfig``) or, in older
files, ``args`` (an ``argparse.Namespace``); for CTC checkpoints from the pretraining config the
fine-tuning run stored in ``cfg.model.w2v_args``, with the fine-tuning dropouts on top (as
fairseq's ``Wav2VecEncoder`` applies them). The file is read with
:func:`~audio_ssl.interop.safe_load.safe_torch_load`: nothing in it is executed.

Fields that change what the checkpoint computes and that we cannot represent raise
:class:`~audio_ssl.interop.common.CheckpointError` naming the field and value; fields that only
change how fairseq drew masks or distractors during training are logged as warnings (they do not
affect the imported weights or their outputs).
"""

from __future__ import annotations

import ast
import logging
import operator
from pathlib import Path
from typing import Any

import torch

from audio_ssl.config import ModelConfig
from audio_ssl.interop.common import (
    WORD_SEPARATOR,
    CheckpointError,
    KeyMap,
    LoadedModel,
    build_model,
    ctc_vocab_from_tokens,
    input_run_config,
    load_exact,
    merge_config,
    unsupported,
)
from audio_ssl.interop.keys import keymap_for
from audio_ssl.interop.safe_load import safe_torch_load, to_plain

log = logging.getLogger(__name__)

PRETRAINING_NAMES = ("wav2vec2",)
CTC_NAMES = ("wav2vec_ctc",)
CTC_PREFIX = "w2v_encoder.w2v_model."

# fairseq's Wav2Vec2Config defaults (fairseq 0.12) of the fields read here.
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu",
    "layer_type": "transformer", "dropout": 0.1, "attention_dropout": 0.1,
    "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "dropout_features": 0.0, "final_dim": 0, "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "conv_bias": False, "logit_temp": 0.1, "quantize_targets": False, "quantize_input": False,
    "same_quantizer": False, "target_glu": False, "feature_grad_mult": 1.0, "quantizer_depth": 1,
    "latent_vars": 320, "latent_groups": 2, "latent_dim": 0, "mask_length": 10,
    "mask_prob": 0.65, "mask_selection": "static", "mask_other": 0.0, "no_mask_overlap": False,
    "num_negatives": 100, "negatives_from_everywhere": False, "cross_sample_negatives": 0,
    "codebook_negatives": 0, "conv_pos": 128, "conv_pos_groups": 16, "pos_conv_depth": 1,
    "latent_temp": (2.0, 0.5, 0.999995), "attn_type": "", "pos_enc_type": "abs",
}
# fine-tuning options fairseq's Wav2VecEncoder copies onto the pretraining config
_CTC_OVERRIDES = {"dropout": "dropout", "activation_dropout": "activation_dropout",
                  "attention_dropout": "attention_dropout", "dropout_input": "dropout_input",
                  "layerdrop": "encoder_layerdrop", "feature_grad_mult": "feature_grad_mult",
                  "mask_length": "mask_length", "mask_prob": "mask_prob"}
_TRAINING_ONLY = {"mask_selection": "static", "mask_other": 0.0, "no_mask_overlap": False,
                  "negatives_from_everywhere": False, "cross_sample_negatives": 0,
                  "codebook_negatives": 0}


# ---------------------------------------------------------------------------------------------
# config


_BINOPS = {ast.Add: operator.add, ast.Mult: operator.mul}


def _literal(expr: Any, field: str, where: str) -> Any:
    """A Python literal written as a string in fairseq configs, with list ``+`` and ``*``
    (``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``); no names, calls or attributes."""
    if not isinstance(expr, str):
        return expr

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [walk(e) for e in node.elts]
            return values if isinstance(node, ast.List) else tuple(values)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(ast.dump(node))

    try:
        return walk(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: cannot read {field}={expr!r} (expected a literal list "
                              "or tuple)") from err


def _conv_layers(value: Any, where: str) -> list[list[int]]:
    layers = _literal(value, "conv_feature_layers", where)
    if not isinstance(layers, list) or not all(
            isinstance(l, (list, tuple)) and len(l) == 3 and all(isinstance(v, int) for v in l)
            for l in layers):
        raise CheckpointError(f"{where}: conv_feature_layers={value!r} is not a list of "
                              "(dim, kernel, stride)")
    return [list(l) for l in layers]


def _latent_temp(value: Any, where: str) -> tuple[float, float, float]:
    temp = _literal(value, "latent_temp", where)
    if not (isinstance(temp, (list, tuple)) and len(temp) == 3
            and all(isinstance(v, (int, float)) for v in temp)):
        raise unsupported(where, "latent_temp", value, "expected (start, end, decay): a Gumbel "
                          "temperature decaying per update")
    return float(temp[0]), float(temp[1]), float(temp[2])


def _loss_weights(criterion: dict[str, Any], where: str) -> dict[str, float]:
    if "loss_weights" not in criterion:
        return {}
    weights = _literal(criterion["loss_weights"], "loss_weights", where)
    if weights is None:  # fairseq adds no extra losses at all
        return {"diversity_weight": 0.0, "feature_penalty_weight": 0.0}
    if not isinstance(weights, (list, tuple)) or len(weights) != 2:
        raise unsupported(where, "loss_weights", weights, "expected [diversity, feature penalty]")
    return {"diversity_weight": float(weights[0]), "feature_penalty_weight": float(weights[1])}


def _check_supported(arch: dict[str, Any], where: str, pretraining: bool) -> None:
    get = lambda k: arch.get(k, FAIRSEQ_DEFAULTS[k])  # noqa: E731

    def field_error(name: str, why: str) -> CheckpointError:
        return unsupported(where, name, get(name), why)

    if get("extractor_mode") not in ("default", "layer_norm"):
        raise field_error("extractor_mode", "expected 'default' or 'layer_norm'")
    if get("activation_fn") != "gelu":
        raise field_error("activation_fn", "only 'gelu'")
    if get("layer_type") not in (None, "transformer"):
        raise field_error("layer_type", "only 'transformer' layers")
    if get("pos_conv_depth") not in (None, 1):
        raise field_error("pos_conv_depth", "only one positional convolution")
    if get("attn_type") not in (None, ""):
        raise field_error("attn_type", "only standard multi-head attention")
    if get("pos_enc_type") not in (None, "abs"):
        raise field_error("pos_enc_type", "only the convolutional positional embedding")
    if get("quantize_input"):
        raise field_error("quantize_input", "quantized Transformer inputs")
    if pretraining:
        if not get("quantize_targets"):
            raise field_error("quantize_targets", "targets must be quantized: our pretraining "
                              "model always has the Gumbel quantizer")
        if get("target_glu"):
            raise field_error("target_glu", "a GLU on the targets")
        if get("quantizer_depth") not in (None, 1):
            raise field_error("quantizer_depth", "only a linear quantizer projection")
    for field, default in _TRAINING_ONLY.items():
        if arch.get(field, default) != default:
            log.warning("%s: %s=%r only changes how fairseq drew masks or distractors in "
                        "training; audio_ssl uses its own (%r)", where, field, arch[field],
                        default)


def config_from_fairseq(arch: dict[str, Any], criterion: dict[str, Any] | None = None,
                        where: str = "fairseq cfg", pretraining: bool = True) -> ModelConfig:
    """fairseq ``Wav2Vec2Config`` fields (a dict) -> our ModelConfig; raises for fields we
    cannot represent, naming them."""
    _check_supported(arch, where, pretraining)
    get = lambda k: arch.get(k, FAIRSEQ_DEFAULTS[k])  # noqa: E731
    dim = get("encoder_embed_dim")
    final_dim = get("final_dim") or dim
    start, end, decay = _latent_temp(get("latent_temp"), where)
    values = {
        "encoder": {"conv_layers": _conv_layers(get("conv_feature_layers"), where),
                    "norm": "group" if get("extractor_mode") == "default" else "layer",
                    "conv_bias": bool(get("conv_bias")),
                    "grad_scale": float(get("feature_grad_mult"))},
        "context": {"dim": dim, "layers": get("encoder_layers"),
                    "heads": get("encoder_attention_heads"),
                    "ffn_dim": get("encoder_ffn_embed_dim"), "dropout": get("dropout"),
                    "attention_dropout": get("attention_dropout"),
                    "activation_dropout": get("activation_dropout"),
                    "layer_drop": get("encoder_layerdrop"),
                    "layer_norm_first": bool(get("layer_norm_first")),
                    "pos_conv_kernel": get("conv_pos"), "pos_conv_groups": get("conv_pos_groups")},
        "quantizer": {"groups": get("latent_groups"), "codes": get("latent_vars"),
                      "dim": get("latent_dim") or final_dim, "temperature_start": start,
                      "temperature_end": end, "temperature_decay": decay},
        # fairseq's mask_prob is the span-start probability times the span length
        "mask": {"prob": get("mask_prob") / get("mask_length"), "length": get("mask_length"),
                 "min_masks": 2},
        "loss": {"num_negatives": get("num_negatives"), "logit_temperature": get("logit_temp"),
                 **_loss_weights(criterion or {}, where)},
        "final_dim": final_dim, "dropout_input": get("dropout_input"),
        "dropout_features": get("dropout_features"),
    }
    cfg = merge_config(ModelConfig(), values, where)
    if cfg.context.dim % cfg.context.heads:
        raise CheckpointError(f"{where}: encoder_embed_dim={dim} is not divisible by "
                              f"encoder_attention_heads={cfg.context.heads}")
    return cfg


def _sections(checkpoint: dict[str, Any], where: str) -> tuple[dict, dict, dict]:
    """(model, task, criterion) config dicts from ``cfg`` or, in older files, ``args``."""
    cfg = to_plain(checkpoint.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"], cfg.get("task") or {}, cfg.get("criterion") or {}
    args = to_plain(checkpoint.get("args"))
    if isinstance(args, dict):
        return args, args, args
    raise CheckpointError(f"{where}: neither 'cfg' with a 'model' section nor 'args': not a "
                          "fairseq checkpoint we can read")


def _model_name(model: dict[str, Any]) -> str | None:
    return model.get("_name") or model.get("arch")


# ---------------------------------------------------------------------------------------------
# state dict


def fairseq_keymap(norm: str, ctc: bool) -> KeyMap:
    """Our state-dict names <-> fairseq's (the fairseq column of :mod:`.keys`); ``norm``: our
    encoder norm, "group" or "layer"."""
    return keymap_for("fairseq", ("backbone.", CTC_PREFIX if ctc else ""),
                      "ctc" if ctc else "pretraining",
                      conv_norm="2" if norm == "group" else "2.1")


_PRETRAINING_ONLY = ("quantizer.", "project_q.", "final_proj.", "target_glu.", "project_inp.",
                     "input_quantizer.")


# ---------------------------------------------------------------------------------------------
# dictionary


def read_dictionary(path: str | Path) -> list[str]:
    """fairseq ``Dictionary.load``: ``<s> <pad> </s> <unk>``, then one ``SYMBOL COUNT`` a line
    (an optional ``#fairseq:overwrite`` flag after the count)."""
    path = Path(path)
    symbols = ["<s>", "<pad>", "</s>", "<unk>"]
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) == 2 and parts[1] == "#fairseq:overwrite":
            line, overwrite = parts[0], True
            parts = line.rsplit(" ", 1)
        else:
            overwrite = False
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise CheckpointError(f"{path}:{n}: expected 'SYMBOL COUNT', got {line!r}")
        if parts[0] in symbols and not overwrite:
            raise CheckpointError(f"{path}:{n}: duplicate symbol {parts[0]!r}")
        if parts[0] not in symbols:
            symbols.append(parts[0])
    return symbols


def _find_dictionary(path: Path, task: dict[str, Any]) -> Path:
    labels = task.get("labels") or "ltr"
    candidate = path.parent / f"dict.{labels}.txt"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"{candidate} not found: a fine-tuned fairseq checkpoint needs its "
                            f"letter dictionary beside it (or pass dictionary=)")


def _ctc_architecture(model_cfg: dict[str, Any], where: str) -> tuple[dict, dict]:
    """(architecture, pretraining task) of a fine-tuned CTC checkpoint: the pretraining config
    its run stored in ``w2v_args``, with the fine-tuning options on top (as fairseq's
    ``Wav2VecEncoder`` applies them)."""
    if model_cfg.get("blank_weight", 0) not in (0, 0.0, None):
        raise unsupported(where, "blank_weight", model_cfg["blank_weight"],
                          "a constant added to the blank logit at inference")
    w2v = to_plain(model_cfg.get("w2v_args"))
    if not isinstance(w2v, dict):
        raise CheckpointError(f"{where}: cfg.model.w2v_args (the pretraining config) is "
                              "missing: cannot tell the architecture")
    arch = dict(w2v["model"]) if isinstance(w2v.get("model"), dict) else dict(w2v)
    w2v_task = w2v.get("task") if isinstance(w2v.get("task"), dict) else w2v
    for ctc_field, field in _CTC_OVERRIDES.items():
        if model_cfg.get(ctc_field) is not None:
            arch[field] = model_cfg[ctc_field]
    return arch, w2v_task


def _ctc_vocab(state: dict[str, torch.Tensor], dict_path: Path, where: str) -> list[str]:
    """The letter dictionary at ``dict_path`` as our vocab (blank first); the CTC head's rows in
    ``state`` (ours: ``head.weight`` (V, D), ``head.bias`` (V,)) are permuted to match."""
    vocab_size = state["head.weight"].shape[0]
    symbols = read_dictionary(dict_path)
    if len(symbols) != vocab_size:
        raise CheckpointError(f"{dict_path}: {len(symbols)} symbols (4 special + "
                              f"{len(symbols) - 4} from the file) but the CTC head of "
                              f"{where} has {vocab_size} outputs")
    blank = symbols.index("<ctc_blank>") if "<ctc_blank>" in symbols else 0
    vocab, perm = ctc_vocab_from_tokens(symbols, blank, WORD_SEPARATOR)
    state["head.weight"] = state["head.weight"][perm]
    state["head.bias"] = state["head.bias"][perm]
    return vocab


# ---------------------------------------------------------------------------------------------
# public API


def from_fairseq(path: str | Path, dictionary: str | Path | None = None,
                 checkpoint: dict[str, Any] | None = None) -> LoadedModel:
    """Import a fairseq wav2vec 2.0 ``.pt``: pretraining -> Wav2Vec2ForPretraining, fine-tuned
    CTC -> Wav2Vec2ForCTC with the vocabulary of ``dictionary`` (default: ``dict.ltr.txt``
    beside the checkpoint) mapped to ours (fairseq's blank ``<s>`` at 0 becomes ``<blank>``).
    ``checkpoint`` is the already loaded file, when the caller has it."""
    path = Path(path)
    where = str(path)
    if checkpoint is None:
        checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{where}: no 'model' state dict: not a fairseq checkpoint")
    raw = {k: v for k, v in checkpoint["model"].items() if isinstance(v, torch.Tensor)}
    model_cfg, task, criterion = _sections(checkpoint, where)
    name = _model_name(model_cfg)
    if name is None:
        name = CTC_NAMES[0] if "w2v_encoder.proj.weight" in raw else PRETRAINING_NAMES[0]
    if name not in PRETRAINING_NAMES + CTC_NAMES:
        raise CheckpointError(f"{where}: fairseq model {name!r} is not wav2vec 2.0 (expected "
                              f"one of {list(PRETRAINING_NAMES + CTC_NAMES)})")
    ctc = name in CTC_NAMES
    normalize = task.get("normalize")
    final_dropout = 0.0
    if ctc:
        arch, w2v_task = _ctc_architecture(model_cfg, where)
        if normalize is None:
            normalize = w2v_task.get("normalize")
        final_dropout = float(model_cfg.get("final_dropout") or 0.0)
        cfg = config_from_fairseq(arch, None, where, pretraining=False)
        raw = {k: v for k, v in raw.items()
               if not k.removeprefix(CTC_PREFIX).startswith(_PRETRAINING_ONLY)}
    else:
        cfg = config_from_fairseq(model_cfg, criterion, where, pretraining=True)

    keymap = fairseq_keymap(cfg.encoder.norm, ctc)
    state = keymap.import_state(raw, where)
    channels, dim = cfg.encoder.conv_layers[-1][0], cfg.context.dim
    if "backbone.projection.weight" not in state and channels == dim:
        # fairseq has no post_extract_proj when the conv output already has the model's width
        state["backbone.projection.weight"] = torch.eye(dim)
        state["backbone.projection.bias"] = torch.zeros(dim)
    vocab = None
    if ctc:
        if "head.weight" not in state:
            raise CheckpointError(f"{where}: missing keys w2v_encoder.proj.weight")
        dict_path = Path(dictionary) if dictionary is not None else _find_dictionary(path, task)
        vocab = _ctc_vocab(state, dict_path, where)
    model = build_model(cfg, len(vocab) if ctc else None, not ctc, final_dropout)
    load_exact(model, state, where, keymap)
    return LoadedModel(model, cfg, vocab, "fairseq", path, input_run_config(normalize))


def is_fairseq_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and (
        obj.get("cfg") is not None or obj.get("args") is not None)


__all__ = ["FAIRSEQ_DEFAULTS", "config_from_fairseq", "fairseq_keymap", "read_dictionary",
           "from_fairseq", "is_fairseq_checkpoint"]
