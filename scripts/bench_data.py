"""Training loader throughput from a folder, local shards and S3 shards, and shard plan restore.

Throughput: audio seconds per second of the batches the pretraining loader delivers (the
preset's data section, default tiny), with 0, 2 and 4 loader workers, from

- the folder (or manifest) itself, decoded by path;
- its shards on the local disk (written here with ``write_shards``, ``--shard-size`` files each);
- the same shards on S3: moto's server on 127.0.0.1 in a process of its own (a store's work is
  not the trainer's: in this process its thread would hold the loader's interpreter lock),
  reached through ``AWS_ENDPOINT_URL`` as a real store would be (loopback: no network latency).

Each measurement takes ``--batches`` batches from a fresh loader: ``first_batch_s`` is the start
(workers forked, first shard read), ``audio_s_per_s`` the rate over the batches after the first.
The sources take turns, ``--repeats`` times; each row is the median of its repeats.

Restore: a synthetic index of ``--restore-cuts`` cuts (1-20 s, shards of 1000, no audio) is
written as ``index.jsonl.gz``; then, as a resumed run does, the index is read, a fresh
``ShardPlan`` built and its first request taken at a position halfway into epoch 3, against the
same for position 0 (the peer). One folder, and a mix of two with weights 0.7 / 0.3.

One JSON line per measurement, then ratio lines (S3 / local shards, local shards / folder,
restore / fresh start):

    python scripts/bench_data.py --source ../shared/data/ljspeech --batches 600 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl import config  # noqa: E402
from audio_ssl.data import make_dataloader, scan  # noqa: E402
from audio_ssl.data.shard_mix import ShardMix  # noqa: E402
from audio_ssl.data.shard_stream import ShardPlan, make_shard_dataloader  # noqa: E402
from audio_ssl.data.shard_writer import write_shards  # noqa: E402
from audio_ssl.data.shards import (  # noqa: E402
    INDEX_NAME, ShardCut, encode_index, index_header, read_index,
)


def emit(**row) -> dict:
    print(json.dumps(row), flush=True)
    return row


def take(loader, batches: int, sample_rate: int) -> tuple[float, float, float]:
    """(seconds to the first batch, audio seconds after it, seconds after it) over ``batches``
    batches of a fresh iterator; its workers are shut down after."""
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter()
    audio = 0.0
    for _ in range(batches - 1):
        audio += float(next(it).lengths.sum()) / sample_rate
    end = time.perf_counter()
    del it  # shuts the workers down
    return first - start, audio, end - first


# -- throughput -------------------------------------------------------------------------------


class MotoS3:
    """moto's S3 server on 127.0.0.1 in a child process, with a bucket, as the environment of
    every later s3:// read (loader workers start with it)."""

    def __init__(self, bucket: str) -> None:
        import socket
        import subprocess

        import boto3

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=self.endpoint)
        client = boto3.client("s3", endpoint_url=self.endpoint)
        deadline = time.time() + 60
        while True:  # until the server answers
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception as e:
                if time.time() > deadline or self.server.poll() is not None:
                    raise RuntimeError(f"moto's server on port {port}: {e}") from None
                time.sleep(0.2)

    def upload(self, folder: Path, url: str) -> None:
        from audio_ssl.data import storage

        fs, prefix = storage.filesystem(url)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{prefix}/{path.relative_to(folder)}")

    def cpu_seconds(self) -> float:
        """CPU time the server has used (user + system), from /proc: on a machine of few cores
        it is taken from the loader, as a remote store's would not be."""
        fields = Path(f"/proc/{self.server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait()


def throughput(args: argparse.Namespace, cfg, work: Path) -> list[dict]:
    sr = cfg.sample_rate
    items, _ = scan(args.source, progress=False, min_samples=cfg.min_samples, sample_rate=sr)
    local = work / "shards"
    t = time.perf_counter()
    written = write_shards(args.source, str(local), shard_size=args.shard_size, progress=False)
    emit(kind="write_shards", source=str(args.source), shards=written.shards, cuts=written.cuts,
         seconds=round(time.perf_counter() - t, 2))
    sources = {"folder": None, "local": str(local)}
    s3 = None
    if not args.skip_s3:
        s3 = MotoS3("bench")
        t = time.perf_counter()
        s3.upload(local, "s3://bench/shards")
        emit(kind="upload_s3", endpoint=s3.endpoint, seconds=round(time.perf_counter() - t, 2))
        sources["s3"] = "s3://bench/shards"
    rows = []
    try:
        for workers in args.workers:
            wcfg = replace(cfg, num_workers=workers)
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sources}
            server_cpu = []  # the S3 server's CPU seconds during each S3 measurement
            for _ in range(args.repeats):  # the sources in turns
                for name, url in sources.items():
                    if url is None:
                        loader, _ = make_dataloader(items, wcfg, seed=0)
                    else:
                        loader, _ = make_shard_dataloader(read_index(url), wcfg, seed=0)
                    cpu = s3.cpu_seconds() if name == "s3" else 0.0
                    runs[name].append(take(loader, args.batches, sr))
                    if name == "s3":
                        server_cpu.append(round(s3.cpu_seconds() - cpu, 2))
            for name, measured in runs.items():
                first, audio, seconds = sorted(measured, key=lambda m: m[1] / m[2])[
                    len(measured) // 2]  # the median rate
                rows.append(emit(kind="throughput", source=name, workers=workers,
                                 batches=args.batches, repeats=args.repeats,
                                 first_batch_s=round(first, 3), audio_s=round(audio, 1),
                                 seconds=round(seconds, 3),
                                 audio_s_per_s=round(audio / seconds, 1),
                                 all_audio_s_per_s=[round(a / t, 1) for _, a, t in measured],
                                 **({"server_cpu_s": server_cpu} if name == "s3" else {})))
    finally:
        if s3 is not None:
            s3.stop()
    rate = {(r["source"], r["workers"]): r["audio_s_per_s"] for r in rows}
    for workers in args.workers:
        if ("s3", workers) in rate:
            emit(kind="ratio", what="s3/local", workers=workers,
                 value=round(rate["s3", workers] / rate["local", workers], 3))
        emit(kind="ratio", what="local/folder", workers=workers,
             value=round(rate["local", workers] / rate["folder", workers], 3))
    return rows


# -- restore ----------------------------------------------------------------------------------


def synthetic_folder(folder: Path, cuts: int, seed: int, shard_size: int = 1000) -> None:
    """An index.jsonl.gz of ``cuts`` cuts of 1-20 s at 16 kHz (no audio: planning reads the
    index only)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(16_000, 320_000, cuts)
    rows = [ShardCut(f"c{i:07d}", i // shard_size, int(f), 16_000, 1, f"/audio/{i:07d}.flac")
            for i, f in enumerate(frames)]
    shards = -(-cuts // shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX_NAME).write_bytes(
        encode_index(index_header(shards, shard_size, "flac", cuts), rows))


def restore(args: argparse.Namespace, cfg, work: Path) -> list[dict]:
    half = args.restore_cuts // 2
    synthetic_folder(work / "one", args.restore_cuts, 0)
    synthetic_folder(work / "a", half, 1)
    synthetic_folder(work / "b", args.restore_cuts - half, 2)
    layouts = {"one folder": lambda: read_index(str(work / "one")),
               "mix 0.7/0.3": lambda: ShardMix((read_index(str(work / "a")),
                                                read_index(str(work / "b"))), (0.7, 0.3))}
    rows = []
    for name, load in layouts.items():
        for streams in (1, 4):
            probe = ShardPlan(load(), cfg, seed=1, streams=streams)
            before = sum(probe.per_stream(e) for e in range(3)) * streams
            deep = before + probe.per_stream(3) * streams // 2
            for position in (0, deep):
                t = time.perf_counter()
                index = load()
                t_index = time.perf_counter()
                plan = ShardPlan(index, cfg, seed=1, streams=streams)
                t_plan = time.perf_counter()
                request = next(plan.requests(position))
                end = time.perf_counter()
                assert request.request.position == position
                rows.append(emit(kind="restore", layout=name, cuts=args.restore_cuts,
                                 streams=streams, position=position,
                                 epoch=request.request.epoch,
                                 read_index_s=round(t_index - t, 3),
                                 build_plan_s=round(t_plan - t_index, 3),
                                 first_request_s=round(end - t_plan, 3),
                                 total_s=round(end - t, 3)))
            emit(kind="ratio", what="restore/fresh start", layout=name, streams=streams,
                 value=round(rows[-1]["total_s"] / rows[-2]["total_s"], 3))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "ljspeech",
                   help="folder, manifest or list of audio (default: ../shared/data/ljspeech)")
    p.add_argument("--preset", default="tiny", help="data section of this preset (default: tiny)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4],
                   help="loader workers to measure (default: 0 2 4)")
    p.add_argument("--batches", type=int, default=600,
                   help="batches per measurement (default: 600)")
    p.add_argument("--repeats", type=int, default=3,
                   help="measurements of each source, in turns; the median is kept (default: 3)")
    p.add_argument("--shard-size", type=int, default=100, help="files per shard (default: 100)")
    p.add_argument("--restore-cuts", type=int, default=100_000,
                   help="cuts of the synthetic index for the restore timing (default: 100000)")
    p.add_argument("--skip-s3", action="store_true", help="no S3 (moto) measurements")
    p.add_argument("--only", choices=["throughput", "restore"], default=None,
                   help="one of the two parts")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more than CPUs
    cfg = config.preset(args.preset).data
    emit(kind="setup", preset=args.preset, cpus=os.cpu_count(), load=os.getloadavg()[0],
         data=vars(cfg))
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        if args.only in (None, "restore"):
            restore(args, cfg, Path(tmp))
        if args.only in (None, "throughput"):
            throughput(args, cfg, Path(tmp))


if __name__ == "__main__":
    main()
