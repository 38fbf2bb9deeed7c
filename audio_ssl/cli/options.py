"""What the `audio-ssl` commands share: option types that check a value as it is parsed
(:func:`at_least`, :func:`accelerator`, :func:`device`), the option sets several commands take
(:func:`add_device_options`, :func:`add_precision_option`, :func:`add_loudness_options`), the
parser class whose errors are one line (:class:`OneLineParser`) and :func:`parse_args`. Each
command's own options are beside its run function, in the module of its group.

Every option that names a count, a size or hardware is checked as it is parsed: counts and
sizes by their ``type=`` function (:func:`at_least`), ``--accelerator`` and ``--device`` against
the GPUs torch sees, ``--devices`` against the GPUs or CPU cores of the machine once
``--accelerator`` is known (:func:`parse_args`). A refused value is one line on stderr, naming the
option, the value and what was expected, and exit status 2 (:class:`OneLineParser`); nothing has
been read or written by then.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``audio-ssl: error: argument --x: ...``,
    and the command's --help to read) and exit status 2, as every other refusal of the CLI;
    subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"audio-ssl: error: {message} (see {self.prog} --help)\n")


def at_least(minimum: float, kind: type = int, *, strict: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=``: the text as ``kind`` (int or float), refused unless it is at least
    ``minimum`` (greater than it with ``strict``); NaN and infinities are refused too."""
    what = "an integer" if kind is int else "a number"
    bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"

    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what} {bound}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text}: expected {what} {bound}")
        return value

    check.__name__ = f"{kind.__name__} {bound}"
    return check


POSITIVE_INT = at_least(1)  # steps, beam widths, seeds, file counts
COUNT = at_least(0)  # worker processes, steps that may be skipped
POSITIVE_SECONDS = at_least(0.0, float, strict=True)  # durations and sizes


def _no_gpu() -> str:
    return "no CUDA GPU is visible here (torch.cuda.is_available() is False)"


def accelerator(text: str) -> str:
    """``--accelerator``: ``gpu`` only where torch sees a CUDA GPU (choices are checked after)."""
    if text == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"gpu: {_no_gpu()}; expected cpu or auto")
    return text


def device(text: str) -> str:
    """``--device``: a torch device name (cpu, cuda, cuda:N, ...); a CUDA one only where that GPU
    is visible."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: {_no_gpu()}; expected cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text}: {count} CUDA GPU(s) visible: expected cuda:0 to cuda:{count - 1}")
    return text


def check_devices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--devices`` of pretrain and finetune: at most the GPUs visible when training on GPUs
    (``--accelerator gpu``, or ``auto`` with one visible), else at most ``os.cpu_count()`` CPU
    processes. Values below 1 are the config's to refuse (train.devices)."""
    devices = getattr(args, "devices", None)
    if devices is None or devices < 1:
        return
    import torch

    if args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available()):
        have = torch.cuda.device_count()
        if devices > have:
            parser.error(f"argument --devices: {devices}: {have} CUDA GPU(s) visible here, "
                         f"expected at most {have}")
        return
    cpus = os.cpu_count() or 1
    if devices > cpus:
        parser.error(f"argument --devices: {devices}: without a GPU each device is a CPU "
                     f"process, and this machine has {cpus} CPU core(s): expected at most {cpus}")


def parse_args(parser: argparse.ArgumentParser,
               argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` and the checks that need several options (:func:`check_devices`);
    a refusal exits with status 2 after one line."""
    args = parser.parse_args(argv)
    command = getattr(parser, "commands", {}).get(args.command, parser)  # for its --help
    check_devices(command, args)
    return args


PRECISION_HELP = ("auto (default): bf16-mixed on a GPU and on CPUs with bf16 units (AVX512-BF16, "
                  "AMX), fp32 elsewhere; 32; bf16-mixed. The log says which and why")


def add_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default=None, choices=["auto", "32", "bf16-mixed"],
                   help=PRECISION_HELP)


def add_device_options(p: argparse.ArgumentParser) -> None:
    """Where and how a training command runs: pretrain and finetune share these."""
    p.add_argument("--devices", type=int, default=None,
                   help="devices per node (GPUs, or CPU processes with gloo when no GPU)")
    p.add_argument("--num-nodes", type=int, default=None, help="nodes (torchrun or SLURM)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   type=accelerator, help="where to train (default: GPU when one is visible)")
    add_precision_option(p)


def add_loudness_options(p: argparse.ArgumentParser) -> None:
    """--quiet and --verbose, one or the other: every command takes them, after its own."""
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--quiet", "-q", action="store_true",
                      help="only warnings, errors and results; no progress bars")
    loud.add_argument("--verbose", "-v", action="store_true",
                      help="also Lightning's device lines and the model summary")
