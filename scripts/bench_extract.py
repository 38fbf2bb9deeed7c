"""Feature extraction speed and peak memory: audio_ssl against HF Wav2Vec2Model, in one run.

Both models have the same configuration and weights (HF's built from ours by
``audio_ssl.interop.hf.to_hf``, SDPA attention), both run under ``torch.inference_mode``, fp32
on the CPU and bf16 autocast on CUDA. Two measurements, alternating between the two sides so that
drift on a shared machine affects both alike:

- forward: the model alone on a batch of random audio already in memory (ours:
  ``InferenceModel``, the extract command's forward);
- end to end: every file of a folder from disk to one ``.npy`` of last-layer features per file.
  Ours is the real pipeline (``extract_folder``: scan, worker processes decoding, length-sorted
  batches, atomic writes with fsync, index); HF is a straightforward loop: soundfile reads
  ``--batch`` files in folder order, zero-pads them (with an attention mask for layer-norm
  encoders, none for group-norm ones, as HF documents), runs the model, saves each file's frames
  with ``np.save``.

After the forward measurement, a ``"measure": "roofline"`` line (``scripts/roofline.py``) gives
each forward's GFLOP, the GFLOP/s achieved, its share of a large GEMM's rate on the same device
and threads, and the share the ``--bar`` speedup over HF would need.

Prints one JSON line per measurement and one with the ratios (audio seconds per second, ours /
HF; peak memory, ours / HF), e.g.

    python scripts/bench_extract.py --preset base --batch 2 --files 8            # CPU
    python scripts/bench_extract.py --preset base --batch 2 --dtype both --no-e2e  # bf16 CPUs
    python scripts/bench_extract.py --preset base --device cuda --dtype bf16 \\
        --batch 16 --seconds 11 --synthetic 320                                 # a GPU

Files: ``--data`` (a folder, or a manifest whose ``audio`` paths are read), by default the
``--files`` longest clips of ../shared/data/ljspeech (about 10 s each), copied to a temporary
folder; ``--synthetic N`` writes N FLAC files of ``--seconds`` of noise instead (for machines
without the shared data).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around each measurement; on the CPU the
growth of the peak resident set (VmHWM, reset after the models are built) of a spawned child
that builds the model and runs one forward, or one end-to-end pass (the main process only:
decoding workers, used on CUDA, have their own).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from audio_ssl import config  # noqa: E402
from audio_ssl.models import Wav2Vec2Model  # noqa: E402
from roofline import count_flops, gemm_gflops, roofline_row  # noqa: E402

SR = 16_000
LJSPEECH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ljspeech"


# ---------------------------------------------------------------------------------------------
# Models


def build_models(args, only: str | None = None, dtype: str | None = None):
    """(ours: FeatureExtractor, hf: transformers.Wav2Vec2Model) with the same weights; ours
    computes in ``dtype`` (default ``args.dtype``), HF is run under autocast by the caller."""
    from audio_ssl.extract import FeatureExtractor
    from audio_ssl.interop.hf import to_hf

    cfg = replace(config.preset(args.preset).model, objective="wav2vec2")  # HF's network
    cfg = replace(cfg, context=replace(cfg.context, layer_drop=0.0))
    torch.manual_seed(0)
    # inference only on both sides (and torch's FLOP counter, used for the roofline line, fails
    # on parameters that require grad under inference_mode)
    model = Wav2Vec2Model(cfg).eval().requires_grad_(False)
    device = torch.device(args.device)
    hf = None
    if only != "audio_ssl":
        hf = to_hf(model, attn_implementation="sdpa").eval().requires_grad_(False).to(device)
    ours = None
    if only != "hf":
        ours = FeatureExtractor(model, layers="last", device=device,
                                precision=dtype or args.dtype,
                                normalize=False, batch_seconds=args.batch * args.max_seconds,
                                max_batch_size=args.batch)
    return ours, hf


def _autocast(args, dtype: str | None = None):
    return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16,
                          enabled=(dtype or args.dtype) == "bf16")


def forward_steps(args, ours, hf, dtype: str | None = None):
    x = torch.randn(args.batch, int(args.seconds * SR), generator=torch.Generator().manual_seed(0))
    x = x.to(args.device)
    steps = {}
    if ours is not None:
        steps["audio_ssl"] = lambda: ours.model(x)
    if hf is not None:
        def step_hf():
            with torch.inference_mode(), _autocast(args, dtype):
                return hf(x).last_hidden_state

        steps["hf"] = step_hf
    return steps


# ---------------------------------------------------------------------------------------------
# End to end


def e2e_ours(args, ours, files_dir: Path, out: Path):
    from audio_ssl.extract import extract_folder

    summary = extract_folder(ours, files_dir, out, num_workers=args.workers, progress=False,
                             dtype=args.store, fsync=not args.no_fsync, shards=args.shards)
    assert summary.ok and summary.extracted > 0, summary.summary()
    return summary.timings


def e2e_hf(args, hf, files_dir: Path, out: Path):
    files = sorted(p for p in files_dir.rglob("*") if p.suffix in (".flac", ".wav"))
    out.mkdir(parents=True, exist_ok=True)
    group_norm = hf.config.feat_extract_norm == "group"
    for i in range(0, len(files), args.batch):
        batch = files[i:i + args.batch]
        waves = [sf.read(p, dtype="float32")[0] for p in batch]
        lengths = [len(w) for w in waves]
        x = np.zeros((len(waves), max(lengths)), dtype=np.float32)
        mask = np.zeros_like(x, dtype=np.int64)
        for j, w in enumerate(waves):
            x[j, : len(w)] = w
            mask[j, : len(w)] = 1
        inputs = torch.from_numpy(x).to(args.device)
        attention = None if group_norm else torch.from_numpy(mask).to(args.device)
        with torch.inference_mode(), _autocast(args):
            hidden = hf(inputs, attention_mask=attention).last_hidden_state
            frames = hf._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        hidden = hidden.to(torch.float16 if args.store == "float16" else torch.float32)
        hidden = hidden.cpu().numpy()
        for j, path in enumerate(batch):
            np.save(out / f"{path.stem}.npy", hidden[j, : frames[j]])


def _write_noise(path: str, samples: int, seed: int) -> None:
    noise = np.random.default_rng(seed).standard_normal(samples).astype(np.float32) * 0.1
    sf.write(path, noise, SR)


def prepare_files(args, folder: Path) -> tuple[Path, float]:
    """Copy (or synthesise) the benchmark's files into ``folder``; returns it and the audio
    seconds it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        jobs = [(str(folder / f"s{i:05d}.flac"), int(args.seconds * SR), i)
                for i in range(args.synthetic)]
        with multiprocessing.get_context("spawn").Pool(min(16, os.cpu_count() or 1)) as pool:
            pool.starmap(_write_noise, jobs, chunksize=16)
        return folder, args.synthetic * args.seconds
    source = Path(args.data) if args.data else LJSPEECH
    manifest = source / "manifest.jsonl" if source.is_dir() else source
    if manifest.is_file():
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        rows = sorted(rows, key=lambda r: -r["duration"])[: args.files]
        paths = [manifest.parent / r["audio"] for r in rows]
    else:
        paths = sorted(p for p in source.rglob("*") if p.suffix in (".flac", ".wav"))
        paths = paths[: args.files]
    total = 0.0
    for p in paths:
        shutil.copy(p, folder / p.name)
        total += sf.info(str(p)).duration
    return folder, total


