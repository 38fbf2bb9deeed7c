"""The checks of scripts/gpu_check.sh that are not benchmarks; each prints one JSON line.

    python scripts/gpu_check.py parity --preset base --batch 8 --seconds 11
    python scripts/gpu_check.py syncs --preset base --batch 8 --seconds 11
    python scripts/gpu_check.py finite RUN_DIR
    python scripts/gpu_check.py noise FOLDER --files 200 --seconds 11

- parity: one pretraining step (forward and backward, the same masks, distractors and Gumbel
  noise) in fp32 and under bf16 autocast from the same weights: the losses' relative difference
  and the cosine between the two gradients.
- syncs: host synchronisations in one training step (forward, backward, optimizer step), counted
  with ``torch.cuda.set_sync_debug_mode("warn")``; then in the logging of its metrics.
- finite: every logged loss of a run's metrics.jsonl is finite; how many updates it made.
- noise: FLAC files of noise, to pretrain on where there is no speech.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl import config  # noqa: E402
from audio_ssl.models.pretraining import pretraining_model  # noqa: E402


def _model_and_batch(args):
    device = torch.device(args.device)
    cfg = config.load(args.preset).model
    torch.manual_seed(0)
    model = pretraining_model(cfg).to(device).train()
    x = torch.randn(args.batch, int(args.seconds * 16_000), generator=torch.Generator()
                    .manual_seed(1)).to(device)
    lengths = torch.full((args.batch,), x.shape[1], device=device)
    return model, x, lengths, device


def _step(model, x, lengths, device, bf16: bool):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    generator = torch.Generator(device=device).manual_seed(3)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, lengths, step=0, generator=generator, padded=False)  # as a training step
    out.loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return out, grads


def parity(args) -> dict:
    model, x, lengths, device = _model_and_batch(args)
    out32, g32 = _step(model, x, lengths, device, bf16=False)
    out16, g16 = _step(model, x, lengths, device, bf16=True)
    a, b = float(out32.loss), float(out16.loss)
    return {"check": "bf16_vs_fp32_one_step", "preset": args.preset, "batch": args.batch,
            "seconds": args.seconds, "loss_fp32": round(a, 5), "loss_bf16": round(b, 5),
            "loss_rel_diff": round(abs(a - b) / abs(a), 5),
            "grad_cosine": round(float(torch.nn.functional.cosine_similarity(
                g32.double(), g16.double(), dim=0)), 5),  # fp64: millions of terms
            "grad_norm_ratio": round(float(g16.norm() / g32.norm()), 5)}


def syncs(args) -> dict:
    model, x, lengths, device = _model_and_batch(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    _step(model, x, lengths, device, bf16=True)  # warm-up: allocations, autotuning
    counts = {}
    for part in ("step", "metrics"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                if part == "step":
                    out, _ = _step(model, x, lengths, device, bf16=True)
                    optimizer.step()
                else:
                    metrics = out.metrics()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        found = [str(w.message).splitlines()[0] for w in caught
                 if "synchronizing" in str(w.message)]
        counts[part] = len(found)
        counts[f"{part}_first"] = found[:3]
    return {"check": "host_syncs", "preset": args.preset, "metrics_logged": len(metrics), **counts}


def finite(args) -> dict:
    rows = [json.loads(line) for line in (Path(args.run) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    return {"check": "finite_losses", "run": str(args.run), "logged": len(losses),
            "last_step": max((r.get("step", 0) for r in rows), default=None),
            "all_finite": bool(losses) and all(math.isfinite(v) for v in losses),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def noise(args) -> dict:
    import numpy as np
    import soundfile as sf

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(args.files):
        wave = rng.standard_normal(int(args.seconds * 16_000)).astype(np.float32) * 0.1
        sf.write(folder / f"n{i:04d}.flac", wave, 16_000)
    return {"check": "noise_files", "folder": str(folder), "files": args.files}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    for name in ("parity", "syncs"):
        p = sub.add_parser(name)
        p.add_argument("--preset", default="base")
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--seconds", type=float, default=11.0)
        p.add_argument("--device", default="cuda")
    sub.add_parser("finite").add_argument("run")
    p = sub.add_parser("noise")
    p.add_argument("folder")
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--seconds", type=float, default=11.0)
    args = parser.parse_args()
    result = {"parity": parity, "syncs": syncs, "finite": finite, "noise": noise}[args.check](args)
    print(json.dumps(result), flush=True)
    return 0 if result.get("all_finite", True) else 1


if __name__ == "__main__":
    sys.exit(main())
