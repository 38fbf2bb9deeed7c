"""Find the audio of a corpus and read each file's header once.

:func:`scan` turns a source (a folder, a JSONL manifest or a list of files) into
:class:`AudioItem` records (path, frames, rate, channels) plus the files it could not use
(:class:`Rejected`, with a reason). Headers are read in parallel and cached per source, keyed by
each file's size and mtime, so a second scan of a large folder only walks the tree.

Our manifest format (:func:`write_manifest`, :func:`read_manifest`) is JSONL, one object a line::

    {"path": "/abs/a.flac", "frames": 48000, "sample_rate": 16000, "channels": 1}
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from audio_ssl.data.audio import audio_info, resampled_length
from audio_ssl.io import atomic_path, iter_jsonl

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
LIST_SUFFIXES = (".txt", ".lst")
CACHE_ENV = "AUDIO_SSL_CACHE"
_CACHE_VERSION = 1  # part of the cache file name: bump when the cached fields change


@dataclass(frozen=True)
class AudioItem:
    """One usable audio file.

    Attributes:
        path: absolute path.
        frames: length at the file's native rate (decodable frames, not the MP3 header's guess).
        sample_rate: native rate in Hz.
        channels: native channel count (loading mixes down to mono).
    """

    path: str
    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate

    def samples_at(self, sr: int) -> int:
        """Length after resampling to ``sr``: exactly ``len(load_audio(path, sample_rate=sr))``."""
        return resampled_length(self.frames, self.sample_rate, sr)


@dataclass(frozen=True)
class Rejected:
    """A file left out, and why (``unreadable: ...``, ``empty: 0 frames``, ``too short: ...``)."""

    path: str
    reason: str
    line: str | None = None  # the row of a labelled manifest or list: "file:number"


class NoAudioError(ValueError):
    """A source holds no usable audio file."""


# ---------------------------------------------------------------------------------------------
# JSONL helpers


def _atomic_write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write ``lines`` to ``path`` whole or not at all (no fsync: a cache and lists that a
    rerun rebuilds)."""
    with atomic_path(path, fsync=False) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def write_manifest(items: Iterable[AudioItem], path: str | os.PathLike) -> None:
    """Write ``items`` as our JSONL format (atomically)."""
    _atomic_write_lines(path, (json.dumps(asdict(it), ensure_ascii=False) for it in items))


def read_manifest(path: str | os.PathLike) -> list[AudioItem]:
    """Read our JSONL format; relative paths are taken relative to the manifest's folder."""
    path = Path(path)
    root = path.parent.absolute()
    items = []
    for lineno, obj in iter_jsonl(path):
        try:
            items.append(_item_from_record(obj, root))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}:{lineno}: expected keys path, frames, sample_rate, channels; got {obj!r}"
            ) from e
    return items


def write_rejected(rejected: Iterable[Rejected], path: str | os.PathLike) -> None:
    """Write rejected files as JSONL ``{"path", "reason"}`` (atomically)."""
    _atomic_write_lines(path, (json.dumps({k: v for k, v in asdict(r).items() if v is not None},
                                          ensure_ascii=False) for r in rejected))


def _resolve(p: str, root: Path) -> str:
    p = os.path.expanduser(p)
    return os.path.abspath(p if os.path.isabs(p) else root / p)


def _item_from_record(obj: dict, root: Path) -> AudioItem:
    return AudioItem(
        path=_resolve(str(obj["path"]), root),
        frames=int(obj["frames"]),
        sample_rate=int(obj["sample_rate"]),
        channels=int(obj["channels"]),
    )


# ---------------------------------------------------------------------------------------------
# Sources