# ---------------------------------------------------------------------------------------------
# Timing and memory


def _sync(args):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(args, steps: dict, repeats: int, warmup: int,
              cleanup=lambda: None) -> dict[str, list[float]]:
    """Median-ready times of each step, alternating; ``cleanup`` runs after each, untimed."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
            cleanup()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync(args)
            t = time.perf_counter()
            fn()
            _sync(args)
            times[name].append(time.perf_counter() - t)
            cleanup()
    return times


def _status_mib(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmHWM: peak resident set)."""
    for line in open("/proc/self/status"):
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0: clear_refs 5), so building the
    models (HF's is built from ours) does not mask the peak of what is measured."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child_peak(queue, args, name: str, kind: str, files_dir: str) -> None:
    import gc

    torch.set_num_threads(args.threads)
    ours, hf = build_models(args, only=name)
    gc.collect()
    base = _status_mib("VmRSS") if _reset_peak() else _status_mib("VmHWM")
    if kind == "forward":
        forward_steps(args, ours, hf)[name]()
    else:
        out = Path(tempfile.mkdtemp(prefix="bench-extract-mem-"))
        try:
            if name == "audio_ssl":
                e2e_ours(args, ours, Path(files_dir), out)
            else:
                e2e_hf(args, hf, Path(files_dir), out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    queue.put(_status_mib("VmHWM") - base)


def peak_memory(args, name: str, kind: str, files_dir: Path, run) -> float:
    """MiB: CUDA max allocated during ``run()``; on the CPU a spawned child's VmHWM growth."""
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctx = multiprocessing.get_context("spawn")  # OpenMP does not survive fork
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(queue, args, name, kind, str(files_dir)))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base", choices=sorted(config.PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "both"],
                        help="default: bf16 on CUDA, fp32 on the CPU; both: the forward of "
                        "each model in both dtypes in one alternating loop, and a line comparing "
                        "our bf16 with our fp32 and with HF in both")
    parser.add_argument("--batch", type=int, default=2, help="files (or clips) per forward")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="clip length of the forward measurement and of --synthetic files")
    parser.add_argument("--files", type=int, default=8, help="end to end: how many files")
    parser.add_argument("--data", default=None,
                        help="folder or manifest (default: the longest ljspeech clips)")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="write this many files of --seconds of noise instead")
    parser.add_argument("--workers", type=int, default=None,
                        help="our decoding processes (default: the command's)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--e2e-repeats", type=int, default=2)
    parser.add_argument("--store", default="float32", choices=["float32", "float16"],
                        help="end to end: the stored features' dtype (both sides)")
    parser.add_argument("--no-fsync", action="store_true",
                        help="ours: no fsync before each rename (HF's loop never fsyncs)")
    parser.add_argument("--shards", action="store_true",
                        help="end to end: ours writes shards (extract --shards), not a file each")
    parser.add_argument("--no-forward", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bar", type=float, default=1.5,
                        help="forward speedup over HF to compare with the machine's GEMM rate")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    torch.set_num_threads(args.threads)
    if args.dtype == "both":
        return compare_dtypes(args)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        files_dir, audio_total = prepare_files(args, work / "audio")
        args.max_seconds = max(args.seconds, max(sf.info(str(p)).duration
                                                 for p in files_dir.iterdir()))
        ours, hf = build_models(args)
        device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                       else platform.processor() or "cpu")
        common = {"preset": args.preset, "device": device_name, "dtype": args.dtype,
                  "threads": torch.get_num_threads(), "batch": args.batch, "torch": torch.__version__}
        results: dict[str, dict] = {}

        steps = forward_steps(args, ours, hf)
        times = {} if args.no_forward else alternate(args, steps, args.repeats, args.warmup)
        audio = args.batch * args.seconds
        for name, ts in times.items():
            median = statistics.median(ts)
            row = {"measure": "forward", "impl": name, **common, "seconds": args.seconds,
                   "step_s": round(median, 4), "audio_s_per_s": round(audio / median, 2)}
            if not args.no_memory:
                row["peak_mib"] = round(peak_memory(args, name, "forward", files_dir, steps[name]), 1)
            results[f"forward/{name}"] = row
            print(json.dumps(row), flush=True)
        if "hf" in times:  # the forward's FLOPs against a large GEMM, same device and threads
            dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
            row = roofline_row(count_flops(steps["hf"]),
                               {n: results[f"forward/{n}"]["step_s"] for n in times},
                               gemm_gflops(torch.device(args.device), dtype), args.bar)
            print(json.dumps({**row, **common}), flush=True)

        if not args.no_e2e:
            timings = {}  # of our last run: where its main thread waited

            runs = {"audio_ssl": lambda out: timings.update(e2e_ours(args, ours, files_dir, out)),
                    "hf": lambda out: e2e_hf(args, hf, files_dir, out)}
            out = work / "out"
            e2e = {name: (lambda fn=fn: fn(out)) for name, fn in runs.items()}

            def cleanup():
                shutil.rmtree(out, ignore_errors=True)

            times = alternate(args, e2e, args.e2e_repeats, warmup=1, cleanup=cleanup)
            for name, ts in times.items():
                median = statistics.median(ts)
                row = {"measure": "end_to_end", "impl": name, **common, "store": args.store,
                       "fsync": name == "audio_ssl" and not args.no_fsync,
                       "shards": name == "audio_ssl" and args.shards,
                       "files": len(list(files_dir.iterdir())),
                       "audio_s": round(audio_total, 1), "wall_s": round(median, 3),
                       "audio_s_per_s": round(audio_total / median, 2)}
                if name == "audio_ssl":
                    row["timings_s"] = dict(timings)
                if not args.no_memory:
                    row["peak_mib"] = round(peak_memory(args, name, "e2e", files_dir, e2e[name]), 1)
                    cleanup()
                results[f"end_to_end/{name}"] = row
                print(json.dumps(row), flush=True)

        for measure in ("forward", "end_to_end"):
            if f"{measure}/hf" not in results or f"{measure}/audio_ssl" not in results:
                continue
            a, b = results[f"{measure}/audio_ssl"], results[f"{measure}/hf"]
            ratio = {"ratio": "audio_ssl/hf", "measure": measure, **common,
                     "speedup": round(a["audio_s_per_s"] / b["audio_s_per_s"], 3)}
            if "peak_mib" in a:
                ratio["memory"] = round(a["peak_mib"] / max(b["peak_mib"], 1e-6), 3)
            print(json.dumps(ratio), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare_dtypes(args) -> None:
    """--dtype both: forwards only, ours and HF in fp32 and bf16, alternating."""
    args.max_seconds = args.seconds
    ours32, hf = build_models(args, dtype="fp32")
    ours16, _ = build_models(args, only="audio_ssl", dtype="bf16")
    steps = {}
    for name, ours in (("fp32", ours32), ("bf16", ours16)):
        for impl, fn in forward_steps(args, ours, hf, name).items():
            steps[f"{impl}/{name}"] = fn
    times = alternate(args, steps, args.repeats, args.warmup)
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else platform.processor() or "cpu")
    common = {"preset": args.preset, "device": device_name, "threads": torch.get_num_threads(),
              "batch": args.batch, "seconds": args.seconds, "torch": torch.__version__}
    rate, step_s = {}, {}
    for key, ts in times.items():
        impl, name = key.split("/")
        step_s[key] = statistics.median(ts)
        rate[key] = args.batch * args.seconds / step_s[key]
        print(json.dumps({"measure": "forward", "impl": impl, "dtype": name, **common,
                          "step_s": round(step_s[key], 4),
                          "audio_s_per_s": round(rate[key], 2)}), flush=True)
    for name in ("fp32", "bf16"):
        print(json.dumps({"ratio": "audio_ssl/hf", "measure": "forward", "dtype": name, **common,
                          "speedup": round(rate[f"audio_ssl/{name}"] / rate[f"hf/{name}"], 3)}),
              flush=True)
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        row = roofline_row(count_flops(steps[f"hf/{name}"]),
                           {impl: step_s[f"{impl}/{name}"] for impl in ("audio_ssl", "hf")},
                           gemm_gflops(torch.device(args.device), dtype), args.bar)
        print(json.dumps({**row, **common, "dtype": name}), flush=True)
    ours = rate["audio_ssl/bf16"]
    print(json.dumps({"ratio": "audio_ssl bf16 / others", "measure": "forward", **common,
                      "vs_audio_ssl_fp32": round(ours / rate["audio_ssl/fp32"], 3),
                      "vs_hf_fp32": round(ours / rate["hf/fp32"], 3),
                      "vs_hf_bf16": round(ours / rate["hf/bf16"], 3)}), flush=True)


if __name__ == "__main__":
    main()
