"""``audio-ssl demo``: the whole workflow on a corpus it makes; its options beside its run."""

from __future__ import annotations

import argparse
from pathlib import Path

from audio_ssl.cli.options import COUNT, POSITIVE_INT, POSITIVE_SECONDS, accelerator


def add_demo(sub) -> None:
    d = sub.add_parser(
        "demo", help="the whole workflow on a corpus it makes, each stage shown working",
        description="Make a spoken-digit corpus with eSpeak NG voices (installed by pip; a few "
        "voices held out for testing), pretrain the tiny preset on it, plot the curves, extract "
        "every layer's features, probe them against MFCCs, fine-tune with CTC and transcribe "
        "the held-out voices; ends with a table of what each stage showed and where its outputs "
        "are. About 10 minutes on 2 CPU cores. Run it again to reuse finished stages.",
    )
    d.add_argument("--output", "-o", type=Path, default=Path("runs/demo"),
                   help="folder for the corpus and the runs (default: runs/demo)")
    d.add_argument("--minutes", type=POSITIVE_SECONDS, default=20.0,
                   help="minutes of audio to generate (default: 20)")
    d.add_argument("--pretrain-steps", type=POSITIVE_INT, default=500,
                   help="pretraining updates (default: 500)")
    d.add_argument("--finetune-steps", type=COUNT, default=600,
                   help="CTC fine-tuning updates (default: 600; 0: stop after the probe)")
    d.add_argument("--seed", type=int, default=0, help="corpus and training seed (default: 0)")
    d.add_argument("--preset", choices=["tiny", "base", "large"], default="tiny",
                   help="model preset (default: tiny)")
    d.add_argument("--config", type=Path, default=None,
                   help="YAML overrides on top of the preset, as for pretrain")
    d.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   type=accelerator)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_demo(args: argparse.Namespace) -> int:
    from audio_ssl.demo.run import DemoSettings, run_demo as demo

    settings = DemoSettings(
        output=args.output, minutes=args.minutes, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, seed=args.seed, preset=args.preset,
        config=args.config, accelerator=args.accelerator, progress=not args.no_progress)
    return demo(settings)
