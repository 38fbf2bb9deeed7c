"""The objectives study's figure, from the rows it committed: probes and cost per update.

    python scripts/plot_objectives.py                       # -> scripts/results/objectives_study.png

Reads the JSON lines of scripts/objectives_study.py (400-update screen, and the 2,000-update
runs) and of scripts/bench_objectives.py (cost of an update relative to wav2vec2, fp32 and bf16),
and draws three panels: speaker-disjoint digits and language probes per objective (the trained
network, the same network at random weights, MFCC through the same heads), and the cost of one
update. Rows repeated for one (objective, seed, updates) count once, the last one written; the
2,000-update bars are the mean over seeds with their standard deviation. Prints one JSON line
per bar, so the figure can be checked against the rows it was drawn from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results"
sys.path.insert(0, str(ROOT))

from audio_ssl.io import iter_jsonl  # noqa: E402


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit 2, no traceback."""
    print(f"plot_objectives: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_rows(path: Path) -> list[dict]:
    """JSON lines of ``path``; one clear line and exit 2 if it is missing or not JSON lines."""
    try:
        return [row for _, row in iter_jsonl(path)]
    except OSError as err:
        fail(f"cannot read {path}: {err.strerror}")
    except ValueError as err:  # names the file and line
        fail(str(err))


def probe_bars(rows: list[dict], task: str) -> list[dict]:
    """One bar per (objective, updates): mean and spread over seeds of ``task``'s probe."""
    runs: dict[tuple[str, int, int], dict] = {}
    for row in rows:
        if f"{task}/model" in row:
            runs[(row["objective"], int(row["steps"]), int(row["seed"]))] = row  # last wins
    groups: dict[tuple[str, int], list[dict]] = {}
    for (objective, steps, _), row in sorted(runs.items()):
        groups.setdefault((objective, steps), []).append(row)
    bars = []
    for (objective, steps), group in groups.items():
        values = [r[f"{task}/model"] for r in group]
        randoms = [r[f"{task}/random"] for r in group if f"{task}/random" in r]
        bars.append({
            "task": task, "objective": objective, "updates": steps, "seeds": len(values),
            "mean": round(statistics.fmean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "random": round(statistics.fmean(randoms), 2) if randoms else None,
            "mfcc": group[0].get(f"{task}/mfcc")})
    bars.sort(key=lambda b: (b["updates"], b["objective"]))
    return bars


def cost_bars(rows: list[dict]) -> list[dict]:
    """Cost of one update relative to the peer, per objective and dtype (the ratio lines)."""
    return [{"objective": r["ratio"].split("/")[0], "peer": r["ratio"].split("/")[1],
             "dtype": r["dtype"], "cost": r["cost"],
             "updates_in_peer_budget": r["updates_in_peer_budget"]}
            for r in rows if "ratio" in r]


def draw(probes: dict[str, list[dict]], costs: list[dict], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (task, bars) in zip(axes[:2], probes.items()):
        labels = [b["objective"] + (f" x{b['seeds']}" if b["seeds"] > 1 else "") for b in bars]
        x = range(len(bars))
        budgets = sorted({b["updates"] for b in bars})
        shades = dict(zip(budgets, ["tab:cyan", "tab:blue", "navy", "black"]))
        for updates in budgets:
            ax.bar([i for i, b in enumerate(bars) if b["updates"] == updates],
                   [b["mean"] for b in bars if b["updates"] == updates],
                   color=shades[updates], label=f"pretrained, {updates} updates")
        several = [(i, b) for i, b in enumerate(bars) if b["seeds"] > 1]
        if several:  # the spread over pretraining seeds, where there are several
            ax.errorbar([i for i, _ in several], [b["mean"] for _, b in several],
                        yerr=[b["std"] for _, b in several], fmt="none", ecolor="tab:orange",
                        capsize=4, lw=2, label="sd over seeds")
        ax.scatter(x, [b["random"] if b["random"] is not None else float("nan") for b in bars],
                   marker="_", s=300, color="black", zorder=3, label="same network, random")
        mfcc = next((b["mfcc"] for b in bars if b["mfcc"] is not None), None)
        if mfcc is not None:
            ax.axhline(mfcc, color="tab:red", ls="--", lw=1, label=f"MFCC + deltas ({mfcc})")
        ax.set_xticks(list(x), labels, fontsize=8, rotation=40, ha="right")
        ax.set_ylabel("accuracy, % (unseen speakers)")
        ax.set_title(f"{task} probe")
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    dtypes = sorted({c["dtype"] for c in costs})
    objectives = list(dict.fromkeys(c["objective"] for c in costs))
    width = 0.8 / max(len(dtypes), 1)
    for i, dtype in enumerate(dtypes):
        values = {c["objective"]: c["cost"] for c in costs if c["dtype"] == dtype}
        ax.bar([j + i * width for j in range(len(objectives))],
               [values.get(o, float("nan")) for o in objectives], width, label=dtype)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([j + width * (len(dtypes) - 1) / 2 for j in range(len(objectives))],
                  objectives, fontsize=8)
    peer = costs[0]["peer"] if costs else "wav2vec2"
    ax.set_ylabel(f"seconds per update / {peer}'s")
    ax.set_title("cost of one update (tiny, 8 x 2 s, CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(output)  # never a half-written figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, nargs="+",
                        default=[RESULTS / "objectives_study.jsonl",
                                 RESULTS / "objectives_study_2000.jsonl"])
    parser.add_argument("--bench", type=Path, default=RESULTS / "bench_objectives_cpu.jsonl")
    parser.add_argument("--output", type=Path, default=RESULTS / "objectives_study.png")
    args = parser.parse_args(argv)
    rows = [row for path in args.study for row in read_rows(path)]
    probes = {task: probe_bars(rows, task) for task in ("digits", "language")}
    if not any(probes.values()):
        fail(f"no probe rows in {', '.join(map(str, args.study))}")
    costs = cost_bars(read_rows(args.bench))
    for bar in [*probes["digits"], *probes["language"], *costs]:
        print(json.dumps(bar))
    draw(probes, costs, args.output)
    print(json.dumps({"written": str(args.output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
