"""Streaming CTC: a stream whose context covers the clip equals the offline forward (group-norm
and layer-norm encoders, with and without waveform normalisation); bounded state over a long
stream; the command's bad inputs (one line, exit 2) and stdin ending mid-chunk."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from audio_ssl import config
from audio_ssl.cli import main
from audio_ssl.data.audio import NORMALIZE_EPS
from audio_ssl.extract.chunking import num_frames
from audio_ssl.asr.streaming import (
    StreamingTranscriber,
    StreamSettings,
    TranscriptEvent,
    final_text,
)
from audio_ssl.asr.transcribe import Transcriber
from audio_ssl.interop.common import LoadedModel
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from tests.conftest import small_model_config

VOCAB = ["<blank>", "|", "a", "b", "c", "d", "e"]
RATE = 16_000


def _loaded(norm: str, normalize: bool, seed: int = 0) -> LoadedModel:
    """A small random CTC model (the small model of tests/conftest.py with a 7-token head)."""
    cfg = small_model_config(norm=norm)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(cfg, len(VOCAB))  # greedy margins >= 1e-3 on the clips here
    return LoadedModel(model, cfg, list(VOCAB), "audio-ssl", None,
                       {"data": {"normalize": normalize, "sample_rate": RATE}})


def _speechlike(seconds: float, seed: int = 0) -> torch.Tensor:
    """Bursts of tones and noise with pauses, not zero mean, so that normalisation matters."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * RATE)
    t = torch.arange(n) / RATE
    envelope = (torch.sin(2 * torch.pi * 0.7 * t) > -0.2).float()  # (S,) on / off
    wav = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(n, generator=g)
    return 0.5 * wav * envelope + 0.02


