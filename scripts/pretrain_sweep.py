"""Short pretraining runs with config overrides, to study collapse and the log(K+1) plateau.

    python scripts/pretrain_sweep.py NAME STEPS 'YAML overrides on top of the tiny preset'
    python scripts/pretrain_sweep.py lr2e-3 300 '{optim: {lr: 0.002}}'

Trains on ../shared/data/librispeech (65 min, 261 speakers) with one thread (two sweeps can run
side by side on 2 cores), logs every step to /tmp/audio_ssl_sweep/NAME and prints the
contrastive loss, accuracy, code and prob perplexity averaged over 12 windows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio_ssl import config  # noqa: E402
from audio_ssl.tasks.run import pretrain  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech" / "manifest.jsonl"


def main() -> None:
    name, steps, overrides = sys.argv[1], int(sys.argv[2]), yaml.safe_load(sys.argv[3])
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    cfg = config.load(os.environ.get("PRESET", "tiny"), overrides=overrides)
    cfg = config.merge(cfg, {"train": {"max_steps": steps, "log_every": 1, "checkpoint_every": 100_000},
                             "data": {"num_workers": 1}})
    out = Path(os.environ.get("SWEEP_DIR", "/tmp/audio_ssl_sweep")) / name
    shutil.rmtree(out, ignore_errors=True)
    logging.disable(logging.WARNING)
    pretrain(DATA, cfg, out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    width = max(1, len(rows) // 12)
    for i in range(0, len(rows), width):
        window = rows[i : i + width]

        def avg(key: str) -> float:
            return sum(r[key] for r in window) / len(window)

        print(f"{name} step {window[0]['step']:>5} loss {avg('train/contrastive'):.3f} "
              f"acc {avg('train/accuracy'):.3f} code_ppl {avg('train/code_perplexity'):.1f} "
              f"prob_ppl {avg('train/prob_perplexity'):.1f}", flush=True)


if __name__ == "__main__":
    main()
