"""scan(): folders, manifests, lists, rejections, the header cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_ssl.data import (
    AudioItem,
    NoAudioError,
    Rejected,
    load_audio,
    read_manifest,
    scan,
    write_manifest,
    write_rejected,
)
from audio_ssl.data.manifest import cache_path


def _tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None] * np.linspace(1, 0.5, channels)[None]
    return x.astype(np.float32)  # (N, C)


def make_corpus(root: Path) -> dict[str, tuple[int, int, int]]:
    """A folder of mixed audio; returns {relative path: (frames, sr, channels)} of good files."""
    good = {
        "a.wav": (1.0, 16000, 1),
        "sub/b.flac": (0.75, 8000, 2),
        "sub/deeper/c.FLAC": (0.6, 44100, 1),
        "d.ogg": (0.8, 48000, 2),
    }
    out = {}
    for rel, (sec, sr, ch) in good.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        x = _tone(sec, sr, ch)
        sf.write(p, x, sr, format="OGG" if rel.endswith(".ogg") else None)
        out[rel] = (len(x), sr, ch)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    (root / "zero_bytes.flac").write_bytes(b"")
    sf.write(root / "no_frames.wav", np.zeros((0, 1), np.float32), 16000)
    sf.write(root / "short.wav", _tone(0.2, 16000), 16000)
    (root / "notes.txt").write_text("not audio")
    (root / ".hidden").mkdir()
    sf.write(root / ".hidden" / "x.wav", _tone(1.0, 16000), 16000)
    sf.write(root / "._resource.wav", _tone(1.0, 16000), 16000)
    return out


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    return root, make_corpus(root)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def count_info(monkeypatch):
    """Count soundfile.info calls (header reads)."""
    calls = []
    real = sf.info

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sf, "info", counting)
    return calls


def test_scan_folder_mixed(corpus, cache_dir):
    root, good = corpus
    items, rejected = scan(root, cache_dir=cache_dir, progress=False, min_samples=8000)
    # short.wav (0.2 s) is rejected for its length; the rest of the good files come back sorted
    assert [it.path for it in items] == sorted(str(root / rel) for rel in good)
    for it in items:
        frames, sr, ch = good[os.path.relpath(it.path, root)]
        assert (it.frames, it.sample_rate, it.channels) == (frames, sr, ch)
        assert os.path.isabs(it.path)
        assert it.duration == pytest.approx(frames / sr)
        assert it.samples_at(16000) == len(load_audio(it.path, sample_rate=16000))
    reasons = {os.path.basename(r.path): r.reason for r in rejected}
    assert set(reasons) == {"corrupt.wav", "zero_bytes.flac", "no_frames.wav", "short.wav"}
    assert reasons["corrupt.wav"].startswith("unreadable: ")
    assert reasons["zero_bytes.flac"].startswith("unreadable: ")
    assert reasons["no_frames.wav"] == "empty: 0 frames"
    assert reasons["short.wav"].startswith("too short: 0.20 s < minimum 0.50 s")


def test_scan_without_min_keeps_short(corpus, cache_dir):
    root, good = corpus
    items, rejected = scan(root, cache_dir=cache_dir, progress=False, num_workers=1)
    assert str(root / "short.wav") in {it.path for it in items}
    assert len(rejected) == 3


def test_cache_reuse_and_invalidation(corpus, cache_dir, count_info):
    root, good = corpus
    for p in ("corrupt.wav", "zero_bytes.flac", "no_frames.wav"):
        (root / p).unlink()
    before = sorted(os.listdir(root))
    items1, _ = scan(root, cache_dir=cache_dir, progress=False)
    assert len(count_info) == len(items1) == 5
    assert sorted(os.listdir(root)) == before  # nothing written into the source
    cfile = cache_path(root, cache_dir)
    assert cfile.is_file() and [p.name for p in cache_dir.iterdir()] == [cfile.name]

    count_info.clear()
    items2, _ = scan(root, cache_dir=cache_dir, progress=False)
    assert count_info == []  # every header came from the cache
    assert items2 == items1

    # change one file, delete one, add one: exactly the changed and new files are read
    changed, deleted, added = root / "a.wav", root / "sub" / "b.flac", root / "sub" / "new.wav"
    sf.write(changed, _tone(2.0, 16000), 16000)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    deleted.unlink()
    sf.write(added, _tone(0.5, 22050), 22050)
    count_info.clear()
    items3, _ = scan(root, cache_dir=cache_dir, progress=False)
    assert sorted(count_info) == sorted([str(changed), str(added)])
    by_path = {it.path: it for it in items3}
    assert by_path[str(changed)].frames == 32000
    assert str(deleted) not in by_path and by_path[str(added)].sample_rate == 22050
    count_info.clear()
    assert scan(root, cache_dir=cache_dir, progress=False)[0] == items3
    assert count_info == []


def test_cache_never_holds_bad_files(corpus, cache_dir, count_info):
    root, _ = corpus
    items, rejected = scan(root, cache_dir=cache_dir, progress=False, min_samples=8000)
    cached = [json.loads(line) for line in cache_path(root, cache_dir).read_text().splitlines()]
    cached_paths = {c["path"] for c in cached}
    assert {"path", "frames", "sample_rate", "channels", "size", "mtime"} <= cached[0].keys()
    for bad in ("corrupt.wav", "zero_bytes.flac", "no_frames.wav"):
        assert str(root / bad) not in cached_paths
    assert str(root / "short.wav") in cached_paths  # good audio; min_samples applies per scan
    count_info.clear()
    items2, rejected2 = scan(root, cache_dir=cache_dir, progress=False, min_samples=8000)
    assert (items2, rejected2) == (items, rejected)
    assert len(count_info) == 3  # only the bad files are read again

    # a good file that turns corrupt is dropped, and leaves the cache
    (root / "a.wav").write_bytes(b"not a wav any more")
    items3, rejected3 = scan(root, cache_dir=cache_dir, progress=False)
    assert str(root / "a.wav") in {r.path for r in rejected3}
    assert str(root / "a.wav") not in cache_path(root, cache_dir).read_text()


def test_cache_dir_from_env(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    monkeypatch.setenv("AUDIO_SSL_CACHE", str(tmp_path / "envcache"))
    scan(root, progress=False)
    assert cache_path(root).parent == tmp_path / "envcache"
    assert cache_path(root).is_file()


def test_corrupt_cache_is_rebuilt(corpus, cache_dir):
    root, _ = corpus
    items, _ = scan(root, cache_dir=cache_dir, progress=False)
    cache_path(root, cache_dir).write_text('{"path": "x"\n')
    with pytest.warns(UserWarning, match="ignoring unreadable manifest cache"):
        assert scan(root, cache_dir=cache_dir, progress=False)[0] == items


def test_shared_jsonl_manifest(data_dir, cache_dir):
    manifest = data_dir / "tiny" / "manifest.jsonl"
    items, rejected = scan(manifest, cache_dir=cache_dir, progress=False)
    lines = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    assert rejected == [] and len(items) == len(lines)
    for it, rec in zip(items, lines):
        assert it.path == str(data_dir / "tiny" / rec["audio"])
        assert it.sample_rate == rec["sr"]
        assert it.duration == pytest.approx(rec["duration"], abs=2e-3)


def test_shared_folder_fsdd_min_samples(data_dir, cache_dir):
    items, rejected = scan(data_dir / "fsdd", cache_dir=cache_dir, progress=False,
                           min_samples=8000, sample_rate=16000)
    assert len(items) + len(rejected) == 2500  # manifest.jsonl is not audio
    assert all(it.sample_rate == 8000 and it.samples_at(16000) >= 8000 for it in items)
    assert all(r.reason.startswith("too short: ") for r in rejected)


def test_mp3_frames_are_decodable_frames(data_dir, cache_dir):
    """libsndfile's MP3 header count overstates Common Voice files; scan() corrects it."""
    path = data_dir / "commonvoice" / "audio" / "ar" / "common_voice_ar_24059251.mp3"
    decoded = len(sf.read(path, always_2d=True)[0])
    assert sf.info(str(path)).frames == decoded + 240  # the header's guess
    src = cache_dir.parent / "list.txt"
    src.write_text(f"{path}\n")
    (item,), _ = scan(src, cache_dir=cache_dir, progress=False)
    assert item.frames == decoded
    assert item.samples_at(16000) == len(load_audio(path, sample_rate=16000))


