"""`audio-ssl shard`: any source the other commands take, written as Lhotse Shar shards.

The files of the source (:func:`~audio_ssl.data.manifest.scan` order) are cut into shards of
``shard_size`` files: shard ``k`` always holds files ``k * shard_size`` onwards, so a rerun plans
the same shards and skips those already complete. A shard is written locally, then published
file by file (its tar, its cuts, then a marker in ``_progress/``): a shard whose marker is there
is complete, any other is written again. On a local disk publishing is a rename, on an object
store one upload per file; either way no reader sees a partial file.

The audio is stored at its own rate and channels, losslessly re-encoded (``flac`` or ``wav``):
8- and 16-bit PCM sources as 16-bit, 24-bit ones as 24-bit (their samples exactly), 32-bit and
float sources as 24-bit, lossy ones (MP3, Vorbis, Opus) as their decoded samples in 16 bits.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from audio_ssl.data import storage
from audio_ssl.data.manifest import AudioItem, Rejected, scan
from audio_ssl.data.shards import (
    AUDIO_FORMATS, INDEX_NAME, REJECTED_NAME, ShardCut, cuts_name, encode_index, index_header,
    recording_name,
)
from audio_ssl.io import iter_jsonl

PROGRESS_DIR = "_progress"
PLAN_NAME = "plan.json"
_SF_FORMATS = {"flac": "FLAC", "wav": "WAV"}
_EXACT = {"PCM_S8": ("int16", "PCM_16"), "PCM_U8": ("int16", "PCM_16"),
          "PCM_16": ("int16", "PCM_16"), "PCM_24": ("int32", "PCM_24")}
_WIDE = ("PCM_32", "FLOAT", "DOUBLE")  # stored as 24-bit


@dataclass(frozen=True)
class EncodedAudio:
    """One file re-encoded for a shard: the member's bytes and what they hold."""

    data: bytes
    frames: int
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class ShardWriteResult:
    """What `audio-ssl shard` did.

    Attributes:
        output: the shard folder.
        shards: shards in the folder; ``written`` of them by this run, ``skipped`` complete
            before it.
        cuts, hours: audio in the folder.
        rejected: files left out (listed in ``rejected.jsonl``).
    """

    output: str
    shards: int
    written: int
    skipped: int
    cuts: int
    hours: float
    rejected: int

    def summary(self) -> str:
        return (f"{self.cuts} files ({self.hours:.2f} h) in {self.shards} shards at {self.output} "
                f"({self.written} written, {self.skipped} already complete); "
                f"{self.rejected} file(s) left out, listed in "
                f"{storage.join(self.output, REJECTED_NAME)}")


def encode_audio(path: str, audio_format: str) -> EncodedAudio | Rejected:
    """Decode ``path`` at its own rate and channels and encode it as ``audio_format``; or why
    it cannot be (``unreadable: ...``, ``empty: ...``)."""
    try:
        with sf.SoundFile(path) as f:
            subtype, sr = f.subtype, int(f.samplerate)
            dtype, out = _EXACT.get(subtype, ("float64", "PCM_24") if subtype in _WIDE
                                    else ("float32", "PCM_16"))
            x = f.read(dtype=dtype, always_2d=True)  # (N, C)
        if len(x) == 0:
            return Rejected(path, "empty: 0 frames")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            return Rejected(path, "unreadable: non-finite samples")
        buf = io.BytesIO()
        sf.write(buf, x, sr, format=_SF_FORMATS[audio_format], subtype=out)
    except Exception as e:  # LibsndfileError, RuntimeError, OSError, ...
        return Rejected(path, f"unreadable: {str(e).strip() or type(e).__name__}")
    return EncodedAudio(buf.getvalue(), len(x), sr, x.shape[1])


def cut_ids(paths: Sequence[str]) -> list[str]:
    """A unique id per file: its path relative to the files' common folder, without the
    extension, ``/`` as ``__`` (tar members and lhotse ids stay flat)."""
    if not paths:
        return []
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    ids, seen = [], set()
    for p in paths:
        rel = os.path.relpath(p, root).replace(os.sep, "__")
        cid = os.path.splitext(rel)[0]
        if cid in seen:  # a.wav beside a.flac
            cid = rel.replace(".", "_")
        k = 1
        while cid in seen:
            k += 1
            cid = f"{cid}-{k}"
        seen.add(cid)
        ids.append(cid)
    return ids


