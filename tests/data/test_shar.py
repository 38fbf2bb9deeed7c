"""Shard folders: writing (lhotse reads them back, exactly), resumable writing, streaming
(exact resume, epochs that cover the corpus), storage faults, S3 via moto, pretraining."""

from __future__ import annotations

import gzip
import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from audio_ssl.config import DataConfig
from audio_ssl.data import load_audio, storage
from audio_ssl.data import shard_writer
from audio_ssl.data.shard_stream import (
    ShardPlan, ShardStreamDataset, ShardUnreadable, fetch_shard, make_shard_dataloader,
    missing_shards,
)
from audio_ssl.data.shard_writer import write_shards
from audio_ssl.data.shards import INDEX_NAME, read_index, recording_name

CFG = DataConfig(max_batch_samples=100_000, max_crop_samples=40_000, min_samples=16_000,
                 num_buckets=2, num_workers=0)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    """The shared tiny/ corpus (23 files) in shards of 5, from its manifest (transcripts)."""
    from conftest import DATA  # tests/ is on the path (pytest's rootdir conftest)

    if not (DATA / "tiny").is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    out = tmp_path_factory.mktemp("shards") / "tiny"
    write_shards(DATA / "tiny" / "manifest.jsonl", str(out), shard_size=5, progress=False)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# -- writing ------------------------------------------------------------------------------------


