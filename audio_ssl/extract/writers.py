"""Feature files on disk: written whole or not at all, and read back from the index.

Every file is written under a temporary name in ``OUTPUT/.tmp/``, flushed, fsynced and renamed
into place (then its folder is fsynced; :mod:`audio_ssl.io`): a final name only ever holds a
complete file.

Formats of one output per input (``arrays`` maps layer names to (T, ...) arrays):

- ``npy``: one array: (T, D) for one layer, (K, T, D) for K context layers stacked in the order
  asked for. Several outputs of different widths (``encoder``, ``codes``) need ``pt`` or
  ``safetensors``.
- ``pt``: ``torch.save`` of ``{name: tensor}``.
- ``safetensors``: ``{name: tensor}``, metadata ``frame_rate`` and ``layers``; written by this
  module span by span (the format is a JSON header and raw little-endian bytes), so a long
  file's features never need to be in memory at once.

Shards (``--shards``): ``shards/shard-NNNNN.bin`` holds many inputs' arrays back to back (raw
little-endian, each aligned to 64 bytes); ``shards/shard-NNNNN.jsonl`` lists its entries with
each array's byte offset, shape and dtype. A shard is written under a temporary name and renamed
when full (or at the end of the run), then its entry list is written: an input counts as done
only once its shard's list exists.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from audio_ssl.io import atomic_path, commit, create_temp, fsync_dir, iter_jsonl  # fsync_dir: for runner

TMP_DIR = ".tmp"
INDEX = "index.jsonl"
FAILURES = "failures.jsonl"
SETTINGS = "extract.json"
SHARD_DIR = "shards"
FORMATS = ("npy", "pt", "safetensors")
SUFFIX = {"npy": ".npy", "pt": ".pt", "safetensors": ".safetensors"}
_BLOCK_BYTES = 16 << 20  # bytes written per write() call when streaming an array
_ALIGN = 64
_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32"}


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict], tmp_dir: str | os.PathLike) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    with atomic_path(path, tmp_dir=tmp_dir) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file ([] when it does not exist)."""
    return [obj for _, obj in iter_jsonl(path)] if Path(path).is_file() else []


