"""The feature sets a probe compares, computed once per corpus and cached on disk.

- a checkpoint (anything :func:`audio_ssl.interop.load_model` reads): every context layer
  (``layer_0``, the context network's input, to ``layer_L``), through the extraction pipeline
  of ``audio-ssl extract`` (chunking, batching, bad files listed), stored as float16 shards;
- ``random``: the same network with random weights (a fixed seed), the same way;
- ``mfcc``: 13 MFCCs with deltas and delta-deltas (39 values; 40 mel bands, 25 ms windows every
  10 ms), SUPERB's classic baseline;
- ``logmel``: 80 log-mel bands, same windows.

Every set is a list of ``(L, T, D)`` float16 arrays, one per file (L = 1 for the baselines), in
the order of the files asked for; a file that could not be read is ``None`` and its reason is
returned beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audio_ssl.data.audio import load_audio
from audio_ssl.data.manifest import Rejected
from audio_ssl.io import atomic_path

SAMPLE_RATE = 16_000
BASELINES = ("mfcc", "logmel")
RANDOM = "random"
log = logging.getLogger("audio_ssl")


@dataclass
class FeatureSet:
    """One set's features for a list of files."""

    name: str
    layers: list[str]  # layer names, L of them
    frame_rate: float
    files: list[str]  # the files asked for, in that order
    arrays: list[np.ndarray | None]  # per file: (L, T, D) float16, None when unreadable
    failures: list[Rejected]

    def __post_init__(self) -> None:
        if len(self.files) != len(self.arrays):
            raise ValueError(f"feature set {self.name!r}: {len(self.arrays)} arrays for "
                             f"{len(self.files)} files")
        self._row = {f: k for k, f in enumerate(self.files)}

    def of(self, path: str) -> np.ndarray | None:
        """The array of ``path`` (looked up by name, never by position).

        Raises:
            KeyError: ``path`` was not among the files asked for.
        """
        return self.arrays[self._row[path]]


def _key(*parts: object) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def files_key(files: list[str]) -> str:
    """Names a list of files in the cache: the same list, the same key."""
    return _key(*files)


def checkpoint_key(path: str | os.PathLike) -> str:
    """Changes when the checkpoint does (path, size, modification time; for a folder its
    files')."""
    p = Path(path).absolute()
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    return _key(p, *[(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files
                     if f.is_file()])


def _baseline_transform(name: str):
    import torchaudio

    window = {"n_fft": 400, "win_length": 400, "hop_length": 160}
    if name == "mfcc":
        mfcc = torchaudio.transforms.MFCC(SAMPLE_RATE, n_mfcc=13,
                                          melkwargs={**window, "n_mels": 40})
        deltas = torchaudio.transforms.ComputeDeltas()

        def transform(wav: torch.Tensor) -> torch.Tensor:
            m = mfcc(wav)  # (13, T)
            d = deltas(m)
            return torch.cat([m, d, deltas(d)]).T  # (T, 39)
        return transform
    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_mels=80, **window)
    return lambda wav: torch.log(mel(wav) + 1e-6).T  # (T, 80)


def baseline_features(names: list[str], files: list[str], cache: Path) -> dict[str, FeatureSet]:
    """MFCC and/or log-mel of ``files`` ({name: set}), each file decoded once, cached in
    ``cache/NAME-KEY.pt``."""
    paths = {name: cache / f"{name}-{files_key(files)}.pt" for name in names}
    out: dict[str, FeatureSet] = {}
    for name, path in paths.items():
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            out[name] = FeatureSet(name, [name], 100.0, list(files),
                                   [None if a is None else a.numpy() for a in saved["arrays"]],
                                   [Rejected(p, r) for p, r in saved["failures"]])
    todo = [name for name in names if name not in out]
    if not todo:
        return out
    transforms = {name: _baseline_transform(name) for name in todo}
    arrays: dict[str, list[torch.Tensor | None]] = {name: [] for name in todo}
    failures: list[Rejected] = []
    with torch.no_grad():
        for f in files:
            try:
                wav = load_audio(f, sample_rate=SAMPLE_RATE)  # (S,)
                if wav.numel() < 400:
                    raise ValueError(f"too short: {wav.numel()} samples < 400")
            except (OSError, RuntimeError, ValueError) as err:
                failures.append(Rejected(f, str(err)))
                for name in todo:
                    arrays[name].append(None)
                continue
            for name, transform in transforms.items():
                arrays[name].append(transform(wav)[None].to(torch.float16))  # (1, T, D)
    cache.mkdir(parents=True, exist_ok=True)
    for name in todo:
        with atomic_path(paths[name], fsync=False) as tmp:
            torch.save({"arrays": arrays[name],
                        "failures": [(r.path, r.reason) for r in failures]}, tmp)
        out[name] = FeatureSet(name, [name], 100.0, list(files),
                               [None if a is None else a.numpy() for a in arrays[name]],
                               list(failures))
    return {name: out[name] for name in names}


def model_features(name: str, extractor, files: list[str], cache: Path, *,
                   progress: bool = False) -> FeatureSet:
    """Every context layer of ``extractor``'s model for ``files``, through the extraction
    pipeline into ``cache`` (a rerun continues or reuses it)."""
    from audio_ssl.extract.pipeline import run_extraction
    from audio_ssl.extract.writers import load_entry, read_index

    cache.mkdir(parents=True, exist_ok=True)
    listing = cache / "files.txt"
    if not listing.is_file() or listing.read_text(encoding="utf-8").splitlines() != files:
        with atomic_path(listing, fsync=False) as tmp:
            tmp.write_text("".join(f + "\n" for f in files), encoding="utf-8")
    summary = run_extraction(extractor, listing, cache / "features", shards=True,
                             dtype="float16", progress=progress, fsync=False)
    by_path = {}
    for entry in read_index(cache / "features"):
        arrays = load_entry(cache / "features", entry)
        by_path[entry["path"]] = np.stack([np.asarray(arrays[n]) for n in extractor.layers])
    failed = {r.path: r for r in summary.failures}
    failures = []
    for f in files:
        if f not in by_path:
            failures.append(failed.get(f, Rejected(f, "not extracted")))
    return FeatureSet(name, list(extractor.layers), extractor.frame_rate, list(files),
                      [by_path.get(f) for f in files], failures)


def random_model(loaded, seed: int):
    """The network of ``loaded`` (a :class:`~audio_ssl.interop.LoadedModel`) with fresh weights
    from ``seed``, as a freshly built model would have them before pretraining."""
    from audio_ssl.models.cpc import backbone_model

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = backbone_model(loaded.config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


__all__ = ["FeatureSet", "BASELINES", "RANDOM", "baseline_features", "model_features",
           "random_model", "checkpoint_key", "files_key"]
