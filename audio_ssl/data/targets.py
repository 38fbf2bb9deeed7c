"""HuBERT targets: k-means cluster labels per encoder frame, written once, read with the audio.

``audio-ssl targets DATA --kind mfcc --clusters 100 --output DIR`` (HuBERT's first iteration)
computes 39-d MFCC + delta + delta-delta frames with the feature encoder's window and hop (one
frame per encoder frame), fits MiniBatchKMeans on a sample of them, and writes one label array
per file. ``--kind layer --checkpoint CKPT --layer N`` (later iterations) clusters the outputs of
a checkpoint's context layer N instead.

The folder holds ``targets.yaml`` (how the labels were made), ``centers.npy`` (the k-means
centres), ``labels/*.npy`` (int16, one per file, named by a hash of its path) and
``index.jsonl`` (audio path -> label file, frames). Every file is written atomically; a run that
is stopped resumes where it was (same centres, files already labelled skipped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import yaml

from audio_ssl.config import ConvSpec, FeatureEncoderConfig
from audio_ssl.data.audio import AudioError, load_audio
from audio_ssl.data.manifest import AudioItem, Rejected, write_rejected
from audio_ssl.io import atomic_path, atomic_write_text
from audio_ssl.frames import frame_lengths, receptive_field

log = logging.getLogger("audio_ssl")

CONV_LAYERS: ConvSpec = FeatureEncoderConfig().conv_layers  # the frame rate of every preset


@dataclass(frozen=True)
class TargetsConfig:
    kind: Literal["mfcc", "layer"] = "mfcc"
    clusters: int = 100
    seed: int = 0
    sample_rate: int = 16_000
    max_fit_frames: int = 200_000  # frames sampled (evenly over files) to fit k-means
    checkpoint: str | None = None  # kind "layer": the model whose layer is clustered
    layer: int | None = None


def label_name(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()[:20] + ".npy"


def mfcc_frames(wav: torch.Tensor, sample_rate: int = 16_000,
                conv_layers: ConvSpec = CONV_LAYERS) -> torch.Tensor:
    """(S,) audio -> (T, 39) MFCC + delta + delta-delta, one row per encoder frame: the window
    is the conv stack's receptive field and the hop its stride."""
    import torchaudio

    window, hop = receptive_field(conv_layers)
    frames = int(frame_lengths(torch.tensor([wav.shape[-1]]), conv_layers)[0])
    if frames == 0:
        return torch.zeros(0, 39)
    mfcc = torchaudio.transforms.MFCC(
        sample_rate, n_mfcc=13,
        melkwargs={"n_fft": window, "win_length": window, "hop_length": hop, "n_mels": 23,
                   "center": False})(wav.float()[None])  # (1, 13, T)
    d1 = torchaudio.functional.compute_deltas(mfcc)
    d2 = torchaudio.functional.compute_deltas(d1)
    return torch.cat([mfcc, d1, d2], dim=1)[0, :, :frames].T.contiguous()  # (T, 39)


