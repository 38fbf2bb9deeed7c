"""Pretraining and what it reads: ``audio-ssl pretrain``, ``shard`` (a corpus as Lhotse Shar
shards) and ``targets`` (HuBERT's k-means labels); each command's options beside its run."""

from __future__ import annotations

import argparse
from pathlib import Path

from audio_ssl.cli.options import COUNT, add_device_options, at_least
from audio_ssl.config import OBJECTIVES

OBJECTIVE_HELP = (
    "self-supervised objective (default: the preset's: cpc for tiny, wav2vec2 for base and "
    "large): wav2vec 2.0's contrastive loss; "
    "HuBERT's masked prediction of k-means labels (needs --targets); BEST-RQ's masked prediction "
    "of fixed random-projection codes of the log-mel; reconstruct: L1 regression of the masked "
    "frames' normalised log-mel (TERA / Mockingjay style); CPC / wav2vec (v1): a causal context "
    "network predicting the next model.cpc.steps frames (InfoNCE, no masking); data2vec 2.0: "
    "regression of an EMA teacher's averaged top layers")


def add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain on a folder of raw audio",
        description="Pretrain a wav2vec 2.0 model on DATA: a folder (scanned recursively for "
        "wav, flac, ogg, opus, mp3), a JSONL manifest or a list of files. Audio is mixed down "
        "to mono and resampled to 16 kHz; unreadable, empty or too-short files are skipped and "
        "listed in OUTPUT/rejected.jsonl. Checkpoints, the resolved config, metrics and logs go "
        "to --output.",
    )
    p.add_argument("data", nargs="+", help="folder of audio, JSONL manifest, list of files, or a "
                   "shard folder of `audio-ssl shard` (a path or an s3:// URL: streamed); or "
                   "several shard folders as SOURCE=WEIGHT (the fraction of each epoch's hours "
                   "drawn from each) or a YAML list of {source, weight} (docs/shards.md)")
    p.add_argument("--output", "-o", type=Path, default=Path("runs/pretrain"),
                   help="run folder (default: runs/pretrain)")
    p.add_argument("--preset", choices=["tiny", "base", "large"], default="tiny",
                   help="model and training preset (default: tiny)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML file of overrides on top of the preset (see configs/)")
    p.add_argument("--max-steps", type=int, default=None, help="number of updates")
    p.add_argument("--objective", choices=list(OBJECTIVES), default=None, help=OBJECTIVE_HELP)
    p.add_argument("--targets", default=None, metavar="DIR",
                   help="hubert: the labels of DATA that `audio-ssl targets` wrote")
    add_device_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue from --output's last checkpoint when it has one, else start "
                   "fresh: one command line for the first start and every restart (a "
                   "preempted or requeued job)")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="continue pretraining from this checkpoint's weights (ours, an HF "
                   "Wav2Vec2ForPreTraining folder or a fairseq .pt) on DATA, with a fresh "
                   "optimizer and schedule; its network replaces the preset's, --config may "
                   "still change masks, loss weights and temperatures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def pretrain_config(args: argparse.Namespace, init=None):
    """The run's config: preset, --config, command-line values; on ``init`` (a
    :class:`~audio_ssl.interop.LoadedModel` to continue from) its network and normalisation."""
    from audio_ssl import config

    train = {"max_steps": args.max_steps, "devices": args.devices, "num_nodes": args.num_nodes,
             "precision": args.precision}
    overrides: dict = {"train": {k: v for k, v in train.items() if v is not None}}
    if getattr(args, "objective", None):
        overrides["model"] = {"objective": args.objective}
    if getattr(args, "targets", None):
        overrides["data"] = {"targets": str(Path(args.targets).resolve())}
    return config.load(args.preset, args.config, overrides=overrides,
                       model=init.config if init is not None else None,
                       normalize=init.expects_normalized if init is not None else None)


def run_pretrain(args: argparse.Namespace) -> int:
    from audio_ssl.tasks.run import find_last_checkpoint, load_init, pretrain

    if args.auto_resume:
        args.resume = find_last_checkpoint(Path(args.output)) is not None
    init = getattr(args, "init", None)
    # read once: its network for the config, its weights for the run
    loaded = load_init(init) if init is not None and not args.resume else None
    cfg = pretrain_config(args, loaded)
    result = pretrain(args.data, cfg, args.output, resume=args.resume,
                      progress=not args.no_progress, accelerator=args.accelerator,
                      init=loaded or init)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        print(result.summary())
    return 0


