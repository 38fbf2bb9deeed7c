"""What a model learned: ``audio-ssl probe`` (SUPERB-style probes of a checkpoint's features)
and ``plot`` (a run's curves, a checkpoint's codebook usage); each command's options beside its
run."""

from __future__ import annotations

import argparse
from pathlib import Path

from audio_ssl.cli.options import POSITIVE_INT, add_precision_option, device

DESCRIPTION = (
    "What do CHECKPOINT's features know? Probe them SUPERB-style on labelled manifests: the "
    "model is frozen, every context layer is extracted once (cached in OUTPUT/cache) and light "
    "heads are trained on a learned weighted sum of the layers (mean and spread over --seeds "
    "seeds) and on each layer alone. The same heads read the baselines: MFCC with deltas, "
    "log-mel, and the same network with random weights. Task kinds: --task NAME=MANIFEST:FIELD "
    "classifies each utterance's FIELD (a digit word, a language, a speaker); --task "
    "NAME=MANIFEST trains a CTC head on its 'text' (characters; CER and WER). Writes "
    "OUTPUT/results.json, results.md, scores.png, layer_weights.png and a confusion matrix per "
    "classification task. --compare DIR DIR... tabulates earlier probe runs side by side.")


def add_probe(sub) -> None:
    from audio_ssl.probe.data import SPLITS
    from audio_ssl.probe.heads import HEADS

    p = sub.add_parser("probe", help="SUPERB-style probes of a checkpoint's features, with "
                       "MFCC, log-mel and random-weight baselines", description=DESCRIPTION)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="model checkpoint (.ckpt, HF folder, fairseq or torchaudio .pt)")
    p.add_argument("--task", action="append", default=[], metavar="NAME=MANIFEST[:FIELD]",
                   help="a task (repeatable): with FIELD, classification of that field; "
                   "without, CTC recognition of 'text'")
    p.add_argument("--suite", type=Path, default=None,
                   help="YAML file of tasks (e.g. configs/probe_shared.yaml)")
    p.add_argument("--split-by", choices=SPLITS, default=None,
                   help="for --task tasks: the manifest's split field (default), "
                   "speaker-disjoint (leave-one-speaker-out with few speakers), or "
                   "within-speaker (speaker identification)")
    p.add_argument("--output", "-o", type=Path, default=None, help="results folder")
    p.add_argument("--name", default="model", help="the checkpoint's column (default: model)")
    p.add_argument("--seeds", type=POSITIVE_INT, default=3, help="head seeds (default: 3)")
    p.add_argument("--head", choices=HEADS, default="linear", help="head (default: linear)")
    p.add_argument("--baselines", default="random,mfcc,logmel",
                   help="comma-separated, from random, mfcc, logmel; 'none' for none "
                   "(default: all three)")
    p.add_argument("--no-sweep", action="store_true", help="skip the per-layer sweep")
    p.add_argument("--device", default=None, type=device,
                   help="extraction device (default: CUDA if any)")
    add_precision_option(p)  # the extraction's
    p.add_argument("--compare", nargs="+", type=Path, default=None, metavar="DIR",
                   help="tabulate earlier probe output folders side by side (and write "
                   "OUTPUT/compare.md with --output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _tasks(args: argparse.Namespace):
    from dataclasses import replace

    from audio_ssl.probe.data import parse_task
    from audio_ssl.probe.suite import load_suite

    tasks = [parse_task(spec) for spec in args.task]
    if args.split_by:
        tasks = [replace(t, split_by=args.split_by) for t in tasks]
    if args.suite is not None:
        tasks += load_suite(args.suite, args.output / "corpora", progress=not args.no_progress)
    return tasks


def run_probe(args: argparse.Namespace) -> int:
    """The command; user errors propagate to :func:`audio_ssl.cli.main` (one line, exit 2)."""
    from audio_ssl.probe.heads import HeadConfig
    from audio_ssl.probe.report import compare, table
    from audio_ssl.probe.run import ProbeSettings, run_probe as probe

    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise FileExistsError(f"output {args.output} is a file: expected a folder")
    if args.compare:
        text = compare(args.compare)
        print(text, end="")
        if args.output is not None:
            from audio_ssl.io import atomic_write_text

            args.output.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.output / "compare.md", text, fsync=False)
        return 0
    if args.checkpoint is None or args.output is None:
        raise ValueError("expected CHECKPOINT and --output DIR (or --compare DIR DIR...)")
    if not args.task and args.suite is None:
        raise ValueError("no task: give --task NAME=MANIFEST[:FIELD] or --suite YAML")
    baselines = () if args.baselines == "none" else tuple(
        b.strip() for b in args.baselines.split(",") if b.strip())
    settings = ProbeSettings(name=args.name, baselines=baselines, seeds=args.seeds,
                             sweep=not args.no_sweep, head=HeadConfig(head=args.head),
                             device=args.device, precision=args.precision or "auto",
                             progress=not args.no_progress)
    results = probe(args.checkpoint, _tasks(args), args.output, settings)
    print(table(results), end="")
    print(f"results: {args.output / 'results.md'} ({results['seconds']:.0f} s)")
    return 0


def add_plot(sub) -> None:
    o = sub.add_parser(
        "plot", help="curves of pretraining or fine-tuning runs; a checkpoint's codebook usage",
        description="Draw the logged curves of one or more run folders (overlaid, one colour "
        "each) to a PNG. Pretraining: loss as a fraction of a uniform guess's, loss terms, "
        "accuracy, code and prob perplexity, cosines to positive and distractors, Gumbel "
        "temperature, learning rate, gradient norm, throughput. Fine-tuning: loss, validation "
        "WER and CER, learning rate. A checkpoint with --data: how often each code of each "
        "quantizer group is chosen over that audio, as a heat map.",
    )
    o.add_argument("paths", nargs="+", metavar="RUN_DIR",
                   help="run folders of one kind, or one checkpoint (with --data)")
    o.add_argument("--output", "-o", type=Path, default=None,
                   help="PNG to write (default: RUN_DIR/curves.png, or CHECKPOINT.codebook.png)")
    o.add_argument("--data", default=None,
                   help="checkpoint: audio whose codes to count (folder, manifest or list)")
    o.add_argument("--max-files", type=POSITIVE_INT, default=200,
                   help="checkpoint: files of --data to read at most (default: 200)")
    o.add_argument("--title", default=None, help="figure title")


def run_plot(args: argparse.Namespace) -> int:
    from audio_ssl.plot import run_plot_command

    return run_plot_command(args)