def _transcripts(source: str) -> dict[str, tuple[str | None, str | None]]:
    """{absolute audio path: (text, speaker)} of a JSONL manifest (the shared-data format)."""
    if not (os.path.isfile(source) and source.lower().endswith(".jsonl")):
        return {}
    root = os.path.dirname(os.path.abspath(source))
    found = {}
    for _, obj in iter_jsonl(source):
        p = obj.get("audio", obj.get("path"))
        if p is not None and (obj.get("text") is not None or obj.get("speaker") is not None):
            p = os.path.expanduser(str(p))
            found[os.path.abspath(p if os.path.isabs(p) else os.path.join(root, p))] = (
                obj.get("text"), obj.get("speaker"))
    return found


def _lhotse_records(cut: ShardCut, audio_format: str, text: str | None,
                    speaker: str | None) -> tuple[dict, dict]:
    """(the cut's line in cuts.*.jsonl.gz, its Recording in the tar), as lhotse's SharWriter
    writes them."""
    channels = list(range(cut.channels))
    channel = 0 if cut.channels == 1 else channels
    duration = cut.frames / cut.sample_rate
    recording = {"id": cut.id, "sources": [{"type": "shar", "channels": channels, "source": ""}],
                 "sampling_rate": cut.sample_rate, "num_samples": cut.frames,
                 "duration": duration, "channel_ids": channels}
    supervisions = []
    if text is not None or speaker is not None:
        sup = {"id": cut.id, "recording_id": cut.id, "start": 0, "duration": duration,
               "channel": channel}
        sup.update({k: v for k, v in (("text", text), ("speaker", speaker)) if v is not None})
        supervisions.append(sup)
    line = {"id": cut.id, "start": 0, "duration": duration, "channel": channel,
            "supervisions": supervisions, "recording": recording,
            "type": "MonoCut" if cut.channels == 1 else "MultiCut"}
    return line, recording


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # deterministic bytes
    tar.addfile(info, io.BytesIO(data))


class _Progress:
    """The plan and the per-shard markers of a shard folder being written."""

    def __init__(self, output: str, plan: dict):
        self.folder = storage.join(output, PROGRESS_DIR)
        self.plan = plan
        names = storage.list_names(self.folder)
        if PLAN_NAME in names:
            old = json.loads(storage.read_bytes(storage.join(self.folder, PLAN_NAME)))
            if old != plan:
                changed = sorted(k for k in plan if old.get(k) != plan[k])
                raise FileExistsError(
                    f"{output} holds shards of another plan ({', '.join(changed)} differ): "
                    "choose another OUTPUT, or delete it to start again")
        self.done = {int(n.split(".")[1]) for n in names
                     if n.startswith("shard.") and n.endswith(".json")}
        self.stored = PLAN_NAME in names

    def marker(self, shard: int) -> str:
        return storage.join(self.folder, f"shard.{shard:06d}.json")

    def read(self, shard: int) -> tuple[list[ShardCut], list[Rejected]]:
        obj = json.loads(storage.read_bytes(self.marker(shard)))
        return ([ShardCut(**c) for c in obj["cuts"]], [Rejected(**r) for r in obj["rejected"]])


