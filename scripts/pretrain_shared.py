"""The real run: pretrain on all of ../shared/data except tiny/, then plot the curves.

    python scripts/pretrain_shared.py --output runs/shared-tiny --max-steps 6000
    python scripts/pretrain_shared.py --output runs/shared-tiny --resume   # continue it
    python scripts/pretrain_shared.py --output runs/shared-best-rq --objective best-rq
    audio-ssl targets runs/shared-tiny/files.lst --output runs/shared-targets   # HuBERT labels
    python scripts/pretrain_shared.py --output runs/shared-hubert --objective hubert \
        --targets runs/shared-targets

Builds a list of every audio file in the shared corpora's manifests (FSDD, LJSpeech,
LibriSpeech, Common Voice; ~3.2 h) and runs `audio-ssl pretrain` on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl.cli import main as cli  # noqa: E402


def shared_files(data: Path, exclude: tuple[str, ...] = ("tiny",)) -> list[Path]:
    files = []
    for manifest in sorted(data.glob("*/manifest.jsonl")):
        if manifest.parent.name in exclude:
            continue
        for line in manifest.read_text().splitlines():
            files.append(manifest.parent / json.loads(line)["audio"])
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "shared-tiny")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--max-steps", type=int, default=6000)
    parser.add_argument("--objective", default="wav2vec2",
                        help="any objective `audio-ssl pretrain --objective` takes (default "
                             "wav2vec2: the run docs/probing.md and the studies measured; "
                             "tiny's own default is cpc)")
    parser.add_argument("--targets", type=Path, default=None,
                        help="hubert: labels of the listing (audio-ssl targets OUTPUT/files.lst)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    listing = args.output / "files.lst"
    files = shared_files(args.data)
    listing.write_text("".join(f"{f}\n" for f in files))
    argv = ["pretrain", str(listing), "--output", str(args.output), "--preset", args.preset,
            "--max-steps", str(args.max_steps), "--no-progress"]
    if args.config:
        argv += ["--config", str(args.config)]
    if args.objective:
        argv += ["--objective", args.objective]
    if args.targets:
        argv += ["--targets", str(args.targets)]
    if args.resume:
        argv.append("--resume")
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
