"""Latency and throughput of a model exported to ONNX, against the torch model it came from.

For the tiny and BASE presets (random weights, features graph: encoder + every context layer),
in one process, the engines taking turns call by call: torch eager fp32 (the module's own
forward, ``inference_mode``), onnxruntime fp32 and onnxruntime int8 (dynamic quantisation of the matrix products), batch 1 at 1 s, 3.7 s
and 17 s, and a ragged batch (17, 8, 3.7, 1 s padded to 17 s, with lengths). One JSON line per
(model, case, engine): median latency, audio seconds per second, the speed-up over torch
(``speedup_vs_torch`` = torch latency / this latency), and how far the last layer is from torch
fp32 (max |diff| and relative error ||diff|| / ||ref|| over the real frames).

    PYTHONPATH=. python scripts/bench_onnx.py --threads 2 > scripts/results/bench_onnx.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from audio_ssl import config
from audio_ssl.interop.common import LoadedModel
from audio_ssl.interop.onnx import OnnxModel, export_onnx, quantize_int8, write_metadata
from audio_ssl.models import Wav2Vec2Model

CASES = {"b1_1s": [16_000], "b1_3.7s": [59_200], "b1_17s": [272_000],
         "ragged_4": [272_000, 128_000, 59_200, 16_000]}


def batch_of(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.randn(n, generator=g) * torch.linspace(0.2, 1.0, n)
    return wav, torch.tensor(lengths)


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall seconds of ``repeats`` calls of each function after one warm-up call each,
    the functions taking turns (a call of each per round, the order rotated every round) so that
    load from other processes falls on every engine alike."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="tiny,base")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        torch.manual_seed(0)
        # the Transformer the documented figures were measured on (tiny's default objective,
        # CPC, exports too: tests/interop/test_onnx.py)
        model = Wav2Vec2Model(replace(config.preset(name).model, objective="wav2vec2")).eval()
        last = f"layer_{model.cfg.context.layers}"
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / f"{name}.onnx"
            report = export_onnx(LoadedModel(model, model.cfg, None, "audio-ssl", None, {}), fp32)
            int8 = Path(tmp) / f"{name}.int8.onnx"
            quantize_int8(fp32, int8)
            write_metadata(int8, type(report.metadata)(**{**vars(report.metadata),
                                                          "quantized": "int8"}))
            engines = {"ort_fp32": OnnxModel(fp32, threads=args.threads),
                       "ort_int8": OnnxModel(int8, threads=args.threads)}
            sizes = {"torch": None, "ort_fp32": fp32.stat().st_size,
                     "ort_int8": int8.stat().st_size}
            for case, lengths in CASES.items():
                wav, lens = batch_of(lengths)
                with torch.inference_mode():
                    ref = model(wav, lens, return_layers=True)
                frames = ref.frame_lengths.tolist()
                ref_last = ref.hidden_states[-1]
                repeats = args.repeats if name == "tiny" else max(2, args.repeats // 2)

                def run_torch():
                    with torch.inference_mode():
                        model(wav, lens, return_layers=True)

                x, n = wav.numpy(), lens.numpy()
                calls = {"torch": run_torch, **{engine: (lambda r=runner: r.run(x, n))
                                                for engine, runner in engines.items()}}
                seconds = timed(calls, repeats)
                results = {"torch": (seconds["torch"], 0.0, 0.0)}
                for engine, runner in engines.items():
                    got = torch.from_numpy(runner.run(x, n, [last])[last])
                    diff = max(float((got[b, :f] - ref_last[b, :f]).abs().max())
                               for b, f in enumerate(frames))
                    rel = max(float((got[b, :f] - ref_last[b, :f]).norm()
                                    / ref_last[b, :f].norm()) for b, f in enumerate(frames))
                    results[engine] = (seconds[engine], diff, rel)
                audio = sum(lengths) / 16_000
                for engine, (seconds, diff, rel) in results.items():
                    print(json.dumps({
                        "model": name, "case": case, "engine": engine, "batch": len(lengths),
                        "audio_s": round(audio, 2), "latency_ms": round(1000 * seconds, 1),
                        "audio_s_per_s": round(audio / seconds, 1),
                        "speedup_vs_torch": round(results["torch"][0] / seconds, 2),
                        f"{last}_max_abs_diff": float(f"{diff:.3g}"),
                        f"{last}_rel_err": float(f"{rel:.3g}"),
                        "file_mib": None if sizes[engine] is None else
                        round(sizes[engine] / 2**20, 1),
                        "threads": args.threads}), flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
