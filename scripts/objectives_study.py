"""Every objective on the same data, encoder and budget: which family learns most here?

    python scripts/objectives_study.py --objectives wav2vec2 best-rq hubert cpc data2vec \\
        reconstruct --steps 1000 --seeds 1 --output runs/objectives

For each objective and seed: `tiny` pretrained on all of ../shared/data except tiny/ (the
listing of scripts/pretrain_shared.py) for --steps updates with `train.seed` = the seed; then
`audio-ssl probe` with --suite (default configs/probe_objectives.yaml: FSDD digits on unseen
speakers, Common Voice language on unseen speakers; the same linear heads, 3 head seeds, MFCC and
log-mel baselines through the same heads). HuBERT needs labels: `--hubert-targets DIR`
(`audio-ssl targets runs/shared-tiny/files.lst --output DIR`). Finished runs and probes are
reused, so an interrupted study continues where it stopped. Prints one JSON line per run and
writes OUTPUT/study.jsonl and OUTPUT/study.md (the table of docs/studies/objectives.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl.cli import main as cli  # noqa: E402
from scripts.pretrain_shared import shared_files  # noqa: E402


def pretrain(objective: str, seed: int, steps: int, output: Path, data: Path,
             targets: Path | None) -> dict:
    summary = output / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("steps") == steps:
        return json.loads(summary.read_text())
    output.mkdir(parents=True, exist_ok=True)
    listing = output / "files.lst"
    listing.write_text("".join(f"{f}\n" for f in shared_files(data)))
    overrides = output / "seed.yaml"
    overrides.write_text(f"train: {{seed: {seed}}}\n")
    argv = ["pretrain", str(listing), "--output", str(output), "--max-steps", str(steps),
            "--objective", objective, "--config", str(overrides), "--no-progress"]
    if objective == "hubert":
        if targets is None:
            raise SystemExit("--objectives hubert needs --hubert-targets DIR")
        argv += ["--targets", str(targets)]
    if (output / "checkpoints" / "last.ckpt").is_file():
        argv.append("--resume")
    if cli(argv) != 0:
        raise SystemExit(f"pretraining {objective} seed {seed} failed")
    return json.loads(summary.read_text())


def probe(checkpoint: Path, name: str, suite: Path, output: Path, baselines: bool) -> dict:
    results = output / "results.json"
    if not results.is_file():
        argv = ["probe", str(checkpoint), "--suite", str(suite), "--name", name, "-o",
                str(output), "--no-progress"]
        if not baselines:
            argv += ["--baselines", "random"]
        if cli(argv) != 0:
            raise SystemExit(f"probing {checkpoint} failed")
    return json.loads(results.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objectives", nargs="+", default=["wav2vec2", "best-rq"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "objectives")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--suite", type=Path, default=ROOT / "configs" / "probe_objectives.yaml")
    parser.add_argument("--hubert-targets", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    first = True
    for objective in args.objectives:
        for seed in args.seeds:
            run = args.output / f"{objective}-s{seed}"
            start = time.perf_counter()
            summary = pretrain(objective, seed, args.steps, run, args.data, args.hubert_targets)
            results = probe(run / "checkpoints" / "last.ckpt", f"{objective}-s{seed}",
                            args.suite, args.output / f"probe-{objective}-s{seed}", first)
            first = False
            row = {"objective": objective, "seed": seed, "steps": summary["steps"],
                   "pretrain_seconds": round(summary["seconds"], 1),
                   "seconds_per_update": round(summary["seconds"] / summary["steps"], 3),
                   "loss_first": summary["first"].get("train/loss"),
                   "loss_last": summary["last"].get("train/loss"),
                   "loss_last20": last_losses(run / "metrics.jsonl"),
                   "warnings": summary.get("warnings", []),
                   "wall_seconds": round(time.perf_counter() - start, 1)}
            for task, entry in results["tasks"].items():
                for name, got in entry["sets"].items():
                    key = "model" if name == f"{objective}-s{seed}" else name
                    row[f"{task}/{key}"] = round(100 * got["score"]["mean"], 1)
                    row[f"{task}/{key}_std"] = round(100 * got["score"]["std"], 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "study.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.output / "study.md").write_text(table(rows))
    print(table(rows))
    return 0


def last_losses(metrics: Path, count: int = 20) -> float:
    """The mean of the last `count` logged training losses: the last one alone is one batch's
    (BEST-RQ's per-batch losses spread by 0.3 at the end of 2,000 updates)."""
    losses = [row["train/loss"] for row in map(json.loads, metrics.read_text().splitlines())
              if "train/loss" in row]
    return round(statistics.fmean(losses[-count:]), 4)


def table(rows: list[dict]) -> str:
    """Objectives x (time per update, loss, each probe task: model and random weights), means
    over seeds; the baselines' figures from the first probe that has them."""
    tasks = sorted({k.split("/")[0] for r in rows for k in r if k.endswith("/model")})
    head = ["objective", "seeds", "s / update", "loss first -> last 20 (mean)"]
    head += [f"{t} (random weights)" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for objective in dict.fromkeys(r["objective"] for r in rows):
        mine = [r for r in rows if r["objective"] == objective]
        cells = [f"`{objective}`", str(len(mine)),
                 f"{statistics.fmean(r['seconds_per_update'] for r in mine):.3f}",
                 f"{statistics.fmean(r['loss_first'] for r in mine):.3f} -> "
                 f"{statistics.fmean(r.get('loss_last20', r['loss_last']) for r in mine):.3f}"]
        for t in tasks:
            scores = [r[f"{t}/model"] for r in mine]
            spread = f" ± {statistics.stdev(scores):.1f}" if len(scores) > 1 else ""
            cells.append(f"{statistics.fmean(scores):.1f}{spread} "
                         f"({statistics.fmean(r[f'{t}/random'] for r in mine):.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    base = next((r for r in rows if any(k.endswith("/mfcc") for k in r)), None)
    if base:
        lines.append("| MFCC + deltas / log-mel (no pretraining) | | | | " + " | ".join(
            f"{base[f'{t}/mfcc']:.1f} / {base[f'{t}/logmel']:.1f}" for t in tasks) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