def test_own_manifest_round_trip_reads_no_headers(corpus, cache_dir, tmp_path, count_info):
    root, _ = corpus
    items, _ = scan(root, cache_dir=cache_dir, progress=False)
    path = tmp_path / "out" / "train.jsonl"
    write_manifest(items, path)
    assert read_manifest(path) == items
    count_info.clear()
    again, rejected = scan(path, cache_dir=cache_dir, progress=False, min_samples=8000)
    assert count_info == []  # our format is trusted
    assert again == [it for it in items if it.samples_at(16000) >= 8000]
    assert [os.path.basename(r.path) for r in rejected] == ["short.wav"]


def test_relative_paths_in_lists_and_manifests(corpus, cache_dir):
    root, good = corpus
    lst = root / "files.lst"
    lst.write_text("# comment\n\na.wav\nsub/b.flac\n")
    items, _ = scan(lst, cache_dir=cache_dir, progress=False)
    assert [it.path for it in items] == [str(root / "a.wav"), str(root / "sub" / "b.flac")]
    shared = root / "m.jsonl"
    shared.write_text(json.dumps({"audio": "sub/b.flac", "sr": 8000, "duration": 0.75}) + "\n"
                      + json.dumps({"audio": str(root / "a.wav")}) + "\n")
    items, _ = scan(shared, cache_dir=cache_dir, progress=False)
    assert [it.path for it in items] == [str(root / "sub" / "b.flac"), str(root / "a.wav")]