def _write_array(f, array: np.ndarray) -> None:
    """Stream a C-contiguous array's bytes (a memmap is read block by block)."""
    rows = array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)
    step = max(1, _BLOCK_BYTES // max(rows[0].nbytes, 1)) if len(rows) else 1
    for i in range(0, len(rows), step):
        f.write(memoryview(np.ascontiguousarray(rows[i:i + step])).cast("B"))


def write_npy(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    """One array, or several same-shape arrays stacked (K, T, D). Returns the index fields."""
    values = list(arrays.values())
    if len(values) == 1:
        shape = values[0].shape
    else:
        first = values[0]
        if any(a.shape != first.shape or a.dtype != first.dtype for a in values):
            raise ValueError(f"format npy holds one array: layers {list(arrays)} have different "
                             f"shapes or dtypes; use --format pt or safetensors")
        shape = (len(values), *first.shape)
    header = {"descr": np.lib.format.dtype_to_descr(values[0].dtype), "fortran_order": False,
              "shape": tuple(shape)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for a in values:
            _write_array(f, a)
    return {"array_shape": list(shape)}


def write_safetensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> dict:
    header: dict[str, dict] = {}
    offset = 0
    for name, a in arrays.items():
        if a.dtype.name not in _SAFETENSORS_DTYPES:
            raise ValueError(f"safetensors: unsupported dtype {a.dtype} of {name!r}")
        header[name] = {"dtype": _SAFETENSORS_DTYPES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays.values():
            _write_array(f, a)
    return {}


def write_pt(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    import torch

    torch.save({name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()},
               path)
    return {}


def write_output(final: Path, tmp_dir: Path, fmt: str, arrays: dict[str, np.ndarray],
                 metadata: dict[str, str], fsync: bool = True) -> dict:
    """Write one input's arrays to ``final`` atomically (its folder is not fsynced: the caller
    does that once for many files); returns extra index fields."""
    with atomic_path(final, fsync=fsync, sync_dir=False, tmp_dir=tmp_dir) as tmp:
        if fmt == "npy":
            return write_npy(tmp, arrays)
        if fmt == "safetensors":
            return write_safetensors(tmp, arrays, metadata)
        if fmt == "pt":
            return write_pt(tmp, arrays)
    raise ValueError(f"unknown format {fmt!r}: expected one of {FORMATS}")


# ---------------------------------------------------------------------------------------------
# Shards


class ShardWriter:
    """Appends inputs' arrays to ``shards/shard-NNNNN.bin``; a shard becomes final on close.

    Args:
        root: the output folder.
        max_bytes: a shard is closed once it holds at least this many bytes.
        tmp_dir: where the open shard lives until it is renamed.
    """

    def __init__(self, root: Path, max_bytes: int, tmp_dir: Path, fsync: bool = True):
        self.root, self.max_bytes, self.tmp_dir = Path(root), int(max_bytes), Path(tmp_dir)
        self.fsync = fsync
        self.dir = self.root / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        done = sorted(self.dir.glob("shard-*.jsonl"))
        self.next_number = max((int(p.stem.split("-")[1]) for p in done), default=-1) + 1
        self._file = None
        self._entries: list[dict] = []
        self._size = 0
        self.closed_entries: list[dict] = []  # entries of shards closed by this writer

    def _open(self) -> None:
        self.number = self.next_number
        self.next_number += 1
        self.tmp_path = create_temp(self._final(), self.tmp_dir)
        self._file = open(self.tmp_path, "wb")
        self._entries, self._size = [], 0

    def _final(self) -> Path:
        return self.dir / f"shard-{self.number:05d}.bin"

    def append(self, entry: dict, arrays: dict[str, np.ndarray]) -> dict:
        """Write ``arrays`` and return ``entry`` completed with the shard and byte offsets."""
        if self._file is None:
            self._open()
        name = f"{SHARD_DIR}/shard-{self.number:05d}.bin"
        spec = {}
        for key, a in arrays.items():
            pad = -self._size % _ALIGN
            if pad:
                self._file.write(b"\0" * pad)
                self._size += pad
            spec[key] = {"shape": list(a.shape), "dtype": a.dtype.name, "offset": self._size}
            _write_array(self._file, a)
            self._size += a.nbytes
        entry = {**entry, "output": name, "arrays": spec}
        self._entries.append(entry)
        if self._size >= self.max_bytes:
            self.close()
        return entry

    def close(self) -> None:
        """Make the open shard final: fsync, rename, then write its entry list."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        commit(self.tmp_path, self._final(), fsync=self.fsync)
        write_jsonl(self.dir / f"shard-{self.number:05d}.jsonl", self._entries, self.tmp_dir)
        self.closed_entries.extend(self._entries)
        self._entries = []

    def abandon(self) -> None:
        """Drop the open shard (an error stopped the run)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            try:
                os.unlink(self.tmp_path)
            except OSError:
                pass


def shard_entries(root: Path) -> list[dict]:
    """Entries of every final shard (those whose entry list was written), in shard order."""
    rows: list[dict] = []
    for part in sorted((Path(root) / SHARD_DIR).glob("shard-*.jsonl")):
        rows.extend(read_jsonl(part))
    return rows


def remove_orphan_shards(root: Path) -> None:
    """Delete ``.bin`` shards whose entry list was never written (a kill between the two)."""
    for shard in (Path(root) / SHARD_DIR).glob("shard-*.bin"):
        if not shard.with_suffix(".jsonl").exists():
            shard.unlink()


# ---------------------------------------------------------------------------------------------
# Reading back


def read_index(output_dir: str | os.PathLike) -> list[dict]:
    """The entries of ``OUTPUT/index.jsonl``: one per input, with ``path``, ``output``,
    ``num_frames``, ``frame_rate``, ``layers`` and per-layer ``arrays`` (shape, dtype)."""
    path = Path(output_dir) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a feature folder written by "
                                f"audio-ssl extract (or the run has not finished)")
    return read_jsonl(path)


def load_entry(output_dir: str | os.PathLike, entry: dict) -> dict[str, np.ndarray]:
    """One input's arrays {layer name: (T, ...)}, read back from any format (shards are
    memory-mapped, nothing is copied)."""
    root = Path(output_dir)
    path = root / entry["output"]
    fmt = entry.get("format", "npy")
    if fmt == "shard":
        return {name: np.memmap(path, dtype=np.dtype(spec["dtype"]), mode="r",
                                offset=spec["offset"], shape=tuple(spec["shape"]))
                for name, spec in entry["arrays"].items()}
    if fmt == "npy":
        array = np.load(path, mmap_mode="r")
        if len(entry["layers"]) == 1:
            return {entry["layers"][0]: array}
        return {name: array[i] for i, name in enumerate(entry["layers"])}
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        return load_file(path)
    if fmt == "pt":
        import torch

        return {k: v.numpy() for k, v in torch.load(path, map_location="cpu",
                                                     weights_only=True).items()}
    raise ValueError(f"{path}: unknown format {fmt!r} in the index")


__all__ = ["TMP_DIR", "INDEX", "FAILURES", "SETTINGS", "SHARD_DIR", "FORMATS", "SUFFIX",
           "fsync_dir", "write_jsonl", "read_jsonl", "write_output",
           "ShardWriter", "shard_entries", "remove_orphan_shards", "read_index",
           "load_entry"]
