"""HF transformers wav2vec 2.0 folders in and out.

Reading and writing a folder needs only ``json`` and ``safetensors``; ``transformers`` (an
optional dependency) is imported only by :func:`to_hf` and :func:`hf_config`. The config fields
are mapped in :mod:`.hf_fields`, the weights' names in :mod:`.hf_weights`; this module reads and
writes folders (with their vocabulary and processor files).

Which of our tensors is which of HF's (and fairseq's, torchaudio's) is the table in
:mod:`.keys`, checked parameter by parameter in tests/interop. HF omits ``masked_spec_embed``
when mask_time_prob = mask_feature_prob = 0; older HF files name the positional convolution's
weight norm ``weight_g``/``weight_v``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from audio_ssl.interop.common import (
    WORD_SEPARATOR,
    CheckpointError,
    LoadedModel,
    build_model,
    ctc_vocab_from_tokens,
    fresh_mask_embedding,
    input_run_config,
    load_exact,
)
from audio_ssl.interop.hf_fields import (
    ARCHITECTURES,
    EXTRA_KEY,
    HF_DEFAULTS,
    architecture_of,
    config_from_hf,
    hf_config,
    hf_config_dict,
    hf_tokens,
)
from audio_ssl.interop.hf_weights import (
    folder_architecture,
    hf_keymap,
    hf_state_dict,
    read_weights,
)

# ---------------------------------------------------------------------------------------------
# vocabulary and processor files


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
    tokens = hf_tokens(vocab)
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
    raw = read_weights(folder)
    arch = folder_architecture(hf, raw, str(config_path))
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


def refuse_cpc(model: nn.Module) -> None:
    """One line for a CPC model, which no HF class holds (its context network is causal)."""
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "objective", None) == "cpc":
        raise CheckpointError("HF has no CPC architecture; supported: wav2vec2, hubert, "
                              "best-rq, data2vec and reconstruct (as Wav2Vec2Model / "
                              "Wav2Vec2ForPreTraining / Wav2Vec2ForCTC); keep CPC checkpoints "
                              "as audio-ssl .ckpt or ONNX, or pretrain with --objective "
                              "wav2vec2 for an HF model")


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

    refuse_cpc(model)
    if getattr(model, "mix", None) is not None:
        raise ValueError(f"a CTC head over {model.head_kernel} frames (ctc.head_kernel) has no "
                         "place in HF's Wav2Vec2ForCTC, whose head is linear; export it with "
                         "`audio-ssl convert CKPT MODEL.onnx`, or fine-tune with "
                         "ctc.head_kernel 1")
    if isinstance(model, PRETRAINING_MODELS) and (
            not isinstance(model, Wav2Vec2ForPretraining) or model.quantizer is None):
        model = model.backbone
    arch = architecture_of(model)
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

    refuse_cpc(model)
    arch = architecture_of(model)
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