def _offline(loaded: LoadedModel, wav: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(log-probabilities (T, V), greedy text) of the whole clip, as `transcribe` decodes it."""
    transcriber = Transcriber(loaded, device="cpu", precision="32")
    x = F.layer_norm(wav, wav.shape, eps=NORMALIZE_EPS) if loaded.expects_normalized else wav
    with torch.inference_mode():
        out = loaded.model(x[None], torch.tensor([x.numel()]))
    text = transcriber.decode_batch(x[None], torch.tensor([x.numel()]))[0]
    return out.logits[0].float().log_softmax(-1), text


@pytest.mark.parametrize("norm,normalize", [("group", False), ("group", True),
                                            ("layer", True), ("layer", False)])
def test_a_stream_whose_context_covers_the_clip_equals_offline(norm, normalize):
    loaded = _loaded(norm, normalize)
    wav = _speechlike(3.3)
    expected, text = _offline(loaded, wav)
    settings = StreamSettings(chunk_seconds=0.5, left_seconds=10.0, right_seconds=10.0,
                              endpoint_seconds=None)
    stream = StreamingTranscriber(Transcriber(loaded, device="cpu", precision="32"), settings)
    # the frames, fed in uneven pieces
    pieces = np.split(wav.numpy(), [1234, 1300, 9000, 30_001])
    blocks = [b for piece in pieces for b in stream.logits.feed(torch.from_numpy(piece))]
    assert blocks == []  # the right context never arrives: everything waits for the end
    streamed = torch.cat(stream.logits.finish())  # (T, V)
    assert streamed.shape == expected.shape
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=0)

    # the text: identical, and the events do not depend on how the audio is cut
    events = stream.transcribe(wav)
    assert final_text(events) == text and text
    assert stream.transcribe(wav, block_samples=777) == events
    assert [e.final for e in events] == [False] * (len(events) - 1) + [True]
    # with endpointing the segments hold the same letters (a pause becomes a space)
    paused = StreamingTranscriber(loaded, StreamSettings(0.5, 10.0, 10.0, endpoint_seconds=0.1),
                                  device="cpu", precision="32")
    finals = [e for e in paused.transcribe(wav) if e.final]
    assert "".join(e.text for e in finals).replace(" ", "") == text.replace(" ", "")
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:]))


def test_a_cpc_model_streams_what_it_transcribes_offline():
    """A CTC model on a CPC backbone (3 causal layers, where the unused Transformer settings
    say 2): the stream reads the causal network's last layer, as the offline forward does.
    Being causal, it needs no right context: with none, and a layer-norm encoder (no norm
    over time), every frame is still the offline one."""
    from dataclasses import replace

    cfg = small_model_config(norm="layer")
    cfg = replace(cfg, objective="cpc", cpc=config.CpcConfig(dim=64, layers=3, steps=3))
    torch.manual_seed(0)
    loaded = LoadedModel(Wav2Vec2ForCTC(cfg, len(VOCAB)).eval(), cfg, list(VOCAB), "audio-ssl",
                         None, {"data": {"normalize": False, "sample_rate": RATE}})
    wav = _speechlike(3.3, seed=3)
    expected, text = _offline(loaded, wav)
    for right in (10.0, 0.0):
        stream = StreamingTranscriber(loaded, StreamSettings(0.5, 10.0, right, endpoint_seconds=None),
                                      device="cpu", precision="32")
        blocks = [b for start in range(0, wav.numel(), 3000)
                  for b in stream.logits.feed(wav[start:start + 3000])]
        assert bool(blocks) == (right == 0.0)  # without right context frames come early
        streamed = torch.cat(blocks + stream.logits.finish())
        torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=0)


def test_stream_with_limited_context_is_deterministic_and_covers_every_frame():
    loaded = _loaded("group", True)
    wav = _speechlike(4.0, seed=1)
    stream = StreamingTranscriber(loaded, StreamSettings(0.3, 0.6, 0.2), device="cpu",
                                  precision="32")
    blocks = []
    for start in range(0, wav.numel(), 1000):
        blocks.extend(stream.logits.feed(wav[start:start + 1000]))
    assert blocks  # frames became final before the end of the stream
    blocks.extend(stream.logits.finish())
    assert sum(b.shape[0] for b in blocks) == num_frames(wav.numel(), loaded.config.encoder.conv_layers)
    again = StreamingTranscriber(loaded, StreamSettings(0.3, 0.6, 0.2), device="cpu",
                                 precision="32")
    assert again.transcribe(wav, block_samples=4321) == stream.transcribe(wav)


def test_state_stays_bounded_over_a_long_stream():
    loaded = _loaded("group", True)
    settings = StreamSettings(chunk_seconds=0.2, left_seconds=0.5, right_seconds=0.1)
    stream = StreamingTranscriber(loaded, settings, device="cpu", precision="32")
    hop = 320
    window = (25 + 10 + 5 - 1) * hop + 400  # left + chunk + right frames, in samples
    assert stream.max_buffered_samples == window
    clip = _speechlike(2.0, seed=2)
    most = 0
    for i in range(60):  # two minutes, fed in blocks of 0.15 s
        for start in range(0, clip.numel(), 2400):
            stream.feed(clip[start:start + 2400])
            most = max(most, stream.buffered_samples)
            assert stream.buffered_samples <= window
            assert len(stream._ids) <= stream.max_segment_frames
    assert most > window // 2
    assert stream.logits._moments._tail.numel() < 400
    events = stream.finish()
    assert stream.stats().audio_seconds == pytest.approx(120.0)
    assert all(isinstance(e, TranscriptEvent) for e in events)


def test_bad_settings_and_models_are_named():
    loaded = _loaded("layer", False)
    with pytest.raises(ValueError, match="--chunk 0.01: shorter than one encoder frame"):
        StreamingTranscriber(loaded, StreamSettings(chunk_seconds=0.01), device="cpu")
    with pytest.raises(ValueError, match="--left -1"):
        StreamingTranscriber(loaded, StreamSettings(left_seconds=-1), device="cpu")
    bare = LoadedModel(Wav2Vec2ForPretraining(small_model_config()), small_model_config(), None,
                       "audio-ssl", Path("pretrained.ckpt"))
    with pytest.raises(ValueError, match="without a CTC head"):
        StreamingTranscriber(bare, device="cpu")


# -------------------------------------------------------------------------------------------
# The command


def _checkpoint(tmp_path: Path, loaded: LoadedModel | None = None) -> Path:
    """A CTC checkpoint as `audio-ssl finetune` writes it (a pretraining one with ``None``)."""
    cfg = small_model_config(norm="group")
    if loaded is None:
        model, vocab, path = Wav2Vec2ForPretraining(cfg), None, tmp_path / "pretrained.ckpt"
    else:
        model, vocab, path = loaded.model, list(VOCAB), tmp_path / "ctc.ckpt"
    run = {"model": config.to_dict(cfg), "data": {"normalize": True, "sample_rate": RATE}}
    torch.save({"audio_ssl_config": run, "audio_ssl_vocab": vocab,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


class _Stdin:
    def __init__(self, data: bytes):
        self.buffer = io.BufferedReader(io.BytesIO(data), buffer_size=4096)


def _one_error_line(err: str) -> str:
    """The error line that ends stderr (a line before it may say what was loaded)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("audio-ssl: error:")]
    assert errors == lines[-1:] and "Traceback" not in err, err
    return errors[0]


