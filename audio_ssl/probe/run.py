"""``audio-ssl probe``: what do a checkpoint's features know, against honest baselines?

:func:`run_probe` reads each task's manifest, extracts the checkpoint's layers (and those of
the same network with random weights) through the extraction pipeline, computes MFCC and log-mel
baselines, caches all of them under ``OUTPUT/cache``, and trains the same heads on every feature
set (:mod:`audio_ssl.probe.heads`): a learned weighted sum of the layers with every seed, and a
per-layer sweep with the first seed. It writes ``results.json``, ``results.md`` and the plots
(:mod:`audio_ssl.probe.report`).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from audio_ssl.data.manifest import Rejected
from audio_ssl.probe.data import (
    CLASSIFICATION,
    Example,
    Fold,
    ProbeTask,
    make_folds,
    read_examples,
)
from audio_ssl.probe.features import (
    BASELINES,
    RANDOM,
    FeatureSet,
    baseline_features,
    checkpoint_key,
    files_key,
    model_features,
    random_model,
)
from audio_ssl.probe.heads import (
    HeadConfig,
    HeadResult,
    pool,
    standardized_frames,
    train_classifier,
    train_recognizer,
)

log = logging.getLogger("audio_ssl")
RANDOM_SEED = 0  # the random-weights network's


@dataclass(frozen=True)
class ProbeSettings:
    """How every task is probed (see :func:`run_probe`)."""

    name: str = "model"  # the checkpoint's column in tables
    baselines: tuple[str, ...] = (RANDOM, *BASELINES)
    seeds: int = 3
    sweep: bool = True
    head: HeadConfig = field(default_factory=HeadConfig)
    device: str | None = None
    precision: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.baselines) - {RANDOM, *BASELINES}
        if unknown:
            raise ValueError(f"unknown baseline {sorted(unknown)}: expected some of "
                             f"{[RANDOM, *BASELINES]}")
        if self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds}: expected at least 1")
        if self.name in (RANDOM, *BASELINES):
            raise ValueError(f"--name {self.name!r} is a baseline's name: choose another")


@dataclass
class Prepared:
    task: ProbeTask
    examples: list[Example]
    rejected: list[Rejected]
    folds: list[Fold]


def _prepare(tasks: list[ProbeTask]) -> list[Prepared]:
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {names}")
    if not tasks:
        raise ValueError("no task given: pass --task NAME=MANIFEST[:FIELD] or --suite YAML")
    out = []
    for task in tasks:
        examples, rejected = read_examples(task)
        out.append(Prepared(task, examples, rejected, make_folds(task, examples)))
    return out


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


@contextmanager
def _threads(kind: str):
    """Classification heads' tensors are small: one intra-op thread runs them fastest, and
    several wait on each other whenever another process shares the cores (a step of the digits
    head took 3 ms on one thread and 92 ms on two of a busy 2-core machine). CTC, which costs
    most of a recognition head, splits its batch over every thread."""
    threads = torch.get_num_threads()
    if kind == CLASSIFICATION:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(prep: Prepared, fs: FeatureSet, rows: list[int], settings: ProbeSettings) -> dict:
    """Every head of one task on one feature set: {score, wer, layer_weights, sweep, ...}."""
    task = prep.task
    arrays = [fs.of(prep.examples[i].path) for i in rows]  # by path: rows and files differ
    labels = [prep.examples[i].label for i in rows]
    position = {r: k for k, r in enumerate(rows)}
    folds = [Fold(f.name, [position[i] for i in f.train if i in position],
                  [position[i] for i in f.dev if i in position],
                  [position[i] for i in f.test if i in position]) for f in prep.folds]
    folds = [f for f in folds if f.train and f.test]
    if task.kind == CLASSIFICATION:
        pooled = pool(arrays)  # (N, L, 2D)
        classes = sorted(set(labels))
        y = np.array(labels)

        def heads(fold: Fold):
            return lambda layer, seed: train_classifier(
                pooled, y, classes, fold.train, fold.dev, fold.test, layer=layer, seed=seed,
                cfg=settings.head)
    else:
        def heads(fold: Fold):
            frames = standardized_frames(arrays, fold.train)  # once per fold
            return lambda layer, seed: train_recognizer(
                frames, labels, fold.train, fold.dev, fold.test, layer=layer, seed=seed,
                cfg=settings.head)

    sweep = settings.sweep and len(fs.layers) > 1
    weighted: list[list[HeadResult]] = []  # [fold][seed]
    single: list[list[float]] = []  # [fold][layer], the first seed
    with _threads(task.kind):
        for fold in folds:
            train = heads(fold)
            weighted.append([train(None, seed) for seed in range(settings.seeds)])
            if sweep:
                single.append([train(layer, 0).score for layer in range(len(fs.layers))])
    per_seed = [statistics.fmean(f[seed].score for f in weighted)
                for seed in range(settings.seeds)]
    out = {"score": _summary(per_seed),
           "layer_weights": np.mean([r.layer_weights for f in weighted for r in f],
                                    axis=0).round(4).tolist(),
           "layers": fs.layers}
    if task.kind != CLASSIFICATION:
        out["wer"] = _summary([statistics.fmean(f[seed].wer for f in weighted)
                               for seed in range(settings.seeds)])
    if sweep:
        out["sweep"] = {name: statistics.fmean(f[k] for f in single)
                        for k, name in enumerate(fs.layers)}
    # the first seed's test predictions, every fold
    out["predictions"] = [(labels[i], p) for fold, f in zip(folds, weighted)
                          for i, p in zip(fold.test, f[0].predictions)]
    return out


def _feature_sets(prepared: list[Prepared], checkpoint: str | None, loaded, cache: Path,
                  settings: ProbeSettings):
    """{set name: {task name: FeatureSet}} for the checkpoint (``loaded`` from it) and each
    baseline."""
    from audio_ssl.extract.extractor import FeatureExtractor

    corpora: dict[str, list[str]] = {}
    for prep in prepared:
        corpora[prep.task.name] = sorted({e.path for e in prep.examples})
    extractors = {}
    if checkpoint is not None:
        key = checkpoint_key(checkpoint)
        common = dict(layers="all", device=settings.device, precision=settings.precision,
                      normalize=loaded.expects_normalized)
        extractors[settings.name] = (FeatureExtractor(loaded.model, **common),
                                     f"{settings.name}-{key}")
        if RANDOM in settings.baselines:
            extractors[RANDOM] = (FeatureExtractor(random_model(loaded, RANDOM_SEED), **common),
                                  f"{RANDOM}-{key}-{RANDOM_SEED}")
    sets: dict[str, dict[str, FeatureSet]] = {}
    for name, (extractor, key) in extractors.items():  # key: the set's cache folder
        sets[name] = {}
        for task, files in corpora.items():
            folder = cache / key / files_key(files)
            log.info("probe: %s features of %d files for %s", name, len(files), task)
            sets[name][task] = model_features(name, extractor, files, folder,
                                              progress=settings.progress)
    wanted = [name for name in settings.baselines if name in BASELINES]
    if wanted:
        per_task = {task: baseline_features(wanted, files, cache / "baselines")
                    for task, files in corpora.items()}
        for name in wanted:
            sets[name] = {task: per_task[task][name] for task in corpora}
    return sets


def run_probe(checkpoint: str | os.PathLike | None, tasks: list[ProbeTask],
              output: str | os.PathLike, settings: ProbeSettings = ProbeSettings()) -> dict:
    """Probe ``checkpoint`` (and the baselines) on ``tasks``; write the results to ``output``.

    Returns the results (as written to ``results.json``).

    Raises:
        FileNotFoundError: a manifest or the checkpoint does not exist.
        FileExistsError: ``output`` is a file.
        ValueError: a task without usable rows or a split without train or test utterances.
    """
    from audio_ssl.probe.report import write_report

    start = time.perf_counter()
    root = Path(output).absolute()
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"output {output} is a file: expected a folder for the results")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {checkpoint}: no such file or folder")
    prepared = _prepare(tasks)  # every refusal before anything is written
    loaded = None
    if checkpoint is not None:
        from audio_ssl.interop import load_model

        loaded = load_model(checkpoint)  # a bad checkpoint is refused before anything is written
    root.mkdir(parents=True, exist_ok=True)
    sets = _feature_sets(prepared, None if checkpoint is None else os.fspath(checkpoint), loaded,
                         root / "cache", settings)
    results = {"checkpoint": None if checkpoint is None else str(Path(checkpoint).absolute()),
               "name": settings.name, "sets": list(sets), "seeds": settings.seeds,
               "head": settings.head.head, "tasks": {}}
    for prep in prepared:
        task = prep.task
        failed = {r.path: r for fs in sets.values() for r in fs[task.name].failures}
        # every set is scored on the same utterances: those every set could read
        rows = [i for i, e in enumerate(prep.examples) if e.path not in failed]
        rejected = prep.rejected + [Rejected(e.path, failed[e.path].reason, e.line)
                                    for e in prep.examples if e.path in failed]
        entry = {"kind": task.kind, "data": str(task.data), "field": task.field,
                 "split": task.describe_split(len(prep.folds)), "split_by": task.split_by,
                 "metric": "accuracy" if task.kind == CLASSIFICATION else "CER",
                 "higher_is_better": task.kind == CLASSIFICATION,
                 "utterances": len(rows), "folds": [
                     {"name": f.name, "train": len(f.train), "dev": len(f.dev),
                      "test": len(f.test)} for f in prep.folds],
                 "rejected": [{"path": r.path, "reason": r.reason, "line": r.line}
                              for r in rejected], "sets": {}}
        for name, by_task in sets.items():
            log.info("probe: %s on %s", task.name, name)
            entry["sets"][name] = _fit(prep, by_task[task.name], rows, settings)
        results["tasks"][task.name] = entry
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_report(results, root)
    return results


__all__ = ["ProbeSettings", "run_probe"]
