"""Parameter names: ours | HF | fairseq | torchaudio, one table, every direction derived from it.

:data:`BACKBONE_KEYS` names the tensors of a backbone (our ``Wav2Vec2Model``), each library's
names relative to where its backbone sits; :data:`HEAD_KEYS` names the heads, at the top level.
:func:`keymap_for` turns the rows of one library into a :class:`~audio_ssl.interop.common.KeyMap`
under the backbone prefixes of one architecture; that map renames state dicts both ways (import:
``to_ours``, export and error messages: ``to_theirs``). ``hf_keymap``, ``fairseq_keymap`` and
``torchaudio_keymap`` are :func:`keymap_for` with each library's prefixes.

In a cell ``{i}`` is a layer index and ``{p}`` ``weight`` or ``bias``; ``{norm}`` (fairseq) is
the conv layer's norm module: ``2`` (GroupNorm) or ``2.1`` (LayerNorm between two transposes).
A tuple lists the names a library wrote at different times (weight norm as ``weight_g`` /
``weight_v`` before torch's parametrizations): importing accepts each, exporting writes the
first. None: the library has no such tensor (torchaudio models carry no mask embedding and no
pretraining head).
"""

from __future__ import annotations

from typing import NamedTuple

from audio_ssl.interop.common import KeyMap

Cell = str | tuple[str, ...] | None


class Keys(NamedTuple):
    """One tensor's name in each library."""

    ours: str
    hf: Cell
    fairseq: Cell
    torchaudio: Cell


LIBRARIES = ("hf", "fairseq", "torchaudio")

# ours: inside Wav2Vec2Model ("backbone." in a model with a head). HF: inside Wav2Vec2Model
# ("wav2vec2." in a model with a head). fairseq: the Wav2Vec2Model ("w2v_encoder.w2v_model." in
# a fine-tuned CTC model). torchaudio: wav2vec2_model (its CTC head sits beside the backbone).
BACKBONE_KEYS: list[Keys] = [
    # feature encoder (z)
    Keys("feature_encoder.layers.{i}.conv.{p}",
         "feature_extractor.conv_layers.{i}.conv.{p}",
         "feature_extractor.conv_layers.{i}.0.{p}",
         "feature_extractor.conv_layers.{i}.conv.{p}"),
    Keys("feature_encoder.layers.{i}.norm.{p}",
         "feature_extractor.conv_layers.{i}.layer_norm.{p}",
         "feature_extractor.conv_layers.{i}.{norm}.{p}",
         "feature_extractor.conv_layers.{i}.layer_norm.{p}"),
    # projection to the model's width, mask embedding
    Keys("layer_norm.{p}",
         "feature_projection.layer_norm.{p}",
         "layer_norm.{p}",
         "encoder.feature_projection.layer_norm.{p}"),
    Keys("projection.{p}",
         "feature_projection.projection.{p}",
         "post_extract_proj.{p}",
         "encoder.feature_projection.projection.{p}"),
    Keys("mask_embedding",
         "masked_spec_embed",
         "mask_emb",
         None),
    # context network (c): positional convolution (weight norm over dim 2), final norm
    Keys("context.pos_conv.conv.bias",
         "encoder.pos_conv_embed.conv.bias",
         "encoder.pos_conv.0.bias",
         "encoder.transformer.pos_conv_embed.conv.bias"),
    Keys("context.pos_conv.conv.parametrizations.weight.original0",
         ("encoder.pos_conv_embed.conv.parametrizations.weight.original0",
          "encoder.pos_conv_embed.conv.weight_g"),
         ("encoder.pos_conv.0.weight_g",
          "encoder.pos_conv.0.parametrizations.weight.original0"),
         ("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0",
          "encoder.transformer.pos_conv_embed.conv.weight_g")),
    Keys("context.pos_conv.conv.parametrizations.weight.original1",
         ("encoder.pos_conv_embed.conv.parametrizations.weight.original1",
          "encoder.pos_conv_embed.conv.weight_v"),
         ("encoder.pos_conv.0.weight_v",
          "encoder.pos_conv.0.parametrizations.weight.original1"),
         ("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1",
          "encoder.transformer.pos_conv_embed.conv.weight_v")),
    Keys("context.layer_norm.{p}",
         "encoder.layer_norm.{p}",
         "encoder.layer_norm.{p}",
         "encoder.transformer.layer_norm.{p}"),
    # context network: Transformer layer {i}
    Keys("context.layers.{i}.attention.q_proj.{p}",
         "encoder.layers.{i}.attention.q_proj.{p}",
         "encoder.layers.{i}.self_attn.q_proj.{p}",
         "encoder.transformer.layers.{i}.attention.q_proj.{p}"),
    Keys("context.layers.{i}.attention.k_proj.{p}",
         "encoder.layers.{i}.attention.k_proj.{p}",
         "encoder.layers.{i}.self_attn.k_proj.{p}",
         "encoder.transformer.layers.{i}.attention.k_proj.{p}"),
    Keys("context.layers.{i}.attention.v_proj.{p}",
         "encoder.layers.{i}.attention.v_proj.{p}",
         "encoder.layers.{i}.self_attn.v_proj.{p}",
         "encoder.transformer.layers.{i}.attention.v_proj.{p}"),
    Keys("context.layers.{i}.attention.out_proj.{p}",
         "encoder.layers.{i}.attention.out_proj.{p}",
         "encoder.layers.{i}.self_attn.out_proj.{p}",
         "encoder.transformer.layers.{i}.attention.out_proj.{p}"),
    Keys("context.layers.{i}.layer_norm.{p}",
         "encoder.layers.{i}.layer_norm.{p}",
         "encoder.layers.{i}.self_attn_layer_norm.{p}",
         "encoder.transformer.layers.{i}.layer_norm.{p}"),
    Keys("context.layers.{i}.feed_forward.intermediate_dense.{p}",
         "encoder.layers.{i}.feed_forward.intermediate_dense.{p}",
         "encoder.layers.{i}.fc1.{p}",
         "encoder.transformer.layers.{i}.feed_forward.intermediate_dense.{p}"),
    Keys("context.layers.{i}.feed_forward.output_dense.{p}",
         "encoder.layers.{i}.feed_forward.output_dense.{p}",
         "encoder.layers.{i}.fc2.{p}",
         "encoder.transformer.layers.{i}.feed_forward.output_dense.{p}"),
    Keys("context.layers.{i}.final_layer_norm.{p}",
         "encoder.layers.{i}.final_layer_norm.{p}",
         "encoder.layers.{i}.final_layer_norm.{p}",
         "encoder.transformer.layers.{i}.final_layer_norm.{p}"),
]

