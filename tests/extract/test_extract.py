"""Feature extraction: layers, frame counts, chunking, the folder pipeline, formats, shards,
bad files, resume after a kill, and the Python API against the command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import DATA, require_shared, small_model_config

from audio_ssl.cli import main
from audio_ssl.data import load_audio
from audio_ssl.extract import FeatureExtractor, extract_folder, load_entry, parse_layers, read_index
from audio_ssl.extract.chunking import accumulate_moments, group_norm_stats, plan_chunks
from audio_ssl.extract.features import InferenceModel
from audio_ssl.interop.export import save_native
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining, Wav2Vec2Model, frame_lengths

SR = 16_000


def _model(norm: str = "group", layer_norm_first: bool = False) -> Wav2Vec2ForPretraining:
    torch.manual_seed(0)
    return Wav2Vec2ForPretraining(small_model_config(norm, layer_norm_first)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small pretraining checkpoint trained (as it says) on normalised audio."""
    path = tmp_path_factory.mktemp("ckpt") / "small.ckpt"
    return save_native(_model(), path, run_config={"data": {"normalize": True}})


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A folder of real speech: 6 short files in a sub-folder and one ~40 s file (chunked)."""
    tiny = DATA / "tiny" / "audio"
    require_shared(tiny)
    root = tmp_path_factory.mktemp("speech")
    (root / "sub").mkdir()
    sources = sorted(tiny.glob("*.flac"))
    files = []
    for src in sources[:6]:
        dst = root / "sub" / src.name
        dst.write_bytes(src.read_bytes())
        files.append(dst)
    long = torch.cat([load_audio(p) for p in sources[6:14]])  # (S,) about 40 s
    sf.write(root / "long.wav", long.numpy(), SR, subtype="FLOAT")
    files.append(root / "long.wav")
    return root, files


def _read_all(out: Path) -> dict[str, dict[str, np.ndarray]]:
    return {e["path"]: load_entry(out, e) for e in read_index(out)}


# ---------------------------------------------------------------------------------------------
# Layers and the inference forward


def test_parse_layers_names_order_and_errors():
    assert parse_layers("last", 12).names == ("layer_12",)
    assert parse_layers("all", 2).names == ("layer_0", "layer_1", "layer_2")
    assert parse_layers("encoder, 3,last,3,codes", 12).names == (
        "encoder", "layer_3", "layer_12", "codes")
    assert parse_layers([0, "layer_2"], 4).names == ("layer_0", "layer_2")
    assert parse_layers("1,last", 4).stackable and not parse_layers("1,encoder", 4).stackable
    assert parse_layers("2", 4).deepest == 2 and parse_layers("encoder", 4).deepest == -1
    with pytest.raises(ValueError, match="layer 13 does not exist.*0..12"):
        parse_layers("13", 12)
    with pytest.raises(ValueError, match="unknown layer 'first'"):
        parse_layers("first", 12)


@pytest.mark.parametrize("norm,layer_norm_first", [("group", False), ("layer", True)])
@pytest.mark.parametrize("kernels", ["modules", "onednn", "channels_last"])
def test_every_layer_equals_the_backbone_on_a_padded_batch(norm, layer_norm_first, kernels):
    """Every output, for the CPU kernels and for the CUDA ones (run here in fp32)."""
    model = _model(norm, layer_norm_first)
    selection = parse_layers("all,encoder,codes", model.cfg.context.layers)
    inference = InferenceModel(model, selection, "cpu", kernels=kernels)
    x = torch.randn(3, 16_000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([16_000, 11_000, 7_000])
    out, frames = inference(x, lengths)
    assert list(out) == list(selection.names)
    with torch.no_grad():
        ref = model.backbone(x, lengths, return_layers=True)
        flat = ref.features.reshape(-1, ref.features.shape[-1])
        codes = model.quantizer(flat, 1.0).codes.view(3, -1, model.cfg.quantizer.groups)
    assert torch.equal(frames, ref.frame_lengths)
    for b, t in enumerate(frames.tolist()):
        for i, state in enumerate(ref.hidden_states):
            torch.testing.assert_close(out[f"layer_{i}"][b, :t], state[b, :t], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["encoder"][b, :t], ref.features[b, :t])
        assert torch.equal(out["codes"][b, :t], codes[b, :t])
    assert out["codes"].dtype == torch.int64 and out["codes"].shape[-1] == 2
    # the last layer is the context output c
    torch.testing.assert_close(out["layer_2"], ref.context, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm,layer_norm_first", [("group", False), ("layer", True)])
def test_cpu_bf16_kernels_agree_with_the_modules_under_autocast(norm, layer_norm_first):
    """bf16 on the CPU takes the fused kernels; they compute what autocast's modules compute,
    to bf16's precision, and both stay near fp32."""
    model = _model(norm, layer_norm_first)
    selection = parse_layers("all", model.cfg.context.layers)
    fast = InferenceModel(model, selection, "cpu", "bf16")
    assert fast.kernels == "channels_last"
    autocast = InferenceModel(model, selection, "cpu", "bf16", kernels="modules")
    exact = InferenceModel(model, selection, "cpu", "fp32", kernels="modules")
    x = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([16_000, 12_000])
    outs = [m(x, lengths)[0] for m in (fast, autocast, exact)]
    for name in selection.names:
        a, b, ref = (o[name][1, :37].float() for o in outs)
        scale = ref.norm()
        assert (a - b).norm() / scale < 0.03, name
        assert (a - ref).norm() / scale < 0.03 and (b - ref).norm() / scale < 0.03, name


