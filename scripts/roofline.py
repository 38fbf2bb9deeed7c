"""How close a model's step comes to the machine's dense-kernel limit (used by the benchmarks).

A speed ratio against HF says nothing about whether more was possible: when both libraries
already spend their time in the same GEMMs and convolutions at a large share of what the machine
can do, no rewrite in fp32 can be much faster. This module measures the two numbers that say so:

- :func:`gemm_gflops`: the rate of a large square matrix multiply in the benchmark's dtype, on
  the same device and threads (a practical ceiling for the model's matmuls and convolutions);
- :func:`count_flops`: the floating-point operations of one step (matmuls, convolutions,
  attention; forward and backward when the step runs both), from ``torch.utils.flop_counter``.

``achieved = flops / step time``; its share of the GEMM rate is printed by the benchmarks with
what the speed bar would need. Both sides run the same network, so the FLOPs are counted once,
on HF's modules: some of our fused CPU kernels (oneDNN calls) are operators the counter does not
know, and would be left out.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048,
                repeats: int = 5) -> float:
    """Best rate (GFLOP/s) of an ``n`` x ``n`` by ``n`` x ``n`` matmul, out of ``repeats``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, kernel selection
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def count_flops(step) -> int:
    """Floating-point operations of one call of ``step`` (a no-argument callable)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def roofline_row(flops: int, step_s: dict[str, float], gemm: float,
                 bar: float | None = None) -> dict:
    """One JSON-able row: the step's GFLOP (the same network on every side), each
    implementation's achieved GFLOP/s and its share of the GEMM rate; with ``bar`` (a speedup
    over "hf"), the rate and share that speed would need."""
    row: dict = {"measure": "roofline", "gemm_gflops": round(gemm, 1),
                 "gflop_per_step": round(flops / 1e9, 2)}
    for name, seconds in step_s.items():
        achieved = flops / seconds / 1e9
        row[f"{name}_gflops"] = round(achieved, 1)
        row[f"{name}_share_of_gemm"] = round(achieved / gemm, 3)
    if bar is not None and "hf" in step_s:
        needed = flops / (step_s["hf"] / bar) / 1e9
        row["bar_speedup"] = bar
        row["bar_needs_gflops"] = round(needed, 1)
        row["bar_needs_share_of_gemm"] = round(needed / gemm, 3)
    return row
