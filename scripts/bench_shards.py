"""Read one epoch of training batches from a shard folder (a path or a URL) and from the folder,
manifest or list it was made of, and print audio seconds loaded per second of each.

    python scripts/bench_shards.py SHARDS SOURCE [--epochs 1] [--workers 0]

Both go through the same batch budget (the tiny preset's data section); the shard stream reads
each shard from start to end with one shard read ahead, the folder loader decodes crops by path.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from audio_ssl import config
from audio_ssl.data import make_dataloader, scan
from audio_ssl.data.shard_stream import make_shard_dataloader
from audio_ssl.data.shards import read_index


def _time(loader, batches: int, sample_rate: int) -> tuple[float, float]:
    """(seconds, audio seconds) to take ``batches`` batches."""
    start, audio, it = time.perf_counter(), 0.0, iter(loader)
    for _ in range(batches):
        audio += float(next(it).lengths.sum()) / sample_rate
    return time.perf_counter() - start, audio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shards", help="shard folder (audio-ssl shard OUTPUT)")
    p.add_argument("source", help="the folder, manifest or list the shards were made of")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the shard plan to read")
    p.add_argument("--workers", type=int, default=0, help="loader workers (default: 0)")
    args = p.parse_args()
    cfg = replace(config.preset("tiny").data, num_workers=args.workers)
    sr = cfg.sample_rate

    index = read_index(args.shards)
    loader, plan = make_shard_dataloader(index, cfg, seed=0)
    batches = sum(plan.per_stream(e) for e in range(args.epochs)) * plan.streams
    seconds, audio = _time(loader, batches, sr)
    print(f"shards  {args.shards}: {batches} batches, {audio / 3600:.2f} h of crops in "
          f"{seconds:.1f} s: {audio / seconds:.0f} audio s/s")

    items, _ = scan(args.source, progress=False, min_samples=cfg.min_samples, sample_rate=sr)
    loader, _ = make_dataloader(items, cfg, seed=0)
    seconds, audio = _time(loader, batches, sr)
    print(f"folder  {args.source}: {batches} batches, {audio / 3600:.2f} h of crops in "
          f"{seconds:.1f} s: {audio / seconds:.0f} audio s/s")


if __name__ == "__main__":
    main()
