"""Faster inference arithmetic for the backbone's blocks (the same functions, other kernels).

Each class here reads the weights of a module of :mod:`audio_ssl.models` and computes what its
``forward`` computes in eval mode; the tests compare them with the modules. Measured on one H100
with BASE, batch 16 x 11 s, bf16 (``runs`` of ``scripts/bench_extract.py``'s forward):

- :class:`ChannelsLastEncoder`: the conv stack with frames as rows (B, T, C). The first layer is
  a matrix product over strided windows of the waveform, and its group norm is folded into that
  product: the per-channel statistics follow from the windows' second moments (see
  :mod:`.chunking`), so the (B, C, T) activation is written once instead of three times; the
  other layers are NHWC ``conv2d`` (cuDNN's implicit-GEMM kernels: 0.60 ms against 1.41 ms for
  ``conv1d`` on (B, C, T) for the second layer).
- :func:`positional_conv`: the grouped convolution of the context network's positional embedding
  (kernel 128, 16 groups) as unfolded windows times the weights, a batched matrix product per
  group: 2.5 ms against 14.7 ms for cuDNN's grouped ``conv1d``.
- :class:`FastLayer`: a Transformer layer with the three attention projections as one matrix
  product, weights cast once to the compute dtype, and on the CPU oneDNN's fused linear + GELU
  (``torch.ops.mkldnn._linear_pointwise``; 90 against MKL's 70 GFLOP/s on this project's 2 AMD
  cores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from audio_ssl.models.context import ConvPositionalEmbedding, TransformerLayer
from audio_ssl.models.feature_encoder import FeatureEncoder, MaskedGroupNorm


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FastLayer:
    """One Transformer layer (eval mode): ``__call__(x (B, T, D), attn_mask) -> (B, T, D)``.

    Args:
        layer: the module whose weights to use.
        dtype: the matrix products' dtype (bf16 on CUDA; residuals and layer norms stay in the
            input's dtype, as under autocast).
        onednn: CPU fp32 only: oneDNN's fused linear (+ GELU) instead of ``F.linear``.
    """

    def __init__(self, layer: TransformerLayer, dtype: torch.dtype, onednn: bool):
        att, ffn = layer.attention, layer.feed_forward

        def cast(*tensors: torch.Tensor) -> torch.Tensor:
            return torch.cat([t.detach() for t in tensors]).to(dtype)

        self.heads, self.dtype, self.onednn = att.heads, dtype, onednn
        self.layer_norm_first = layer.layer_norm_first
        self.qkv = (cast(att.q_proj.weight, att.k_proj.weight, att.v_proj.weight),
                    cast(att.q_proj.bias, att.k_proj.bias, att.v_proj.bias))
        self.out = (cast(att.out_proj.weight), cast(att.out_proj.bias))
        self.ff1 = (cast(ffn.intermediate_dense.weight), cast(ffn.intermediate_dense.bias))
        self.ff2 = (cast(ffn.output_dense.weight), cast(ffn.output_dense.bias))
        self.norm1, self.norm2 = layer.layer_norm, layer.final_layer_norm

    def _linear(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor],
                gelu: bool = False) -> torch.Tensor:
        w, b = weights
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu" if gelu else "none", [],
                                                      "none" if gelu else "")
        y = F.linear(x.to(self.dtype), w, b)
        return F.gelu(y) if gelu else y

    def _attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        qkv = self._linear(x, self.qkv)  # (B, T, 3D)
        q, k, v = rearrange(qkv, "b t (n h e) -> n b h t e", n=3, h=self.heads)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, E)
        return self._linear(rearrange(y, "b h t e -> b t (h e)"), self.out)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(self._linear(x, self.ff1, gelu=True), self.ff2)

    def __call__(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        # TransformerLayer.forward without dropout; residual sums in x's dtype
        if self.layer_norm_first:
            x = x + self._attention(self.norm1(x), attn_mask)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attention(x, attn_mask))
        return self.norm2(x + self._feed_forward(x))


def positional_conv(module: ConvPositionalEmbedding, x: torch.Tensor, dtype: torch.dtype,
                    groups_per_step: int = 4) -> torch.Tensor:
    """``module(x)`` for x (B, T, D) (padded frames already zeroed) -> (B, T, D) in ``dtype``.

    Windows of ``kernel`` frames are unfolded per group and multiplied by the group's weights;
    ``groups_per_step`` groups at a time bound the unfolded copy (B * T * D * kernel / groups *
    groups_per_step elements).
    """
    conv = module.conv
    weight = conv.weight.to(dtype)  # (D, D/G, K), weight norm applied
    groups, kernel = conv.groups, conv.kernel_size[0]
    pad = conv.padding[0]
    xg = rearrange(x.to(dtype), "b t (g c) -> b g t c", g=groups)
    xg = F.pad(xg, (0, 0, pad, pad))  # (B, G, T + 2 pad, c)
    steps = xg.shape[2] - kernel + 1  # T + 1 for an even kernel (the last frame is removed)
    wg = rearrange(weight, "(g o) c k -> g (c k) o", g=groups)  # (G, c * K, o)
    outs = []
    for g0 in range(0, groups, groups_per_step):
        part = xg[:, g0:g0 + groups_per_step]  # (B, g, T + 2 pad, c)
        windows = part.unfold(2, kernel, 1).reshape(*part.shape[:2], steps, -1)  # (B, g, T', c K)
        outs.append(windows @ wg[g0:g0 + groups_per_step])  # (B, g, T', o)
    y = rearrange(torch.cat(outs, 1), "b g t o -> b t (g o)")  # (B, T', D)
    y = y + conv.bias.to(dtype)
    if module.remove:
        y = y[:, : -module.remove]
    return F.gelu(y)


class ChannelsLastEncoder:
    """The feature encoder with frames as rows: waveforms (B, S) -> (B, T, C) conv features
    (before the backbone's layer norm), as ``FeatureEncoder.forward`` in eval mode.

    Args:
        encoder: the module whose weights to use.
        dtype: compute dtype of the convolutions (bf16 on CUDA).
        nhwc: layers after the first as NHWC ``conv2d`` (fast on CUDA); else ``conv1d`` on
            (B, C, T) (faster on the CPU at 512 channels).
    """

    def __init__(self, encoder: FeatureEncoder, dtype: torch.dtype, nhwc: bool):
        self.encoder, self.dtype, self.nhwc = encoder, dtype, nhwc
        first = encoder.layers[0]
        self.kernel, self.stride = first.kernel, first.stride
        self.group_norm = isinstance(first.norm, MaskedGroupNorm)
        self.w0 = first.conv.weight.detach()[:, 0, :].float()  # (C, k)
        self.b0 = first.conv.bias.detach().float() if first.conv.bias is not None else None
        self.weights4 = [
            rearrange(layer.conv.weight.detach(), "o i k -> o i 1 k").to(dtype).contiguous(
                memory_format=torch.channels_last)
            for layer in encoder.layers[1:]
        ]

    def group_norm_stats(self, waveforms: torch.Tensor, lengths: torch.Tensor | None
                         ) -> torch.Tensor:
        """(B, C, 2) per-row (mean, var) of the first layer's output over its real frames, from
        the second moments of the waveform's windows."""
        batch, samples = waveforms.shape
        frames = (samples - self.kernel) // self.stride + 1
        # fp64 throughout: the sums must not go through TF32 matrix products on a GPU
        windows = waveforms.double().as_strided((batch, frames, self.kernel),
                                                (samples, self.stride, 1))  # (B, T0, k) view
        if lengths is not None:
            valid = torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1
            keep = torch.arange(frames, device=waveforms.device)[None, :] < valid[:, None]
            windows = windows * keep[..., None]  # (B, T0, k) padded windows zeroed
            count = valid.clamp(min=1).double()[:, None]  # (B, 1)
        else:
            count = torch.full((batch, 1), float(frames), dtype=torch.float64,
                               device=waveforms.device)
        s1 = windows.sum(1)  # (B, k)
        s2 = windows.transpose(1, 2) @ windows  # (B, k, k)
        w = self.w0.to(waveforms.device).double()  # (C, k)
        mean = s1 @ w.T / count  # (B, C)
        second = torch.einsum("ck,bkl,cl->bc", w, s2, w) / count  # (B, C)
        if self.b0 is not None:
            b = self.b0.to(waveforms.device).double()
            second = second + 2 * b * mean + b * b
            mean = mean + b
        return torch.stack([mean, (second - mean * mean).clamp(min=0.0)], dim=-1).float()

    def _first_layer(self, waveforms: torch.Tensor, lengths: torch.Tensor | None,
                     stats: torch.Tensor | None) -> torch.Tensor:
        first = self.encoder.layers[0]
        batch, samples = waveforms.shape
        frames = (samples - self.kernel) // self.stride + 1
        windows = waveforms.as_strided((batch, frames, self.kernel), (samples, self.stride, 1))
        windows = windows.to(self.dtype)  # (B, T0, k)
        w0 = self.w0.to(waveforms.device)
        if not self.group_norm:  # per-frame layer norm: nothing global
            x = windows @ w0.T.to(self.dtype)  # (B, T0, C)
            if self.b0 is not None:
                x = x + self.b0.to(waveforms.device, self.dtype)
            return F.gelu(first.norm(x))
        if stats is None:
            stats = self.group_norm_stats(waveforms, lengths)
        mean, var = stats.to(waveforms.device).unbind(-1)  # (B, C) each
        norm = first.norm
        scale = torch.rsqrt(var + norm.eps) * norm.weight.float()  # (B, C)
        shift = norm.bias.float() - mean * scale  # (B, C)
        if self.b0 is not None:
            shift = shift + self.b0.to(waveforms.device) * scale
        folded = (w0.T[None] * scale[:, None, :]).to(self.dtype)  # (B, k, C)
        x = torch.baddbmm(shift[:, None, :].to(self.dtype), windows, folded)  # (B, T0, C)
        return F.gelu(x)

    def __call__(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                 stats: torch.Tensor | None = None) -> torch.Tensor:
        """waveforms (B, S); lengths (B,) or None (nothing padded); stats (B, C, 2) whole-file
        group norm statistics (None: from the rows themselves)."""
        x = self._first_layer(waveforms, lengths, stats)  # (B, T0, C)
        if not self.nhwc:
            x = rearrange(x, "b t c -> b c t")
            for layer in self.encoder.layers[1:]:
                x = layer(x.to(layer.conv.weight.dtype), None)  # (B, C, T_i)
            return rearrange(x, "b c t -> b t c")
        for layer, weight in zip(self.encoder.layers[1:], self.weights4):
            h = rearrange(x, "b t c -> b c 1 t")  # NHWC memory when x is (B, T, C) contiguous
            bias = layer.conv.bias.to(self.dtype) if layer.conv.bias is not None else None
            y = F.conv2d(h.to(self.dtype), weight, bias, stride=(1, layer.stride))
            x = rearrange(y, "b c 1 t -> b t c")  # (B, T_i, C)
            if layer.norm is not None:
                x = layer.norm(x)
            x = F.gelu(x)
        return x


__all__ = ["onednn_available", "FastLayer", "positional_conv", "ChannelsLastEncoder"]
