"""The demo's quick probe: which spoken digit is it, for voices the probe never heard?

The single-digit utterances of the demo corpus are the examples; the probe trains on the train
voices and is scored on the held-out test voices. Each feature set is pooled the same way (mean
and standard deviation of each dimension over the clip's frames) into a standardised logistic
regression. For the model, the layer is chosen by cross-validation over the train voices
(grouped by voice, so the choice never sees a test voice); MFCCs (20 coefficients of 40 mel
bands, 25 ms windows every 10 ms) go through the same probe.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from audio_ssl.data import load_audio
from audio_ssl.extract.writers import load_entry, read_index


@dataclass(frozen=True)
class ProbeResult:
    features: float  # test accuracy of the model's features, 0-1
    mfcc: float  # test accuracy of MFCCs through the same probe
    layer: str  # the model layer the cross-validation chose
    train: int  # examples (train voices)
    test: int  # examples (held-out voices)
    classes: int

    def line(self) -> str:
        return (f"digit probe on {self.test} clips of unseen voices ({self.classes} words, "
                f"chance {100 / self.classes:.0f} %): features ({self.layer}) "
                f"{100 * self.features:.1f} %, MFCC {100 * self.mfcc:.1f} %")


def _meanstd(frames: np.ndarray) -> np.ndarray:
    """(T, D) -> (2D,)"""
    return np.concatenate([frames.mean(0), frames.std(0)])


def _fit_score(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


def _cv_score(x, y, groups, folds: int = 3) -> float:
    from sklearn.model_selection import GroupKFold

    scores = [_fit_score(x[a], y[a], x[b], y[b])
              for a, b in GroupKFold(n_splits=folds).split(x, y, groups)]
    return float(np.mean(scores))


def digit_probe(features_dir: str | os.PathLike, manifest: str | os.PathLike) -> ProbeResult:
    """Probe the features ``audio-ssl extract`` wrote for the corpus in ``manifest``."""
    manifest = Path(manifest)
    rows = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if len(r["text"].split()) == 1:
            rows[str((manifest.parent / r["audio"]).resolve())] = r
    mfcc = torchaudio.transforms.MFCC(
        16_000, n_mfcc=20, melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 40})
    pooled: dict[str, list[np.ndarray]] = {}
    labels, voices, splits, baseline = [], [], [], []
    for entry in read_index(features_dir):
        row = rows.get(str(Path(entry["path"]).resolve()))
        if row is None or entry.get("error"):
            continue
        for name, frames in load_entry(features_dir, entry).items():
            pooled.setdefault(name, []).append(_meanstd(np.asarray(frames, dtype=np.float32)))
        wav = load_audio(entry["path"], sample_rate=16_000)  # (S,)
        with torch.no_grad():
            baseline.append(_meanstd(mfcc(wav).T.numpy()))  # (20, T) -> (T, 20) -> (40,)
        labels.append(row["text"])
        voices.append(row["speaker"])
        splits.append(row.get("split", "train"))
    y, groups = np.array(labels), np.array(voices)
    train, test = np.array(splits) != "test", np.array(splits) == "test"
    if train.sum() < 10 or test.sum() < 2:
        raise ValueError(f"{manifest}: too few single-word clips for the probe "
                         f"({train.sum()} train, {test.sum()} test)")
    layers = {name: np.stack(v) for name, v in pooled.items()}
    best = max(layers, key=lambda n: _cv_score(layers[n][train], y[train], groups[train]))
    ours = _fit_score(layers[best][train], y[train], layers[best][test], y[test])
    x_mfcc = np.stack(baseline)
    theirs = _fit_score(x_mfcc[train], y[train], x_mfcc[test], y[test])
    return ProbeResult(ours, theirs, best, int(train.sum()), int(test.sum()), len(set(labels)))


__all__ = ["ProbeResult", "digit_probe"]
