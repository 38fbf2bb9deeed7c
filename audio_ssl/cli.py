"""The single `audio-ssl` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DESCRIPTION = """\
audio-ssl: self-supervised speech representation learning (wav2vec 2.0).

commands:
  demo       make a small speech-like corpus and pretrain a tiny model on it (no input needed)
  pretrain   pretrain a model on a folder of raw audio (any format, rate, channels, length)

Run `audio-ssl COMMAND --help` for each command's options.
"""


def _add_pretrain_options(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", choices=["tiny", "base", "large"], default=default_preset,
                   help=f"model and training preset (default: {default_preset})")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML file of overrides on top of the preset (see configs/)")
    p.add_argument("--max-steps", type=int, default=None, help="number of updates")
    p.add_argument("--devices", type=int, default=None,
                   help="devices per node (GPUs, or CPU processes with gloo when no GPU)")
    p.add_argument("--num-nodes", type=int, default=None, help="nodes (torchrun or SLURM)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where to train (default: GPU when one is visible)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audio-ssl", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "pretrain", help="pretrain on a folder of raw audio",
        description="Pretrain a wav2vec 2.0 model on DATA: a folder (scanned recursively for "
        "wav, flac, ogg, opus, mp3), a JSONL manifest or a list of files. Audio is mixed down "
        "to mono and resampled to 16 kHz; unreadable, empty or too-short files are skipped and "
        "listed in OUTPUT/rejected.jsonl. Checkpoints, the resolved config, metrics and logs go "
        "to --output.",
    )
    p.add_argument("data", help="folder of audio, JSONL manifest or list of files")
    p.add_argument("--output", "-o", type=Path, default=Path("runs/pretrain"),
                   help="run folder (default: runs/pretrain)")
    _add_pretrain_options(p, "tiny")

    d = sub.add_parser(
        "demo", help="make a speech-like corpus and pretrain the tiny model on it",
        description="Generate a speech-like corpus (espeak-ng voices when espeak-ng is "
        "installed, else a built-in formant synthesiser), then pretrain the tiny preset on it on "
        "this machine. Takes under 10 minutes on 2 CPU cores.",
    )
    d.add_argument("--output", "-o", type=Path, default=Path("runs/demo"),
                   help="folder for the corpus and the run (default: runs/demo)")
    d.add_argument("--minutes", type=float, default=20.0, help="minutes of audio to generate")
    _add_pretrain_options(d, "tiny")
    d.set_defaults(max_steps_default=600)
    return parser


def _load_config(args: argparse.Namespace):
    from audio_ssl import config

    max_steps = args.max_steps
    if max_steps is None and getattr(args, "max_steps_default", None) and args.config is None:
        max_steps = args.max_steps_default
    train = {"max_steps": max_steps, "devices": args.devices, "num_nodes": args.num_nodes}
    return config.load(args.preset, args.config,
                       overrides={"train": {k: v for k, v in train.items() if v is not None}})


def _run_pretrain(args: argparse.Namespace, data: str | Path, output: Path) -> int:
    from audio_ssl.data import NoAudioError
    from audio_ssl.tasks.run import pretrain

    cfg = _load_config(args)
    try:
        result = pretrain(data, cfg, output, resume=args.resume, progress=not args.no_progress,
                          accelerator=args.accelerator)
    except (NoAudioError, FileNotFoundError, FileExistsError) as err:
        print(f"audio-ssl: error: {err}", file=sys.stderr)
        return 2
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        print(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    try:
        if args.command == "pretrain":
            return _run_pretrain(args, args.data, args.output)
        if args.command == "demo":
            from audio_ssl.data.synth import make_corpus

            corpus = make_corpus(args.output / "corpus", minutes=args.minutes,
                                 progress=not args.no_progress)
            return _run_pretrain(args, corpus / "manifest.jsonl", args.output / "pretrain")
    except ValueError as err:  # bad config values, bad arguments
        print(f"audio-ssl: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
