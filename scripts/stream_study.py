"""What streaming costs, and what chunk training buys back: CTC models fine-tuned with full
attention and with ``--chunk-train`` (``ctc.chunk_train``), each evaluated offline and as a
stream (1 s chunks, 8 s left, 1.28 s right: the defaults) on the same files, fp32.

    python scripts/stream_study.py --corpus demo --pretrained runs/demo/pretrain/checkpoints/last.ckpt \\
        --manifest runs/demo/corpus/manifest.jsonl --seeds 0 1 --output runs/stream-study
    python scripts/stream_study.py --corpus ljspeech \\
        --pretrained runs/shared-tiny/checkpoints/last.ckpt --seeds 0 --output runs/stream-study

Corpora:
- demo: the demo's corpus (train voices / the six unseen voices of its test split), the demo's
  CTC recipe (``audio_ssl.demo.run.finetune_overrides``), 600 updates.
- ljspeech: ../shared/data/ljspeech, the fine-tuning study's split (last 34 utterances test,
  the 20 before them validation, the rest training: 100 % of the labels), the study's best
  recipe (frozen 100 updates, top layer re-initialised, backbone at 0.3x lr, best by CER),
  ``--steps`` updates. Besides the clips as they are (1.9-10 s, about one left context), the
  test clips joined six at a time with 0.3 s of silence (``ljspeech-long``, 30-60 s): there the
  8 s of left context is a real limit.

Fine-tuning runs that finished are reused. Prints one JSON line per (corpus, arm, seed, test set)
and writes OUTPUT/stream_study.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LJ_RECIPE = {"ctc": {"freeze_updates": 100, "reinit_layers": 1},
             "optim": {"backbone_lr_scale": 0.3, "lr": 2e-3},
             "train": {"best_by": "cer"}}


def _rows(manifest: Path, split: str | None = None) -> list[dict]:
    out = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row.get("text") and (split is None or row.get("split") == split):
            out.append({"audio": str((manifest.parent / row["audio"]).resolve()),
                        "text": row["text"], "speaker": row.get("speaker")})
    return out


def _write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def joined(rows: list[dict], folder: Path, per_file: int = 6, gap: float = 0.3) -> Path:
    """Long files: ``per_file`` clips end to end with ``gap`` s of silence, texts joined."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(0, len(rows), per_file):
        group = rows[k:k + per_file]
        parts, sr = [], None
        for r in group:
            audio, sr = sf.read(r["audio"], dtype="float32", always_2d=True)
            parts += [audio.mean(axis=1), np.zeros(int(gap * sr), dtype=np.float32)]
        path = folder / f"joined_{k // per_file:03d}.flac"
        if not path.is_file():
            sf.write(path, np.concatenate(parts[:-1]), sr)
        out.append({"audio": str(path.resolve()), "text": " ".join(r["text"] for r in group)})
    return _write(out, folder / "manifest.jsonl")


def splits(corpus: str, args, work: Path) -> dict[str, tuple[Path, str | None]]:
    """{'train'|'valid'|test set name: (manifest, split)}."""
    if corpus == "demo":
        m = args.manifest
        return {"train": (m, "train"), "valid": (m, "test"), "demo-unseen-voices": (m, "test")}
    rows = _rows(args.data / "ljspeech" / "manifest.jsonl", "train")
    test, valid, train = rows[-34:], rows[-54:-34], rows[:-54]
    random.Random(0).shuffle(train)
    folder = work / "ljspeech"
    return {"train": (_write(train, folder / "train.jsonl"), None),
            "valid": (_write(valid, folder / "valid.jsonl"), None),
            "ljspeech": (_write(test, folder / "test.jsonl"), None),
            "ljspeech-long": (joined(test, folder / "long"), None)}


def overrides(corpus: str, arm: str, seed: int, steps: int) -> dict:
    from audio_ssl.demo.run import finetune_overrides

    if corpus == "demo":
        o = finetune_overrides(steps, seed)
    else:
        o = {k: dict(v) for k, v in LJ_RECIPE.items()}
        o["train"].update(max_steps=steps, val_every=max(1, steps // 5), log_every=10,
                          seed=seed + 1)
        o["data"] = {"min_samples": 400}
    if arm == "chunk":
        o.setdefault("ctc", {})["chunk_train"] = True
    return o


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", choices=["demo", "ljspeech"], required=True)
    parser.add_argument("--pretrained", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, default=ROOT / "runs/demo/corpus/manifest.jsonl")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "stream-study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning updates (default: demo 600, ljspeech 1000)")
    parser.add_argument("--arms", nargs="+", default=["full", "chunk"], choices=["full", "chunk"])
    parser.add_argument("--chunk", type=float, default=1.0)
    parser.add_argument("--left", type=float, default=8.0)
    parser.add_argument("--right", type=float, default=1.28)
    args = parser.parse_args()

    from audio_ssl.asr.streaming import StreamSettings
    from audio_ssl.asr.transcribe import evaluate
    from audio_ssl.tasks.finetune import finetune

    steps = args.steps or (600 if args.corpus == "demo" else 1000)
    sets = splits(args.corpus, args, args.output)
    stream = StreamSettings(args.chunk, args.left, args.right)
    results_file = args.output / "stream_study.json"
    rows = json.loads(results_file.read_text()) if results_file.is_file() else []
    for seed in args.seeds:
        for arm in args.arms:
            run = args.output / f"{args.corpus}-{arm}-s{seed}"
            if not (run / "summary.json").is_file():
                (train, tsplit), (valid, vsplit) = sets["train"], sets["valid"]
                finetune(args.pretrained, train, valid, run, train_split=tsplit,
                         valid_split=vsplit, progress=False,
                         resume=(run / "checkpoints" / "last.ckpt").is_file(),
                         overrides=overrides(args.corpus, arm, seed, steps))
            for name, (manifest, split) in sets.items():
                if name in ("train", "valid"):
                    continue
                r = evaluate(run / "checkpoints" / "best.ckpt", manifest, split=split,
                             stream=stream, precision="32")
                row = {"corpus": args.corpus, "test": name, "arm": arm, "seed": seed,
                       "steps": steps, "utterances": len(r.utterances),
                       "offline_cer": round(100 * r.cer, 2), "stream_cer": round(
                           100 * r.streaming.cer, 2), "offline_wer": round(100 * r.wer, 2),
                       "stream_wer": round(100 * r.streaming.wer, 2),
                       "ratio": round(r.streaming.cer / max(r.cer, 1e-9), 3),
                       "chunk": args.chunk, "left": args.left, "right": args.right}
                print(json.dumps(row), flush=True)
                rows = [x for x in rows if (x["corpus"], x["test"], x["arm"], x["seed"],
                                            x["chunk"], x["left"], x["right"]) !=
                        (args.corpus, name, arm, seed, args.chunk, args.left, args.right)]
                rows.append(row)
                results_file.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