def add_shard(sub) -> None:
    sh = sub.add_parser(
        "shard", help="write a corpus as Lhotse Shar shards, to a folder or object storage",
        description="Write SOURCE (a folder, a JSONL manifest -- its transcripts and speakers "
        "go into the cuts -- or a list of files) as Lhotse Shar shards at OUTPUT (a path, or a "
        "URL such as s3://bucket/prefix): OUTPUT/shar/cuts.NNNNNN.jsonl.gz and "
        "recording.NNNNNN.tar, OUTPUT/index.jsonl.gz (each cut's shard and length: pretraining "
        "plans from it without opening audio) and OUTPUT/rejected.jsonl. Audio keeps its rate "
        "and channels, losslessly encoded. Each shard appears whole or not at all; a rerun "
        "skips complete shards. `audio-ssl pretrain OUTPUT` streams from it.",
    )
    sh.add_argument("source", help="folder of audio, JSONL manifest or list of files")
    sh.add_argument("output", help="shard folder: a path, file:// or s3:// URL")
    sh.add_argument("--shard-size", type=int, default=1000,
                    help="files per shard (default: 1000)")
    sh.add_argument("--format", default="flac", choices=["flac", "wav"],
                    help="audio encoding inside the shards (default: flac)")
    sh.add_argument("--workers", type=int, default=4,
                    help="threads decoding and encoding files (default: 4)")
    sh.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_shard(args: argparse.Namespace) -> int:
    from audio_ssl.data.shard_writer import write_shards

    print(write_shards(args.source, args.output, shard_size=args.shard_size,
                       audio_format=args.format, num_workers=args.workers,
                       progress=not args.no_progress).summary())
    return 0


def add_targets(sub) -> None:
    k = sub.add_parser(
        "targets", help="k-means labels of every file, for HuBERT pretraining",
        description="Cluster frames of DATA (one per encoder frame, 20 ms) with MiniBatchKMeans "
        "and write each file's labels to OUTPUT, for `audio-ssl pretrain DATA --objective hubert "
        "--targets OUTPUT`. --kind mfcc: 39-d MFCC + deltas (HuBERT's first iteration); --kind "
        "layer: a checkpoint's context layer (later iterations). Resumes where a stopped run "
        "left off; unreadable files are listed in OUTPUT/rejected.jsonl.",
    )
    k.add_argument("data", help="folder of audio, JSONL manifest or list of files")
    k.add_argument("--output", "-o", type=Path, required=True, help="targets folder")
    k.add_argument("--kind", choices=["mfcc", "layer"], default="mfcc")
    k.add_argument("--clusters", type=at_least(2), default=100,
                   help="k-means clusters (default: 100)")
    k.add_argument("--checkpoint", default=None, help="--kind layer: any model load_model reads")
    k.add_argument("--layer", type=COUNT, default=None,
                   help="--kind layer: context layer (0 = input)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_targets(args: argparse.Namespace) -> int:
    from audio_ssl.data import scan
    from audio_ssl.data.targets import TargetsConfig, make_targets

    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    cfg = TargetsConfig(kind=args.kind, clusters=args.clusters, seed=args.seed,
                        checkpoint=checkpoint, layer=args.layer)
    featurize = None
    if args.kind == "layer" and checkpoint is not None and args.layer is not None:
        from audio_ssl.extract.extractor import FeatureExtractor

        # the one extraction path: the checkpoint's own normalisation, exact frames for long
        # files; fp32 so that labels do not depend on the CPU's bf16 units
        extractor = FeatureExtractor.from_checkpoint(checkpoint, layers=args.layer,
                                                     precision="32")
        featurize = lambda wav: extractor(wav, sample_rate=cfg.sample_rate).float()  # noqa: E731
    items, skipped = scan(args.data, progress=not args.no_progress)
    count, rejected = make_targets(items, cfg, args.output, featurize)
    print(f"labelled {count} files with {args.clusters} {args.kind} clusters in {args.output} "
          f"({len(skipped) + len(rejected)} skipped)\n"
          f"pretrain on them: audio-ssl pretrain {args.data} --objective hubert "
          f"--targets {args.output}")
    return 0
