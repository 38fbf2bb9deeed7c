"""Pictures of runs: ``audio-ssl plot RUN_DIR [RUN_DIR...] [-o FILE.png]``.

* **Pretraining runs** (``metrics.jsonl`` with ``train/accuracy``): the loss as a fraction of a
  uniform guess's (log(K+1) for the contrastive loss, log V for masked prediction; 0.9 is the
  escape line), the loss terms, accuracy, code and prob perplexity, the context's cosine to its
  positive and to its distractors, Gumbel temperature, learning rate, gradient norm and
  throughput, against updates.
* **Fine-tuning runs** (``valid/cer`` in ``metrics.jsonl``): training loss, validation WER and
  CER, learning rate.
* **A checkpoint with a quantizer** and ``--data``: how often each code of each group is the
  quantizer's choice over that audio, as one heat map row per group.

Several runs of one kind are overlaid, one colour each. A resumed run logs some steps twice; the
last record of a step wins.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


class PlotError(ValueError):
    """A run folder or checkpoint that cannot be plotted; the message names it."""


@dataclass(frozen=True)
class Run:
    """One run folder's logged records (step-sorted) and what kind of run it is."""

    path: Path
    rows: list[dict]
    kind: str  # "pretrain" or "finetune"
    uniform_loss: float | None  # the loss of a uniform guess (pretraining)

    @property
    def label(self) -> str:
        return self.path.name

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of every record that has ``key``."""
        pairs = [(r["step"], r[key]) for r in self.rows
                 if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def load_run(path: str | os.PathLike) -> Run:
    """Read ``path/metrics.jsonl`` (and ``summary.json`` when there)."""
    folder = Path(path)
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise PlotError(f"{folder}: no metrics.jsonl (expected a pretrain or finetune run folder)")
    by_step: dict[int, dict] = {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            by_step.setdefault(row["step"], {}).update(row)
    rows = [by_step[s] for s in sorted(by_step)]
    if not rows:
        raise PlotError(f"{metrics}: no records yet")
    keys = set().union(*rows)
    if "train/accuracy" in keys:
        kind = "pretrain"
    elif "valid/cer" in keys or "train/backbone_frozen" in keys:
        kind = "finetune"
    else:
        raise PlotError(f"{metrics}: neither a pretraining nor a fine-tuning run's metrics")
    uniform = None
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            uniform = json.loads(summary.read_text(encoding="utf-8")).get("uniform_loss")
        except ValueError:
            uniform = None
    return Run(folder, rows, kind, uniform)


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(x) < 3:
        return x
    csum = np.cumsum(np.insert(x, 0, 0.0))
    out = np.empty_like(x)
    for i in range(len(x)):  # trailing mean over up to `window` records
        lo = max(0, i + 1 - window)
        out[i] = (csum[i + 1] - csum[lo]) / (i + 1 - lo)
    return out


def _curve(ax, run: Run, key: str, color: str, *, style: str = "-", label: str | None = None,
           scale: float = 1.0, smooth: bool = True) -> bool:
    steps, values = run.series(key)
    if not steps:
        return False
    window = max(1, len(values) // 60) if smooth else 1
    ax.plot(steps, _smooth(values, window) * scale, style, color=color,
            label=label if label is not None else run.label)
    return True


def _pretrain_figure(runs: Sequence[Run]):
    panels = [
        ("loss / loss of a uniform guess", "fraction"),
        ("loss terms", ""),
        ("accuracy (masked frames; CPC: future frames)", ""),
        ("code and prob perplexity", ""),
        ("cosine of the context to its targets", ""),
        ("Gumbel temperature", ""),
        ("learning rate", ""),
        ("gradient norm", ""),
        ("throughput (audio s / s)", ""),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(16, 11))
    axes = axes.ravel()
    for i, run in enumerate(runs):
        c = f"C{i % 10}"
        main = "train/contrastive" if any("train/contrastive" in r for r in run.rows) \
            else "train/masked_loss" if any("train/masked_loss" in r for r in run.rows) \
            else "train/loss"
        uniform = run.uniform_loss or (math.log(101) if main == "train/contrastive" else None)
        if uniform:
            _curve(axes[0], run, main, c, scale=1.0 / uniform)
        for key, style in (("train/loss", "-"), ("train/diversity", "--"),
                           ("train/feature_penalty", ":")):
            _curve(axes[1], run, key, c, style=style, label=f"{run.label}: {key[6:]}")
        _curve(axes[2], run, "train/accuracy", c)
        steps_ahead = sorted({int(key[len("train/accuracy_k"):]) for row in run.rows
                              for key in row if key.startswith("train/accuracy_k")})
        for k, style in zip(steps_ahead[:1] + steps_ahead[-1:], ("--", ":")):  # CPC: k = 1, K
            _curve(axes[1], run, f"train/loss_k{k}", c, style=style,
                   label=f"{run.label}: loss, k = {k}")
            _curve(axes[2], run, f"train/accuracy_k{k}", c, style=style,
                   label=f"{run.label}: k = {k}")
        _curve(axes[3], run, "train/code_perplexity", c, label=f"{run.label}: code")
        _curve(axes[3], run, "train/prob_perplexity", c, style=":", label=f"{run.label}: prob")
        _curve(axes[4], run, "train/positive_cosine", c, label=f"{run.label}: positive")
        _curve(axes[4], run, "train/distractor_cosine", c, style=":",
               label=f"{run.label}: distractors")
        _curve(axes[5], run, "train/gumbel_temperature", c, smooth=False)
        _curve(axes[6], run, "train/lr", c, smooth=False)
        _curve(axes[7], run, "train/grad_norm", c)
        _curve(axes[8], run, "train/audio_seconds_per_second", c)
    axes[0].axhline(0.9, color="grey", linestyle="--", linewidth=1, label="0.9: escape line")
    return fig, axes, panels


def _finetune_figure(runs: Sequence[Run]):
    panels = [("training loss (CTC)", ""), ("validation WER", ""), ("validation CER", ""),
              ("learning rate", "")]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for i, run in enumerate(runs):
        c = f"C{i % 10}"
        _curve(axes[0], run, "train/loss", c)
        _curve(axes[1], run, "valid/wer", c, style="o-", smooth=False)
        _curve(axes[2], run, "valid/cer", c, style="o-", smooth=False)
        _curve(axes[3], run, "train/lr", c, smooth=False)
    return fig, axes, panels


def plot_runs(runs: Sequence[str | os.PathLike], output: str | os.PathLike,
              title: str | None = None) -> Path:
    """Draw the curves of pretraining or fine-tuning runs (all of one kind) to ``output`` (PNG).

    Raises:
        PlotError: a folder without metrics, or runs of both kinds mixed.
    """
    if not runs:
        raise PlotError("no run folders given")
    loaded = [load_run(r) for r in runs]
    kinds = {r.kind for r in loaded}
    if len(kinds) > 1:
        names = ", ".join(f"{r.path} ({r.kind})" for r in loaded)
        raise PlotError(f"pretraining and fine-tuning runs cannot share one figure: {names}")
    fig, axes, panels = (_pretrain_figure if kinds == {"pretrain"} else _finetune_figure)(loaded)
    for ax, (name, _) in zip(axes, panels):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, output)


def code_usage(checkpoint: str | os.PathLike, data: str | os.PathLike,
               max_files: int = 200) -> np.ndarray:
    """How often each code of each group is the quantizer's hard choice over the first
    ``max_files`` files of ``data`` (a folder, manifest or list): (G, V) counts."""
    from audio_ssl.data.manifest import scan
    from audio_ssl.extract.extractor import FeatureExtractor
    from audio_ssl.interop import CheckpointError, load_model

    try:
        loaded = load_model(checkpoint)
    except CheckpointError as err:
        raise PlotError(str(err)) from err
    if loaded.config.objective != "wav2vec2":
        raise PlotError(f"{checkpoint}: trained with the {loaded.config.objective} objective, "
                        "which has no codebook to plot (wav2vec2 with quantize_targets: true "
                        "has one)")
    if not loaded.config.quantize_targets:
        raise PlotError(f"{checkpoint}: trained with continuous targets (quantize_targets: "
                        f"false), so it has no codebook to plot")
    try:
        extractor = FeatureExtractor(loaded.model, layers="codes",
                                     normalize=loaded.expects_normalized)
    except ValueError as err:  # no quantizer: a fine-tuned or backbone-only checkpoint
        raise PlotError(f"{checkpoint}: {err}") from err
    quantizer = extractor.model.quantizer
    groups, codes = quantizer.groups, quantizer.codes
    counts = np.zeros((groups, codes), dtype=np.int64)
    items, _ = scan(data, progress=False)
    for item in items[:max_files]:
        chosen = extractor(item.path).numpy()  # (T, G)
        for g in range(groups):
            counts[g] += np.bincount(chosen[:, g], minlength=codes)
    return counts


def plot_codebook(checkpoint: str | os.PathLike, data: str | os.PathLike,
                  output: str | os.PathLike, max_files: int = 200) -> Path:
    """Heat map of :func:`code_usage`: one row per group, codes sorted by use, log colour."""
    counts = code_usage(checkpoint, data, max_files)
    groups, codes = counts.shape
    freq = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    used = (counts > 0).sum(axis=1)
    perplexity = np.exp(-(freq * np.log(np.where(freq > 0, freq, 1.0))).sum(axis=1))
    fig, axes = plt.subplots(groups, 1, figsize=(14, 1.4 * groups + 1.0), squeeze=False)
    for g, ax in enumerate(axes[:, 0]):
        row = np.log10(freq[g] + 1e-6)[None, :]  # (1, V), code index order
        im = ax.imshow(row, aspect="auto", cmap="magma", vmin=-6, vmax=0)
        ax.set_yticks([])
        ax.set_ylabel(f"group {g}", rotation=0, ha="right", va="center")
        ax.set_title(f"group {g}: {used[g]}/{codes} codes used, perplexity {perplexity[g]:.1f}",
                     fontsize=9)
    axes[-1, 0].set_xlabel("code")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="log10 frequency")
    fig.suptitle(f"codebook usage: {Path(checkpoint).name} over {Path(data).name}")
    return _save(fig, output)


def _save(fig, output: str | os.PathLike) -> Path:
    from audio_ssl.io import atomic_path

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, fsync=False) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def run_plot_command(args) -> int:
    """``audio-ssl plot``: run folders, or one checkpoint with ``--data``. A
    :class:`PlotError` reaches :func:`audio_ssl.cli.main`, which prints it as one line."""
    paths = [Path(p) for p in args.paths]
    files = [p for p in paths if p.is_file()]
    if files:
        if len(paths) != 1 or args.data is None:
            raise PlotError(f"{files[0]}: a checkpoint is plotted alone and needs --data "
                            f"(audio whose codes to count)")
        out = args.output or paths[0].with_suffix(".codebook.png")
        plot_codebook(paths[0], args.data, out, max_files=args.max_files)
    else:
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise PlotError(f"{missing[0]}: no such run folder or checkpoint")
        out = args.output or paths[0] / "curves.png"
        plot_runs(paths, out, title=args.title)
    print(out)
    return 0


__all__ = ["PlotError", "Run", "load_run", "plot_runs", "code_usage", "plot_codebook"]
