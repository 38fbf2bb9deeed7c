"""Several shard folders read as one, each with a weight (``audio-ssl pretrain a=0.7 b=0.3``).

A weight is the fraction of each epoch's audio (hours of usable cuts) drawn from a source; an
epoch holds as many hours as all the sources together. How the visits are planned lives in
:class:`~audio_ssl.data.shard_stream.ShardPlan`; this module holds the sources and reads the
command line's ``SOURCE=WEIGHT`` specs and YAML lists of ``{source, weight}``.

Shards are numbered globally: shard ``k`` of source ``i`` is ``offsets[i] + k``; cuts are the
sources' cuts one after the other (a cut's ``shard`` stays its number in its own folder).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from audio_ssl.data.shards import ShardCut, ShardIndex, is_shard_folder, read_index

LIST_SUFFIXES = (".yaml", ".yml")  # a list file of {source, weight}


@dataclass(frozen=True)
class ShardMix:
    """Shard folders with weights.

    Attributes:
        sources: the folders' indices, in the order given.
        weights: one per source, > 0, summing to 1 (the fraction of an epoch's hours).
    """

    sources: tuple[ShardIndex, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.sources or len(self.sources) != len(self.weights):
            raise ValueError(f"ShardMix: expected one weight per source, got {len(self.sources)} "
                             f"sources and {len(self.weights)} weights")
        if not all(math.isfinite(w) and w > 0 for w in self.weights):
            raise ValueError(f"ShardMix: expected weights > 0, got {self.weights}")

    @cached_property
    def offsets(self) -> np.ndarray:
        """(sources + 1,) the first global shard of each source, then the number of shards."""
        return np.concatenate([[0], np.cumsum([s.num_shards for s in self.sources])])

    @property
    def num_shards(self) -> int:
        return int(self.offsets[-1])

    @property
    def url(self) -> str:
        return " + ".join(s.url for s in self.sources)

    @cached_property
    def cuts(self) -> tuple[ShardCut, ...]:
        return tuple(c for s in self.sources for c in s.cuts)

    @property
    def hours(self) -> float:
        return sum(s.hours for s in self.sources)

    def source_of(self, shard: int) -> tuple[int, int]:
        """(source, its own shard number) of global shard ``shard``."""
        i = int(np.searchsorted(self.offsets, shard, side="right")) - 1
        return i, int(shard - self.offsets[i])

    def shard_url(self, shard: int) -> str:
        """The recording tar of global shard ``shard``."""
        i, k = self.source_of(shard)
        return self.sources[i].shard_url(k)

    def shard_format(self, shard: int) -> str:
        """The audio encoding of global shard ``shard``'s members."""
        return self.sources[self.source_of(shard)[0]].audio_format


# ---------------------------------------------------------------------------------------------
# The command line's sources


def is_weighted(specs: Sequence[str]) -> bool:
    """Whether ``specs`` (pretrain's DATA arguments) name a mix: several sources, a
    ``SOURCE=WEIGHT``, or a list file; one plain source is a folder, manifest or shard folder."""
    if len(specs) != 1:
        return True
    spec = str(specs[0])
    return _is_list_file(spec) or ("=" in spec and not os.path.exists(spec))


def _is_list_file(spec: str) -> bool:
    return spec.endswith(LIST_SUFFIXES) and os.path.isfile(spec)


def _weight(value: object, where: str) -> float:
    try:
        weight = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        weight = math.nan
    if isinstance(value, bool) or not math.isfinite(weight):
        raise ValueError(f"{where}: expected SOURCE=WEIGHT with a number WEIGHT > 0 "
                         f"(e.g. s3://bucket/corpus=0.7), got weight {value!r}")
    if weight <= 0:
        raise ValueError(f"{where}: expected a weight > 0 (the fraction of each epoch's hours "
                         f"drawn from it), got {value!r}")
    return weight


def _from_list_file(path: str) -> list[tuple[str, float | None]]:
    """The {source, weight} entries of a YAML list file; relative local sources are relative
    to the file's folder."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            rows = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML ({e})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a YAML list of {{source: ..., weight: ...}}, got "
                         f"{type(rows).__name__}")
    out: list[tuple[str, float | None]] = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "source" not in row or set(row) - {"source", "weight"}:
            raise ValueError(f"{path}: entry {n}: expected {{source: ..., weight: ...}}, got "
                             f"{row!r}")
        source = str(row["source"])
        if "://" not in source and not os.path.isabs(os.path.expanduser(source)):
            source = os.path.join(os.path.dirname(os.path.abspath(path)), source)
        weight = row.get("weight")
        out.append((source, None if weight is None else _weight(weight, f"{path}: entry {n}")))
    return out


def parse_sources(specs: Sequence[str]) -> list[tuple[str, float | None]]:
    """(source, weight or None) of each of pretrain's DATA arguments: ``SOURCE=WEIGHT`` (the
    text after the last ``=``; a local path that exists is taken whole), ``SOURCE``, or a YAML
    list file (``.yaml``/``.yml``) of ``{source, weight}``. A malformed spec, a weight <= 0 or
    a source given twice is a ValueError naming it."""
    pairs: list[tuple[str, float | None]] = []
    for spec in map(str, specs):
        if _is_list_file(spec):
            pairs += _from_list_file(spec)
        elif "=" in spec and not os.path.exists(spec):
            source, _, weight = spec.rpartition("=")
            if not source:
                raise ValueError(f"{spec}: expected SOURCE=WEIGHT, got no SOURCE")
            pairs.append((source, _weight(weight, spec)))
        else:
            pairs.append((spec, None))
    seen: dict[str, str] = {}
    for source, _ in pairs:
        key = source.rstrip("/") if "://" in source else os.path.realpath(
            os.path.expanduser(source))
        if key in seen:
            raise ValueError(f"{source}: given twice (also as {seen[key]}); give each source "
                             "once, with its weight")
        seen[key] = source
    given = [w is not None for _, w in pairs]
    if any(given) and not all(given):
        missing = [s for s, w in pairs if w is None]
        raise ValueError(f"{missing[0]}: no weight; give every source a weight "
                         "(SOURCE=WEIGHT), or none (each then weighs its hours)")
    return pairs


def read_mix(specs: Sequence[str]) -> ShardMix:
    """The :class:`ShardMix` of pretrain's DATA arguments (see :func:`parse_sources`); every
    source must be a shard folder. Without weights each source weighs its hours (every shard
    once an epoch)."""
    pairs = parse_sources(specs)
    for source, _ in pairs:
        if not is_shard_folder(source):
            raise ValueError(f"{source}: a weighted source must be a shard folder (with an "
                             "index.jsonl.gz; make one with `audio-ssl shard SOURCE OUTPUT`)")
    sources = tuple(read_index(source) for source, _ in pairs)
    weights = [w if w is not None else s.hours for (_, w), s in zip(pairs, sources)]
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"{' + '.join(s for s, _ in pairs)}: the sources hold no audio")
    return ShardMix(sources, tuple(w / total for w in weights))


__all__ = ["ShardMix", "is_weighted", "parse_sources", "read_mix"]
