"""The single `audio-ssl` command: :func:`main` parses, dispatches and reports user errors.

A module per command group holds each command's options beside its run function:
:mod:`~audio_ssl.cli.pretrain` (pretrain, shard, targets), :mod:`~audio_ssl.cli.demo`,
:mod:`~audio_ssl.cli.probe` (probe, plot), :mod:`~audio_ssl.cli.asr` (finetune, transcribe,
evaluate, lm) and :mod:`~audio_ssl.cli.extract` (extract, convert); what they share is in
:mod:`~audio_ssl.cli.options`. User errors (bad values, missing or unusable files, a refused
checkpoint) are caught once, in :func:`main`: one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import sys

from audio_ssl.cli import asr, demo, extract, pretrain, probe
from audio_ssl.cli.options import OneLineParser, add_loudness_options, parse_args

DESCRIPTION = """\
audio-ssl: self-supervised speech representation learning from raw audio: pretrain (wav2vec 2.0,
HuBERT, BEST-RQ, data2vec 2.0, CPC / wav2vec, masked reconstruction), extract features, probe
them, fine-tune for speech recognition (CTC), transcribe and evaluate, convert checkpoints.
"""
EPILOG = "Run `audio-ssl COMMAND --help` for each command's options."

# command -> (adds its parser and options, runs it); --help lists them in this order
COMMANDS = {
    "pretrain": (pretrain.add_pretrain, pretrain.run_pretrain),
    "shard": (pretrain.add_shard, pretrain.run_shard),
    "targets": (pretrain.add_targets, pretrain.run_targets),
    "demo": (demo.add_demo, demo.run_demo),
    "plot": (probe.add_plot, probe.run_plot),
    "finetune": (asr.add_finetune, asr.run_finetune),
    "transcribe": (asr.add_transcribe, asr.run_transcribe),
    "evaluate": (asr.add_evaluate, asr.run_evaluate),
    "lm": (asr.add_lm, asr.run_lm),
    "probe": (probe.add_probe, probe.run_probe),
    "convert": (extract.add_convert, extract.run_convert),
    "extract": (extract.add_extract, extract.run_extract),
}


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser, each listed once with its own help= line, each taking --quiet
    and --verbose after its own options."""
    parser = OneLineParser(
        prog="audio-ssl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parser.commands = sub.choices  # command -> its parser (parse_args' errors name its --help)
    for name, (add, _) in COMMANDS.items():
        add(sub)
        add_loudness_options(sub.choices[name])
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """What a user's input can cause, reported as one line: bad values and configs
    (ValueError, which NoAudioError, CheckpointError and the rest derive from), missing or
    misplaced files, an extraction folder in use, eSpeak NG not starting, the [onnx] extra
    missing."""
    from audio_ssl.corpora.espeak import EspeakError
    from audio_ssl.extract.output_folder import FolderInUseError
    from audio_ssl.interop.onnx import OptionalDependencyError

    return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            FolderInUseError, EspeakError, OptionalDependencyError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command is None:
        parser.print_help()
        return 1
    from audio_ssl import console

    console.configure(console.QUIET if args.quiet else
                      console.VERBOSE if args.verbose else console.DEFAULT)
    if args.quiet and hasattr(args, "no_progress"):
        args.no_progress = True
    _, run = COMMANDS[args.command]
    try:
        return run(args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"audio-ssl: error: {err}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "build_parser", "main", "parse_args"]
