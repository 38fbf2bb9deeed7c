"""What ``audio-ssl probe`` writes, and ``--compare``'s table.

- ``results.json``: everything (per task: kind, split, folds, rejected rows; per feature set:
  the score's mean, spread and per-seed values, WER for recognition, the learned layer weights,
  the per-layer sweep, the first seed's test predictions);
- ``results.md``: the table of tasks x feature sets, ``mean ± std`` over seeds, with the split
  and the metric;
- ``scores.png``: one bar chart per task, the checkpoint beside the baselines;
- ``layer_weights.png``: the learned softmax weights of each network's layers, per task, with
  the per-layer sweep's scores;
- ``confusion_TASK.png``: the checkpoint's confusion matrix for each classification task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from audio_ssl.io import atomic_write_text  # noqa: E402

RESULTS = "results.json"


def _cell(score: dict, percent: bool = True) -> str:
    scale = 100 if percent else 1
    return f"{scale * score['mean']:.1f} ± {scale * score['std']:.1f}"


def table(results: dict) -> str:
    """The markdown table of ``results``: a row per task, a column per feature set."""
    sets = results["sets"]
    lines = [f"| task | metric | split | {' | '.join(sets)} |",
             "|---|---|---|" + "---|" * len(sets)]
    for name, task in results["tasks"].items():
        arrow = "↑" if task["higher_is_better"] else "↓"
        cells = []
        for s in sets:
            entry = task["sets"].get(s)
            cells.append("" if entry is None else _cell(entry["score"]))
        lines.append(f"| {name} | {task['metric']} % {arrow} | {task['split']} | "
                     f"{' | '.join(cells)} |")
        if task["kind"] != "classification":
            wers = [task["sets"][s]["wer"] for s in sets if s in task["sets"]]
            lines.append(f"| {name} | WER % ↓ | {task['split']} | "
                         f"{' | '.join(_cell(w) for w in wers)} |")
    return "\n".join(lines) + "\n"


def _markdown(results: dict) -> str:
    head = (f"# Probe of {results['checkpoint'] or 'baselines only'}\n\n"
            f"Frozen features, {results['head']} heads on a learned weighted sum of the layers; "
            f"mean ± standard deviation over {results['seeds']} seeds (head initialisation and "
            f"batch order). Took {results['seconds']:.0f} s.\n\n")
    notes = []
    for name, task in results["tasks"].items():
        folds = ", ".join(f"{f['name']}: {f['train']}+{f['dev']} dev / {f['test']} test"
                          for f in task["folds"])
        notes.append(f"- **{name}** ({task['kind']} of `{task['field']}` in {task['data']}): "
                     f"{task['utterances']} utterances, {len(task['rejected'])} left out; "
                     f"split {task['split']} ({folds})")
        for s, entry in task["sets"].items():
            if "sweep" in entry:
                best = (max if task["higher_is_better"] else min)(entry["sweep"],
                                                                  key=entry["sweep"].get)
                notes.append(f"  - {s}: best single layer {best} "
                             f"({100 * entry['sweep'][best]:.1f} %), learned weights "
                             f"{', '.join(f'{w:.2f}' for w in entry['layer_weights'])}")
    return head + table(results) + "\n" + "\n".join(notes) + "\n"


def _plot_scores(results: dict, out: Path) -> None:
    tasks = list(results["tasks"].items())
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1, 3.6), squeeze=False)
    for ax, (name, task) in zip(axes[0], tasks):
        sets = list(task["sets"])
        means = [100 * task["sets"][s]["score"]["mean"] for s in sets]
        stds = [100 * task["sets"][s]["score"]["std"] for s in sets]
        colors = ["tab:blue" if s == results["name"] else "tab:gray" for s in sets]
        ax.bar(sets, means, yerr=stds, color=colors, capsize=3)
        ax.set_title(f"{name}\n{task['split']}", fontsize=8)
        ax.set_ylabel(f"{task['metric']} % ({'higher' if task['higher_is_better'] else 'lower'}"
                      f" is better)", fontsize=8)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    _save(fig, out / "scores.png")


def _plot_layers(results: dict, out: Path) -> None:
    tasks = [(n, t) for n, t in results["tasks"].items()
             if any(len(e["layer_weights"]) > 1 for e in t["sets"].values())]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.4 * len(tasks) + 1, 5.5), squeeze=False)
    for k, (name, task) in enumerate(tasks):
        for s, entry in task["sets"].items():
            if len(entry["layer_weights"]) < 2:
                continue
            x = np.arange(len(entry["layer_weights"]))
            axes[0][k].plot(x, entry["layer_weights"], marker="o", label=s)
            if "sweep" in entry:
                axes[1][k].plot(x, [100 * entry["sweep"][n] for n in entry["layers"]],
                                marker="o", label=s)
        axes[0][k].set_title(f"{name}: learned layer weights", fontsize=8)
        axes[1][k].set_title(f"{name}: one layer at a time", fontsize=8)
        axes[1][k].set_xlabel("layer (0 = context network input)", fontsize=8)
        axes[1][k].set_ylabel(f"{task['metric']} %", fontsize=8)
        axes[0][k].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "layer_weights.png")


def _plot_confusion(results: dict, out: Path) -> None:
    for name, task in results["tasks"].items():
        entry = task["sets"].get(results["name"])
        if task["kind"] != "classification" or entry is None:
            continue
        pairs = entry["predictions"]
        classes = sorted({a for a, _ in pairs} | {b for _, b in pairs})
        if len(classes) > 40:
            continue
        index = {c: i for i, c in enumerate(classes)}
        matrix = np.zeros((len(classes), len(classes)))
        for truth, guess in pairs:
            matrix[index[truth], index[guess]] += 1
        matrix /= np.maximum(matrix.sum(1, keepdims=True), 1)
        size = 2 + 0.3 * len(classes)
        fig, ax = plt.subplots(figsize=(size + 1, size))
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: {results['name']} (seed 0, every test fold)", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        _save(fig, out / f"confusion_{name}.png")


def _save(fig, path: Path) -> None:
    from audio_ssl.plot import _save as save

    save(fig, path)


def write_report(results: dict, out: str | os.PathLike) -> None:
    """``results.json``, ``results.md`` and the plots, each written whole or not at all."""
    out = Path(out)
    atomic_write_text(out / RESULTS, json.dumps(results, indent=1) + "\n", fsync=False)
    atomic_write_text(out / "results.md", _markdown(results), fsync=False)
    _plot_scores(results, out)
    _plot_layers(results, out)
    _plot_confusion(results, out)


def load_results(folder: str | os.PathLike) -> dict:
    path = Path(folder) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no such file {RESULTS} (expected an audio-ssl probe "
                                f"output folder)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def compare(folders: Sequence[str | os.PathLike]) -> str:
    """A markdown table of several probe runs side by side: each run's checkpoint column (named
    after its folder), then the first run's baselines."""
    runs = [(Path(f).name, load_results(f)) for f in folders]
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        names = [str(Path(f)) for f in folders]
    baselines = [s for s in runs[0][1]["sets"] if s != runs[0][1]["name"]]
    tasks = list(dict.fromkeys(t for _, r in runs for t in r["tasks"]))
    lines = [f"| task | metric | {' | '.join(names + baselines)} |",
             "|---|---|" + "---|" * (len(names) + len(baselines))]
    for task in tasks:
        cells, info = [], None
        for _, r in runs:
            t = r["tasks"].get(task)
            info = info or t
            entry = None if t is None else t["sets"].get(r["name"])
            cells.append("" if entry is None else _cell(entry["score"]))
        first = runs[0][1]["tasks"].get(task, {}).get("sets", {})
        cells += ["" if s not in first else _cell(first[s]["score"]) for s in baselines]
        arrow = "↑" if info["higher_is_better"] else "↓"
        lines.append(f"| {task} | {info['metric']} % {arrow} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


__all__ = ["write_report", "load_results", "compare", "table", "RESULTS"]
