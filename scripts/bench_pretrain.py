"""Training-step throughput and peak memory: audio_ssl against HF Wav2Vec2ForPreTraining.

Both models get the same configuration, batch and dtype in one process: forward, backward and an
AdamW step per iteration. HF's masks and distractors are made outside the timed region (as its
example script does in the data collator); ours are made on the device inside the step. Timings
alternate between the two models so that drift on a shared machine affects both alike.

Prints one JSON line per measurement and one with the ratios, e.g.

    python scripts/bench_pretrain.py --preset tiny --batch 8 --seconds 2
    python scripts/bench_pretrain.py --preset base --batch 2 --seconds 4
    python scripts/bench_pretrain.py --preset base --batch 8 --seconds 11 --device cuda   # GPU
    python scripts/bench_pretrain.py --preset base --batch 2 --seconds 4 --profile  # time by op
    python scripts/bench_pretrain.py --preset base --batch 2 --seconds 4 --dtype both  # bf16 CPU

``--profile`` adds one JSON line per model with the step's self time by kind of operator (matrix
multiplies, convolutions, the rest), from ``torch.profiler``: it shows how much of a step is
spent in kernels both libraries share.

A last JSON line (``"measure": "roofline"``, see ``scripts/roofline.py``) gives each step's
GFLOP (matmuls, convolutions, attention; forward and backward), the GFLOP/s achieved, its share
of a large GEMM's rate on the same device, and the share the ``--bar`` speedup over HF would need.

Peak memory: on CUDA torch.cuda.max_memory_allocated; on the CPU the growth of the peak resident
set (VmHWM) of a spawned child that builds one model and runs two steps: activations,
gradients and optimizer state (the only way to separate the two models' peaks
within one run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from audio_ssl import config  # noqa: E402
from audio_ssl.interop.hf import hf_config  # noqa: E402
from audio_ssl.models import Wav2Vec2ForPretraining, frame_lengths  # noqa: E402
from roofline import count_flops, gemm_gflops, roofline_row  # noqa: E402


def _hf_inputs(cfg, batch: int, samples: int, device):
    from transformers.models.wav2vec2.modeling_wav2vec2 import (
        _compute_mask_indices,
        _sample_negative_indices,
    )

    frames = int(frame_lengths(torch.tensor([samples]), cfg.encoder.conv_layers)[0])
    mask = _compute_mask_indices((batch, frames), mask_prob=cfg.mask.prob * cfg.mask.length,
                                 mask_length=cfg.mask.length, min_masks=cfg.mask.min_masks)
    negatives = _sample_negative_indices((batch, frames), cfg.loss.num_negatives, mask)
    return (torch.tensor(mask, device=device, dtype=torch.bool),
            torch.tensor(negatives, device=device, dtype=torch.long))


def make_steps(cfg: config.ModelConfig, batch: int, samples: int, device: torch.device,
               dtype: torch.dtype, only: str | None = None):
    """Build both models (or ``only`` one) and return {name: step function}."""
    from transformers import Wav2Vec2ForPreTraining

    torch.manual_seed(0)
    ours = Wav2Vec2ForPretraining(cfg).to(device).train() if only != "hf" else None
    hf = None
    if only != "audio_ssl":
        hf = Wav2Vec2ForPreTraining(hf_config(cfg, attn_implementation="sdpa")).to(device).train()
        hf.set_gumbel_temperature(cfg.quantizer.temperature_start)
    x = torch.randn(batch, samples, device=device)
    lengths = torch.full((batch,), samples, device=device)
    mask, negatives = _hf_inputs(cfg, batch, samples, device)
    autocast = dtype != torch.float32
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4) if ours is not None else None
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4) if hf is not None else None
    generator = torch.Generator(device=device).manual_seed(0)

    def step_ours():
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            out = ours(x, lengths, step=0, generator=generator)
        opt_ours.zero_grad(set_to_none=True)
        out.loss.backward()
        opt_ours.step()

    def step_hf():
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            out = hf(x, mask_time_indices=mask, sampled_negative_indices=negatives)
        opt_hf.zero_grad(set_to_none=True)
        out.loss.backward()
        opt_hf.step()

    steps = {"audio_ssl": step_ours, "hf": step_hf}
    return steps if only is None else {only: steps[only]}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(steps, device, warmup: int, repeats: int) -> dict[str, list[float]]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():  # alternate
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def peak_memory(args, cfg, name: str, device, dtype) -> float:
    """Peak memory of `name`'s training step, in MiB."""
    if device.type == "cuda":
        steps = make_steps(cfg, args.batch, int(args.seconds * 16_000), device, dtype, only=name)
        steps[name]()  # allocate optimizer state
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        steps[name]()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    # a fresh (spawned, not forked: OpenMP does not survive fork) process per side
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(queue, args, cfg, name, dtype))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss it does not carry the parent's
    peak across the exec that starts a spawned process)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_peak(queue, args, cfg, name, dtype) -> None:
    torch.set_num_threads(args.threads)
    steps = make_steps(cfg, args.batch, int(args.seconds * 16_000), torch.device("cpu"), dtype,
                       only=name)
    base = _peak_rss_mib()
    steps[name]()
    steps[name]()
    queue.put(_peak_rss_mib() - base)


