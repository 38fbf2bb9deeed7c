"""HF transformers interop: configuration mapping (transformers is an optional dependency)."""

from __future__ import annotations

from typing import Any

from audio_ssl.config import ModelConfig


def hf_config(cfg: ModelConfig, **kwargs: Any):
    """The ``transformers.Wav2Vec2Config`` of the same architecture as ``cfg``."""
    from transformers import Wav2Vec2Config

    enc, ctx, q, m = cfg.encoder, cfg.context, cfg.quantizer, cfg.mask
    return Wav2Vec2Config(
        conv_dim=[c for c, _, _ in enc.conv_layers],
        conv_kernel=[k for _, k, _ in enc.conv_layers],
        conv_stride=[s for _, _, s in enc.conv_layers],
        conv_bias=enc.conv_bias,
        feat_extract_norm=enc.norm,
        feat_extract_activation="gelu",
        hidden_size=ctx.dim,
        num_hidden_layers=ctx.layers,
        num_attention_heads=ctx.heads,
        intermediate_size=ctx.ffn_dim,
        hidden_act="gelu",
        hidden_dropout=ctx.dropout,
        activation_dropout=ctx.activation_dropout,
        attention_dropout=ctx.attention_dropout,
        layerdrop=ctx.layer_drop,
        do_stable_layer_norm=ctx.layer_norm_first,
        num_conv_pos_embeddings=ctx.pos_conv_kernel,
        num_conv_pos_embedding_groups=ctx.pos_conv_groups,
        feat_proj_dropout=cfg.dropout_input,
        feat_quantizer_dropout=cfg.dropout_features,
        num_codevector_groups=q.groups,
        num_codevectors_per_group=q.codes,
        codevector_dim=q.dim,
        proj_codevector_dim=cfg.final_dim,
        num_negatives=cfg.loss.num_negatives,
        contrastive_logits_temperature=cfg.loss.logit_temperature,
        diversity_loss_weight=cfg.loss.diversity_weight,
        mask_time_prob=m.prob * m.length,  # HF/fairseq write the start probability times length
        mask_time_length=m.length,
        mask_time_min_masks=m.min_masks,
        **kwargs,
    )
