"""Context network: Transformer with a convolutional positional embedding (c = g(z))."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from audio_ssl.config import ContextConfig


class ConvPositionalEmbedding(nn.Module):
    """Grouped conv over time with weight norm (dim=2), 'same' padding, GELU."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        std = (4.0 / (kernel * dim)) ** 0.5
        nn.init.normal_(conv.weight, mean=0.0, std=std)
        nn.init.zeros_(conv.bias)
        self.conv = weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D) with padded frames zeroed -> (B, T, D)
        y = self.conv(rearrange(x, "b t d -> b d t"))
        if self.remove:
            y = y[..., : -self.remove]
        return rearrange(F.gelu(y), "b d t -> b t d")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, except that on the CPU bf16 inputs (from autocast's
    projections) are computed in fp32, outside autocast (which would cast them back): torch's
    bf16 CPU attention is slower than its fp32 one (forward + backward, 2 cores with AMX: 11.4
    against 2.7 ms for tiny's 8 x 100 frames, 9.0 against 6.0 ms for base's 2 x 200)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options)
    return F.scaled_dot_product_attention(q, k, v, **options)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"context dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, D); attn_mask: (B, 1, 1, T) bool, True = attend, or None
        q, k, v = (rearrange(p(x), "b t (h e) -> b h t e", h=self.heads)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, E)
        return self.out_proj(rearrange(y, "b h t e -> b t (h e)"))


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, activation_dropout: float, dropout: float):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, ffn_dim)
        self.output_dense = nn.Linear(ffn_dim, dim)
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation_dropout(F.gelu(self.intermediate_dense(x)))  # (B, T, F)
        return self.output_dropout(self.output_dense(x))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: ContextConfig):
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.attention = SelfAttention(cfg.dim, cfg.heads, cfg.attention_dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layer_norm = nn.LayerNorm(cfg.dim)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim, cfg.activation_dropout, cfg.dropout)
        self.final_layer_norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.attention(self.layer_norm(x), attn_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, attn_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class ContextNetwork(nn.Module):
    """Projected (and masked) frames (B, T, D) -> context vectors c (B, T, D)."""

    def __init__(self, cfg: ContextConfig):
        super().__init__()
        self.cfg = cfg
        self.pos_conv = ConvPositionalEmbedding(cfg.dim, cfg.pos_conv_kernel, cfg.pos_conv_groups)
        self.layer_norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.layers))

    def _dropped_layers(self, generator: torch.Generator | None) -> list[bool]:
        """Which layers LayerDrop skips: a host decision (it decides which layers run), so drawn
        on the CPU: from ``generator`` when it is a CPU one, else from the global CPU generator
        (seeded per update by the training task). Drawing it on an accelerator would stall
        every step on reading the draw back."""
        if not self.training or self.cfg.layer_drop <= 0:
            return [False] * len(self.layers)
        if generator is not None and generator.device.type != "cpu":
            generator = None
        draws = torch.rand(len(self.layers), generator=generator)  # (L,) on the host
        return (draws < self.cfg.layer_drop).tolist()

    def prepare(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                positional: Callable[[torch.Tensor], torch.Tensor] | None = None,
                chunk_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first layer's input (B, T, D) and the attention mask (B, 1, 1, T) bool (True =
        attend; None when nothing is padded): padded frames zeroed, the positional convolution
        added (``positional``: another implementation of ``pos_conv``, e.g. the inference
        kernels'), the layer norm of post-norm models, dropout.

        chunk_mask: (T, T) bool, query x key, True = attend (chunk training's
        :func:`~audio_ssl.models.masking.chunk_attention_mask`), combined with the padding:
        the mask is then (B or 1, 1, T, T); a padded query attends to itself, so no row is
        empty."""
        attn_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
            attn_mask = rearrange(~padding_mask, "b t -> b 1 1 t")
        if chunk_mask is not None:
            allowed = rearrange(chunk_mask, "q k -> 1 1 q k")
            if attn_mask is not None:
                allowed = allowed & attn_mask  # (B, 1, T, T)
            eye = torch.eye(chunk_mask.shape[0], dtype=torch.bool, device=chunk_mask.device)
            attn_mask = allowed | eye
        x = x + (positional or self.pos_conv)(x)
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        return self.dropout(x), attn_mask

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                return_layers: bool = False, num_layers: int | None = None, *,
                positional: Callable[[torch.Tensor], torch.Tensor] | None = None,
                layers: Sequence[Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]]
                | None = None, chunk_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, T, D), padding_mask: (B, T) True = padded, or None when nothing is padded
        (the caller decides on the host: a mask is applied as given, never read back).

        Returns c (B, T, D) and, with ``return_layers``, the input to the first layer followed by
        every layer's output, as HF's ``hidden_states``, except that for pre-norm models the last
        one is after the final layer norm (HF's ``last_hidden_state``; HF's
        ``hidden_states[-1]`` is before it).

        num_layers: run only the first N layers (None: all): c is then layer N's output, before
        any final layer norm (that belongs to the last layer), and the states stop at it.
        positional, layers: other implementations of ``pos_conv`` and of ``self.layers`` (the
        same functions with other kernels, for inference; see :mod:`audio_ssl.extract.kernels`).
        chunk_mask: (T, T) bool, as in :meth:`prepare` (chunk training).
        """
        layers = self.layers if layers is None else layers
        depth = len(layers) if num_layers is None else num_layers
        if not 0 <= depth <= len(layers):
            raise ValueError(f"num_layers must be in 0..{len(layers)}, got {num_layers}")
        x, attn_mask = self.prepare(x, padding_mask, positional, chunk_mask)
        states = [x] if return_layers else []
        dropped = self._dropped_layers(generator)
        for layer, module, drop in zip(layers[:depth], self.layers, dropped):
            if drop:
                # LayerDrop under DDP: touch the skipped layer's parameters with a zero so every
                # parameter still receives a (zero) gradient and DDP's reducer stays in step.
                x = x + 0.0 * sum(p.reshape(-1)[0] for p in module.parameters())
            else:
                x = layer(x, attn_mask)
            if return_layers:
                states.append(x)
        if self.cfg.layer_norm_first and depth == len(layers):
            x = self.layer_norm(x)
            if return_layers:
                states[-1] = x
        return x, states
