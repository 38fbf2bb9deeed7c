"""Probe tasks: what is predicted from which manifest, and how it is split.

A task reads a labelled JSONL manifest (the shared-data layout: ``audio`` relative to the
manifest, ``speaker``, ``split``, ``text`` and any other fields)::

    digits=../shared/data/fsdd/manifest.jsonl:text     utterance classification of ``text``
    chars=../shared/data/ljspeech/manifest.jsonl       sequence recognition (CTC on ``text``)

Splits (always named in the results):

- ``manifest``: the rows' ``split`` field (``train``; ``test``; ``dev``/``valid`` if present);
- ``speaker``: speaker-disjoint. With at most :data:`LOSO_MAX_SPEAKERS` speakers, each speaker is
  held out in turn (leave-one-speaker-out); otherwise a fixed fifth of the speakers (chosen by a
  hash of their names, so it never depends on row order) is the test set;
- ``within-speaker``: a fifth of each speaker's utterances is the test set (speaker
  identification; a single-speaker corpus such as LJSpeech).

Rows that cannot be used (no label, a label seen fewer than ``min_per_label`` times, a missing
file, a second row on the same audio file) are returned as
:class:`~audio_ssl.data.manifest.Rejected` with the reason, never raised.

Nothing depends on the manifest's row order: the usable rows come back sorted by their audio
path, one row per file, and every choice among them (``max_per_label``, ``max_utterances``, the
held-out fifths, the dev tenth) is made by a hash of a path or a speaker's name; the path as the
manifest names it (relative to its folder), so a corpus copied elsewhere is split the same way.
The same rows in any order, in any folder, give the same examples, folds and figures.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from audio_ssl.data.manifest import Rejected
from audio_ssl.data.text import normalize_text
from audio_ssl.io import iter_jsonl

CLASSIFICATION = "classification"
RECOGNITION = "recognition"
KINDS = (CLASSIFICATION, RECOGNITION)
SPLITS = ("manifest", "speaker", "within-speaker")
LOSO_MAX_SPEAKERS = 6
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ProbeTask:
    """One probe task.

    Attributes:
        name: the task's name in tables and plots.
        data: the JSONL manifest.
        kind: ``classification`` (one label per utterance) or ``recognition`` (CTC on ``text``).
        field: the label's field (classification) or the transcript's (recognition).
        split_by: ``manifest``, ``speaker`` or ``within-speaker`` (see the module docstring).
        where: keep only rows whose fields have these values ({"lang": "en"}).
        min_per_label: classification: labels with fewer utterances are left out.
        max_per_label: classification: at most this many utterances of each label (0: all),
            chosen by a hash of their paths (never by row order).
        max_utterances: at most this many usable rows (0: all), chosen by a hash of their
            paths (CTC heads cost most: a smaller recognition task for a quick suite).
    """

    name: str
    data: Path
    kind: str = CLASSIFICATION
    field: str = "text"
    split_by: str = "manifest"
    where: dict = dataclasses.field(default_factory=dict)
    min_per_label: int = 2
    max_per_label: int = 0
    max_utterances: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r}: expected one of {KINDS}")
        if self.split_by not in SPLITS:
            raise ValueError(f"task {self.name!r}: split_by {self.split_by!r}: expected one of "
                             f"{SPLITS}")
        if self.min_per_label < 1 or self.max_per_label < 0 or self.max_utterances < 0:
            raise ValueError(f"task {self.name!r}: min_per_label must be >= 1, max_per_label and "
                             f"max_utterances >= 0, got {self.min_per_label}, "
                             f"{self.max_per_label}, {self.max_utterances}")

    def describe_split(self, folds: int) -> str:
        if self.split_by == "manifest":
            return "the manifest's split field"
        if self.split_by == "within-speaker":
            return (f"within each speaker ({100 * TEST_FRACTION:.0f} % of each speaker's clips "
                    f"held out)")
        if folds > 1:
            return f"speaker-disjoint, leave-one-speaker-out ({folds} folds)"
        return f"speaker-disjoint ({100 * TEST_FRACTION:.0f} % of the speakers held out)"


def parse_task(spec: str) -> ProbeTask:
    """``NAME=MANIFEST[:FIELD]``: with FIELD, classification of that field; without, CTC
    recognition of ``text``."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--task {spec!r}: expected NAME=MANIFEST[:FIELD], e.g. "
                         f"digits=fsdd/manifest.jsonl:text")
    path, colon, label = rest.rpartition(":")
    if not colon or not path or "/" in label or label.endswith(".jsonl"):
        return ProbeTask(name, Path(rest), kind=RECOGNITION, field="text")
    return ProbeTask(name, Path(path), kind=CLASSIFICATION, field=label)


