"""`ctc.head_kernel`: a CTC head that reads the frames around each one, for a causal backbone
(CPC's) whose frame t has heard nothing after t. Checked against the formula written out frame
by frame, against each clip alone, for what it hears of the future, and through every way a
CTC model leaves the library (native checkpoint, ONNX, streaming; HF refuses it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from audio_ssl import config
from audio_ssl.data.text import Vocabulary
from audio_ssl.interop import load_model
from audio_ssl.interop.export import save_native
from audio_ssl.models import Wav2Vec2ForCTC
from tests.conftest import small_model_config

VOCAB = ["<blank>", "|", "a", "b", "c"]


def _cpc(norm: str = "layer") -> config.ModelConfig:
    return replace(small_model_config(norm=norm), objective="cpc",
                   cpc=config.CpcConfig(dim=32, layers=2, steps=3))


def _model(kernel: int, norm: str = "layer", seed: int = 0) -> Wav2Vec2ForCTC:
    torch.manual_seed(seed)
    return Wav2Vec2ForCTC(_cpc(norm), len(VOCAB), head_kernel=kernel).eval()


def test_the_head_is_its_formula_frame_by_frame():
    """logits_t = W (x_t + gelu(b + sum_j A_j x_{t+j-h})) + c, with x zero on padded frames and
    outside the utterance, h = (k - 1) / 2; k = 1 is the linear head alone."""
    model = _model(5)
    g = torch.Generator().manual_seed(1)
    context = torch.randn(2, 9, 32, generator=g)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    with torch.no_grad():
        got = model.head_logits(context, padding)
    x = context.masked_fill(padding[..., None], 0.0).double()
    a = model.mix.weight.detach().double()  # (D, D, k)
    b = model.mix.bias.detach().double()
    expected = torch.empty(2, 9, len(VOCAB), dtype=torch.float64)
    for row in range(2):
        for t in range(9):
            mixed = b.clone()
            for j in range(5):
                if 0 <= t + j - 2 < 9:
                    mixed += a[:, :, j] @ x[row, t + j - 2]
            y = x[row, t] + F.gelu(mixed)
            expected[row, t] = model.head.weight.detach().double() @ y + model.head.bias.double()
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    # one utterance, unbatched (T, D): what streaming passes
    with torch.no_grad():
        torch.testing.assert_close(model.head_logits(context[1, :6]), got[1, :6], atol=1e-6,
                                   rtol=0)
    linear = _model(1)
    assert linear.mix is None and linear.head_kernel == 1 and model.head_kernel == 5
    with torch.no_grad():
        torch.testing.assert_close(linear.head_logits(context), linear.head(context))


@pytest.mark.parametrize("kernel", [1, 5])
def test_each_row_of_a_padded_batch_is_the_clip_alone(kernel):
    model = _model(kernel, norm="group")  # group norm: the padding-aware encoder path too
    g = torch.Generator().manual_seed(2)
    clips = [torch.randn(n, generator=g) for n in (6400, 4100)]
    batch = torch.zeros(2, 6400)
    batch[1, :4100] = clips[1]
    batch[0] = clips[0]
    with torch.no_grad():
        out = model(batch, torch.tensor([6400, 4100]))
        for row, clip in enumerate(clips):
            alone = model(clip[None]).logits[0]
            n = int(out.frame_lengths[row])
            assert n == alone.shape[0]
            torch.testing.assert_close(out.logits[row, :n], alone, atol=1e-5, rtol=0)


def test_the_head_hears_h_frames_of_the_future_and_no_more():
    """Two clips equal up to a sample, different after: with a causal backbone and a linear
    head the frames before the change agree; a head over 5 frames moves the 2 frames before
    it too, and none earlier."""
    g = torch.Generator().manual_seed(3)
    first = torch.randn(8000, generator=g)
    second = first.clone()
    second[5000:] = torch.randn(3000, generator=g)
    changed = {}
    for kernel in (1, 5):
        model = _model(kernel)
        with torch.no_grad():
            a, b = model(first[None]).logits[0], model(second[None]).logits[0]
        differs = (a - b).abs().amax(-1) > 1e-6  # (T,)
        changed[kernel] = int(differs.float().argmax())  # the first frame that moved
        assert differs[changed[kernel]:].all()
    assert changed[1] > 0 and changed[5] == changed[1] - 2


def test_a_saved_model_keeps_its_head_and_hf_refuses_it(tmp_path):
    from audio_ssl.interop.hf import save_hf

    model = _model(3)
    path = save_native(model, tmp_path / "ctc.ckpt", VOCAB, {"data": {"normalize": False}})
    loaded = load_model(path)
    assert loaded.model.head_kernel == 3
    wav = torch.randn(1, 5000, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(wav).logits, model(wav).logits, atol=0, rtol=0)
    transformer = Wav2Vec2ForCTC(small_model_config(), len(VOCAB), head_kernel=3)  # HF has it
    with pytest.raises(ValueError, match=r"^a CTC head over 3 frames \(ctc.head_kernel\)"):
        save_hf(transformer, tmp_path / "hf", VOCAB)
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ValueError, match="ctc.head_kernel is 4: expected an odd number"):
        Wav2Vec2ForCTC(_cpc(), len(VOCAB), head_kernel=4)


def test_onnx_and_the_stream_give_the_torch_logits(tmp_path):
    """The exported graph (a ragged batch) and a stream whose right context covers the head's
    2 frames give the offline model's log-probabilities."""
    pytest.importorskip("onnxruntime")
    from audio_ssl.asr.streaming import StreamingTranscriber, StreamSettings
    from audio_ssl.cli import main
    from audio_ssl.interop.common import LoadedModel
    from audio_ssl.interop.onnx import OnnxModel

    model = _model(5)
    ckpt = save_native(model, tmp_path / "ctc.ckpt", VOCAB, {"data": {"normalize": False}})
    assert main(["convert", str(ckpt), str(tmp_path / "ctc.onnx")]) == 0
    runner = OnnxModel(tmp_path / "ctc.onnx")
    g = torch.Generator().manual_seed(5)
    clips = [torch.randn(n, generator=g) for n in (16_000, 9_000)]
    batch, lengths = runner.prepare([c.numpy() for c in clips])
    got = runner.run(batch, lengths)
    for row in range(2):
        with torch.no_grad():
            alone = model(torch.from_numpy(batch[row, : len(clips[row])])[None]).logits[0]
        n = int(got["frame_lengths"][row])
        torch.testing.assert_close(torch.from_numpy(got["logits"][row, :n]), alone, atol=1e-4,
                                   rtol=0)

    loaded = LoadedModel(model, model.cfg, VOCAB, "audio-ssl", None,
                         {"data": {"normalize": False, "sample_rate": 16_000}})
    wav = clips[0]
    with torch.no_grad():
        expected = model(wav[None]).logits[0].log_softmax(-1)
    stream = StreamingTranscriber(loaded, StreamSettings(0.5, 10.0, 0.1, endpoint_seconds=None),
                                  device="cpu", precision="32")
    blocks = [b for start in range(0, wav.numel(), 3000)
              for b in stream.logits.feed(wav[start:start + 3000])]
    assert blocks  # frames come before the end: 0.1 s of right context
    streamed = torch.cat(blocks + stream.logits.finish())
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=0)


