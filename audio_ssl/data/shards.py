"""A sharded corpus in the Lhotse Shar layout, and its index.

A shard folder (a path or a URL) holds, for shard ``k``::

    shar/cuts.{k:06d}.jsonl.gz    one lhotse cut a line (MonoCut, or MultiCut for several channels)
    shar/recording.{k:06d}.tar    {cut id}.flac (the audio) and {cut id}.json (its Recording)

which ``lhotse.CutSet.from_shar(in_dir=".../shar")`` reads (lhotse takes every file of that
folder for a field, so nothing else lives there), and besides them::

    index.jsonl.gz            first line: the set ({"format", "version", "shards", ...});
                              then one line per cut: id, shard, frames, sample_rate, channels,
                              path (where it was read from)
    rejected.jsonl            files left out when sharding, and why

Training plans its batches from the index alone (no audio is opened to plan), and reads each
shard's tar whole, in one request, once per visit. :mod:`audio_ssl.data.shard_writer` writes the
folder, :mod:`audio_ssl.data.shard_stream` streams it.
"""

from __future__ import annotations

import gc
import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

from audio_ssl.data import storage
from audio_ssl.data.audio import resampled_length

INDEX_NAME = "index.jsonl.gz"
SHAR_DIR = "shar"  # the Lhotse Shar files, alone in their folder
REJECTED_NAME = "rejected.jsonl"
FORMAT_NAME = "audio_ssl.shar"
VERSION = 1
AUDIO_FORMATS = ("flac", "wav")  # lossless encodings a shard's audio may have


def cuts_name(shard: int) -> str:
    """Where shard ``shard``'s cuts are, relative to the shard folder."""
    return f"{SHAR_DIR}/cuts.{shard:06d}.jsonl.gz"


def recording_name(shard: int) -> str:
    """Where shard ``shard``'s audio is, relative to the shard folder."""
    return f"{SHAR_DIR}/recording.{shard:06d}.tar"


@dataclass(frozen=True)
class ShardCut:
    """One cut (a whole file) of a shard folder, as the index lists it.

    Attributes:
        id: the cut id (unique in the folder; its tar members are ``{id}.{format}``, ``.json``).
        shard: the shard number it is in.
        frames, sample_rate, channels: the stored audio, at its own rate (as the source file).
        path: the file it was read from when sharding (for messages only).
    """

    id: str
    shard: int
    frames: int
    sample_rate: int
    channels: int
    path: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def samples_at(self, sr: int) -> int:
        """Length after resampling to ``sr`` (as :meth:`AudioItem.samples_at`)."""
        return resampled_length(self.frames, self.sample_rate, sr)


@dataclass(frozen=True)
class ShardIndex:
    """Every cut of a shard folder, from its index.

    Attributes:
        url: the folder (a path or a URL).
        num_shards: shards 0 .. num_shards - 1 (a shard whose files all failed holds no cut).
        audio_format: the members' encoding (``flac`` or ``wav``).
        cuts: in shard order, then in the order they are stored in their shard.
    """

    url: str
    num_shards: int
    audio_format: str
    cuts: tuple[ShardCut, ...]

    def shard_url(self, shard: int) -> str:
        """The recording tar of ``shard``."""
        return storage.join(self.url, recording_name(shard))

    def shard_format(self, shard: int) -> str:
        """The audio encoding of ``shard``'s members (one for the whole folder)."""
        return self.audio_format

    @property
    def hours(self) -> float:
        return sum(c.duration for c in self.cuts) / 3600


def index_header(num_shards: int, shard_size: int, audio_format: str, cuts: int) -> dict:
    return {"format": FORMAT_NAME, "version": VERSION, "shards": num_shards,
            "shard_size": shard_size, "audio_format": audio_format, "cuts": cuts}


def encode_index(header: dict, cuts: list[ShardCut]) -> bytes:
    """The gzip'd JSONL bytes of an index (deterministic: no time stamp in the gzip header)."""
    lines = [json.dumps(header)] + [json.dumps(asdict(c), ensure_ascii=False) for c in cuts]
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)


def is_shard_folder(source: str) -> bool:
    """Whether ``source`` (a path or a URL) is a shard folder: it holds an index file."""
    source = str(source)
    if "://" not in source:
        import os

        return os.path.isfile(os.path.join(os.path.expanduser(source), INDEX_NAME))
    return storage.exists(storage.join(source, INDEX_NAME))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (the objects made there hold no cycles)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_CUT_FIELDS = frozenset(f.name for f in fields(ShardCut))


def _cuts(rows: list) -> tuple[ShardCut, ...]:
    """The index rows (dicts of every field) as :class:`ShardCut` objects, each row's dict
    adopted as its object's attributes: the dataclass ``__init__`` (an ``object.__setattr__``
    per field of a frozen class) takes 2-3 times as long (1e5 cuts: 0.36-0.54 s against
    0.16-0.19 s on a loaded 2-core machine)."""
    for row in rows:
        if not isinstance(row, dict) or row.keys() != _CUT_FIELDS:
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"a cut with the fields {sorted(_CUT_FIELDS)} expected, got {got}")
    new, adopt = object.__new__, object.__setattr__
    out = []
    for row in rows:
        cut = new(ShardCut)
        adopt(cut, "__dict__", row)
        out.append(cut)
    return tuple(out)


def read_index(url: str) -> ShardIndex:
    """The index of the shard folder ``url``; a malformed one is an error naming it."""
    where = storage.join(str(url), INDEX_NAME)
    try:
        text = gzip.decompress(storage.read_bytes(where)).decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} is not a shard folder: no {INDEX_NAME} in it "
                                "(make one with `audio-ssl shard SOURCE OUTPUT`)") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: unreadable index ({e})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        header = json.loads(lines[0])
        if header.get("format") != FORMAT_NAME or header.get("version") != VERSION:
            raise ValueError(f"expected format {FORMAT_NAME} version {VERSION}, got "
                             f"{header.get('format')} version {header.get('version')}")
        with _gc_paused():  # 1e5 new objects would set off a collection every 700
            cuts = _cuts(json.loads("[" + ",".join(lines[1:]) + "]"))  # one parse: faster
    except (IndexError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: malformed index: {e}") from None
    return ShardIndex(str(url).rstrip("/"), int(header["shards"]), str(header["audio_format"]),
                      cuts)


__all__ = ["INDEX_NAME", "REJECTED_NAME", "SHAR_DIR", "AUDIO_FORMATS", "ShardCut", "ShardIndex",
           "cuts_name", "recording_name", "index_header", "encode_index", "is_shard_folder",
           "read_index"]