def test_extractor_precision_auto_follows_the_cpu(monkeypatch):
    from audio_ssl import precision

    model = _model()
    monkeypatch.setattr(precision, "cpu_bf16", lambda **_: (False, "mocked: no units"))
    extractor = FeatureExtractor(model, device="cpu")
    assert extractor.precision.name == "32" and extractor.model.kernels != "channels_last"
    monkeypatch.setattr(precision, "cpu_bf16", lambda **_: (True, "mocked: AMX"))
    extractor = FeatureExtractor(model, device="cpu")
    assert extractor.precision.bf16 and extractor.model.compute_dtype == torch.bfloat16
    assert FeatureExtractor(model, device="cpu", precision="32").model.compute_dtype == torch.float32


def test_layers_after_the_deepest_asked_for_are_not_run():
    model = _model()
    inference = InferenceModel(model, parse_layers("1", 2), "cpu", kernels="modules")
    calls = []
    for i, layer in enumerate(model.backbone.context.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.append(i))
    inference(torch.randn(1, 8000))
    assert calls == [0]


def test_codes_need_a_quantizer():
    cfg = small_model_config()
    for model in (Wav2Vec2ForCTC(cfg, vocab_size=5), Wav2Vec2Model(cfg)):
        with pytest.raises(ValueError, match="'codes' needs the quantizer.*has none"):
            FeatureExtractor(model, layers="codes", device="cpu")
        FeatureExtractor(model, layers="last,encoder", device="cpu")  # everything else works


# ---------------------------------------------------------------------------------------------
# Frame counts and chunking