def test_fine_tuning_builds_it_and_checks_it(tmp_path):
    """`finetune` builds the head the config names, trained at the head's rate; an even kernel
    or a fraction is refused when the config is read, naming the setting."""
    from audio_ssl.tasks.finetune import FinetuneTask

    cfg = config.finetune_preset("tiny", _cpc())
    task = FinetuneTask(replace(cfg, ctc=replace(cfg.ctc, head_kernel=3)), Vocabulary(tuple(VOCAB)))
    assert task.model.head_kernel == 3
    names = [n for n, _ in task.model.named_parameters() if n.startswith("mix.")]
    assert names == ["mix.weight", "mix.bias"] and not task.is_pretrained("mix.weight")
    for bad in ("2", "1.5", "0", "true"):
        (tmp_path / "bad.yaml").write_text(f"ctc: {{head_kernel: {bad}}}\n")
        with pytest.raises((ValueError, TypeError), match="head_kernel"):
            config.load_finetune("tiny", tmp_path / "bad.yaml", model=_cpc())


@pytest.mark.slow
def test_continuing_a_ctc_model_keeps_its_head(tmp_path, data_dir, capsys):
    """From the command line: continuing a CTC model with a 3-frame head keeps it (the
    config does not name one); a config naming 5, or naming 1 (the default for a new head, so
    it must be told from not naming one), gets one line and exit 2, nothing run."""
    from audio_ssl.cli import main

    letters = ["<blank>", "|", "'", *"abcdefghijklmnopqrstuvwxyz"]  # tiny's transcripts
    torch.manual_seed(0)
    ckpt = save_native(Wav2Vec2ForCTC(_cpc("group"), len(letters), head_kernel=3),
                       tmp_path / "ctc.ckpt", letters, {"data": {"normalize": False}})
    manifest = str(data_dir / "tiny" / "manifest.jsonl")
    fast = ("train: {log_every: 1, val_every: 1}\n"
            "data: {num_workers: 0, max_batch_samples: 480000}\n"
            "ctc: {channel_mask: {prob: 0.0625, length: 8}}\n")
    (tmp_path / "fast.yaml").write_text(fast)
    common = ["--train", manifest, "--train-split", "train", "--valid", manifest,
              "--valid-split", "test", "--max-steps", "1", "--no-progress"]
    assert main(["finetune", str(ckpt), "--output", str(tmp_path / "more"), "--config",
                 str(tmp_path / "fast.yaml"), *common]) == 0
    assert load_model(tmp_path / "more" / "checkpoints" / "last.ckpt").model.head_kernel == 3
    capsys.readouterr()
    for named in (5, 1):  # 1 too: named, it must be told from the default
        (tmp_path / f"k{named}.yaml").write_text(
            fast.replace("ctc: {", f"ctc: {{head_kernel: {named}, "))
        assert main(["finetune", str(ckpt), "--output", str(tmp_path / f"k{named}"), "--config",
                     str(tmp_path / f"k{named}.yaml"), *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"ctc.head_kernel is {named}" in err[0]
        assert "reads 3 frame(s)" in err[0] and not (tmp_path / f"k{named}").exists()
