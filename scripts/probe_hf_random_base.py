"""The probe protocol on a foreign model: a transformers ``Wav2Vec2Model`` built from the BASE
config (``Wav2Vec2Config()``'s defaults) with random weights, saved as an HF folder and probed
through ``audio-ssl probe`` exactly as a user's download would be.

    python scripts/probe_hf_random_base.py --output runs/probe-hf-base-random

Writes ``OUTPUT/hf-base-random/`` (the HF folder) and ``OUTPUT/probe/`` (the probe's results).
The task is FSDD's digits, leave-one-speaker-out, without baselines (the suite's run has them);
needs ``transformers`` (the test extra).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from audio_ssl.cli import main as audio_ssl  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fsdd"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA, help="FSDD folder with manifest.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="the random weights' seed")
    args = parser.parse_args()
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    folder = args.output / "hf-base-random"
    if not (folder / "config.json").is_file():
        torch.manual_seed(args.seed)
        Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(folder)
    return audio_ssl(["probe", str(folder), "--task", f"digits={args.data / 'manifest.jsonl'}:text",
                      "--split-by", "speaker", "--baselines", "none", "--name", "hf-base-random",
                      "-o", str(args.output / "probe")])


if __name__ == "__main__":
    sys.exit(main())
