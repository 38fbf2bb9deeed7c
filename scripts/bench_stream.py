"""Streaming transcription over a long stream: real-time factor, time per chunk, memory.

A CTC model with random weights and the network of a preset (default tiny) is fed a stream of
``--minutes`` of speech, ``--chunk`` seconds at a time through
:class:`audio_ssl.asr.streaming.StreamingTranscriber`, as a microphone callback would. The
stream loops over the clips of ``--audio`` (default ../shared/data/tiny/audio), read once and
indexed in memory: no 20-minute array is ever built, so the resident set shows the stream's own
state. Random weights decode to nonsense but cost what trained ones cost.

Prints one JSON line per minute of audio (resident set, buffered samples, real-time factor so
far) and a summary line: real-time factor (compute seconds / audio seconds), time per chunk
(mean, median, 95th percentile, max, in ms), peak resident set (VmHWM), resident set after the
first minute and at the end (no growth: the state is bounded), the algorithmic latency.

    OMP_NUM_THREADS=1 python scripts/bench_stream.py --minutes 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl import config  # noqa: E402
from audio_ssl.data.audio import load_audio  # noqa: E402
from audio_ssl.data.manifest import AUDIO_EXTENSIONS  # noqa: E402
from audio_ssl.interop.common import LoadedModel  # noqa: E402
from audio_ssl.models import Wav2Vec2ForCTC  # noqa: E402
from audio_ssl.asr.streaming import StreamingTranscriber, StreamSettings  # noqa: E402

VOCAB = ["<blank>", "|", *"abcdefghijklmnopqrstuvwxyz'"]


def memory_mb() -> dict[str, float]:
    """Resident set now (VmRSS) and its peak (VmHWM), in MB, from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": round(out.get("VmRSS", 0.0), 1), "peak_rss_mb": round(out.get("VmHWM", 0.0), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0, help="stream length (default: 20)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    p.add_argument("--objective", default="wav2vec2", choices=config.OBJECTIVES,
                   help="objective whose network is measured (default wav2vec2: the "
                        "Transformer docs/streaming.md measured; tiny's default is CPC)")
    p.add_argument("--chunk", type=float, default=1.0, help="seconds per chunk (default: 1.0)")
    p.add_argument("--left", type=float, default=8.0, help="left context s (default: 8.0)")
    p.add_argument("--right", type=float, default=1.28, help="right context s (default: 1.28)")
    p.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "data" / "tiny" / "audio",
                   help="folder of clips the stream loops over")
    p.add_argument("--precision", default="32", choices=["auto", "32", "bf16-mixed"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    rate = 16_000
    clips = [load_audio(f, sample_rate=rate) for f in sorted(args.audio.iterdir())
             if f.name.lower().endswith(AUDIO_EXTENSIONS)]
    if not clips:
        raise SystemExit(f"no audio in {args.audio}")
    loop = torch.cat(clips)  # (S_loop,) the clips once; the stream indexes into it
    del clips
    cfg = config.preset(args.preset)
    cfg = replace(cfg, model=replace(cfg.model, objective=args.objective))
    torch.manual_seed(args.seed)
    model = Wav2Vec2ForCTC(cfg.model, len(VOCAB))
    loaded = LoadedModel(model, cfg.model, VOCAB, "audio-ssl", None,
                         {"data": {"normalize": cfg.data.normalize, "sample_rate": rate}})
    stream = StreamingTranscriber(loaded, StreamSettings(args.chunk, args.left, args.right),
                                  device="cpu", precision=args.precision)
    block = round(args.chunk * rate)
    total = round(args.minutes * 60 * rate)
    print(json.dumps({"measure": "setup", "preset": args.preset, "objective": args.objective,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "loop_seconds": round(loop.numel() / rate, 1), "minutes": args.minutes,
                      "chunk": args.chunk, "left": args.left, "right": args.right,
                      "group_norm": cfg.model.encoder.norm == "group",
                      "normalize": cfg.data.normalize, "torch_threads": torch.get_num_threads(),
                      "cpu": platform.processor() or platform.machine(), **memory_mb()}),
          flush=True)

    times: list[float] = []
    events = 0
    fed = 0
    first_minute_rss = None
    began = time.perf_counter()
    while fed < total:
        n = min(block, total - fed)
        start = fed % loop.numel()
        piece = loop[start:start + n]
        if piece.numel() < n:  # wrap around the loop
            piece = torch.cat([piece, loop[: n - piece.numel()]])
        t0 = time.perf_counter()
        events += len(stream.feed(piece))
        times.append(time.perf_counter() - t0)
        fed += n
        if fed % (60 * rate) < block:  # a minute of audio
            s = stream.stats()
            row = {"measure": "minute", "minute": round(fed / rate / 60, 2),
                   "buffered_samples": stream.buffered_samples,
                   "real_time_factor": round(s.real_time_factor, 4), **memory_mb()}
            first_minute_rss = first_minute_rss or row["rss_mb"]
            print(json.dumps(row), flush=True)
    t0 = time.perf_counter()
    events += len(stream.finish())
    times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - began
    ms = sorted(1000 * t for t in times)
    s = stream.stats()
    end = memory_mb()
    print(json.dumps({
        "measure": "summary", "audio_seconds": round(fed / rate, 1),
        "compute_seconds": round(sum(times), 2), "wall_seconds": round(wall, 2),
        "real_time_factor": round(sum(times) / (fed / rate), 4), "chunks": s.chunks,
        "chunk_ms_mean": round(statistics.fmean(ms), 1), "chunk_ms_median": round(ms[len(ms) // 2], 1),
        "chunk_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 1), "chunk_ms_max": round(ms[-1], 1),
        "latency_seconds": round(s.latency_seconds, 3), "max_buffered_samples": stream.max_buffered_samples,
        "events": events, "rss_mb_after_first_minute": first_minute_rss, **end,
    }), flush=True)


if __name__ == "__main__":
    main()
