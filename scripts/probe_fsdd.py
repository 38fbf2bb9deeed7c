"""What do the features know? FSDD's spoken digits, each of its 5 speakers held out in turn.

    python scripts/probe_fsdd.py contrastive=runs/c/checkpoints/last.ckpt \\
        best-rq=runs/b/checkpoints/last.ckpt --output runs/probe-fsdd

A thin wrapper around ``audio-ssl probe``: for each NAME=CHECKPOINT it runs

    audio-ssl probe CHECKPOINT --task digits=../shared/data/fsdd/manifest.jsonl:text \\
        --split-by speaker --name NAME -o OUTPUT/NAME

(the first with the MFCC, log-mel and random-weight baselines, the others without), then
``audio-ssl probe --compare`` over the runs, written to ``OUTPUT/compare.md``. The protocol
(frozen layers, a learned weighted sum of them, mean+std pooling into a linear head, three
seeds, leave-one-speaker-out) is the command's: see ``audio_ssl/probe``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from audio_ssl.cli import main as audio_ssl  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fsdd"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="NAME=CHECKPOINT (anything load_model reads)")
    parser.add_argument("--data", type=Path, default=DATA, help="FSDD folder with manifest.jsonl")
    parser.add_argument("--output", type=Path, required=True, help="results folder")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    task = f"digits={args.data / 'manifest.jsonl'}:text"
    runs = []
    for k, spec in enumerate(args.checkpoints):
        name, sep, path = spec.partition("=")
        if not sep or "/" in name:
            name, path = Path(spec).stem, spec
        out = args.output / name
        code = audio_ssl(["probe", path, "--task", task, "--split-by", "speaker", "--name", name,
                          "--seeds", str(args.seeds), "-o", str(out)]
                         + (["--baselines", "none"] if k else []))
        if code:
            return code
        runs.append(str(out))
    return audio_ssl(["probe", "--compare", *runs, "-o", str(args.output)])


if __name__ == "__main__":
    sys.exit(main())