def _write_shard(shard: int, items: Sequence[AudioItem], ids: Sequence[str], audio_format: str,
                 texts: dict, staging: Path, pool: ThreadPoolExecutor,
                 bar: tqdm) -> tuple[list[ShardCut], list[Rejected], list[tuple[Path, str]]]:
    """Shard ``shard`` written into ``staging``: (cuts, rejected, (local file, final name))."""
    cuts: list[ShardCut] = []
    rejected: list[Rejected] = []
    tar_path = staging / os.path.basename(recording_name(shard))
    cuts_path = staging / os.path.basename(cuts_name(shard))
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar, \
            open(cuts_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        encoded = pool.map(lambda it: encode_audio(it.path, audio_format), items)
        for item, cid, enc in zip(items, ids, encoded):
            bar.update()
            if isinstance(enc, Rejected):
                rejected.append(enc)
                continue
            cut = ShardCut(cid, shard, enc.frames, enc.sample_rate, enc.channels, item.path)
            text, speaker = texts.get(item.path, (None, None))
            line, recording = _lhotse_records(cut, audio_format, text, speaker)
            _add_member(tar, f"{cid}.{audio_format}", enc.data)
            _add_member(tar, f"{cid}.json", (json.dumps(recording) + "\n").encode())
            gz.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
            cuts.append(cut)
    marker = staging / f"shard.{shard:06d}.json"
    marker.write_text(json.dumps({"cuts": [asdict(c) for c in cuts],
                                  "rejected": [asdict(r) for r in rejected]}))
    return cuts, rejected, [(tar_path, recording_name(shard)), (cuts_path, cuts_name(shard)),
                            (marker, f"{PROGRESS_DIR}/{marker.name}")]


def _staging_root(fs: Any, out_path: str) -> Path:
    """An empty local folder to write shards in before publishing them: inside the output when
    it is on this machine (publishing is then a rename), else a temporary folder."""
    if storage.is_local(fs):
        staging_root = Path(out_path) / ".staging"
        shutil.rmtree(staging_root, ignore_errors=True)  # a killed run's partial shard
        staging_root.mkdir(parents=True)
        return staging_root
    return Path(tempfile.mkdtemp(prefix="audio-ssl-shard-"))


def _publish_bytes(output: str, fs: Any, out_path: str, files: list[tuple[str, bytes]]) -> None:
    """Each (name, data) of ``files`` written whole as ``output/name`` (no reader sees a part)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files:
            local = Path(tmp) / name
            local.write_bytes(data)
            if storage.is_local(fs):  # rename within the output's file system
                shutil.move(local, Path(out_path) / f".{name}.tmp")
                local = Path(out_path) / f".{name}.tmp"
            storage.publish(local, storage.join(output, name))


def write_shards(source: str | os.PathLike, output: str, *, shard_size: int = 1000,
                 audio_format: str = "flac", num_workers: int = 4,
                 progress: bool = True) -> ShardWriteResult:
    """Write ``source`` (a folder, a JSONL manifest or a list of files) as shards at ``output``
    (a path or a URL); transcripts and speakers of a manifest go into the cuts' supervisions.

    Resumable: complete shards are skipped; a plan that differs from the one ``output`` was
    started with (another source file list, shard size or format) is refused.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size}: expected at least 1 file per shard")
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"--format {audio_format}: expected one of {', '.join(AUDIO_FORMATS)}")
    output = str(output).rstrip("/")
    fs, out_path = storage.filesystem(output)
    items, rejected = scan(source, progress=progress, num_workers=num_workers)
    paths = [it.path for it in items]
    plan = {"files": hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest(),
            "count": len(paths), "shard_size": shard_size, "audio_format": audio_format}
    progress_state = _Progress(output, plan)
    ids = cut_ids(paths)
    texts = _transcripts(os.fspath(source))
    num_shards = -(-len(items) // shard_size)
    todo = [k for k in range(num_shards) if k not in progress_state.done]

    staging_root = _staging_root(fs, out_path)
    if not progress_state.stored:  # before any shard: a rerun with another plan is refused
        plan_file = Path(tempfile.mkdtemp(dir=staging_root)) / PLAN_NAME
        plan_file.write_text(json.dumps(plan))
        storage.publish(plan_file, storage.join(output, f"{PROGRESS_DIR}/{PLAN_NAME}"))
    per_shard: dict[int, tuple[list[ShardCut], list[Rejected]]] = {}
    bar = tqdm(total=sum(len(items[k * shard_size:(k + 1) * shard_size]) for k in todo),
               desc="sharding", unit="file", disable=not progress)
    try:
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            for k in todo:
                bar.set_postfix_str(f"shard {k + 1}/{num_shards}")
                lo, hi = k * shard_size, (k + 1) * shard_size
                staging = Path(tempfile.mkdtemp(dir=staging_root))
                cuts, bad, files = _write_shard(k, items[lo:hi], ids[lo:hi], audio_format, texts,
                                                staging, pool, bar)
                for local, name in files:  # the marker last: it says the shard is complete
                    storage.publish(local, storage.join(output, name))
                shutil.rmtree(staging, ignore_errors=True)
                per_shard[k] = (cuts, bad)
    finally:
        bar.close()
        shutil.rmtree(staging_root, ignore_errors=True)

    all_cuts: list[ShardCut] = []
    for k in range(num_shards):
        cuts, bad = per_shard[k] if k in per_shard else progress_state.read(k)
        all_cuts.extend(cuts)
        rejected.extend(bad)
    index = encode_index(index_header(num_shards, shard_size, audio_format, len(all_cuts)),
                         all_cuts)
    lines = "".join(json.dumps({k: v for k, v in asdict(r).items() if v is not None},
                               ensure_ascii=False) + "\n" for r in rejected)
    _publish_bytes(output, fs, out_path, [(REJECTED_NAME, lines.encode("utf-8")),
                                          (INDEX_NAME, index)])
    return ShardWriteResult(output, num_shards, len(todo), num_shards - len(todo), len(all_cuts),
                            sum(c.duration for c in all_cuts) / 3600, len(rejected))


__all__ = ["EncodedAudio", "ShardWriteResult", "encode_audio", "cut_ids", "write_shards"]
