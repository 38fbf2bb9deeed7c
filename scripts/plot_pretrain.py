"""Plot a run's logged curves: contrastive loss, accuracy, code perplexity, temperature.

    python scripts/plot_pretrain.py runs/shared-tiny scripts/results/pretrain_tiny_cpu.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(run: Path) -> dict[int, dict]:
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return dict(sorted(rows.items()))


def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    rows = load(args.run)
    steps = list(rows)
    window = max(1, len(steps) // 100)
    panels = [("train/contrastive", "contrastive loss (nats)"), ("train/accuracy", "accuracy"),
              ("train/code_perplexity", "code perplexity"),
              ("train/feature_penalty", "feature penalty (log scale)"),
              ("train/gumbel_temperature", "Gumbel temperature")]
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.8))
    for ax, (key, label) in zip(axes, panels):
        values = [rows[s][key] for s in steps]
        ax.plot(steps, values, alpha=0.3, color="tab:blue")
        ax.plot(steps, smooth(values, window), color="tab:blue")
        ax.set_title(label)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        if "penalty" in key:
            ax.set_yscale("log")
    axes[0].axhline(math.log(101), color="tab:red", linestyle="--", label="log(101): uniform guess")
    axes[0].legend()
    summary = args.run / "summary.json"
    if args.title or summary.is_file():
        s = json.loads(summary.read_text()) if summary.is_file() else {}
        fig.suptitle(args.title or f"{s.get('steps')} updates, {s.get('hours', 0):.2f} h of audio, "
                     f"{s.get('seconds', 0) / 60:.0f} min")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(args.png)


if __name__ == "__main__":
    main()