def test_no_audio_errors(tmp_path, cache_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("hi")
    with pytest.raises(NoAudioError, match=r"no file with a supported extension.*\.flac"):
        scan(empty, cache_dir=cache_dir, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"junk")
    sf.write(bad / "y.wav", _tone(0.1, 16000), 16000)
    with pytest.raises(NoAudioError) as e:
        scan(bad, cache_dir=cache_dir, progress=False, min_samples=16000)
    msg = str(e.value)
    assert str(bad) in msg and "2 audio files seen" in msg
    assert "unreadable" in msg and "too short" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan(tmp_path / "missing", cache_dir=cache_dir, progress=False)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="expected a folder"):
        scan(tmp_path / "x.csv", cache_dir=cache_dir, progress=False)


def test_missing_file_in_list_is_rejected(corpus, cache_dir):
    root, _ = corpus
    lst = root / "files.txt"
    lst.write_text("a.wav\nnope.wav\n")
    items, rejected = scan(lst, cache_dir=cache_dir, progress=False)
    assert len(items) == 1
    assert rejected[0].path == str(root / "nope.wav")
    assert rejected[0].reason.startswith("unreadable: ")


def test_write_rejected(tmp_path):
    rej = [Rejected("/a.wav", "unreadable: x"), Rejected("/b.wav", "empty: 0 frames")]
    write_rejected(rej, tmp_path / "run" / "rejected.jsonl")
    lines = (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"path": "/a.wav", "reason": "unreadable: x"},
        {"path": "/b.wav", "reason": "empty: 0 frames"},
    ]
    assert sorted(os.listdir(tmp_path / "run")) == ["rejected.jsonl"]  # no temp file left


def test_audio_item_samples_at():
    it = AudioItem("/x.wav", frames=11025, sample_rate=44100, channels=1)
    assert it.samples_at(16000) == 4000 and it.samples_at(44100) == 11025
    assert AudioItem("/x", 1, 44100, 1).samples_at(16000) == 1  # ceil