def test_chunk_plans_tile_the_whole_file_frames():
    conv = small_model_config().encoder.conv_layers  # receptive field 400, hop 320
    rng = np.random.default_rng(0)
    lengths = [0, 399, 400, 719, 720, 16_000, 96_000, 96_399, 96_400] + list(
        rng.integers(400, 400_000, 60))
    for chunk_frames, context in [(50, 10), (100, 0), (7, 3)]:
        for s in lengths:
            total = int(frame_lengths(torch.tensor([s]), conv)[0])
            chunks = plan_chunks(int(s), conv, chunk_frames, context)
            if total == 0:
                assert chunks == []
                continue
            assert chunks[0].frames[0] == 0 and chunks[-1].frames[1] == total
            for prev, nxt in zip(chunks, chunks[1:]):
                assert prev.frames[1] == nxt.frames[0]
            for c in chunks:
                window = int(frame_lengths(torch.tensor([c.num_samples]), conv)[0])
                assert c.start % 320 == 0 and c.start + c.num_samples <= s
                assert 0 <= c.keep[0] < c.keep[1] <= window
                assert c.keep[1] - c.keep[0] == c.frames[1] - c.frames[0]
                assert c.start // 320 + c.keep[0] == c.frames[0]  # window frame -> file frame
                if len(chunks) > 1:
                    assert c.frames[1] - c.frames[0] <= chunk_frames
                    assert window <= chunk_frames + 2 * context


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_extracted_frame_counts_equal_the_formula(norm):
    model = _model(norm, norm == "layer")
    chunked = FeatureExtractor(model, layers="last,encoder", device="cpu", normalize=True,
                               chunk_seconds=0.3, context_seconds=0.1)
    gen = torch.Generator().manual_seed(0)
    for s in [400, 401, 719, 720, 4_799, 8_000, 12_345, 19_200, 20_000, 33_333]:
        features = chunked.extract(torch.randn(s, generator=gen))
        expected = int(model.backbone.frame_lengths(torch.tensor([s]))[0])
        assert features.num_frames == expected, s
        assert features.arrays["layer_2"].shape == (expected, 64)
        assert features.arrays["encoder"].shape == (expected, 32)
    with pytest.raises(ValueError, match="shorter than the model's receptive field"):
        chunked.extract(torch.randn(399))


