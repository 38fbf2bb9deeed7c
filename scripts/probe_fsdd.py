"""Do the features carry information? A linear probe on FSDD's spoken digits.

A logistic-regression probe (scikit-learn, standardised inputs) on mean-pooled features of each
layer of a pretrained checkpoint, against the same probe on MFCCs pooled to mean and standard
deviation, classifying the digit of FSDD's official test split (takes 0-4); both are also
reported with the other pooling (model mean + std, MFCC mean only). Layer and regularisation are chosen on a validation part
of the train split (a stratified 20 %), never on the test split; the chosen probe is then
refitted on the whole train split and scored once on test.

MFCC baseline (librosa): 20 coefficients from 40 mel bands, 25 ms windows (n_fft 400) every
10 ms (hop 160) on the same 16 kHz audio the model sees; each clip pooled to the mean and the
standard deviation of every coefficient over time (40 numbers; the mean alone: 20).

Model feature sets: the conv features ('encoder'), each context-network layer ('layer_N'), and
every layer's mean side by side ('layers_concat'), all mean-pooled over the clip's frames.

Note: the shared tiny checkpoint was pretrained (without labels) on audio that included FSDD's
test clips; the probe never saw their labels, but the representation saw their audio. The
FSDD-adapted checkpoint (`audio-ssl pretrain` of FSDD's train split with `--init` that
checkpoint, see the README) saw no further test audio.

    python scripts/probe_fsdd.py runs/shared-tiny/checkpoints/last.ckpt \\
        --output scripts/results/probe_fsdd.json
    python scripts/probe_fsdd.py runs/fsdd-adapt/checkpoints/last.ckpt \\
        --output scripts/results/probe_fsdd_adapted.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from audio_ssl.data import load_audio  # noqa: E402
from audio_ssl.inference import FeatureExtractor  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fsdd"
MFCC = {"n_mfcc": 20, "n_fft": 400, "hop_length": 160, "n_mels": 40}
C_GRID = (0.01, 0.1, 1.0, 10.0)


def mfcc_frames(wav: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.feature.mfcc(y=wav, sr=16_000, **MFCC).T  # (T, 20)


def pool(frames: np.ndarray) -> dict[str, np.ndarray]:
    """(T, D) -> {"mean": (D,), "meanstd": (2D,)} over time."""
    mean = frames.mean(0)
    return {"mean": mean, "meanstd": np.concatenate([mean, frames.std(0)])}


def probe(train_x, train_y, test_x, test_y, c: float, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000,
                                                             random_state=seed))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def select(features: np.ndarray, labels: np.ndarray, fit: np.ndarray, valid: np.ndarray,
           seed: int) -> tuple[float, float]:
    """(best C, its validation accuracy) for one feature set."""
    scores = {c: probe(features[fit], labels[fit], features[valid], labels[valid], c, seed)
              for c in C_GRID}
    best = max(scores, key=lambda c: (scores[c], -c))
    return best, scores[best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="pretrained checkpoint (e.g. the shared tiny one)")
    parser.add_argument("--data", type=Path, default=DATA, help="FSDD folder with manifest.jsonl")
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    parser.add_argument("--valid-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    start = time.perf_counter()

    rows = [json.loads(line) for line in (args.data / "manifest.jsonl").read_text().splitlines()
            if line.strip()]
    rows = [r for r in rows if r["split"] in ("train", "test")]
    labels = np.array([r["text"] for r in rows])
    is_test = np.array([r["split"] == "test" for r in rows])

    extractor = FeatureExtractor.from_checkpoint(args.checkpoint, layers="encoder,all",
                                                 device=args.device)
    pooled: dict[str, list[np.ndarray]] = {}
    for r in rows:
        path = args.data / r["audio"]
        frames = {name: value.numpy() for name, value in extractor.extract(path).arrays.items()}
        frames["mfcc"] = mfcc_frames(load_audio(path).numpy())
        for name, value in frames.items():
            for how, vector in pool(value).items():
                pooled.setdefault(f"{name}/{how}", []).append(vector)
    sets = {name: np.stack(v) for name, v in pooled.items()}
    # every context-network layer's mean side by side (still mean-pooled model features)
    layer_means = sorted((n for n in sets if n.startswith("layer_") and n.endswith("/mean")),
                         key=lambda n: int(n.split("/")[0].removeprefix("layer_")))
    sets["layers_concat/mean"] = np.concatenate([sets[n] for n in layer_means], axis=1)

    # validation: a stratified part of the train split
    rng = np.random.default_rng(args.seed)
    train_idx = np.flatnonzero(~is_test)
    valid_idx = []
    for digit in np.unique(labels[train_idx]):
        members = train_idx[labels[train_idx] == digit]
        valid_idx.extend(rng.choice(members, round(len(members) * args.valid_fraction),
                                    replace=False))
    valid = np.zeros(len(rows), dtype=bool)
    valid[valid_idx] = True
    fit = ~is_test & ~valid

    results = {}
    for name, x in sets.items():
        c, valid_acc = select(x, labels, fit, valid, args.seed)
        test_acc = probe(x[~is_test], labels[~is_test], x[is_test], labels[is_test], c, args.seed)
        results[name] = {"dim": int(x.shape[1]), "C": c, "valid_accuracy": round(valid_acc, 4),
                         "test_accuracy": round(test_acc, 4)}
        print(json.dumps({"features": name, **results[name]}), flush=True)

    chosen = {}
    for how in ("mean", "meanstd"):
        layers = [n for n in sets if n.endswith(f"/{how}") and not n.startswith("mfcc")]
        chosen[how] = max(layers, key=lambda n: (results[n]["valid_accuracy"], -layers.index(n)))
    best = chosen["mean"]
    summary = {
        "task": "FSDD spoken digit, official split (takes 0-4 = test)",
        "checkpoint": str(Path(args.checkpoint)),
        "train_files": int((~is_test).sum()), "valid_files": int(valid.sum()),
        "test_files": int(is_test.sum()),
        "probe": "StandardScaler + LogisticRegression (lbfgs, max_iter 5000); C from "
                 f"{list(C_GRID)} and the layer chosen on validation, refit on all of train",
        "model_features": "each layer pooled over frames: 'mean' (the issue's comparison) or "
                          "'meanstd' (mean and std, as the MFCC baseline); 'encoder' = conv "
                          "features after their layer norm, layer_0 = context network input",
        "mfcc_features": f"librosa.feature.mfcc({MFCC}) at 16 kHz, pooled the same two ways",
        "chosen_layer": best,
        "model_test_accuracy": results[best]["test_accuracy"],
        "mfcc_test_accuracy": results["mfcc/meanstd"]["test_accuracy"],
        "chosen_layer_meanstd": chosen["meanstd"],
        "model_meanstd_test_accuracy": results[chosen["meanstd"]]["test_accuracy"],
        "mfcc_mean_test_accuracy": results["mfcc/mean"]["test_accuracy"],
        "per_feature_set": results,
        "note": "the checkpoint was pretrained without labels on audio that included FSDD's "
                "test clips; test labels were never used for training or selection",
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps({k: summary[k] for k in (
        "chosen_layer", "model_test_accuracy", "mfcc_test_accuracy", "chosen_layer_meanstd",
        "model_meanstd_test_accuracy", "mfcc_mean_test_accuracy")}), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main()