def test_lhotse_reads_the_shards_back_sample_for_sample(tiny_shards, data_dir):
    lhotse = pytest.importorskip("lhotse")
    manifest = [json.loads(line) for line in
                (data_dir / "tiny" / "manifest.jsonl").read_text().splitlines()]
    by_id = {Path(row["audio"]).stem: row for row in manifest}
    cuts = list(lhotse.CutSet.from_shar(in_dir=tiny_shards / "shar"))
    assert sorted(c.id for c in cuts) == sorted(by_id) and len(cuts) == 23
    for cut in cuts:
        original, sr = sf.read(data_dir / "tiny" / by_id[cut.id]["audio"], dtype="float32",
                               always_2d=True)  # (N, C)
        assert cut.sampling_rate == sr
        np.testing.assert_array_equal(cut.load_audio(), original.T)  # flac: lossless
        assert cut.supervisions[0].text == by_id[cut.id]["text"]
        assert cut.supervisions[0].speaker == by_id[cut.id]["speaker"]
    index = read_index(str(tiny_shards))
    assert index.num_shards == 5 and [c.shard for c in index.cuts] == [k // 5 for k in range(23)]
    assert {c.id: c.frames for c in index.cuts} == {c.id: c.num_samples for c in cuts}


def test_channels_bit_depths_and_bad_files(tmp_path):
    """Stereo 8 kHz and 24-bit files keep their samples exactly (lhotse and our own decode of a
    crop agree with the original's); a bad file is left out and listed once."""
    lhotse = pytest.importorskip("lhotse")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    stereo = rng.integers(-2**15, 2**15, (24_000, 2)).astype(np.int16)
    sf.write(src / "stereo.wav", stereo, 8000, subtype="PCM_16")
    deep = (rng.integers(-2**23, 2**23, (40_000, 1)) * 256).astype(np.int32)
    sf.write(src / "deep.flac", deep, 16000, subtype="PCM_24")
    (src / "sub").mkdir()
    (src / "sub" / "bad.flac").write_bytes(b"fLaC" + bytes(64))
    result = write_shards(str(src), str(tmp_path / "out"), shard_size=2, progress=False)
    assert (result.cuts, result.rejected, result.shards) == (2, 1, 1)
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").open()]
    assert [r["path"] for r in rejected] == [str(src / "sub" / "bad.flac")]
    cuts = {c.id: c for c in lhotse.CutSet.from_shar(in_dir=tmp_path / "out" / "shar")}
    assert type(cuts["stereo"]).__name__ == "MultiCut"
    np.testing.assert_array_equal(cuts["stereo"].load_audio(),
                                  sf.read(src / "stereo.wav", dtype="float32")[0].T)
    np.testing.assert_array_equal(cuts["deep"].load_audio()[0],
                                  sf.read(src / "deep.flac", dtype="float32")[0])
    # our stream decodes a crop exactly as a crop of the original file
    index = read_index(str(tmp_path / "out"))
    cfg = replace(CFG, min_samples=8000, max_crop_samples=20_000, max_batch_samples=20_000)
    plan = ShardPlan(index, cfg, seed=0)
    ds = ShardStreamDataset(plan, sample_rate=16000, normalize=False)
    for request, batch in zip(plan.requests(), itertools.islice(iter(ds), 4)):
        for row, i, start in zip(batch.waveforms, request.request.indices,
                                 request.request.starts):
            expected = load_audio(index.cuts[i].path, start=start,
                                  num_samples=request.request.num_samples)
            assert torch.equal(row, expected)


def test_killed_writing_resumes_to_the_same_bytes(tmp_path, data_dir, monkeypatch):
    source = data_dir / "tiny" / "manifest.jsonl"
    write_shards(source, str(tmp_path / "straight"), shard_size=3, progress=False)

    encode, calls = shard_writer.encode_audio, itertools.count()

    def killed_midway(path, audio_format):  # dies on the 8th file: inside shard 2
        if next(calls) == 7:
            raise KeyboardInterrupt
        return encode(path, audio_format)

    monkeypatch.setattr(shard_writer, "encode_audio", killed_midway)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        write_shards(source, str(out), shard_size=3, progress=False)
    names = set(_files(out))
    assert recording_name(1) in names and recording_name(2) not in names  # whole or absent
    assert INDEX_NAME not in names and not any(n.startswith(".") for n in names)
    monkeypatch.setattr(shard_writer, "encode_audio", encode)
    result = write_shards(source, str(out), shard_size=3, progress=False)
    assert (result.skipped, result.written, result.shards) == (2, 6, 8)
    assert _files(out) == _files(tmp_path / "straight")  # byte for byte
    with pytest.raises(FileExistsError, match="shard_size"):  # another plan: refused
        write_shards(source, str(out), shard_size=4, progress=False)


# -- streaming ----------------------------------------------------------------------------------


def _sequence(requests, index, n):
    return [(r.request.position, tuple(index.cuts[i].id for i in r.request.indices),
             r.request.starts) for r in itertools.islice(requests, n)]


@pytest.mark.parametrize("world_size, streams", [(1, 1), (2, 3)])
def test_resumed_plan_continues_the_uninterrupted_sequence(tiny_shards, world_size, streams):
    index = read_index(str(tiny_shards))
    for rank in range(world_size):
        plan = ShardPlan(index, CFG, seed=5, rank=rank, world_size=world_size, streams=streams)
        straight = _sequence(plan.requests(0), index, 40)
        for start in (1, 7, 13, 29):  # within epochs and across their boundaries
            fresh = ShardPlan(index, CFG, seed=5, rank=rank, world_size=world_size,
                              streams=streams)
            assert _sequence(fresh.requests(start), index, 40 - start) == straight[start:]


def test_every_epoch_covers_every_usable_cut_once_per_stream_shard(tiny_shards):
    index = read_index(str(tiny_shards))
    usable = {c.id for c in index.cuts if c.samples_at(16000) >= CFG.min_samples}
    for epoch in range(3):
        seen = []
        for rank in range(2):
            plan = ShardPlan(index, CFG, seed=1, rank=rank, world_size=2, streams=1)
            per_rank = plan.per_stream(epoch)
            first = sum(plan.per_stream(e) for e in range(epoch))
            batches = list(itertools.islice(plan.requests(first), per_rank))
            assert {b.request.epoch for b in batches} == {epoch}
            seen += [index.cuts[i].id for b in batches for i in b.request.indices]
        assert set(seen) == usable  # nothing dropped; padding repeats a few


def test_loader_workers_resume_in_order(tiny_shards):
    """With two workers (one stream each) a loader started at an odd position yields the
    uninterrupted run's batches: same cuts, same samples."""
    index = read_index(str(tiny_shards))
    cfg = replace(CFG, num_workers=2)
    loader, plan = make_shard_dataloader(index, cfg, seed=3)
    straight = list(itertools.islice(iter(loader), 12))
    assert [b.position for b in straight] == list(range(12))
    resumed_loader, _ = make_shard_dataloader(index, cfg, seed=3, position=5)
    resumed = list(itertools.islice(iter(resumed_loader), 7))
    for a, b in zip(straight[5:], resumed):
        assert (a.position, a.paths) == (b.position, b.paths)
        assert torch.equal(a.waveforms, b.waveforms)
    expected = _sequence(plan.requests(0), index, 12)
    assert [tuple(b.paths) for b in straight] == [ids for _, ids, _ in expected]
    assert [tuple(b.starts) for b in straight] == [starts for _, _, starts in expected]


# -- storage faults -----------------------------------------------------------------------------


def test_transient_errors_are_retried_with_backoff():
    slept, attempts = [], itertools.count()

    def flaky():
        if next(attempts) < 2:
            raise ConnectionError("connection reset")
        return "ok"

    assert storage.with_retries(flaky, "x", sleep=slept.append) == "ok"
    assert slept == [0.5, 1.0]
    with pytest.raises(FileNotFoundError):  # not transient: raised at once
        storage.with_retries(lambda: open("/nonexistent/x"), "x", sleep=slept.append)
    assert len(slept) == 2
    with pytest.raises(TimeoutError):
        storage.with_retries(lambda: (_ for _ in ()).throw(TimeoutError("slow")), "x",
                             retries=3, sleep=slept.append)
    assert slept[2:] == [0.5, 1.0, 2.0]


def test_corrupt_and_missing_shards_are_named_once_and_skipped(tiny_shards, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_shards, broken)
    tar = broken / recording_name(1)
    tar.write_bytes(tar.read_bytes()[:30_000])  # truncated mid-member
    (broken / recording_name(3)).unlink()
    good, bad = read_index(str(tiny_shards)), read_index(str(broken))
    assert missing_shards(bad) == [bad.shard_url(3)]
    plan = ShardPlan(good, CFG, seed=2)
    n = 2 * plan.per_stream(0)
    a = list(itertools.islice(iter(ShardStreamDataset(plan, sample_rate=16000,
                                                      normalize=False)), n))
    b = list(itertools.islice(iter(ShardStreamDataset(ShardPlan(bad, CFG, seed=2),
                                                      sample_rate=16000, normalize=False)), n))
    named = [f.path for batch in b for f in batch.shard_failures]
    assert sorted(named) == [bad.shard_url(1), bad.shard_url(3)]  # once each, over two epochs
    shards = [r.shard for r in itertools.islice(plan.requests(), n)]
    for shard, x, y in zip(shards, a, b):
        assert x.position == y.position  # positions stay exact
        if shard in (1, 3):
            assert len(y) == 0 and y.waveforms.shape == (0, x.waveforms.shape[1])
        else:
            assert x.paths == y.paths and torch.equal(x.waveforms, y.waveforms)


def _members_streamed(tar_path: Path, suffix: str) -> dict[str, bytes]:
    """A second reading of a recording tar: tarfile's sequential stream, member by member."""
    import tarfile

    with tarfile.open(tar_path, mode="r|") as tar:
        return {i.name[: -len(suffix)]: tar.extractfile(i).read() for i in tar
                if i.isfile() and i.name.endswith(suffix)}


def test_fetched_members_equal_a_streamed_reading_and_truncation_is_named(tiny_shards,
                                                                           tmp_path):
    import tarfile

    index = read_index(str(tiny_shards))
    seen = 0
    for shard in range(index.num_shards):
        fmt = index.shard_format(shard)
        got = fetch_shard(index.shard_url(shard), fmt)
        want = _members_streamed(Path(index.shard_url(shard)), f".{fmt}")
        assert {k: bytes(v) for k, v in got.items()} == want
        seen += len(got)
    assert seen == 23
    # cut inside a member's audio (the second, the last): its header is whole, its bytes not
    tar, first = tmp_path / "cut.tar", Path(index.shard_url(0))
    original = first.read_bytes()
    with tarfile.open(first) as t:
        members = t.getmembers()
    for m in (members[1], members[-1]):
        tar.write_bytes(original[: m.offset_data + m.size // 2])
        with pytest.raises(ShardUnreadable, match="^unreadable: ReadError: unexpected end"):
            fetch_shard(str(tar), index.shard_format(0))
    with pytest.raises(ShardUnreadable, match="^missing: "):
        fetch_shard(str(tmp_path / "absent.tar"), index.shard_format(0))


def test_shards_leave_out_the_files_a_folder_leaves_out_as_too_short(tiny_shards, data_dir):
    """Pretraining from shards and from the manifest they were made of: the same files too
    short, for the same reason (the one rule), the shard's naming its cut too."""
    from audio_ssl.config import preset
    from audio_ssl.data import scan
    from audio_ssl.tasks.run import _read_source

    cfg = preset("tiny")
    cfg = replace(cfg, data=replace(cfg.data, min_samples=4 * 16_000))  # 4 s: 8 of 23 files
    _, from_shards = _read_source(str(tiny_shards), cfg, None, progress=False)
    _, from_manifest = scan(data_dir / "tiny" / "manifest.jsonl", progress=False,
                            min_samples=4 * 16_000, sample_rate=16_000)
    want = {r.path: r.reason for r in from_manifest}
    assert len(want) == 8 and all(r.startswith("too short: ") for r in want.values())
    index = read_index(str(tiny_shards))
    cut_of = {c.path: c.id for c in index.cuts}
    assert {r.path: r.reason for r in from_shards} == {
        path: f"{reason}, cut {cut_of[path]}" for path, reason in want.items()}


# -- object storage (moto's S3 server on loopback) and pretraining --------------------------------


FAST = """
train: {log_every: 1, checkpoint_every: 3}
data: {num_workers: 0, max_batch_samples: 64000, max_crop_samples: 16000}
"""


def test_an_object_is_read_in_one_request(s3, caplog, monkeypatch):
    """A shard is one GET: no size lookup first, no split into ranged reads, at any size."""
    import logging

    fs, _ = storage.filesystem("s3://corpus/x")
    data = np.random.default_rng(0).bytes(3 * 2**20)
    fs.pipe_file("corpus/x/blob", data)
    fs.invalidate_cache()
    caplog.set_level(logging.DEBUG, logger="s3fs")
    monkeypatch.setattr(fs, "default_block_size", 2**20)  # s3fs's way: a HEAD, 3 ranged GETs
    assert storage.read_bytes("s3://corpus/x/blob") == data
    calls = [r.getMessage().split(" - ")[0] for r in caplog.records
             if r.name == "s3fs" and r.getMessage().startswith("CALL: ")]
    assert calls == ["CALL: get_object"]


@pytest.mark.slow
def test_s3_round_trip_and_pretraining_from_it(s3, tiny_shards, data_dir, tmp_path, capsys):
    from audio_ssl.cli import main

    url = "s3://corpus/tiny"
    assert main(["shard", str(data_dir / "tiny" / "manifest.jsonl"), url, "--shard-size", "5",
                 "--no-progress"]) == 0
    assert "23 files" in capsys.readouterr().out
    fs, _ = storage.filesystem(url)
    stored = sorted(p.removeprefix("corpus/tiny/") for p in fs.find("corpus/tiny"))
    assert stored == sorted(_files(tiny_shards))
    for name, data in _files(tiny_shards).items():  # the same bytes as written locally
        assert fs.cat_file(f"corpus/tiny/{name}") == data, name
    assert main(["shard", str(data_dir / "tiny" / "manifest.jsonl"), url, "--shard-size", "5",
                 "--no-progress"]) == 0
    assert "0 written, 5 already complete" in capsys.readouterr().out

    config = tmp_path / "fast.yaml"
    config.write_text(FAST)
    run = tmp_path / "run"
    assert main(["pretrain", url, "--output", str(run), "--max-steps", "3", "--config",
                 str(config), "--no-progress"]) == 0
    assert "pretrained 3 steps on 23 files" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["failed_shards"] == 0


@pytest.mark.slow
def test_pretraining_from_shards_resumes_exactly_and_counts_a_missing_shard(
        tiny_shards, tmp_path, capsys):
    """Split in two (3 steps, then --resume to 6) with two loader workers: the steps after the
    resume have the uninterrupted run's losses; a missing shard is named, counted, skipped."""
    import shutil

    from audio_ssl.cli import main

    config = tmp_path / "fast.yaml"
    # the schedule of 6 steps in both runs (it follows --max-steps otherwise)
    config.write_text(FAST.replace("num_workers: 0", "num_workers: 2")
                      + "optim: {schedule_steps: 6}\n")
    common = ["--config", str(config), "--no-progress", "--accelerator", "cpu"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["pretrain", str(tiny_shards), "--output", str(straight), "--max-steps", "6",
                 *common]) == 0
    assert main(["pretrain", str(tiny_shards), "--output", str(split), "--max-steps", "3",
                 *common]) == 0
    assert main(["pretrain", str(tiny_shards), "--output", str(split), "--max-steps", "6",
                 "--resume", *common]) == 0

    def rows(run):
        return {json.loads(line)["step"]: json.loads(line)
                for line in (run / "metrics.jsonl").read_text().splitlines()}

    a, b = rows(straight), rows(split)
    assert sorted(a) == sorted(b) == list(range(6))
    for step in range(3, 6):
        for key in ("train/loss", "train/accuracy", "train/lr"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)

    holed = tmp_path / "holed"
    shutil.copytree(tiny_shards, holed)
    (holed / recording_name(2)).unlink()
    capsys.readouterr()
    run = tmp_path / "holed_run"
    assert main(["pretrain", str(holed), "--output", str(run), "--max-steps", "12",
                 *common]) == 0
    out = capsys.readouterr().out
    assert "1 shard(s) missing or unreadable" in out
    failures = [json.loads(line) for line in (run / "decode_failures.jsonl").open()]
    assert [(f["path"], f["kind"]) for f in failures] == [(str(holed / recording_name(2)),
                                                           "shard")]
    assert json.loads((run / "summary.json").read_text())["failed_shards"] == 1


def test_a_malformed_index_is_named(tmp_path):
    from audio_ssl.data.shards import ShardCut, encode_index, index_header

    cut = ShardCut("a", 0, 16000, 16000, 1, "/a.flac")
    (tmp_path / INDEX_NAME).write_bytes(encode_index(index_header(1, 1, "flac", 1), [cut]))
    assert read_index(str(tmp_path)).cuts == (cut,)
    text = gzip.decompress((tmp_path / INDEX_NAME).read_bytes()).decode()
    for bad in (text.replace('"channels": 1, ', ""), text.replace('"path"', '"paht"'),
                text + "[1, 2]\n", text[:-3] + "\n"):
        (tmp_path / INDEX_NAME).write_bytes(gzip.compress(bad.encode()))
        with pytest.raises(ValueError, match=f"{INDEX_NAME}: malformed index"):
            read_index(str(tmp_path))
