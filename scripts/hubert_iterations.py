"""HuBERT's second iteration, as the paper does it: k-means of a middle layer of iteration 1,
then pretraining from scratch on those labels; both iterations probed the same way.

    audio-ssl targets runs/shared-tiny/files.lst --kind mfcc --clusters 100 \\
        --output runs/shared-targets                                     # iteration 1's labels
    python scripts/pretrain_shared.py --output runs/shared-hubert --objective hubert \\
        --targets runs/shared-targets --max-steps 2000                   # iteration 1
    python scripts/hubert_iterations.py --iter1 runs/shared-hubert --output runs/hubert-iter2

Steps: probe iteration 1 on the digits task (FSDD, leave-one-speaker-out) with the per-layer
sweep; choose the best layer among the context layers 1..L (the layer the paper would pick by
its cluster quality; here by what the probe says, as issue 25 asks); `audio-ssl targets --kind
layer --checkpoint ITER1 --layer N --clusters 500` on the same listing; pretrain iteration 2 from
scratch with the same recipe and budget; probe it the same way. Each step is reused when its
output exists. Prints one JSON line per iteration and writes OUTPUT/iterations.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl.cli import main as cli  # noqa: E402

PAPER_CLUSTERS = 500  # HuBERT's second-iteration k-means, on 960 h


def _probe(checkpoint: Path, name: str, task: str, output: Path) -> dict:
    if not (output / "results.json").is_file():
        if cli(["probe", str(checkpoint), "--task", task, "--split-by", "speaker", "--name",
                name, "-o", str(output), "--baselines", "mfcc", "--no-progress"]) != 0:
            raise SystemExit(f"probing {checkpoint} failed")
    return json.loads((output / "results.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iter1", type=Path, required=True, help="iteration 1's run folder")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--clusters", type=int, default=PAPER_CLUSTERS,
                        help="k-means clusters of the layer (default: the paper's 500); another "
                             "count trains into iter2[-sSEED]-kN")
    parser.add_argument("--steps", type=int, default=None,
                        help="iteration 2's updates (default: iteration 1's; the paper gives its "
                             "second iteration 1.6x the first's: 400k against 250k); another "
                             "budget trains into iter2[-sSEED]-Nsteps")
    parser.add_argument("--layer", type=int, default=None, help="skip the choice: this layer")
    parser.add_argument("--seed", type=int, default=None,
                        help="iteration 2's training seed (default: the preset's); another seed "
                             "trains into iter2-sSEED and probes into probe-iter2-sSEED")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    task = f"digits={args.data / 'fsdd' / 'manifest.jsonl'}:text"
    first = args.iter1 / "checkpoints" / "last.ckpt"
    summary1 = json.loads((args.iter1 / "summary.json").read_text())
    probe1 = _probe(first, "hubert-iter1", task, args.output / "probe-iter1")
    sweep = probe1["tasks"]["digits"]["sets"]["hubert-iter1"]["sweep"]
    layer = args.layer
    if layer is None:
        inner = {name: score for name, score in sweep.items() if name != "layer_0"}
        layer = int(max(inner, key=inner.get).split("_")[1])
    targets = args.output / f"targets-layer{layer}-{args.clusters}"
    steps = args.steps or summary1["steps"]
    # another seed, budget or cluster count gets its own folders beside the first ones
    tag = ("" if args.seed is None else f"-s{args.seed}") + (
        "" if steps == summary1["steps"] else f"-{steps}steps") + (
        "" if args.clusters == PAPER_CLUSTERS else f"-k{args.clusters}")
    run2 = args.output / f"iter2{tag}"
    if (run2 / "config.yaml").is_file():  # a run of another layer would be reused silently
        trained_on = yaml.safe_load((run2 / "config.yaml").read_text())["data"]["targets"]
        if Path(trained_on).resolve() != targets.resolve():
            print(f"{run2} was trained on {trained_on}, not {targets}: give this layer "
                  "another --output", file=sys.stderr)
            return 2
    # a rerun of `targets` reuses its centres and skips the files already labelled
    if cli(["targets", str(args.iter1 / "files.lst"), "--kind", "layer", "--checkpoint",
            str(first), "--layer", str(layer), "--clusters", str(args.clusters), "--output",
            str(targets), "--no-progress"]) != 0:
        raise SystemExit("targets failed")
    if not (run2 / "summary.json").is_file():
        argv = ["pretrain", str(args.iter1 / "files.lst"), "--objective", "hubert", "--targets",
                str(targets), "--output", str(run2), "--max-steps", str(steps), "--no-progress"]
        if args.seed is not None:
            run2.mkdir(parents=True, exist_ok=True)
            (run2 / "seed.yaml").write_text(f"train: {{seed: {args.seed}}}\n")
            argv += ["--config", str(run2 / "seed.yaml")]
        if (run2 / "checkpoints" / "last.ckpt").is_file():
            argv.append("--resume")
        if cli(argv) != 0:
            raise SystemExit("iteration 2 failed")
    summary2 = json.loads((run2 / "summary.json").read_text())
    probe2 = _probe(run2 / "checkpoints" / "last.ckpt", "hubert-iter2", task,
                    args.output / f"probe-iter2{tag}")
    rows = []
    for k, (summary, probe, name) in enumerate(
            ((summary1, probe1, "hubert-iter1"), (summary2, probe2, "hubert-iter2")), 1):
        sets = probe["tasks"]["digits"]["sets"]
        rows.append({"iteration": k, "targets": "mfcc k-means 100" if k == 1 else
                     f"layer {layer} of iteration 1, k-means {args.clusters}",
                     "steps": summary["steps"], "loss_first": summary["first"]["train/loss"],
                     "loss_last": summary["last"]["train/loss"],
                     "digits": round(100 * sets[name]["score"]["mean"], 1),
                     "digits_std": round(100 * sets[name]["score"]["std"], 1),
                     "digits_sweep": {n: round(100 * v, 1) for n, v in sets[name]["sweep"].items()},
                     "mfcc": round(100 * sets["mfcc"]["score"]["mean"], 1)})
        if k == 2 and args.seed is not None:
            rows[-1]["seed"] = args.seed
        print(json.dumps(rows[-1]), flush=True)
    (args.output / f"iterations{tag}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
