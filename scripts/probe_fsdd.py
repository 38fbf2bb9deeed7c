"""What do the features know? A speaker-disjoint linear probe on FSDD's spoken digits.

    python scripts/probe_fsdd.py contrastive=runs/c/checkpoints/last.ckpt \\
        best-rq=runs/b/checkpoints/last.ckpt --random tiny --output scripts/results/probe.json

Each of FSDD's 5 speakers is held out in turn (all 500 of their clips are the test set) and a
logistic-regression probe (scikit-learn, standardised inputs) is trained on the other 4. Every
feature set is pooled the same way, to the mean and the standard deviation of each dimension
over the clip's frames ("meanstd"; MFCCs are also given mean-only, "mfcc_mean"). For a model,
the layer (conv features 'encoder' or context layer N, at C = 1) and then the regularisation C
(0.1 or 1) are chosen on the training speakers only: trained on three of them, scored on the
fourth (the next speaker in the list); the probe is then refitted on all four and scored once
on the held-out speaker.

Baselines: MFCC (librosa, 20 coefficients from 40 mel bands, 25 ms windows every 10 ms),
log-mel (80 bands, same frames), and ``--random PRESET``, the preset's network with random
weights (the same seed as a run's initial weights). FSDD is recorded at 8 kHz and upsampled.
Prints one JSON line per feature set and held-out speaker, then a summary line per feature set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from audio_ssl.data import load_audio  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fsdd"
C_GRID = (0.1, 1.0)


def meanstd(frames: np.ndarray) -> np.ndarray:
    """(T, D) -> (2D,) mean and standard deviation over time."""
    return np.concatenate([frames.mean(0), frames.std(0)])


def baseline_features(wavs: list[np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    import librosa

    mfcc, mfcc_mean, logmel = [], [], []
    for wav in wavs:
        m = librosa.feature.mfcc(y=wav, sr=16_000, n_mfcc=20, n_fft=400, hop_length=160,
                                 n_mels=40).T  # (T, 20)
        mel = librosa.feature.melspectrogram(y=wav, sr=16_000, n_fft=400, hop_length=160,
                                             n_mels=80)
        mfcc.append(meanstd(m))
        mfcc_mean.append(m.mean(0))
        logmel.append(meanstd(np.log(mel + 1e-6).T))
    return {"mfcc": {"mfcc": np.stack(mfcc)}, "mfcc_mean": {"mfcc": np.stack(mfcc_mean)},
            "logmel": {"logmel": np.stack(logmel)}}


def model_features(model: torch.nn.Module, normalize: bool,
                   wavs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{layer name: (N, 2D)} for the conv features and every context layer."""
    backbone = getattr(model, "backbone", model).eval()
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for wav in wavs:
            x = torch.from_numpy(wav).float()
            if normalize:
                x = (x - x.mean()) / (x.std() + 1e-7)
            if x.numel() < 400:
                x = torch.nn.functional.pad(x, (0, 400 - x.numel()))
            result = backbone(x[None], return_layers=True)
            out.setdefault("encoder", []).append(meanstd(result.features[0].numpy()))
            for i, state in enumerate(result.hidden_states):
                out.setdefault(f"layer_{i}", []).append(meanstd(state[0].numpy()))
    return {name: np.stack(v) for name, v in out.items()}


def accuracy(train_x, train_y, test_x, test_y, c: float) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def evaluate(name: str, layers: dict[str, np.ndarray], labels: np.ndarray,
             speakers: np.ndarray, order: list[str]) -> dict:
    folds = []
    for held_out in order:
        train_speakers = [s for s in order if s != held_out]
        inner = train_speakers[(order.index(held_out)) % len(train_speakers)]
        fit = np.isin(speakers, train_speakers) & (speakers != inner)
        valid = speakers == inner
        def score(layer: str, c: float) -> float:
            x = layers[layer]
            return accuracy(x[fit], labels[fit], x[valid], labels[valid], c)

        # the layer at C = 1, then C for that layer: both on the training speakers only
        layer = max(layers, key=lambda name: score(name, 1.0))
        best = (layer, max(C_GRID, key=lambda c: score(layer, c)))
        train, test = np.isin(speakers, train_speakers), speakers == held_out
        x = layers[best[0]]
        score = accuracy(x[train], labels[train], x[test], labels[test], best[1])
        record = {"features": name, "held_out": held_out, "layer": best[0], "C": best[1],
                  "accuracy": round(score, 4)}
        print(json.dumps(record), flush=True)
        folds.append(record)
    scores = [f["accuracy"] for f in folds]
    return {"features": name, "mean_accuracy": round(statistics.fmean(scores), 4),
            "min_accuracy": min(scores), "max_accuracy": max(scores),
            "layers_chosen": [f["layer"] for f in folds], "folds": folds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="NAME=CHECKPOINT (anything load_model reads)")
    parser.add_argument("--random", default=None, metavar="PRESET",
                        help="also probe this preset's network with random weights")
    parser.add_argument("--data", type=Path, default=DATA, help="FSDD folder with manifest.jsonl")
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    parser.add_argument("--seed", type=int, default=1, help="--random: the weights' seed")
    parser.add_argument("--no-baselines", action="store_true",
                        help="leave out MFCC and log-mel (probed by an earlier run)")
    parser.add_argument("--per-speaker", type=int, default=0,
                        help="use only this many clips of each speaker (0: all; for a quick look)")
    args = parser.parse_args()
    start = time.perf_counter()

    rows = [json.loads(line) for line in (args.data / "manifest.jsonl").read_text().splitlines()
            if line.strip()]
    if args.per_speaker:  # evenly spaced clips of each speaker (every digit)
        by_speaker: dict[str, list[dict]] = {}
        for r in rows:
            by_speaker.setdefault(r["speaker"], []).append(r)
        rows = [r for group in by_speaker.values()
                for r in group[:: max(1, len(group) // args.per_speaker)][: args.per_speaker]]
    labels = np.array([r["text"] for r in rows])
    speakers = np.array([r["speaker"] for r in rows])
    order = sorted(set(speakers))
    wavs = [load_audio(args.data / r["audio"]).numpy() for r in rows]

    sets = {} if args.no_baselines else baseline_features(wavs)
    if args.random:
        from audio_ssl import config
        from audio_ssl.models import pretraining_model

        cfg = config.preset(args.random)
        torch.manual_seed(args.seed)
        sets[f"random_{args.random}"] = model_features(pretraining_model(cfg.model),
                                                       cfg.data.normalize, wavs)
    for spec in args.checkpoints:
        name, _, path = spec.partition("=")  # NAME=PATH; a bare PATH may hold '=' itself
        if not path or "/" in name:
            name, path = "", spec
        from audio_ssl.interop import load_model

        loaded = load_model(path)
        sets[name or Path(path).stem] = model_features(loaded.model, loaded.expects_normalized,
                                                       wavs)

    summary = {}
    for name, layers in sets.items():
        summary[name] = evaluate(name, layers, labels, speakers, order)
    for name, result in summary.items():
        print(json.dumps({k: v for k, v in result.items() if k != "folds"}), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "task": "FSDD spoken digits, each of the 5 speakers held out in turn",
            "pooling": "mean and std over frames for every feature set ('mfcc_mean': mean only)",
            "selection": "layer and C on the training speakers only (3 fit, 1 validation)",
            "checkpoints": args.checkpoints, "random": args.random,
            "results": summary, "seconds": round(time.perf_counter() - start, 1),
        }, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main()
