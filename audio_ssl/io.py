"""Files written whole or not at all: write under a temporary name, then rename over the target.

A reader (or a run resumed after a kill) sees either the previous file or the complete new one,
never a truncated one. :func:`atomic_path` is the usual form; a file that stays open across
calls (an extraction shard) uses its two steps, :func:`create_temp` and :func:`commit`.

Temporary files are named ``.NAME.XXXXXXXX.tmp`` (hidden, ``NAME`` the target's name), beside
the target or in a given folder on the same file system (``os.replace`` cannot cross file
systems). They are created with the usual permissions (``0o666`` less the umask), so the file
that replaces the target has the permissions a plain ``open`` would give it.

With ``fsync`` the new file is flushed to disk before the rename and, with ``sync_dir``, the
folder after it, so the file also survives a power cut or an OS crash. Without it a kill still
cannot leave a partial file, but after a crash the new file may be empty or the rename undone.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"
log = logging.getLogger("audio_ssl")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_temp(path: str | os.PathLike, tmp_dir: str | os.PathLike | None = None) -> Path:
    """Create an empty, uniquely named temporary file for ``path`` and return its name.

    It lives in ``tmp_dir`` (default: ``path``'s folder); both folders are created if missing.
    """
    path = Path(path)
    folder = Path(tmp_dir) if tmp_dir is not None else path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = folder / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name for {path} in {folder}")


def commit(tmp: str | os.PathLike, path: str | os.PathLike, *, fsync: bool = True,
           sync_dir: bool = True) -> None:
    """Rename the finished temporary file ``tmp`` over ``path``.

    ``fsync``: flush ``tmp`` to disk first and, if ``sync_dir``, ``path``'s folder after the
    rename (``sync_dir=False``: the caller syncs the folder once for many files).
    """
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)
    if fsync and sync_dir:
        fsync_dir(Path(path).parent)


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True, sync_dir: bool = True,
                tmp_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; when the block succeeds it replaces ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    ``fsync``, ``sync_dir``: as :func:`commit`; ``tmp_dir``: as :func:`create_temp`.

    Example::

        with atomic_path("out/model.pt") as tmp:
            torch.save(state, tmp)
    """
    tmp = create_temp(path, tmp_dir)
    try:
        yield tmp
        commit(tmp, path, fsync=fsync, sync_dir=sync_dir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True,
                      sync_dir: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, fsync=fsync, sync_dir=sync_dir) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_run_folder(output: Path, *, resume: bool, last: Path | None) -> None:
    """Refuse, before anything is written, an output folder that cannot take this run: an
    existing file, a folder that already holds a run (``last``, its latest checkpoint) without
    ``resume``, or ``resume`` with no checkpoint."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file: expected a folder for the run")
    check_output_folder(output)
    if resume and last is None:
        raise FileNotFoundError(f"--resume: no checkpoint to resume in {output / 'checkpoints'}")
    if not resume and last is not None:
        raise FileExistsError(f"{output} already holds a run ({last.name}): pass --resume to "
                              "continue it or choose another --output")


class OutputFolderError(ValueError):
    """An output folder that cannot be made or written to."""


def _nearest_folder(path: Path, option: str) -> Path | None:
    """The nearest of ``path`` and its parents that exists (None: none does); a file there is
    an :class:`OutputFolderError` naming ``option``."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == path else f"is under {folder}, a file"
                raise OutputFolderError(f"{option} {path} {where}: expected a folder")
            return folder
    return None


def _unwritable(path: Path, option: str, e: OSError) -> OutputFolderError:
    return OutputFolderError(f"{option} {path}: cannot write there ({e.strerror or e}): "
                             "expected a folder you may write to")


def _check_writable(folder: Path, path: Path, option: str) -> None:
    """Create and remove a file in ``folder``; an :class:`OutputFolderError` naming ``option``
    and ``path`` when that fails."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise _unwritable(path, option, e) from e


def check_output_folder(path: Path, option: str = "--output") -> None:
    """Refuse, without creating anything, a folder :func:`make_output_folder` could not make:
    ``path`` or a parent is a file, or the nearest folder that exists takes no new file. Lets a
    command name a bad ``--output`` before it reads its data.

    Raises:
        OutputFolderError: as :func:`make_output_folder`.
    """
    folder = _nearest_folder(path, option)
    if folder is not None:
        _check_writable(folder, path, option)


def make_output_folder(path: Path, option: str = "--output") -> None:
    """Create the folder ``path`` (and its parents) and check that a file can be created in it
    (the check :func:`os.access` cannot make: root on a read-only file system, ACLs).

    Raises:
        OutputFolderError: ``path`` or one of its parents is a file, or the folder cannot be
            made or written to; the message names ``option``, the path and why.
    """
    _nearest_folder(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, option, e) from e
    _check_writable(path, path, option)


def make_run_folder(output: Path) -> None:
    """Create the run folder once the run is accepted (:func:`check_run_folder`), and remove
    the temporary files of checkpoint writes that were killed midway (at ``base`` size each is a
    whole checkpoint's worth). A folder that cannot be written is an :class:`OutputFolderError`."""
    make_output_folder(output)
    folder = output / "checkpoints"
    stale = list(folder.glob(f".*{TMP_SUFFIX}")) if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary file(s) of a checkpoint write that was killed", len(stale))


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a JSON
    object is an error naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {obj!r}")
            yield lineno, obj


__all__ = ["fsync_dir", "create_temp", "commit", "atomic_path", "atomic_write_text",
           "iter_jsonl", "OutputFolderError", "check_output_folder",
           "make_output_folder"]
