"""Cost of one pretraining update per objective, in one process: which objective is cheap?

Every objective's pretraining model on the same preset network (default `tiny`), the same
batch of random audio (default: `tiny`'s batch, 8 crops of 2 s) and dtype; forward, backward and
an AdamW step per update, as `audio-ssl pretrain` runs it (data2vec's teacher brought up to the
student first; HuBERT given random labels of `model.hubert.clusters` classes). The timings
alternate between the objectives so that drift on a shared machine affects all alike.

    python scripts/bench_objectives.py                       # tiny, every objective, fp32
    python scripts/bench_objectives.py --dtype bf16 --repeats 10

Prints one JSON line per objective (median seconds per update, audio seconds per second) and
one per objective with its ratio to the peer (`--peer`, default wav2vec2) measured in the same
process, and the updates it gets in the peer's wall-clock for `--budget` peer updates: the
wall-clock-matched budget of the objectives study (docs/studies/objectives.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from audio_ssl import config  # noqa: E402
from audio_ssl.models import frame_lengths  # noqa: E402
from audio_ssl.models.data2vec import Data2VecForPretraining  # noqa: E402
from audio_ssl.models.pretraining import pretraining_model  # noqa: E402
from bench_pretrain import time_steps  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_step(objective: str, preset: str, batch: int, samples: int, dtype: torch.dtype,
              total_steps: int):
    """One training update of ``objective``'s pretraining model per call (the step counts up,
    as data2vec's teacher schedule and the masks need)."""
    cfg = replace(config.preset(preset).model, objective=objective)
    torch.manual_seed(0)
    model = pretraining_model(cfg).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, samples)
    lengths = torch.full((batch,), samples)
    extra = {}
    if objective == "hubert":
        frames = int(frame_lengths(torch.tensor([samples]), cfg.encoder.conv_layers)[0])
        extra["labels"] = torch.randint(0, cfg.hubert.clusters, (batch, frames))
    generator = torch.Generator().manual_seed(0)
    calls = iter(range(total_steps))

    def step() -> None:
        i = next(calls)
        if isinstance(model, Data2VecForPretraining):
            model.update_teacher(i, total_steps)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = model(x, lengths, step=i, generator=generator, padded=False, **extra)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objectives", nargs="+", default=list(config.OBJECTIVES),
                        choices=list(config.OBJECTIVES))
    parser.add_argument("--peer", default="wav2vec2", choices=list(config.OBJECTIVES))
    parser.add_argument("--preset", default="tiny", choices=sorted(config.PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=int, default=2000,
                        help="the peer's updates whose wall-clock each objective is given")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = list(dict.fromkeys([args.peer, *args.objectives]))
    samples = int(args.seconds * 16_000)
    steps, params = {}, {}
    for name in names:
        steps[name], params[name] = make_step(name, args.preset, args.batch, samples,
                                              DTYPES[args.dtype], args.warmup + args.repeats)
    times = time_steps(steps, torch.device("cpu"), args.warmup, args.repeats)  # alternating
    common = {"preset": args.preset, "batch": args.batch, "seconds": args.seconds,
              "dtype": args.dtype, "threads": args.threads, "repeats": args.repeats,
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in names:
        print(json.dumps({"objective": name, "step_s": round(median[name], 4),
                          "step_s_min": round(min(times[name]), 4),
                          "step_s_max": round(max(times[name]), 4),
                          "audio_s_per_s": round(args.batch * args.seconds / median[name], 1),
                          "parameters": params[name], **common}))
    for name in names:
        ratio = median[name] / median[args.peer]
        print(json.dumps({"ratio": f"{name}/{args.peer}", "cost": round(ratio, 3),
                          "updates_in_peer_budget": int(args.budget / ratio),
                          "peer_budget": args.budget, **common}))


if __name__ == "__main__":
    main()