def _is_audio(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def _walk(folder: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Audio files under ``folder`` -> ({abs path: (size, mtime_ns)}, number of other files).

    Hidden files and folders (leading dot) are skipped; folder symlinks are followed once.
    """
    found: dict[str, tuple[int, int]] = {}
    others = 0
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if not _is_audio(name):
                others += 1
                continue
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p)
            except OSError:  # a dangling link, or deleted while we walk
                found[p] = (-1, -1)
                continue
            found[p] = (st.st_size, st.st_mtime_ns)
    return found, others


def _stat(p: str) -> tuple[int, int]:
    try:
        st = os.stat(p)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _list_source(source: Path) -> tuple[list[str], list[AudioItem | None]]:
    """Paths of a JSONL manifest or a list file, and the items already known (our format)."""
    root = source.parent.absolute()
    paths: list[str] = []
    known: list[AudioItem | None] = []
    if source.suffix.lower() == ".jsonl":
        for lineno, obj in iter_jsonl(source):
            if {"path", "frames", "sample_rate", "channels"} <= obj.keys():
                item = _item_from_record(obj, root)
                paths.append(item.path)
                known.append(item)
            elif "audio" in obj or "path" in obj:
                paths.append(_resolve(str(obj.get("audio", obj.get("path"))), root))
                known.append(None)
            else:
                raise ValueError(
                    f"{source}:{lineno}: expected an 'audio' key (shared-data manifest) or "
                    f"'path' (+ frames, sample_rate, channels); got keys {sorted(obj)}"
                )
    else:
        with open(source, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.append(_resolve(line, root))
                    known.append(None)
    return paths, known


# ---------------------------------------------------------------------------------------------
# Header cache


def default_cache_dir() -> Path:
    """``$AUDIO_SSL_CACHE`` or ``~/.cache/audio_ssl/manifests``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "audio_ssl" / "manifests"


def cache_path(source: str | os.PathLike, cache_dir: Path | None = None) -> Path:
    """Cache file of a source: named by a hash of its absolute path."""
    key = hashlib.sha256(os.path.abspath(source).encode("utf-8")).hexdigest()[:24]
    return Path(cache_dir or default_cache_dir()) / f"{key}.v{_CACHE_VERSION}.jsonl"


def _load_cache(path: Path) -> dict[str, tuple[int, int, AudioItem]]:
    """{abs path: (size, mtime_ns, item)}; an unreadable cache is ignored (and rebuilt)."""
    if not path.is_file():
        return {}
    cached = {}
    try:
        for _, obj in iter_jsonl(path):
            item = _item_from_record(obj, path.parent)
            cached[item.path] = (int(obj["size"]), int(obj["mtime"]), item)
    except (OSError, ValueError, KeyError, TypeError) as e:
        # stacklevel 4: scan's caller (scan -> _headers -> here)
        warnings.warn(f"ignoring unreadable manifest cache {path}: {e}", stacklevel=4)
        return {}
    return cached


def _save_cache(path: Path, entries: list[tuple[AudioItem, int, int]]) -> None:
    lines = (
        json.dumps({**asdict(it), "size": size, "mtime": mtime}, ensure_ascii=False)
        for it, size, mtime in entries
    )
    try:
        _atomic_write_lines(path, lines)
    except OSError as e:  # a read-only home is no reason to stop
        # stacklevel 4: scan's caller (scan -> _headers -> here)
        warnings.warn(f"could not write manifest cache {path}: {e}", stacklevel=4)


# ---------------------------------------------------------------------------------------------
# Scan


def read_header(path: str) -> AudioItem | Rejected:
    """Read one header -> AudioItem, or Rejected naming what was wrong (``unreadable: ...``,
    ``empty: 0 frames``). The one header probe of scanning, labelled sets and transcription."""
    try:
        frames, sr, channels = audio_info(path)
    except Exception as e:  # LibsndfileError, RuntimeError, OSError, ...
        msg = str(e).strip() or type(e).__name__
        return Rejected(path, f"unreadable: {msg}")
    if frames <= 0:
        return Rejected(path, f"empty: {frames} frames")
    if sr <= 0 or channels <= 0:
        return Rejected(path, f"unreadable: header says {sr} Hz, {channels} channels")
    return AudioItem(path=path, frames=frames, sample_rate=sr, channels=channels)


def _read_headers(paths: Sequence[str], num_workers: int, progress: bool,
               desc: str) -> list[AudioItem | Rejected]:
    bar = tqdm(total=len(paths), desc=desc, unit="file", disable=not progress or not paths)
    results: list[AudioItem | Rejected] = []
    try:
        if num_workers <= 1 or len(paths) <= 1:
            for p in paths:
                results.append(read_header(p))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                for r in pool.map(read_header, paths, chunksize=1):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    return results


def too_short(item: AudioItem, min_samples: int, sample_rate: int) -> Rejected | None:
    """The one rule for short audio, of every command (pretrain, targets, extract, finetune,
    transcribe, evaluate): Rejected when ``item`` has fewer than ``min_samples`` samples at
    ``sample_rate`` (the reason says both in seconds and samples), else None."""
    n = item.samples_at(sample_rate)
    if n >= min_samples:
        return None
    return Rejected(
        item.path,
        f"too short: {n / sample_rate:.2f} s < minimum {min_samples / sample_rate:.2f} s "
        f"({n} < {min_samples} samples at {sample_rate} Hz)",
    )


def _source_files(src: Path) -> tuple[list[str], list[AudioItem | None],
                                      dict[str, tuple[int, int]], int]:
    """(paths in source order, per path the item our manifest format already gives or None,
    (size, mtime_ns) of each path whose header is to be read, number of non-audio files in a
    folder)."""
    others = 0
    if src.is_dir():
        stats, others = _walk(src)
        paths = sorted(stats)
        known: list[AudioItem | None] = [None] * len(paths)
    elif src.suffix.lower() in (".jsonl", *LIST_SUFFIXES):
        paths, known = _list_source(src)
        stats = {p: _stat(p) for p, k in zip(paths, known) if k is None}
    else:
        raise ValueError(
            f"audio source {src}: expected a folder, a .jsonl manifest or a "
            f"{'/'.join(LIST_SUFFIXES)} list of files"
        )
    return paths, known, stats, others


def _headers(src: Path, todo: list[str], stats: dict[str, tuple[int, int]],
             cache_dir: Path | None, num_workers: int,
             progress: bool) -> dict[str, AudioItem | Rejected]:
    """The header of every path in ``todo``: from ``src``'s cache where the file's (size,
    mtime_ns) in ``stats`` are unchanged, else read; the cache then holds the good ones."""
    cfile = cache_path(src, cache_dir) if todo else None
    cached = _load_cache(cfile) if cfile is not None else {}
    fresh: dict[str, AudioItem | Rejected] = {}
    for p in todo:
        hit = cached.get(p)
        if hit is not None and (hit[0], hit[1]) == stats[p] and stats[p][0] >= 0:
            fresh[p] = hit[2]
    to_read = sorted({p for p in todo if p not in fresh})
    probed = _read_headers(to_read, num_workers, progress, desc=f"reading headers of {src.name}")
    fresh.update(zip(to_read, probed))

    if cfile is not None:
        entries, written = [], set()
        for p in todo:  # good files only; missing / corrupt / empty ones are re-read next time
            r = fresh[p]
            if isinstance(r, AudioItem) and p not in written and stats[p][0] >= 0:
                entries.append((r, *stats[p]))
                written.add(p)
        if to_read or len(entries) != len(cached):
            _save_cache(cfile, entries)
    return fresh


def scan(
    source: str | os.PathLike,
    *,
    cache_dir: Path | None = None,
    num_workers: int = 4,
    progress: bool = True,
    min_samples: int = 0,
    sample_rate: int = 16_000,
) -> tuple[list[AudioItem], list[Rejected]]:
    """Usable audio files of ``source`` and the files left out.

    Args:
        source: a folder (searched recursively for :data:`AUDIO_EXTENSIONS`, any case; hidden
            files and folders skipped; sorted by path), a ``.jsonl`` manifest (the shared-data
            format with ``audio`` relative to the manifest's folder or absolute, or our own
            format with ``path, frames, sample_rate, channels``, whose entries are trusted
            without reading the files), or a ``.txt``/``.lst`` list of paths, one a line
            (relative to the list's folder; ``#`` starts a comment line).
        cache_dir: where header caches live (default ``$AUDIO_SSL_CACHE`` or
            ``~/.cache/audio_ssl/manifests``); one JSONL file per source, named by a hash of
            its absolute path, holding good files only, each with its size and mtime (ns).
            A file whose size or mtime changed is read again; a gone file drops out. Folders,
            shared-data manifests and lists are all cached; nothing is written inside ``source``.
        num_workers: threads reading headers.
        progress: show a tqdm bar while reading headers.
        min_samples: files shorter than this after resampling to ``sample_rate`` are rejected.
        sample_rate: the rate ``min_samples`` is counted at.

    Returns:
        (items, rejected): items in source order (folders: sorted paths); rejected with reasons.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``source`` is a file of an unknown kind, or a malformed manifest.
        NoAudioError: nothing usable was found.
    """
    src = Path(os.path.expanduser(os.fspath(source))).absolute()
    if not src.exists():
        raise FileNotFoundError(f"audio source {src} does not exist")
    if min_samples < 0 or sample_rate <= 0:
        raise ValueError(
            f"scan: expected min_samples >= 0 and sample_rate > 0, got {min_samples}, {sample_rate}"
        )
    paths, known, stats, others = _source_files(src)
    todo = [p for p, k in zip(paths, known) if k is None]
    headers = _headers(src, todo, stats, cache_dir, num_workers, progress)

    items: list[AudioItem] = []
    rejected: list[Rejected] = []
    for p, k in zip(paths, known):
        r = k if k is not None else headers[p]
        if isinstance(r, AudioItem):
            short = too_short(r, min_samples, sample_rate)
            if short is None:
                items.append(r)
                continue
            r = short
        rejected.append(r)

    if not items:
        raise NoAudioError(_no_audio_message(src, len(paths), others, rejected))
    return items, rejected


def _no_audio_message(src: Path, seen: int, others: int, rejected: list[Rejected]) -> str:
    if seen == 0:
        where = "under" if src.is_dir() else "listed in"
        other = f" ({others} other files ignored)" if others else ""
        return (
            f"no usable audio in {src}: no file with a supported extension "
            f"({', '.join(AUDIO_EXTENSIONS)}) {where} it{other}"
        )
    first = "; ".join(f"{r.path}: {r.reason}" for r in rejected[:3])
    more = f" (and {len(rejected) - 3} more)" if len(rejected) > 3 else ""
    return f"no usable audio in {src}: {seen} audio files seen, all rejected: {first}{more}"


__all__ = [
    "AUDIO_EXTENSIONS", "AudioItem", "Rejected", "NoAudioError", "scan", "write_manifest",
    "read_manifest", "write_rejected", "default_cache_dir", "cache_path", "read_header",
    "too_short",
]
