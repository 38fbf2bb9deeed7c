"""Short pretraining runs of recipe variants over several seeds, scored by when they learn.

    python scripts/pretrain_sweep.py --steps 400 --seeds 1 2 3 \\
        default='{}' continuous='{model: {quantize_targets: false}}'

Each SETTING is NAME='YAML overrides' on top of the preset (``--preset``, default tiny). Every
(setting, seed) pair pretrains on the shared corpora (all of ../shared/data but tiny/, as
scripts/pretrain_shared.py does) with one thread, ``--parallel`` at a time, logging every update
to ``--output``/NAME-sSEED. The score is the *escape step*: the first update from which the
contrastive loss (the masked-prediction loss for other objectives) stays below
``--threshold`` x its value at a uniform guess, log(K+1) or log(V), for ``--hold`` updates.
Prints one JSON line per run and one per setting (runs that escaped, median escape step).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl import console  # noqa: E402
from audio_ssl.tasks.monitor import escape_step  # noqa: E402


def run_one(name: str, seed: int, overrides: str, args: argparse.Namespace) -> dict:
    import torch
    import yaml

    from audio_ssl import config
    from audio_ssl.tasks.run import pretrain
    from scripts.pretrain_shared import shared_files

    torch.set_num_threads(args.threads)
    cfg = config.load(args.preset, overrides={"model": {"objective": args.objective}})
    cfg = config.merge(cfg, yaml.safe_load(overrides) or {})
    schedule = {"schedule_steps": args.schedule_steps} if args.schedule_steps else {}
    cfg = config.merge(cfg, {"optim": schedule, "train": {"max_steps": args.steps, "log_every": 1, "seed": seed,
                                       "checkpoint_every": 100_000},
                             "data": {"num_workers": 1}})
    out = args.output / f"{name}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    listing = out / "files.lst"
    listing.write_text("".join(f"{f}\n" for f in shared_files(args.data)))
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    result = pretrain(listing, cfg, out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    key = "train/contrastive" if "train/contrastive" in rows[0] else "train/masked_loss"
    tail = rows[-50:]
    return {
        "setting": name, "seed": seed, "overrides": overrides,
        "escape_step": escape_step([(r["step"], r[key]) for r in rows], result.uniform_loss,
                                   args.threshold, args.hold),
        "uniform_loss": result.uniform_loss,
        "final_loss": statistics.fmean(r[key] for r in tail),
        "final_accuracy": statistics.fmean(r["train/accuracy"] for r in tail),
        "final_code_perplexity": statistics.fmean(r.get("train/code_perplexity", 0.0) for r in tail),
        "minutes": (time.perf_counter() - start) / 60,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="+", help="NAME='YAML overrides'")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--schedule-steps", type=int, default=2000,
                        help="learning-rate schedule of a run this long (0: --steps); default: "
                             "the tiny preset's 2,000, so a short run sees the real warm-up")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--objective", default="wav2vec2",
                        help="objective under the settings (default wav2vec2, whose plateau "
                             "docs/studies/plateau.md measured; tiny's default is CPC)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=Path("/tmp/audio_ssl_sweep"))
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--hold", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    console.configure()  # each Lightning line once, no advertisement (as the CLI prints)

    settings = [s.split("=", 1) if "=" in s else (s, "{}") for s in args.settings]
    if args.one:  # a child: one setting, one seed
        (name, overrides), seed = settings[0], args.seeds[0]
        print(json.dumps(run_one(name, seed, overrides, args)), flush=True)
        return 0

    jobs = [(name, overrides, seed) for name, overrides in settings for seed in args.seeds]
    running: list[subprocess.Popen] = []
    results: dict[str, list[dict]] = {}

    def reap(proc: subprocess.Popen) -> None:
        out, _ = proc.communicate()
        line = [l for l in out.splitlines() if l.startswith("{")]
        if proc.returncode or not line:
            print(json.dumps({"failed": proc.args[-1], "returncode": proc.returncode}), flush=True)
            return
        record = json.loads(line[-1])
        print(json.dumps(record), flush=True)
        results.setdefault(record["setting"], []).append(record)

    for name, overrides, seed in jobs:
        while len(running) >= args.parallel:
            time.sleep(2)
            for proc in [p for p in running if p.poll() is not None]:
                running.remove(proc)
                reap(proc)
        cmd = [sys.executable, __file__, "--one", "--steps", str(args.steps), "--seeds", str(seed),
               "--preset", args.preset, "--objective", args.objective, "--data", str(args.data),
               "--output", str(args.output),
               "--threshold", str(args.threshold), "--hold", str(args.hold),
               "--threads", str(args.threads), "--schedule-steps", str(args.schedule_steps),
               f"{name}={overrides}"]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        running.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=env, cwd=ROOT))
    for proc in running:
        reap(proc)

    for name, records in results.items():
        steps = [r["escape_step"] for r in records]
        escaped = [s for s in steps if s is not None]
        print(json.dumps({
            "summary": name, "escaped": f"{len(escaped)}/{len(steps)}",
            "escape_steps": steps,
            "median_escape_step": statistics.median(escaped) if escaped else None,
            "final_loss": statistics.fmean(r["final_loss"] for r in records),
            "final_code_perplexity": statistics.fmean(r["final_code_perplexity"] for r in records),
            "uniform_loss": records[0]["uniform_loss"],
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