@dataclass
class Example:
    """One usable row: the audio file and what is predicted from it."""

    path: str  # absolute
    label: str  # the class (classification) or the normalised transcript (recognition)
    speaker: str
    split: str  # the manifest's split field
    line: str  # "manifest:number"
    key: str = ""  # what choices hash: the path relative to the manifest's folder (posix)

    @property
    def choice_key(self) -> str:
        """The name every choice among rows hashes: where the corpus lives on this machine
        (an absolute path) never changes which rows a task keeps or how it splits them."""
        return self.key or self.path


def read_examples(task: ProbeTask) -> tuple[list[Example], list[Rejected]]:
    """The task's usable rows, and the rows left out with their reasons.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: the manifest is not JSONL, or no row is usable.
    """
    src = Path(os.path.expanduser(os.fspath(task.data))).absolute()
    if not src.is_file():
        raise FileNotFoundError(f"task {task.name!r}: no such file {src} (expected a JSONL "
                                f"manifest with audio, speaker, split and {task.field!r})")
    if src.suffix.lower() != ".jsonl":
        raise ValueError(f"task {task.name!r}: {src} is not a .jsonl manifest")
    examples: list[Example] = []
    rejected: list[Rejected] = []
    for lineno, row in iter_jsonl(src):
        line = f"{src}:{lineno}"
        if any(str(row.get(k)) != str(v) for k, v in task.where.items()):
            continue
        audio = row.get("audio", row.get("path"))
        if audio is None:
            rejected.append(Rejected(str(src), "no 'audio' field", line))
            continue
        path = os.path.abspath(src.parent / os.path.expanduser(str(audio)))
        label = row.get(task.field)
        if label is None or not str(label).strip():
            rejected.append(Rejected(path, f"no {task.field!r} label", line))
            continue
        if not os.path.isfile(path):
            rejected.append(Rejected(path, "no such file", line))
            continue
        speaker = str(row.get("speaker") or "")
        if task.split_by != "manifest" and not speaker:
            rejected.append(Rejected(path, f"no speaker (split_by {task.split_by})", line))
            continue
        label = str(label).strip()
        if task.kind == RECOGNITION:
            label = normalize_text(label)
            if not label:
                rejected.append(Rejected(path, "empty transcript after normalisation", line))
                continue
        examples.append(Example(path, label, speaker, str(row.get("split") or "train"), line,
                                _relative_key(path, src.parent)))
    examples, duplicates = _one_row_per_file(examples)
    rejected += duplicates
    if task.max_utterances:
        examples = _by_hash(examples)[:task.max_utterances]
    examples.sort(key=lambda e: e.path)
    if task.kind == CLASSIFICATION:
        examples, rare = _balance(examples, task)
        rejected += rare
    if not examples:
        first = "; ".join(f"{r.line}: {r.reason}" for r in rejected[:3])
        raise ValueError(f"task {task.name!r}: no usable rows in {src}"
                         + (f" (e.g. {first})" if first else ""))
    return examples, rejected


def _relative_key(path: str, root: Path) -> str:
    """``path`` relative to ``root`` in posix form, or ``path`` itself when outside it."""
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else Path(rel).as_posix()


def _by_hash(examples: list[Example]) -> list[Example]:
    """``examples`` in an order fixed by their paths alone (a hash, so that a prefix of it is a
    sample of the corpus, not its first folder)."""
    return sorted(examples, key=lambda e: (_stable_fraction("pick:" + e.choice_key), e.path))


def _one_row_per_file(examples: list[Example]) -> tuple[list[Example], list[Rejected]]:
    """One example per audio file: a file named by several rows with the same label is kept
    once (the other rows are named as duplicates); with different labels, none of its rows is
    kept, since which label is right cannot be told."""
    rows: dict[str, list[Example]] = {}
    for e in examples:
        rows.setdefault(e.path, []).append(e)
    kept, rejected = [], []
    for path, same in rows.items():
        if len(same) == 1:
            kept.append(same[0])
            continue
        lines = ", ".join(e.line.rpartition(":")[2] for e in same)
        if len({(e.label, e.speaker, e.split) for e in same}) == 1:
            kept.append(same[0])
            rejected += [Rejected(path, f"same audio file as line {same[0].line.rpartition(':')[2]} "
                                        f"(lines {lines}): used once", e.line) for e in same[1:]]
        else:
            rejected += [Rejected(path, f"the same audio file has different labels, speakers or "
                                        f"splits in lines {lines}: none is used", e.line)
                         for e in same]
    return kept, rejected