# the heads on a backbone, by the model that has them; names at the top level of the state dict
HEAD_KEYS: dict[str, list[Keys]] = {
    "pretraining": [  # Wav2Vec2ForPretraining: quantizer (q) and the two projections
        Keys("quantizer.weight_proj.{p}", "quantizer.weight_proj.{p}",
             "quantizer.weight_proj.{p}", None),
        Keys("quantizer.codevectors", "quantizer.codevectors", "quantizer.vars", None),
        Keys("project_q.{p}", "project_q.{p}", "project_q.{p}", None),
        Keys("final_proj.{p}", "project_hid.{p}", "final_proj.{p}", None),
    ],
    "ctc": [  # Wav2Vec2ForCTC
        Keys("head.{p}", "lm_head.{p}", "w2v_encoder.proj.{p}", "aux.{p}"),
    ],
}


def keymap_for(library: str, backbone: tuple[str, str] = ("", ""), head: str | None = None,
               conv_norm: str = "2") -> KeyMap:
    """Our state-dict names <-> ``library``'s (one of :data:`LIBRARIES`).

    ``backbone``: (our prefix, theirs) of the backbone rows, e.g. ("backbone.", "wav2vec2.")
    for an HF model with a head; ``head``: a key of :data:`HEAD_KEYS`, or None for a bare
    backbone; ``conv_norm``: what fairseq's ``{norm}`` stands for (``2``, or ``2.1`` for a
    layer-norm feature encoder). Rows where ``library`` has no name are left out.
    """
    assert library in LIBRARIES, library
    rows = [(*backbone, row) for row in BACKBONE_KEYS]
    if head is not None:
        rows += [("", "", row) for row in HEAD_KEYS[head]]
    pairs = []
    for ours_prefix, theirs_prefix, row in rows:
        cell = getattr(row, library)
        names = [cell] if isinstance(cell, str) else list(cell or ())
        pairs += [(ours_prefix + row.ours, theirs_prefix + name.replace("{norm}", conv_norm))
                  for name in names]
    return KeyMap(pairs)


__all__ = ["Keys", "LIBRARIES", "BACKBONE_KEYS", "HEAD_KEYS", "keymap_for"]