def test_group_norm_statistics_from_span_moments_equal_the_conv_output():
    model = _model("group")
    conv = model.backbone.feature_encoder.layers[0].conv
    x = torch.randn(50_003, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.05  # (S,)
    reads = []

    def read(start, n):
        reads.append(n)
        return x[start:start + n]

    moments = accumulate_moments(read, x.numel(), kernel=10, stride=5, span_samples=4_000)
    assert max(reads) <= 4_000 + 10 and len(reads) > 10  # span by span
    mean, var = moments.waveform_stats()
    assert mean == pytest.approx(float(x.double().mean()), rel=1e-9)
    assert var == pytest.approx(float(x.double().var(unbiased=False)), rel=1e-9)
    scale = 1 / (var + 1e-5) ** 0.5
    normed = F.layer_norm(x, x.shape, eps=1e-5)  # what load_audio(normalize=True) does
    with torch.no_grad():
        y = conv(normed[None, None]).double()[0]  # (C, T0)
    stats = group_norm_stats(moments.normalized(mean, scale), conv.weight[:, 0], conv.bias)
    torch.testing.assert_close(stats[:, 0].double(), y.mean(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats[:, 1].double(), y.var(-1, unbiased=False), atol=1e-5,
                               rtol=1e-4)


@pytest.mark.parametrize("norm,layer_norm_first", [("group", False), ("layer", True)])
def test_chunked_features_match_the_whole_file(speech, norm, layer_norm_first):
    """40 s of speech in 8 s chunks with 2 s of context either side, against the whole file.

    The conv features and the context network's input (layer_0) are exact: whole-file
    statistics, and the context covers the positional convolution. Transformer layers attend
    over the whole file, so they differ; measured on this random model per frame (relative L2):
    at most 6.7 %, median 3.3 % at the last layer; a one-frame misalignment would be ~100 %.
    Every kept frame is at least the context (2 s) away from its window's edges.
    """
    model = _model(norm, layer_norm_first)
    wav = load_audio(speech[1][-1])  # (S,) ~40 s
    whole = FeatureExtractor(model, layers="all,encoder", device="cpu", normalize=True,
                             chunk_seconds=1000).extract(wav).arrays
    chunked_extractor = FeatureExtractor(model, layers="all,encoder", device="cpu",
                                         normalize=True, chunk_seconds=8, context_seconds=2)
    assert len(chunked_extractor.plan(wav.numel())) == 5
    chunked = chunked_extractor.extract(wav).arrays
    for name in whole:
        a, b = whole[name], chunked[name]
        assert a.shape == b.shape
        error = (a - b).norm(dim=-1) / a.norm(dim=-1)  # (T,) per-frame relative error
        if name in ("encoder", "layer_0"):
            assert error.max() < 1e-4, (name, error.max())
        else:
            assert error.max() < 0.15 and error.median() < 0.05, (name, error.max())
    shifted = (whole["layer_2"][1:] - whole["layer_2"][:-1]).norm(dim=-1) / whole["layer_2"][1:].norm(dim=-1)
    assert shifted.median() > 0.5  # the tolerance above would catch a misaligned stitch


# ---------------------------------------------------------------------------------------------
# The folder pipeline


def test_api_and_command_agree_and_outputs_mirror_the_tree(checkpoint, speech, tmp_path, capsys):
    root, files = speech
    out = tmp_path / "features"
    code = main(["extract", str(checkpoint), str(root), str(out), "--layer", "1,last",
                 "--chunk-seconds", "8", "--context-seconds", "2", "--workers", "0",
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "extracted 7 of 7 files" in printed and "failures: none" in printed
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == sorted(
        [f"sub/{f.stem}.npy" for f in files[:-1]] + ["long.npy"])
    extractor = FeatureExtractor.from_checkpoint(checkpoint, layers="1,last", device="cpu",
                                                 chunk_seconds=8, context_seconds=2)
    assert extractor.normalize  # from the checkpoint's run config
    index = read_index(out)
    assert len(index) == 7
    for entry in index:
        api = extractor(entry["path"])  # (2, T, 64): the stacked npy layout
        stored = np.load(out / entry["output"])
        assert stored.shape == api.shape == (2, entry["num_frames"], 64)
        np.testing.assert_allclose(stored, api.numpy(), atol=1e-4, rtol=1e-4)
        assert entry["frame_rate"] == 50.0 and entry["layers"] == ["layer_1", "layer_2"]
        assert entry["arrays"]["layer_2"]["shape"] == [entry["num_frames"], 64]
        assert entry["num_frames"] == extractor.num_frames(entry["num_samples"])
    long = next(e for e in index if e["output"] == "long.npy")
    assert long["duration"] > 35  # chunked in the pipeline too
    settings = json.loads((out / "extract.json").read_text())
    assert settings["layers"] == ["layer_1", "layer_2"] and settings["normalize"] is True
    assert (out / "failures.jsonl").read_text() == ""
    assert not (out / ".tmp").exists()


@pytest.mark.slow
def test_decoding_in_worker_processes_gives_the_same_features(checkpoint, speech, tmp_path):
    root, _ = speech
    common = dict(layers="last", device="cpu", chunk_seconds=8, context_seconds=2,
                  progress=False)
    inline = extract_folder(checkpoint, root, tmp_path / "inline", num_workers=0, **common)
    spawned = extract_folder(checkpoint, root, tmp_path / "spawned", num_workers=1,
                             batch_seconds=10, **common)
    assert inline.extracted == spawned.extracted == 7 and spawned.ok
    for run in (inline, spawned):  # where the time went: every phase, summing to the wall time
        assert set(run.timings) == {"setup", "wait_data", "model", "wait_device", "dispatch",
                                    "wait_writers", "index"}
        assert all(t >= 0 for t in run.timings.values())
        assert 0.5 * run.seconds <= sum(run.timings.values()) <= run.seconds + 0.01
    assert spawned.timings["model"] > 0 and inline.timings["wait_data"] > 0
    a, b = _read_all(tmp_path / "inline"), _read_all(tmp_path / "spawned")
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_allclose(a[path]["layer_2"], b[path]["layer_2"], atol=1e-4, rtol=1e-4)


def test_formats_read_back_equal_to_the_api(checkpoint, speech, tmp_path):
    root, files = speech
    extractor = FeatureExtractor.from_checkpoint(checkpoint, layers="encoder,codes,last",
                                                 device="cpu")
    api = extractor.extract(files[0]).arrays
    for fmt in ("pt", "safetensors"):
        out = tmp_path / fmt
        summary = extract_folder(extractor, root / "sub", out, fmt=fmt, num_workers=0,
                                           progress=False)
        assert summary.ok and summary.extracted == 6
        entry = next(e for e in read_index(out) if e["path"] == str(files[0]))
        assert entry["output"].endswith(f".{fmt}")
        stored = load_entry(out, entry)
        assert list(stored) == ["encoder", "codes", "layer_2"]
        for name, value in api.items():
            np.testing.assert_allclose(np.asarray(stored[name]), value.numpy(), atol=1e-4)
        assert stored["codes"].dtype == np.int64
    from safetensors import safe_open

    with safe_open(tmp_path / "safetensors" / f"{files[0].stem}.safetensors", "np") as f:
        assert f.metadata() == {"frame_rate": "50.0", "layers": "encoder,codes,layer_2"}
    with pytest.raises(ValueError, match="use --format pt or safetensors"):
        extract_folder(extractor, root, tmp_path / "npy", progress=False)


@pytest.mark.slow
def test_shards_and_index_read_back(checkpoint, speech, tmp_path):
    root, files = speech
    extractor = FeatureExtractor.from_checkpoint(checkpoint, layers="encoder,codes,last",
                                                 device="cpu", chunk_seconds=8, context_seconds=2)
    out = tmp_path / "shards"
    summary = extract_folder(extractor, root, out, shards=True, shard_mb=0.2, dtype="float16",
                                       num_workers=0, progress=False)
    assert summary.ok and summary.extracted == 7
    shards = sorted((out / "shards").glob("shard-*.bin"))
    assert len(shards) >= 3 and all(s.with_suffix(".jsonl").is_file() for s in shards)
    index = read_index(out)
    assert {e["path"] for e in index} == {str(f) for f in files}
    for entry in index:
        assert entry["format"] == "shard" and entry["output"].startswith("shards/shard-")
        stored = load_entry(out, entry)
        api = extractor.extract(entry["path"]).arrays
        assert stored["layer_2"].dtype == np.float16 and stored["encoder"].dtype == np.float16
        for name in ("encoder", "layer_2"):
            np.testing.assert_allclose(stored[name].astype(np.float32), api[name].numpy(),
                                       atol=2e-2, rtol=1e-2)
        np.testing.assert_array_equal(stored["codes"], api["codes"].numpy())
    again = extract_folder(extractor, root, out, shards=True, shard_mb=0.2, dtype="float16",
                                     num_workers=0, progress=False)
    assert again.extracted == 0 and again.skipped == 7
    assert len(read_index(out)) == 7


def test_bad_files_are_listed_and_the_good_ones_extracted(checkpoint, speech, tmp_path, capsys):
    root, files = speech
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in files[:3]:
        (corpus / f.name).write_bytes(f.read_bytes())
    (corpus / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (corpus / "empty.flac").write_bytes(b"")
    sf.write(corpus / "short.wav", np.zeros(300, dtype=np.float32), SR)  # < receptive field
    data = files[0].read_bytes()
    (corpus / "truncated.flac").write_bytes(data[: len(data) // 2])  # header promises more
    out = tmp_path / "out"
    assert main(["extract", str(checkpoint), str(corpus), str(out), "--workers", "0",
                 "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "extracted 3 of 7 files" in printed and "FAILED: 4 files" in printed
    failures = {Path(r["path"]).name: r["reason"]
                for r in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert set(failures) == {"corrupt.wav", "empty.flac", "short.wav", "truncated.flac"}
    assert failures["short.wav"].startswith("too short")
    assert "expected" in failures["truncated.flac"] or "decode" in failures["truncated.flac"]
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(f"{f.stem}.npy" for f in files[:3])
    assert len(read_index(out)) == 3


def test_rerun_with_other_settings_is_refused(checkpoint, speech, tmp_path, capsys):
    root, _ = speech
    out = tmp_path / "out"
    args = ["extract", str(checkpoint), str(root / "sub"), str(out), "--workers", "0",
            "--no-progress"]
    assert main(args) == 0
    assert main([*args, "--layer", "1"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(args) == 0  # the same settings again: everything skipped
    assert "0 of 6 files" in capsys.readouterr().out


def test_long_files_are_read_span_by_span(checkpoint, tmp_path, monkeypatch):
    """Memory does not grow with a file's length: a 3-minute file is read, batched and
    stitched in pieces no larger than one chunk window or one statistics span."""
    import audio_ssl.extract.plan as plan

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    noise = np.random.default_rng(0).standard_normal(180 * SR).astype(np.float32) * 0.1
    sf.write(corpus / "three_minutes.wav", noise, SR)
    reads, batches = [], []
    real_read = plan._read_span
    monkeypatch.setattr(plan, "_read_span",
                        lambda path, start, n: reads.append(n) or real_read(path, start, n))
    real_collate = plan.collate
    monkeypatch.setattr(plan, "collate",
                        lambda rows: batches.append(sum(r.numel() for r in rows))
                        or real_collate(rows))
    extractor = FeatureExtractor.from_checkpoint(checkpoint, layers="last", device="cpu",
                                                 chunk_seconds=10, context_seconds=2,
                                                 batch_seconds=30)
    summary = extract_folder(extractor, corpus, tmp_path / "out", num_workers=0, progress=False)
    assert summary.ok
    window = 14 * SR + 400  # chunk + 2 * context (+ the receptive field)
    assert len(reads) > 18 and max(reads) <= max(window, 320_000 + 10)
    assert max(batches) <= 30 * SR
    stored = np.load(tmp_path / "out" / "three_minutes.npy")
    assert stored.shape == (extractor.num_frames(180 * SR), 64)


def _cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "audio_ssl.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_resume_after_a_kill_redoes_nothing_and_leaves_no_partial_file(checkpoint, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        sf.write(corpus / f"f{i:02d}.flac", rng.standard_normal(4 * SR).astype(np.float32) * 0.1,
                 SR)
    out = tmp_path / "out"
    args = ["extract", str(checkpoint), str(corpus), str(out), "--workers", "0",
            "--precision", "32", "--batch-seconds", "4", "--no-progress"]
    victim = _cli(args)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.npy"))) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    assert 3 <= len(before) < 40, victim.stderr.read()[-2000:]
    reference = FeatureExtractor.from_checkpoint(checkpoint, device="cpu")
    for name in before:  # every final name holds a complete file
        np.testing.assert_allclose(np.load(out / name), reference(corpus / name.replace(
            ".npy", ".flac")).numpy(), atol=1e-4, rtol=1e-4)
    summary = extract_folder(checkpoint, corpus, out, device="cpu", num_workers=0,
                             progress=False)
    assert summary.ok
    assert summary.skipped == len(before) and summary.extracted == 40 - len(before)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy") if p.name in before} == before
    assert len(read_index(out)) == 40
    assert not (out / ".tmp").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_the_docs_example_runs(checkpoint, speech, tmp_path, monkeypatch):
    """docs/extraction.md's Python example on real speech, with the shapes it promises."""
    import re

    page = (Path(__file__).resolve().parents[2] / "docs" / "extraction.md").read_text()
    block = re.search(r"```py\n(.*?)```", page, re.S).group(1)
    root, files = speech
    block = (block.replace("runs/demo/pretrain/checkpoints/last.ckpt", str(checkpoint))
             .replace("speech.flac", str(files[0])).replace("my_audio/", str(root / "sub")))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "docs/extraction.md", "exec"), scope)
    assert scope["summary"].ok and scope["summary"].extracted == 6
    assert scope["features"].shape == (149, 64)  # 48,000 samples at 50 Hz
    assert set(scope["arrays"]) == {"layer_2"}
