"""The output folder of ``audio-ssl extract``: one run at a time, the same settings on a rerun,
and a long file's outputs stitched on disk before they are written."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import numpy as np

from audio_ssl.extract.chunking import Chunk
from audio_ssl.extract.writers import SETTINGS, write_jsonl

COMPARED_SETTINGS = ("checkpoint", "layers", "format", "dtype", "normalize", "frame_rate")


class FolderInUseError(RuntimeError):
    """Another extraction holds the output folder's lock."""


class FolderLock:
    """An exclusive lock on OUTPUT/.lock: one extraction per folder at a time (released by the
    system when the process dies, even by SIGKILL)."""

    def __init__(self, root: Path):
        self.path = root / ".lock"
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self.file.close()
            raise FolderInUseError(f"{root}: another audio-ssl extract is writing to this folder "
                               f"(lock {self.path} is held)") from e

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def check_settings(root: Path, settings: dict, tmp_dir: Path) -> None:
    """Refuse a folder whose ``extract.json`` differs in :data:`COMPARED_SETTINGS`; record
    ``settings`` there."""
    path = root / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        diffs = [f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now"
                 for k in COMPARED_SETTINGS if before.get(k) != settings.get(k)]
        if diffs:
            raise ValueError(f"{root} holds features extracted with other settings "
                             f"({'; '.join(diffs)}): extract into another folder")
    write_jsonl(path, [settings], tmp_dir)  # one JSON object (a one-line JSONL is valid JSON)


Layouts = dict[str, tuple[tuple[int, ...], np.dtype]]  # output name -> (shape after T, dtype)


class LongFileArrays:
    """A long file's outputs, stitched chunk by chunk into memory-mapped temporary arrays.

    Attributes:
        arrays: output name -> (T, ...) memory map, T the whole file's frames.
        remaining: chunks not yet put.
    """

    def __init__(self, num_frames: int, num_chunks: int, index: int, layouts: Layouts,
                 tmp_dir: Path):
        self.remaining = num_chunks
        self.paths = [tmp_dir / f"assembly-{index}-{name}.npy" for name in layouts]
        self.arrays = {
            name: np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                            shape=(num_frames, *shape))
            for path, (name, (shape, dtype)) in zip(self.paths, layouts.items())
        }

    def put(self, chunk: Chunk, rows: dict[str, np.ndarray]) -> None:
        """A chunk's window outputs ``{name: (T_window, ...)}``: its kept frames go in place."""
        (k0, k1), (f0, f1) = chunk.keep, chunk.frames
        for name, a in rows.items():
            self.arrays[name][f0:f1] = a[k0:k1]
        self.remaining -= 1

    def discard(self) -> None:
        self.arrays = {}
        for path in self.paths:
            try:
                path.unlink()
            except OSError:
                pass


__all__ = ["FolderInUseError", "FolderLock", "check_settings", "LongFileArrays", "COMPARED_SETTINGS"]