def _balance(examples: list[Example], task: ProbeTask) -> tuple[list[Example], list[Rejected]]:
    counts = Counter(e.label for e in examples)
    kept, rejected, seen = [], [], Counter()
    for e in _by_hash(examples):
        if counts[e.label] < task.min_per_label:
            rejected.append(Rejected(e.path, f"label {e.label!r} has {counts[e.label]} "
                                             f"utterances, fewer than min_per_label "
                                             f"{task.min_per_label}", e.line))
        elif not task.max_per_label or seen[e.label] < task.max_per_label:
            seen[e.label] += 1
            kept.append(e)
    return sorted(kept, key=lambda e: e.path), rejected


@dataclass(frozen=True)
class Fold:
    """Indices into the task's examples: train (the head's weights), dev (its epoch), test."""

    name: str
    train: list[int]
    dev: list[int]
    test: list[int]


def _stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2 ** 32


def _dev_of(train: list[int], groups: list[str], keys: list[str]) -> tuple[list[int], list[int]]:
    """A tenth of ``train`` for choosing the head's epoch: whole groups where there are enough
    of them (so the choice never sees a test-like speaker twice), else single utterances, each
    chosen by a hash of its key (its path: never its row number)."""
    names = sorted({groups[i] for i in train})
    if len(names) >= 5:
        held = {g for g in names if _stable_fraction("dev:" + g) < 0.1} or {names[-1]}
        dev = [i for i in train if groups[i] in held]
    else:
        dev = [i for i in train if _stable_fraction("dev:" + keys[i]) < 0.1] or train[-1:]
    chosen = set(dev)
    return [i for i in train if i not in chosen], dev


def make_folds(task: ProbeTask, examples: list[Example]) -> list[Fold]:
    """The train/dev/test folds of ``task.split_by`` (one fold, or one per speaker for
    leave-one-speaker-out).

    Raises:
        ValueError: a split without train or test examples.
    """
    n = len(examples)
    speakers = [e.speaker for e in examples]
    paths = [e.choice_key for e in examples]
    if task.split_by == "manifest":
        splits = [e.split.lower() for e in examples]
        test = [i for i in range(n) if splits[i] == "test"]
        dev = [i for i in range(n) if splits[i] in ("dev", "valid", "validation")]
        train = [i for i in range(n) if splits[i] not in ("test", "dev", "valid", "validation")]
        if not dev:
            train, dev = _dev_of(train, speakers if any(speakers) else paths, paths)
        folds = [Fold("test", train, dev, test)]
    elif task.split_by == "within-speaker":
        chosen: set[int] = set()
        for name in sorted(set(speakers)):  # a fifth of each speaker, at least one of two or more
            own = sorted((i for i in range(n) if speakers[i] == name),
                         key=lambda i: _stable_fraction("test:" + examples[i].choice_key))
            if len(own) >= 2:
                chosen.update(own[:max(1, round(TEST_FRACTION * len(own)))])
        test = sorted(chosen)
        train, dev = _dev_of([i for i in range(n) if i not in chosen], paths, paths)
        folds = [Fold("within-speaker", train, dev, test)]
    else:
        names = sorted(set(speakers))
        if len(names) < 2:
            raise ValueError(f"task {task.name!r}: split_by speaker needs at least 2 speakers, "
                             f"found {len(names)}")
        if len(names) <= LOSO_MAX_SPEAKERS:
            held_out = [{s} for s in names]
        else:
            held = {s for s in names if _stable_fraction("test:" + s) < TEST_FRACTION}
            held_out = [held or {names[0]}]
        folds = []
        for held in held_out:
            test = [i for i in range(n) if speakers[i] in held]
            train, dev = _dev_of([i for i in range(n) if speakers[i] not in held], speakers, paths)
            folds.append(Fold(",".join(sorted(held)) if len(held) == 1 else "held-out speakers",
                              train, dev, test))
    for fold in folds:
        if not fold.train or not fold.test:
            raise ValueError(f"task {task.name!r}: split {task.split_by!r} leaves "
                             f"{len(fold.train)} train and {len(fold.test)} test utterances "
                             f"(fold {fold.name}): expected some of each")
    return folds


__all__ = ["ProbeTask", "Example", "Fold", "parse_task", "read_examples", "make_folds",
           "CLASSIFICATION", "RECOGNITION", "SPLITS"]