def test_stdin_ending_mid_chunk_is_transcribed_to_its_last_sample(tmp_path, monkeypatch, capsys):
    loaded = _loaded("group", True)
    model = _checkpoint(tmp_path, loaded)
    wav = _speechlike(2.37, seed=3)  # 2 chunks and a part of one
    pcm = (wav.clamp(-1, 1) * 32767).round().to(torch.int16)
    monkeypatch.setattr(sys, "stdin", _Stdin(pcm.numpy().tobytes() + b"\x01"))  # half a sample
    assert main(["transcribe", "--stream", str(model), "-", "--json", "--chunk", "1",
                 "--device", "cpu", "--precision", "32"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[-1]["event"] == "summary"
    assert rows[-1]["audio_seconds"] == round(pcm.numel() / RATE, 3)
    assert rows[-1]["latency_seconds"] == 2.28
    assert "last byte was dropped" in err
    # the same samples through the API: the same events, the last frames included
    stream = StreamingTranscriber(_loaded("group", True), StreamSettings(1.0), device="cpu",
                                  precision="32")
    events = stream.transcribe(pcm.numpy())
    assert [{"path": "-", **e.to_dict()} for e in events] == rows[:-1]
    assert stream.logits.chunks_run == 3


def test_files_stream_as_if_live_with_text_output(tmp_path, capsys):
    model = _checkpoint(tmp_path, _loaded("group", True))
    for name, seed in (("a.wav", 4), ("b.wav", 5)):
        sf.write(tmp_path / name, _speechlike(1.5, seed).numpy(), RATE)
    assert main(["transcribe", "--stream", str(model), str(tmp_path / "a.wav"),
                 str(tmp_path / "b.wav"), "--right", "0.2", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    kinds = [line.split("\t")[:2] for line in out.splitlines()]
    assert {path for path, _ in kinds} == {str(tmp_path / "a.wav"), str(tmp_path / "b.wav")}
    assert {kind for _, kind in kinds} <= {"partial", "final"}
    assert "real-time factor" in err and "algorithmic latency 1.20 s" in err


@pytest.mark.parametrize("extra,message", [
    (["--chunk", "0.005"], "--chunk 0.005: shorter than one encoder frame; expected at least 0.02"),
    (["--sample-rate", "8000"], "--sample-rate 8000: this model takes 16000 Hz audio"),
    (["--sample-rate", "0"], "--sample-rate '0': expected a positive whole number of Hz"),
    (["--sample-rate", "16k"], "--sample-rate '16k': expected a positive whole number of Hz"),
    (["--left", "-2"], "--left -2: expected 0 or more seconds"),
])
def test_bad_stream_options_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, extra,
                                                    message):
    model = _checkpoint(tmp_path, _loaded("group", True))
    stdin = _Stdin(b"\x00\x01" * 8000)
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["transcribe", "--stream", str(model), "-", "--device", "cpu", *extra]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in _one_error_line(err)
    assert len(stdin.buffer.read()) == 16_000  # refused before reading: nothing consumed


def test_a_model_without_a_ctc_head_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    model = _checkpoint(tmp_path)
    monkeypatch.setattr(sys, "stdin", _Stdin(b"\x00\x01" * 8000))
    assert main(["transcribe", "--stream", str(model), "-", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "without a CTC head" in _one_error_line(err)


@pytest.mark.slow
def test_evaluate_stream_reports_streaming_next_to_offline(tmp_path, data_dir, capsys):
    model = _checkpoint(tmp_path, _loaded("group", True))
    rows = [json.loads(line) for line in (data_dir / "tiny" / "manifest.jsonl").read_text()
            .splitlines()][:3]
    manifest = tmp_path / "three.jsonl"
    manifest.write_text("".join(json.dumps({**r, "audio": str(data_dir / "tiny" / r["audio"])})
                                + "\n" for r in rows))
    report = tmp_path / "report.jsonl"
    # context covering each clip: the streamed rates are the offline ones
    assert main(["evaluate", str(model), str(manifest), "--stream", "--left", "30", "--right",
                 "30", "--report", str(report), "--device", "cpu", "--precision", "32"]) == 0
    printed = capsys.readouterr().out
    line = printed.splitlines()[-2]  # before the report's path
    assert line.startswith("streaming (chunk 1 s, left 30 s, right 30 s")
    offline = [r for r in map(json.loads, report.read_text().splitlines())]
    assert all(r["stream_hypothesis"] == r["hypothesis"] for r in offline)
