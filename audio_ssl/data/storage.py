"""Files at a path or a URL (``s3://bucket/prefix``, ``file://``, a plain path), through fsspec.

What the shard writer and the shard reader need and nothing more: open a URL for reading with
retries, publish a finished local file under its final name (a rename on a local file system,
one upload to an object store: either way a reader sees the whole file or none), list a folder.

Transient storage errors (a dropped connection, a timeout, a throttled request) are retried
with exponential backoff; a missing file is not transient and is raised at once.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("audio_ssl")
T = TypeVar("T")

RETRIES = 4  # attempts after the first
BACKOFF_SECONDS = 0.5  # delay before the first retry; doubled each time


def filesystem(url: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec file system, path within it) of ``url``; s3 needs the ``[shar]`` extra (s3fs).

    The endpoint of an S3-compatible store comes from ``AWS_ENDPOINT_URL`` (as for boto3)."""
    import fsspec  # a dependency of torch: always there

    url = os.fspath(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:
        scheme = url.split("://", 1)[0]
        raise ValueError(f"{url}: reading {scheme}:// needs its fsspec back end ({e}); "
                         "install it with: pip install 'audio-ssl[shar]'") from None
    return fs, path


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def join(url: str, name: str) -> str:
    """``url/name`` for a path or a URL."""
    return f"{str(url).rstrip('/')}/{name}"


def is_transient(error: BaseException) -> bool:
    """A storage error worth another try: not a missing file, a refused permission or bad input."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError,
                          NotADirectoryError, ValueError)):
        return False
    return isinstance(error, (OSError, ConnectionError, TimeoutError))


def with_retries(fn: Callable[[], T], what: str, *, retries: int = RETRIES,
                 backoff: float = BACKOFF_SECONDS,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, tried again after ``backoff * 2**k`` seconds on a transient error, ``retries``
    times at most; the last error is raised. ``what`` names the object in the log."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as e:
            if attempt == retries or not is_transient(e):
                raise
            delay = backoff * 2**attempt
            log.warning("%s: %s: %s; retrying in %.1f s (%d of %d)", what, type(e).__name__, e,
                        delay, attempt + 1, retries)
            sleep(delay)
    raise AssertionError("unreachable")


def read_bytes(url: str) -> bytes:
    """The whole object at ``url`` in one request, with retries.

    One request: s3fs would otherwise ask for the object's size first and split objects over
    50 MiB into concurrent ranged reads, two round trips where one serves (a shard is read
    ahead of its use, so one stream's bandwidth is not what limits the loader)."""
    fs, path = filesystem(url)
    one = _one_request(fs)
    return with_retries(lambda: fs.cat_file(path, **one), url)


_ONE_REQUEST: dict[type, dict[str, int]] = {}


def _one_request(fs: Any) -> dict[str, int]:
    """The keywords that make ``fs.cat_file`` read in one request, looked up once per file
    system class (shards are read on the loader's hot path). From the instance: fsspec makes an
    async file system's blocking methods per instance, so the class's ``cat_file`` is not it."""
    kind = type(fs)
    if kind not in _ONE_REQUEST:
        try:
            takes = "max_concurrency" in inspect.signature(fs.cat_file).parameters
        except (TypeError, ValueError):
            takes = False
        _ONE_REQUEST[kind] = {"max_concurrency": 1} if takes else {}
    return _ONE_REQUEST[kind]


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return with_retries(lambda: fs.exists(path), url)


def list_names(url: str) -> set[str]:
    """Names of the files directly in the folder or prefix ``url`` (empty if there is none)."""
    fs, path = filesystem(url)
    try:
        entries = with_retries(lambda: fs.ls(path, detail=False), url)
    except FileNotFoundError:
        return set()
    fs.invalidate_cache(path)
    return {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries}


def publish(local: str | os.PathLike, url: str) -> None:
    """Put the finished local file ``local`` at ``url`` whole or not at all: a rename on the
    same local file system (``local`` must be on it), otherwise one upload (an object appears
    only once its upload completes). ``local`` is gone afterwards."""
    fs, path = filesystem(url)
    if is_local(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        os.replace(local, path)
        return
    with_retries(lambda: fs.put_file(os.fspath(local), path), url)
    fs.invalidate_cache(path)
    os.unlink(local)


__all__ = ["filesystem", "is_local", "join", "is_transient", "with_retries", "read_bytes",
           "exists", "list_names", "publish", "RETRIES", "BACKOFF_SECONDS"]
