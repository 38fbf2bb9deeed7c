"""Plot pretraining runs' logged curves, one colour per run, any objective.

    python scripts/plot_pretrain.py runs/shared-tiny runs/shared-best-rq -o scripts/results/pretrain.png

Panels: the loss as a fraction of a uniform guess's (log(K+1) candidates for wav2vec 2.0, log V
codes for BEST-RQ and HuBERT), so objectives share one axis and 0.9 is the escape line;
accuracy; the context's cosine to its positive and to its distractors (wav2vec 2.0); code
perplexity (the quantizer's, or how many target codes are in use).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(run: Path) -> list[dict]:
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run re-logs the steps after its checkpoint
    return [rows[s] for s in sorted(rows)]


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
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG file")
    parser.add_argument("--labels", nargs="*", default=None, help="one legend label per run")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for i, run in enumerate(args.runs):
        rows = load(run)
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        uniform = summary.get("uniform_loss")
        key = "train/contrastive" if "train/contrastive" in rows[0] else "train/masked_loss"
        if uniform is None:
            import math
            uniform = math.log(101)
        label = args.labels[i] if args.labels else run.name
        color = f"C{i}"
        steps = [r["step"] for r in rows]
        window = max(1, len(rows) // 60)

        def curve(ax, values, style="-", name=label):
            ax.plot(steps, smooth(values, window), style, color=color, label=name)

        curve(axes[0], [r[key] / uniform for r in rows])
        curve(axes[1], [r["train/accuracy"] for r in rows])
        if "train/positive_cosine" in rows[0]:
            curve(axes[2], [r["train/positive_cosine"] for r in rows], "-", f"{label}: positive")
            curve(axes[2], [r["train/distractor_cosine"] for r in rows], ":", f"{label}: distractors")
        if any(r.get("train/code_perplexity", 0) > 0 for r in rows):
            curve(axes[3], [r["train/code_perplexity"] for r in rows])
    axes[0].axhline(0.9, color="grey", linestyle="--", label="0.9: the escape line")
    titles = ["loss / loss of a uniform guess", "accuracy (masked frames)",
              "cosine of the context to its targets", "code perplexity"]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=100)
    print(args.output)


if __name__ == "__main__":
    main()
