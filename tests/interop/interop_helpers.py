"""Reference models of other libraries, random-initialised, and how we compare with them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SAMPLES = 8_000  # half a second: 24 frames


def report(name: str, ours: torch.Tensor, theirs: torch.Tensor, atol: float) -> float:
    """Assert ``max |ours - theirs| <= atol`` and print the figure (``pytest -s | grep PARITY``)."""
    assert ours.shape == theirs.shape, f"{name}: {tuple(ours.shape)} != {tuple(theirs.shape)}"
    diff = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
    print(f"PARITY {name}: max|diff| = {diff:.3g} (tolerance {atol:g})")
    assert diff <= atol, f"{name}: max |diff| {diff:.3g} > {atol:g}"
    return diff


def waveforms(batch: int = 2, samples: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    """(B, S) noise with a slow envelope, so frames differ."""
    g = torch.Generator().manual_seed(seed)
    envelope = torch.linspace(0.2, 1.0, samples)
    return torch.randn(batch, samples, generator=g) * envelope


def hf_config(size: str = "small", norm: str = "group", stable: bool = False, **kwargs):
    """A transformers Wav2Vec2Config without dropout: ``small`` (a 64-wide, 2-layer model with
    the paper's conv kernels and strides) or ``base`` (the paper's BASE)."""
    from transformers import Wav2Vec2Config

    values = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                  feat_proj_dropout=0.0, feat_quantizer_dropout=0.0, final_dropout=0.0,
                  layerdrop=0.0, mask_feature_prob=0.0, feat_extract_norm=norm,
                  do_stable_layer_norm=stable, conv_bias=stable)
    if size == "small":
        values.update(conv_dim=[32] * 7, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=128, num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=4, codevector_dim=32, proj_codevector_dim=32,
                      num_codevectors_per_group=16, num_negatives=20)
    values.update(kwargs)
    return Wav2Vec2Config(**values)


def hf_model(cls_name: str, seed: int = 0, **config):
    """A random-initialised transformers model (``Wav2Vec2Model``, ``Wav2Vec2ForPreTraining``,
    ``Wav2Vec2ForCTC``), in eval mode."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(hf_config(**config)).eval()
    with torch.no_grad():  # HF initialises layer norms to the identity: make them count
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def layer_outputs(backbone, run) -> list[torch.Tensor]:
    """Each Transformer layer's output of our backbone during ``run()`` (before the final
    layer norm of a pre-norm model)."""
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o))
             for layer in backbone.context.layers]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return captured


def greedy_transcripts(logits: torch.Tensor, vocab: list[str]) -> list[str]:
    """Greedy CTC in our convention: argmax, collapse repeats, drop blank 0, "|" -> space."""
    out = []
    for row in logits.argmax(-1).tolist():
        collapsed = [t for i, t in enumerate(row) if i == 0 or t != row[i - 1]]
        text = "".join(vocab[t] for t in collapsed if t != 0)
        out.append(text.replace("|", " ").strip())
    return out


def write_hf_vocab(folder: Path, tokens: list[str], pad: str = "<pad>") -> None:
    """Tokenizer files as HF writes them for a character CTC vocabulary (id = list index)."""
    folder = Path(folder)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    config = {"tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": pad, "unk_token": "<unk>",
              "bos_token": None, "eos_token": None, "word_delimiter_token": "|",
              "do_lower_case": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad,
                                                                "unk_token": "<unk>"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "sampling_rate": 16000, "padding_value": 0.0, "do_normalize": True,
        "return_attention_mask": False}))


def check_hidden_states(hf, ours_backbone, x, name: str, atol: float = 1e-4) -> None:
    """Every HF hidden state (the first layer's input, then each layer's output) and the final
    output of ``ours_backbone`` against ``hf`` (a transformers Wav2Vec2Model)."""
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        out = {}
        layers = layer_outputs(ours_backbone, lambda: out.update(
            result=ours_backbone(x, return_layers=True)))
    ours = out["result"]
    assert len(ref.hidden_states) == len(layers) + 1
    report(f"{name} layer 0 input", ours.hidden_states[0], ref.hidden_states[0], atol)
    for i, (a, b) in enumerate(zip(layers, ref.hidden_states[1:]), 1):
        report(f"{name} layer {i} output", a, b, atol)
    report(f"{name} final output", ours.context, ref.last_hidden_state, atol)
    report(f"{name} extract_features", ours.features, ref.extract_features, atol)


def hf_negatives(mask: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Our distractors ((M, K) indices into the masked frames) as HF's sampled_negative_indices
    ((B, T, K) indices into the flattened B*T frames)."""
    flat = mask.flatten().nonzero().squeeze(1)  # (M,) position of masked frame m in B*T
    out = torch.zeros(*mask.shape, indices.shape[1], dtype=torch.long)
    out[mask] = flat[indices]
    return out


def hf_logits(hf, out, mask, negatives) -> torch.Tensor:
    """HF's contrastive logits at the masked frames, (M, 1 + K), by HF's own function."""
    q = out.projected_quantized_states  # (B, T, F)
    b, t, f = q.shape
    negs = q.reshape(-1, f)[negatives.reshape(-1)].reshape(b, t, -1, f).permute(2, 0, 1, 3)
    logits = hf.compute_contrastive_logits(q[None], negs, out.projected_states,
                                           hf.config.contrastive_logits_temperature)
    logits[1:][(q == negs).all(-1)] = float("-inf")
    return logits.permute(1, 2, 0)[mask]


def zero_noise_gumbel_softmax(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
    """``F.gumbel_softmax(hard=True)`` with the noise set to zero (straight-through argmax)."""
    soft = (logits / tau).softmax(dim)
    hard_one = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return hard_one - soft.detach() + soft


def compare_logits(name, ours, theirs, atol):
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), f"{name}: -inf positions differ"
    finite = ~torch.isinf(ours)
    report(name, ours[finite], theirs[finite], atol)


def compare_pretraining(hf, ours, name: str, seed: int = 3) -> None:
    """Eval-mode contrastive logits and loss of our pretraining model against HF's
    Wav2Vec2ForPreTraining, given the same mask and distractors."""
    from audio_ssl.config import MaskConfig
    from audio_ssl.models.masking import compute_span_mask, sample_negatives

    x = waveforms()
    g = torch.Generator().manual_seed(seed)
    frames = ours.backbone.frame_lengths(torch.tensor([x.shape[1]] * x.shape[0]))
    mask = compute_span_mask(frames, int(frames[0]), MaskConfig(prob=0.15, length=3), g)
    indices, valid = sample_negatives(mask, hf.config.num_negatives, g)
    negatives = hf_negatives(mask, indices)
    with torch.no_grad():
        ref = hf.eval()(x, mask_time_indices=mask, sampled_negative_indices=negatives)
        out = ours.eval()(x, mask=mask, negatives=(indices, valid))
        reference = hf_logits(hf, ref, mask, negatives)
    compare_logits(f"{name} pretraining logits", out.logits, reference, 1e-4)
    report(f"{name} contrastive loss / M", out.contrastive, ref.contrastive_loss / mask.sum(), 1e-5)