def _featurizer(cfg: TargetsConfig, featurize: Callable[[torch.Tensor], torch.Tensor] | None
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    if cfg.kind == "mfcc":
        return lambda wav: mfcc_frames(wav, cfg.sample_rate)
    if cfg.checkpoint is None or cfg.layer is None:
        raise ValueError("--kind layer needs --checkpoint and --layer")
    if featurize is None:
        raise ValueError("--kind layer: make_targets needs the layer's features (featurize=, "
                         "e.g. audio_ssl.extract.FeatureExtractor.from_checkpoint(checkpoint, "
                         "layers=layer))")
    return featurize


def _config_text(cfg: TargetsConfig) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def _fit_centers(items: list[AudioItem], cfg: TargetsConfig,
                 frames_of: Callable[[AudioItem], torch.Tensor | None]) -> np.ndarray:
    """(K, D) float32 k-means centres fitted on about ``cfg.max_fit_frames`` frames drawn evenly
    over ``items`` (``frames_of``: a file's (T, D) frames, None when it cannot be read)."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(cfg.seed)
    per_file = max(1, cfg.max_fit_frames // max(1, len(items)))
    sample = []
    for item in items:
        frames = frames_of(item)
        if frames is None or len(frames) == 0:
            continue
        take = rng.choice(len(frames), size=min(per_file, len(frames)), replace=False)
        sample.append(frames[np.sort(take)].numpy())
    if not sample:
        raise ValueError("no frames to cluster: no file could be read")
    data = np.concatenate(sample).astype(np.float32)  # (N, D)
    if len(data) < cfg.clusters:
        raise ValueError(f"--clusters {cfg.clusters}: only {len(data)} frames to cluster")
    kmeans = MiniBatchKMeans(n_clusters=cfg.clusters, random_state=cfg.seed, n_init=3,
                             batch_size=10_000, max_iter=100).fit(data)
    return kmeans.cluster_centers_.astype(np.float32)


def make_targets(items: list[AudioItem], cfg: TargetsConfig, output: str | Path,
                 featurize: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[int, list[Rejected]]:
    """Fit k-means on ``items``' frames (or reuse ``output``'s centres) and write every file's
    labels. Returns (files labelled, files that could not be read).

    ``featurize``: (S,) audio -> (T, D) frames, one per encoder frame; MFCCs for
    ``cfg.kind == "mfcc"``, and for ``"layer"`` the caller's (a checkpoint's layer through
    the extraction path, which knows the checkpoint's normalisation: this module reads audio and
    writes labels, and loads no models)."""
    out = Path(output)
    written = out / "targets.yaml"
    if written.is_file() and written.read_text() != _config_text(cfg):
        raise FileExistsError(f"{out} holds targets made differently ({written}): choose another "
                              "--output or the same options")
    featurize = _featurizer(cfg, featurize)  # bad options fail before anything is written
    (out / "labels").mkdir(parents=True, exist_ok=True)
    atomic_write_text(written, _config_text(cfg))
    rejected: list[Rejected] = []

    def frames_of(item: AudioItem) -> torch.Tensor | None:
        try:
            return featurize(load_audio(item.path, sample_rate=cfg.sample_rate))
        except (AudioError, RuntimeError, ValueError) as err:
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            rejected.append(Rejected(item.path, reason))
            return None

    centers_path = out / "centers.npy"
    if centers_path.is_file():
        centers = np.load(centers_path)
        log.info("reusing the k-means centres in %s", centers_path)
    else:
        centers = _fit_centers(items, cfg, frames_of)
        with atomic_path(centers_path) as tmp, open(tmp, "wb") as f:
            np.save(f, centers)
        rejected.clear()  # the labelling pass below finds the same files again
    centers_t = torch.from_numpy(centers)  # (K, D)

    index = []
    for item in items:
        target = out / "labels" / label_name(item.path)
        if not target.is_file():
            frames = frames_of(item)
            if frames is None:
                continue
            labels = torch.cdist(frames.float(), centers_t).argmin(-1)  # (T,)
            with atomic_path(target, fsync=False) as tmp, open(tmp, "wb") as f:
                np.save(f, labels.numpy().astype(np.int16))
        frames_count = int(np.load(target, mmap_mode="r").shape[0])
        index.append({"audio": os.path.realpath(item.path), "labels": f"labels/{target.name}",
                      "frames": frames_count})
    atomic_write_text(out / "index.jsonl", "".join(json.dumps(r) + "\n" for r in index))
    write_rejected(rejected, out / "rejected.jsonl")
    return len(index), rejected


class LabelStore:
    """The labels a ``targets`` folder holds, by audio path; crops are cut to match."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        index = folder / "index.jsonl"
        if not index.is_file():
            raise FileNotFoundError(f"{folder} is not a targets folder (no index.jsonl): make one "
                                    "with `audio-ssl targets DATA --output DIR`")
        self.folder = folder
        self.config = TargetsConfig(**yaml.safe_load((folder / "targets.yaml").read_text()))
        self.files = {}
        for line in index.read_text().splitlines():
            record = json.loads(line)
            self.files[os.path.realpath(record["audio"])] = record["labels"]
        self.hop = receptive_field(CONV_LAYERS)[1]  # samples per label frame

    @property
    def clusters(self) -> int:
        return self.config.clusters

    def __contains__(self, path: str) -> bool:
        return os.path.realpath(path) in self.files

    def missing(self, paths: list[str]) -> list[str]:
        """The paths it holds no labels for."""
        return [p for p in paths if p not in self]

    def crop(self, path: str, start: int, frames: int) -> torch.Tensor:
        """Labels (frames,) int64 of the crop starting at sample ``start``: label frame
        round(start / hop) onwards (as fairseq's HuBERT does), -1 past the file's end."""
        labels = np.load(self.folder / self.files[os.path.realpath(path)], mmap_mode="r")
        first = int(round(start / self.hop))
        out = torch.full((frames,), -1, dtype=torch.long)
        piece = torch.from_numpy(np.asarray(labels[first : first + frames], dtype=np.int64))
        out[: len(piece)] = piece
        return out


def check_targets(cfg):
    """(``cfg``, its label store): ``cfg`` (a PretrainConfig) with HuBERT's cluster count taken
    from its targets folder, and that folder's :class:`LabelStore` (None for the objectives that
    read no labels); a clear error when the objective and ``data.targets`` do not go together."""
    model = cfg.model
    if model.objective != "hubert":
        if cfg.data.targets:
            raise ValueError(f"--targets {cfg.data.targets}: only the hubert objective reads "
                             f"labels, this run's is {model.objective}")
        return cfg, None
    if not cfg.data.targets:
        raise ValueError("the hubert objective needs --targets DIR, the labels `audio-ssl "
                         "targets DATA --output DIR` made")
    store = LabelStore(cfg.data.targets)
    hop = receptive_field(model.encoder.conv_layers)[1]
    if hop != store.hop:
        raise ValueError(f"--targets {cfg.data.targets}: labels every {store.hop} samples, but "
                         f"this encoder's frames are {hop} samples apart")
    hubert = replace(model.hubert, clusters=store.clusters)
    return replace(cfg, model=replace(model, hubert=hubert)), store
