"""Parity with ``torchaudio.models.wav2vec2_model`` state dicts."""

from __future__ import annotations

import pytest
import torch

from audio_ssl.interop import CheckpointError, load_model
from audio_ssl.interop.torchaudio_format import from_torchaudio, infer_config
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2Model
from tests.interop.interop_helpers import greedy_transcripts, layer_outputs, report, waveforms

torchaudio_models = pytest.importorskip("torchaudio.models")

SMALL_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2


def _torchaudio_model(mode: str, layer_norm_first: bool, aux: int | None = None,
                      dim: int = 64, heads: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = torchaudio_models.wav2vec2_model(
        extractor_mode=mode, extractor_conv_layer_config=SMALL_CONV,
        extractor_conv_bias=layer_norm_first, encoder_embed_dim=dim,
        encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4,
        encoder_num_layers=2, encoder_num_heads=heads, encoder_attention_dropout=0.0,
        encoder_ff_interm_features=128, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
        encoder_layer_norm_first=layer_norm_first, encoder_layer_drop=0.0, aux_num_out=aux)
    with torch.no_grad():  # layer norms start as the identity: make them count
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _check_layers(reference, ours: Wav2Vec2Model, x, lengths, name: str) -> None:
    """torchaudio's intermediate outputs (each layer's output, before a pre-norm model's final
    layer norm) and its final output against ours."""
    with torch.no_grad():
        ref_layers, _ = reference.extract_features(x, lengths)
        ref_final, _ = reference(x, lengths)
        out = {}
        layers = layer_outputs(ours, lambda: out.update(result=ours(x, lengths)))
    frames = out["result"].frame_lengths
    for i, (a, b) in enumerate(zip(layers, ref_layers), 1):
        for j, n in enumerate(frames.tolist()):
            report(f"{name} layer {i} output [item {j}]", a[j, :n], b[j, :n], 1e-4)
    if reference.aux is None:
        for j, n in enumerate(frames.tolist()):
            report(f"{name} final output [item {j}]", out["result"].context[j, :n],
                   ref_final[j, :n], 1e-4)


@pytest.mark.parametrize("mode,pre", [("group_norm", False), ("layer_norm", True),
                                      ("group_norm", True), ("layer_norm", False)])
def test_import_gives_torchaudio_outputs(mode, pre):
    reference = _torchaudio_model(mode, pre)
    loaded = from_torchaudio(reference.state_dict(), config={
        "encoder_num_heads": 4, "encoder_layer_norm_first": pre})
    assert isinstance(loaded.model, Wav2Vec2Model) and loaded.source == "torchaudio"
    assert loaded.config.encoder.norm == mode.removesuffix("_norm")
    assert loaded.config.encoder.conv_bias == pre
    x = waveforms()
    _check_layers(reference, loaded.model.eval(), x, None, f"torchaudio {mode}/{pre}")


def test_padded_batch_gives_torchaudio_outputs():
    """With lengths, for a layer-norm encoder (torchaudio's group norm counts padded frames,
    ours does not, so only layer-norm encoders agree on padded items)."""
    reference = _torchaudio_model("layer_norm", True)
    loaded = from_torchaudio(reference.state_dict(), config={"encoder_num_heads": 4})
    x = waveforms()
    lengths = torch.tensor([x.shape[1], 5_500])
    _check_layers(reference, loaded.model.eval(), x, lengths, "torchaudio padded")


def test_ctc_aux_head_and_file(tmp_path):
    reference = _torchaudio_model("group_norm", False, aux=6)
    with torch.no_grad():
        reference.aux.weight.mul_(50.0)
    labels = ["-", "|", "A", "B", "C", "D"]  # torchaudio's bundles: blank "-" first
    torch.save({"state_dict": reference.state_dict(), "config": {"encoder_num_heads": 4},
                "labels": labels}, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert isinstance(loaded.model, Wav2Vec2ForCTC) and loaded.source == "torchaudio"
    assert loaded.vocab == ["<blank>", "|", "A", "B", "C", "D"]
    x = waveforms(batch=3)
    with torch.no_grad():
        ref, _ = reference(x)
        ours = loaded.model.eval()(x).logits
    report("torchaudio ctc logits", ours, ref, 1e-4)
    expected = []
    for row in ref.argmax(-1).tolist():
        ids = [t for i, t in enumerate(row) if (i == 0 or t != row[i - 1]) and t != 0]
        expected.append("".join(labels[t] for t in ids).replace("|", " ").strip())
    assert greedy_transcripts(ours, loaded.vocab) == expected


def test_architecture_inferred_from_shapes(tmp_path):
    """A state dict of a model 128 wide with the paper's kernels needs only its head count:
    strides by the paper's stack, post-norm with a group-norm encoder. Without the head count
    (a width no torchaudio factory has) it is refused, naming what to pass."""
    reference = _torchaudio_model("group_norm", False, dim=128, heads=2)
    torch.save(reference.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"pass config=\{'encoder_num_heads': \.\.\.\}"):
        load_model(tmp_path / "plain.pth")
    torch.save({"state_dict": reference.state_dict(), "config": {"encoder_num_heads": 2}},
               tmp_path / "with_heads.pth")
    loaded = load_model(tmp_path / "with_heads.pth")
    ctx = loaded.config.context
    assert (ctx.dim, ctx.heads, ctx.layers, ctx.ffn_dim, ctx.layer_norm_first) == (
        128, 2, 2, 128, False)
    assert (ctx.pos_conv_kernel, ctx.pos_conv_groups) == (16, 4)
    assert loaded.config.encoder.conv_layers == tuple(SMALL_CONV)
    _check_layers(reference, loaded.model.eval(), waveforms(), None, "torchaudio inferred")


@pytest.mark.parametrize("factory,heads", [
    ("wav2vec2_base", 12), ("wav2vec2_large", 16), ("wav2vec2_xlsr_300m", 16),
    ("wav2vec2_xlsr_1b", 16), ("wav2vec2_xlsr_2b", 16), ("hubert_xlarge", 16)])
def test_head_count_of_every_torchaudio_factory(factory, heads):
    """XLS-R 1B and 2B are 1,280 and 1,920 wide with 16 heads: width / 64 would say 20 and 30."""
    with torch.device("meta"):  # shapes only: no memory for the weights
        state = getattr(torchaudio_models, factory)().state_dict()
    assert infer_config(state)["encoder_num_heads"] == heads


def test_a_torchaudio_wavlm_state_dict_is_refused_cleanly():
    model = torchaudio_models.wavlm_model(
        extractor_mode="group_norm", extractor_conv_layer_config=SMALL_CONV,
        extractor_conv_bias=False, encoder_embed_dim=64, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2,
        encoder_num_heads=4, encoder_num_buckets=32, encoder_max_distance=128,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=128,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
        encoder_layer_drop=0.0, aux_num_out=None)
    with pytest.raises(CheckpointError, match="a torchaudio WavLM state dict"):
        infer_config(model.state_dict())


def test_what_shapes_cannot_tell_must_be_given():
    state = _torchaudio_model("group_norm", False, dim=96).state_dict()  # 96 wide, 4 heads
    with pytest.raises(CheckpointError, match="encoder_num_heads"):
        infer_config(state)
    odd = {k: v for k, v in state.items()}
    odd["feature_extractor.conv_layers.1.conv.weight"] = torch.zeros(32, 32, 4)
    with pytest.raises(CheckpointError, match="strides cannot be inferred"):
        infer_config(odd, {"encoder_num_heads": 4})
    with pytest.raises(CheckpointError, match="encoder_embed_dim=128 but the weights have 96"):
        infer_config(state, {"encoder_num_heads": 4, "encoder_embed_dim": 128})
    with pytest.raises(CheckpointError, match="unknown config fields"):
        infer_config(state, {"encoder_heads": 4})
