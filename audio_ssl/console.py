"""What the command line prints: each line once, no advertisement, and ``--quiet``/``--verbose``.

Lightning's package logger has its own stderr handler and also passes its records up to the root
logger, so with any root handler every INFO line appears twice ("INFO: GPU available..." and
"GPU available..."). :func:`configure` gives each logger one place to print, keeps Lightning's
INFO lines (devices, the model summary) for ``--verbose``, and drops its cloud-logging tip and a
deprecation warning that Lightning's own code raises inside torch on every fit.

Levels: -1 quiet (warnings, errors and final results only; no progress bars), 0 default (what
each stage does, progress bars), 1 verbose (also Lightning's device lines and model summary).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

QUIET, DEFAULT, VERBOSE = -1, 0, 1
_level = DEFAULT


class _DropAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def configure(level: int = DEFAULT) -> None:
    """Set up logging for a command run at ``level`` (QUIET, DEFAULT or VERBOSE)."""
    global _level
    _level = level
    ours = logging.getLogger("audio_ssl")
    ours.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.WARNING if level <= QUIET else logging.INFO)
    ours.propagate = False

    import lightning  # noqa: F401  (its __init__ installs the handler configured here)

    theirs = logging.getLogger("lightning")
    theirs.propagate = False  # its own handler prints it; the root's would print it again
    theirs.setLevel(logging.INFO if level >= VERBOSE else logging.WARNING)
    for h in theirs.handlers:
        if not any(isinstance(f, _DropAdvertisement) for f in h.filters):
            h.addFilter(_DropAdvertisement())
    for name in ("lightning.pytorch", "lightning.fabric"):  # children that may carry their own
        child = logging.getLogger(name)
        child.setLevel(logging.NOTSET)
        child.handlers.clear()
        child.propagate = True
    # raised by Lightning's own use of torch.utils._pytree on every fit, not by our calls
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # a resumed run's folders: the CSV history is kept (tasks/trainer.py), checkpoints are ours
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


@contextlib.contextmanager
def native_output_hidden():
    """Hide what C/C++ code writes to the process's stdout and stderr inside the block
    (KenLM's "Loading the LM will be faster..." and its progress stars), unless --verbose.
    Python's own writes are flushed first and are not affected otherwise."""
    if verbose():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def verbose() -> bool:
    return _level >= VERBOSE


def quiet() -> bool:
    return _level <= QUIET


__all__ = ["QUIET", "DEFAULT", "VERBOSE", "configure", "verbose", "quiet",
           "native_output_hidden"]
