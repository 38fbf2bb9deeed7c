"""`--precision auto` against `--precision 32`, through the commands users run.

    python scripts/bench_precision.py                           # tiny and base: pretrain, extract
    python scripts/bench_precision.py --commands pretrain --presets tiny --rounds 3

Each measurement is `audio_ssl.cli.main([...])`, in this process, on one corpus: `--data`, or
`--minutes` of spoken digits made by `audio_ssl.corpora.corpus` (eSpeak NG, 16 kHz FLAC; no shared
data needed). The runs alternate 32, auto, 32, auto (`--rounds` pairs), so drift on a shared
machine falls on both sides alike.

- pretrain: `audio-ssl pretrain CORPUS --preset P --precision X --max-steps N`; the figure is
  the median of the logged `train/audio_seconds_per_second` (the audio of every update between
  two records over the time between them) from update 40 (tiny: 161 updates recorded every 20)
  or 15 (base: 40 updates recorded every 5): the first updates meet every batch shape for the
  first time, and bf16's kernels for a new shape cost more to make than fp32's (base's rate
  still rose from 2.6 to 3.8 audio-s/s over its first 15 bf16 updates, when an earlier plan of
  13 updates measured mostly that). `base` runs with 2 x 4 s batches (the CPU bench's shape)
  instead of its GPU batch of 75 s.
- extract: `audio-ssl extract CHECKPOINT CORPUS OUT --precision X` with a checkpoint of the
  preset's network (random weights: speed does not depend on them); the figure is the corpus's
  audio seconds over the command's wall time, model loading included.

Prints one JSON line per run, then per command and preset one line with the ratio auto / 32 and
the precision `auto` chose on this machine, with its reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl import config, console, precision  # noqa: E402
from audio_ssl.cli import main as cli  # noqa: E402

PLAN = {  # per preset: updates, updates between records, first update counted
    "tiny": (161, 20, 40),
    "base": (40, 5, 15),
}
PRETRAIN_DATA = {  # per preset: the batch shape of scripts/bench_pretrain.py's CPU runs
    "tiny": {},
    "base": {"max_batch_samples": 2 * 64_000, "max_crop_samples": 64_000},
}


def make_corpus(folder: Path, minutes: float) -> Path:
    from audio_ssl.corpora.corpus import make_corpus as speak

    speak(folder, minutes=minutes, seed=0)
    return folder


def corpus_seconds(folder: Path) -> float:
    return sum(sf.info(str(p)).duration for p in folder.rglob("*.flac"))


def pretrain_rate(data: Path, preset: str, prec: str, steps: int, log_every: int, skip: int,
                  work: Path, objective: str = "wav2vec2") -> float:
    run = work / f"pretrain-{preset}-{prec}-{time.monotonic_ns()}"
    overrides = work / f"{preset}.yaml"
    overrides.write_text(json.dumps({"train": {"log_every": log_every,
                                               "checkpoint_every": 10 ** 6},
                                     "model": {"objective": objective},
                                     "data": PRETRAIN_DATA[preset]}))
    with contextlib.redirect_stdout(io.StringIO()):  # its summary: not this script's output
        code = cli(["pretrain", str(data), "-o", str(run), "--preset", preset, "--config",
                    str(overrides), "--max-steps", str(steps), "--precision", prec, "--quiet"])
    if code != 0:
        raise SystemExit(f"pretrain exited {code}")
    rates = [row["train/audio_seconds_per_second"]
             for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if row.get("step", 0) >= skip and "train/audio_seconds_per_second" in row]
    return statistics.median(rates)


def extract_rate(data: Path, checkpoint: Path, prec: str, audio: float, work: Path) -> float:
    out = work / f"extract-{checkpoint.stem}-{prec}-{time.monotonic_ns()}"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli(["extract", str(checkpoint), str(data), str(out), "--precision", prec,
                    "--no-fsync", "--quiet"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"extract exited {code}")
    return audio / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="audio folder (default: made)")
    parser.add_argument("--minutes", type=float, default=4.0, help="corpus to make (default 4)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--commands", nargs="+", default=["pretrain", "extract"],
                        choices=["pretrain", "extract"])
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--objective", default="wav2vec2", choices=config.OBJECTIVES,
                        help="objective (default wav2vec2, the one docs/performance.md measured; "
                             "tiny's default is CPC)")
    args = parser.parse_args()
    console.configure(console.QUIET)
    auto = precision.resolve("auto", "cpu")
    common = {"device": platform.processor() or "cpu", "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or make_corpus(work / "corpus", args.minutes)
        audio = corpus_seconds(data)
        for command in args.commands:
            for preset in args.presets:
                checkpoint = None
                if command == "extract":
                    from audio_ssl.interop.export import save_native
                    from audio_ssl.models.pretraining import pretraining_model

                    torch.manual_seed(0)
                    cfg = config.load(preset, overrides={"model": {"objective": args.objective}})
                    checkpoint = save_native(pretraining_model(cfg.model), work / f"{preset}.ckpt")
                rates: dict[str, list[float]] = {"32": [], "auto": []}
                for _ in range(args.rounds):
                    for prec in ("32", "auto"):
                        if command == "pretrain":
                            rate = pretrain_rate(data, preset, prec, *PLAN[preset], work,
                                                 args.objective)
                        else:
                            rate = extract_rate(data, checkpoint, prec, audio, work)
                        rates[prec].append(rate)
                        print(json.dumps({"command": command, "preset": preset, "precision": prec,
                                          "audio_s_per_s": round(rate, 2), **common}), flush=True)
                fp32, chosen = (statistics.median(rates[p]) for p in ("32", "auto"))
                print(json.dumps({"ratio": "auto/32", "command": command, "preset": preset,
                                  "auto": auto.name, "why": auto.reason,
                                  "audio_s_per_s_32": round(fp32, 2),
                                  "audio_s_per_s_auto": round(chosen, 2),
                                  "speedup": round(chosen / fp32, 3), **common}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