OP_KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul"),
    "conv": ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::_convolution",
             "aten::cudnn_convolution", "aten::convolution"),
}


def profile_steps(steps, device) -> dict[str, dict[str, float]]:
    """Self time (s) of one step of each model by kind of operator."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    kinds = {}
    for name, step in steps.items():
        step()
        _sync(device)
        with profile(activities=activities) as prof:
            step()
            _sync(device)
        totals = {kind: 0.0 for kind in (*OP_KINDS, "other")}
        for event in prof.key_averages():
            self_us = (event.self_device_time_total if device.type == "cuda"
                       else event.self_cpu_time_total)
            kind = next((k for k, ops in OP_KINDS.items() if event.key in ops), "other")
            totals[kind] += self_us / 1e6
        total = sum(totals.values())
        kinds[name] = {"impl": name, "profile_total_s": round(total, 4),
                       **{f"{k}_s": round(v, 4) for k, v in totals.items()},
                       **{f"{k}_share": round(v / total, 3) for k, v in totals.items()}}
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(config.PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "both"],
                        help="default: bf16 on CUDA, fp32 on the CPU; both: every model in both "
                        "dtypes in one alternating loop, and a line comparing our bf16 with our "
                        "fp32 and with HF in both")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true",
                        help="also print each model's step time by kind of operator")
    parser.add_argument("--bar", type=float, default=None,
                        help="speedup over HF to compare with the machine's GEMM rate "
                        "(default: 1.5 on the CPU, 3 on CUDA)")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    names = ["fp32", "bf16"] if dtype_name == "both" else [dtype_name]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    # HF has wav2vec 2.0's objective only (tiny's default is CPC)
    cfg = replace(config.preset(args.preset).model, objective="wav2vec2")
    # same configuration on both sides: no LayerDrop (HF's skips layers the same way, but the
    # draws differ), dropout as in the preset
    cfg = replace(cfg, context=replace(cfg.context, layer_drop=0.0))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    steps = {}  # (impl, dtype name) -> step; all timed in one alternating loop
    for name in names:
        for impl, fn in make_steps(cfg, args.batch, int(args.seconds * 16_000), device,
                                   dtypes[name]).items():
            steps[impl, name] = fn
    times = time_steps(steps, device, args.warmup, args.repeats)
    audio = args.batch * args.seconds
    common = {"preset": args.preset, "batch": args.batch, "seconds": args.seconds,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    results = {}
    for (impl, name), ts in times.items():
        median = statistics.median(ts)
        results[impl, name] = {"impl": impl, **common, "dtype": name, "step_s": round(median, 4),
                               "audio_s_per_s": round(audio / median, 2)}
        if not args.no_memory:
            results[impl, name]["peak_mib"] = round(
                peak_memory(args, cfg, impl, device, dtypes[name]), 1)
        print(json.dumps(results[impl, name]), flush=True)
    rate = {key: r["audio_s_per_s"] for key, r in results.items()}
    for name in names:
        ours, hf = results["audio_ssl", name], results["hf", name]
        ratio = {"ratio": "audio_ssl/hf", **common, "dtype": name,
                 "speedup": round(ours["audio_s_per_s"] / hf["audio_s_per_s"], 3)}
        if not args.no_memory:
            ratio["memory"] = round(ours["peak_mib"] / max(hf["peak_mib"], 1e-6), 3)
        print(json.dumps(ratio), flush=True)
    if len(names) == 2:  # ours in bf16 against ours and HF in both dtypes
        ours = rate["audio_ssl", "bf16"]
        print(json.dumps({"ratio": "audio_ssl bf16 / others", **common,
                          "vs_audio_ssl_fp32": round(ours / rate["audio_ssl", "fp32"], 3),
                          "vs_hf_fp32": round(ours / rate["hf", "fp32"], 3),
                          "vs_hf_bf16": round(ours / rate["hf", "bf16"], 3)}), flush=True)
    # the step's FLOPs at the measured times, against a large GEMM of the same dtype, device and
    # threads
    bar = args.bar or (3.0 if device.type == "cuda" else 1.5)
    for name in names:
        row = roofline_row(count_flops(steps["hf", name]),
                           {impl: results[impl, name]["step_s"] for impl in ("audio_ssl", "hf")},
                           gemm_gflops(device, dtypes[name]), bar)
        print(json.dumps({**row, **common, "dtype": name}), flush=True)
    if args.profile:
        for name in names:
            only = {impl: steps[impl, name] for impl in ("audio_ssl", "hf")}
            for line in profile_steps(only, device).values():
                print(json.dumps({**line, **common, "dtype": name}), flush=True)

if __name__ == "__main__":
    main()
