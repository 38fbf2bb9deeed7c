"""Probe suites: several tasks in one YAML file (``configs/probe_shared.yaml`` is one)::

    root: ../../shared/data        # manifests below are relative to it (it: to this file)
    tasks:
      digits: {data: fsdd/manifest.jsonl, field: text, split_by: speaker}
      characters: {data: ljspeech/manifest.jsonl, kind: recognition, split_by: within-speaker}
      synthetic: {espeak: {minutes: 10, seed: 0}, kind: recognition, split_by: manifest}

A task's keys are :class:`~audio_ssl.probe.data.ProbeTask`'s fields. ``espeak`` in place of
``data`` synthesises an eSpeak NG corpus (:func:`audio_ssl.corpora.corpus.make_corpus`: its
keyword arguments) under ``OUTPUT/corpora`` the first time; its test voices are unseen.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import yaml

from audio_ssl.probe.data import ProbeTask

_ESPEAK_KEYS = {"minutes", "seed", "num_voices", "test_voices", "sentences"}


def _espeak_corpus(options: dict, corpora: Path, progress: bool) -> Path:
    from audio_ssl.corpora.corpus import make_corpus

    unknown = set(options) - _ESPEAK_KEYS
    if unknown:
        raise ValueError(f"espeak corpus: unknown option {sorted(unknown)}: expected some of "
                         f"{sorted(_ESPEAK_KEYS)}")
    name = "espeak-" + "-".join(f"{k}{options[k]}" for k in sorted(options)
                                if k != "sentences") or "espeak"
    sentences = options.get("sentences")
    if sentences is not None:
        sentences = Path(sentences).read_text(encoding="utf-8").splitlines()
    made = make_corpus(corpora.absolute() / name, progress=progress,
                       **{k: v for k, v in options.items() if k != "sentences"},
                       sentences=sentences)
    return made / "manifest.jsonl"


def load_suite(path: str | os.PathLike, corpora: Path | None = None, *,
               progress: bool = True) -> list[ProbeTask]:
    """The tasks of a suite file; ``corpora``: where synthesised corpora go (None: such tasks
    are refused).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: malformed YAML, or a task with unknown or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite {path}: no such file")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"suite {path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), dict) or not spec["tasks"]:
        raise ValueError(f"suite {path}: expected a mapping with a non-empty 'tasks' mapping")
    root = path.parent / os.path.expanduser(str(spec.get("root", ".")))
    allowed = {f.name for f in fields(ProbeTask)} - {"name"} | {"espeak"}
    tasks = []
    for name, options in spec["tasks"].items():
        if not isinstance(options, dict):
            raise ValueError(f"suite {path}: task {name!r}: expected a mapping of options")
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"suite {path}: task {name!r}: unknown key {sorted(unknown)}: "
                             f"expected some of {sorted(allowed)}")
        options = dict(options)
        if "espeak" in options:
            if corpora is None:
                raise ValueError(f"suite {path}: task {name!r} synthesises a corpus: give an "
                                 f"output folder")
            options["data"] = _espeak_corpus(dict(options.pop("espeak") or {}), corpora,
                                             progress)
        if "data" not in options:
            raise ValueError(f"suite {path}: task {name!r}: no 'data' (a JSONL manifest)")
        data = Path(os.path.expanduser(str(options.pop("data"))))
        tasks.append(ProbeTask(str(name), data if data.is_absolute() else root / data,
                               **options))
    return tasks


__all__ = ["load_suite"]
