"""Does bf16-mixed learn as fp32 does? `tiny` pretraining and CTC fine-tuning in both precisions.

    python scripts/precision_learning.py                 # about 25 minutes on 2 cores
    python scripts/precision_learning.py --pretrain-steps 150 --finetune-steps 150 --seeds 1 2

On the demo's corpus (`audio_ssl.corpora.corpus`: spoken digits from eSpeak NG voices, the last
voices heard only in the test split; no shared data needed), through the commands users run:

1. `audio-ssl pretrain` of `tiny`, once per seed in fp32 (`--precision 32`) and in bf16-mixed;
2. `audio-ssl finetune` with the demo's CTC recipe from the first seed's fp32 checkpoint, once
   per seed in each precision, validated on the unseen voices.

The question is whether the bf16 curves stay inside the spread that fp32 runs show over seeds:
for each run, the mean loss over the last `--tail` updates (and the final validation CER of the
CTC runs); a summary line per stage gives the fp32 range, the bf16 values and whether each lies
within the fp32 range widened by half its width. Writes `scripts/results/precision_learning.jsonl`
(one line per run and per stage) and a plot, `scripts/results/precision_learning.png`: loss
against update, fp32 seeds as a band (min to max), bf16 runs as lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl import console  # noqa: E402
from audio_ssl.cli import main as cli  # noqa: E402
from audio_ssl.demo.run import finetune_overrides  # noqa: E402
from audio_ssl.plot import load_run  # noqa: E402

PRECISIONS = ("32", "bf16-mixed")


def pretrain(corpus: Path, out: Path, prec: str, seed: int, steps: int) -> Path:
    run = out / f"pretrain-{prec}-seed{seed}"
    if not (run / "summary.json").is_file():
        cfg = out / f"pretrain-seed{seed}.yaml"
        # wav2vec 2.0, as measured in docs/performance.md (tiny's default objective is CPC)
        cfg.write_text(json.dumps({"train": {"seed": seed, "log_every": 5},
                                   "model": {"objective": "wav2vec2"}}))
        code = cli(["pretrain", str(corpus), "-o", str(run), "--max-steps", str(steps),
                    "--precision", prec, "--config", str(cfg), "--quiet"])
        if code != 0:
            raise SystemExit(f"pretrain {run.name} exited {code}")
    return run


def finetune(corpus: Path, checkpoint: Path, out: Path, prec: str, seed: int, steps: int) -> Path:
    run = out / f"finetune-{prec}-seed{seed}"
    if not (run / "summary.json").is_file():
        overrides = finetune_overrides(steps, seed)
        overrides["train"]["log_every"] = 5
        cfg = out / f"finetune-seed{seed}.yaml"
        cfg.write_text(json.dumps({k: v for k, v in overrides.items() if k != "train"}
                                  | {"train": {**overrides["train"], "max_steps": steps}}))
        code = cli(["finetune", str(checkpoint), "--train", str(corpus), "--valid", str(corpus),
                    "--train-split", "train", "--valid-split", "test", "-o", str(run),
                    "--config", str(cfg), "--precision", prec, "--quiet"])
        if code != 0:
            raise SystemExit(f"finetune {run.name} exited {code}")
    return run


def tail_mean(run: Path, key: str, tail: int) -> float:
    steps, values = load_run(run).series(key)
    kept = [v for s, v in zip(steps, values) if s > steps[-1] - tail]
    return statistics.fmean(kept)


def within(value: float, reference: list[float]) -> bool:
    low, high = min(reference), max(reference)
    margin = (high - low) / 2
    return low - margin <= value <= high + margin


def plot(stages: dict[str, dict[str, list[Path]]], keys: dict[str, str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4))
    for ax, (stage, runs) in zip(np.atleast_1d(axes), stages.items()):
        series = {p: [load_run(r).series(keys[stage]) for r in runs[p]] for p in PRECISIONS}
        steps = series["32"][0][0]
        n = min(len(s) for s, _ in series["32"])
        band = np.array([v[:n] for _, v in series["32"]])
        ax.fill_between(steps[:n], band.min(0), band.max(0), alpha=0.3, color="tab:blue",
                        label=f"fp32, {len(band)} seeds (min-max)")
        for i, (s, v) in enumerate(series["bf16-mixed"]):
            ax.plot(s, v, color="tab:red", lw=1, label="bf16-mixed" if i == 0 else None)
        ax.set_title(f"{stage}: {keys[stage]}")
        ax.set_xlabel("update")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "precision-learning")
    parser.add_argument("--minutes", type=float, default=20.0, help="corpus size (default 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--tail", type=int, default=50, help="updates averaged at the end")
    parser.add_argument("--results", type=Path, default=ROOT / "scripts" / "results")
    args = parser.parse_args()
    console.configure(console.QUIET)
    from audio_ssl.corpora.corpus import make_corpus

    args.output.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(args.output / "corpus", minutes=args.minutes, seed=0) / "manifest.jsonl"
    keys = {"pretrain": "train/contrastive", "finetune": "train/loss"}
    stages: dict[str, dict[str, list[Path]]] = {"pretrain": {}, "finetune": {}}
    for prec in PRECISIONS:
        stages["pretrain"][prec] = [pretrain(corpus, args.output, prec, seed, args.pretrain_steps)
                                    for seed in args.seeds]
    checkpoint = stages["pretrain"]["32"][0] / "checkpoints" / "last.ckpt"
    for prec in PRECISIONS:
        stages["finetune"][prec] = [finetune(corpus, checkpoint, args.output, prec, seed,
                                             args.finetune_steps) for seed in args.seeds]
    rows = []
    for stage, runs in stages.items():
        values: dict[str, list[float]] = {}
        cers: dict[str, list[float]] = {}
        for prec in PRECISIONS:
            for seed, run in zip(args.seeds, runs[prec]):
                row = {"stage": stage, "precision": prec, "seed": seed,
                       "tail_loss": round(tail_mean(run, keys[stage], args.tail), 4)}
                if stage == "finetune":
                    row["valid_cer"] = round(load_run(run).series("valid/cer")[1][-1], 4)
                    cers.setdefault(prec, []).append(row["valid_cer"])
                values.setdefault(prec, []).append(row["tail_loss"])
                rows.append(row)
                print(json.dumps(row), flush=True)
        summary = {"stage": stage,
                   "summary": f"{keys[stage]}, mean of the last {args.tail} updates",
                   "fp32": values["32"], "bf16": values["bf16-mixed"],
                   "bf16_within_fp32_spread": all(within(v, values["32"])
                                                  for v in values["bf16-mixed"])}
        if cers:
            summary |= {"fp32_cer": cers["32"], "bf16_cer": cers["bf16-mixed"],
                        "bf16_cer_within_fp32_spread": all(within(v, cers["32"])
                                                           for v in cers["bf16-mixed"])}
        rows.append(summary)
        print(json.dumps(summary), flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "precision_learning.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    plot(stages, keys, args.results / "precision_learning.png")
    print(f"plot: {args.results / 'precision_learning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
