"""The run of ``audio-ssl extract`` (:class:`Extraction`): decoded batches to the model, its
outputs to the writer threads.

The main process runs the model on each :class:`~audio_ssl.extract.plan.ChunkBatch` the decoding
workers hand over (``spawn``: forking after torch has started its OpenMP threads can hang) and
gives the outputs to writer threads, which write every file atomically (:mod:`.writers`). While
the device works on one batch, the previous one's outputs are copied to the host and dispatched.
A long file's chunks are stitched into memory-mapped temporary arrays
(:class:`~audio_ssl.extract.output_folder.LongFileArrays`), so memory stays bounded whatever its
length.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from audio_ssl.data import Rejected, scan
from audio_ssl.extract.chunking import group_norm_stats
from audio_ssl.extract.extractor import SAMPLE_RATE, FeatureExtractor
from audio_ssl.extract.features import CODES
from audio_ssl.extract.output_folder import LongFileArrays, check_settings
from audio_ssl.extract.plan import (
    ChunkBatch,
    ChunkBatchStream,
    InputFile,
    output_keys,
    output_names,
    plan_groups,
)
from audio_ssl.extract.writers import (
    FAILURES,
    INDEX,
    SUFFIX,
    TMP_DIR,
    ShardWriter,
    fsync_dir,
    read_jsonl,
    remove_orphan_shards,
    shard_entries,
    write_jsonl,
    write_output,
)

DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class HostCopy:
    """Outputs being copied from the device into pinned host memory."""

    tensors: dict[str, torch.Tensor]
    event: torch.cuda.Event | None

    def wait(self) -> dict[str, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return {name: t.numpy() for name, t in self.tensors.items()}


def _to_host(out: dict[str, torch.Tensor], store: torch.dtype) -> HostCopy:
    """Start copying ``out`` to the host: features as ``store``, codes as int64."""
    cuda = any(t.device.type == "cuda" for t in out.values())
    host = {}
    for name, t in out.items():
        t = t if name == CODES else t.to(store)
        if cuda:
            buffer = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host[name] = buffer.copy_(t, non_blocking=True)
        else:
            host[name] = t.contiguous()
    event = None
    if cuda:
        event = torch.cuda.Event()
        event.record()
    return HostCopy(host, event)


def _worker_init(worker_id: int) -> None:
    """One intra-op thread per decoding worker: the workers are the parallelism."""
    torch.set_num_threads(1)


def _default_workers(device: torch.device) -> int:
    """On a GPU decoding must keep up with the model: most of the cores. On the CPU the model
    is the bottleneck (decoding a file takes well under 1% of its forward with BASE): 0."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(16, cpus - 2))
    return 0


@dataclass
class _PendingWrite:
    """A file's outputs handed to the writer threads."""

    file: int  # index into the run's inputs
    stitched: LongFileArrays | None  # a long file's temporary arrays, discarded once written


@dataclass
class _CopyingBatch:
    """A batch the model has run, its outputs on their way to the host."""

    batch: ChunkBatch
    copy: HostCopy
    frames: list[int]  # (B,) output frames of each row


class Extraction:
    """One run into a locked output folder: the plan, what earlier runs finished, and the loop
    that feeds decoded batches to the model and its outputs to the writers.

    Made in the order the run needs it: the temporary folder and the settings check, the scan,
    what is already done (:meth:`_resume`); :meth:`run` then extracts the rest.
    """

    def __init__(self, extractor: FeatureExtractor, source: Path, root: Path, *, fmt: str,
                 dtype: str, shard_mb: float, fsync: bool, index_every: float, progress: bool):
        self.extractor, self.model = extractor, extractor.model
        self.root, self.fmt, self.fsync, self.index_every = root, fmt, fsync, index_every
        self.tmp_dir = root / TMP_DIR
        shutil.rmtree(self.tmp_dir, ignore_errors=True)  # a killed run's (we hold the lock)
        self.tmp_dir.mkdir()
        self.layers = list(extractor.layers)
        check_settings(root, {
            "checkpoint": str(extractor.checkpoint) if extractor.checkpoint else None,
            "layers": self.layers, "format": fmt, "dtype": dtype,
            "normalize": extractor.normalize, "frame_rate": extractor.frame_rate,
            "sample_rate": SAMPLE_RATE, "chunk_seconds": extractor.chunk_seconds,
            "context_seconds": extractor.context_seconds, "precision": self.model.precision,
        }, self.tmp_dir)

        items, self.rejected = scan(source, progress=progress,
                                    min_samples=self.model.receptive_field,
                                    sample_rate=SAMPLE_RATE)
        unique = list({it.path: it for it in items}.values())
        keys = output_keys([it.path for it in unique], source.absolute())
        names = output_names(keys, SUFFIX.get(fmt, ""))
        self.files = [InputFile(it.path, it.samples_at(SAMPLE_RATE), key, name,
                                tuple(extractor.plan(it.samples_at(SAMPLE_RATE))))
                      for it, key, name in zip(unique, keys, names)]

        self.store = torch.float16 if dtype == "float16" else torch.float32
        self.layouts = {
            name: (shape, np.dtype(np.int64) if name == CODES else np.dtype(DTYPES[dtype]))
            for name, (shape, _) in self.model.output_shapes().items()
        }
        self.metadata = {"frame_rate": str(extractor.frame_rate), "layers": ",".join(self.layers)}
        # per-file formats: output -> index entry; shards: input path -> entry
        self.entries: dict[str, dict] = {}
        self.shard_writer: ShardWriter | None = None
        self.done = self._resume(shard_mb)
        self.todo = [i for i in range(len(self.files)) if i not in self.done]

        self.failures: list[Rejected] = list(self.rejected)
        self.failed: set[int] = set()
        self.stitching: dict[int, LongFileArrays] = {}
        self.encoder_stats: dict[int, torch.Tensor] = {}  # long file -> (C, 2)
        self.pending: dict[Future, _PendingWrite] = {}
        self.written_dirs: set[Path] = set()  # folders whose renames are not fsynced yet
        self.extracted, self.audio_seconds = 0, 0.0
        # where the main thread's time went, in seconds: waiting for decoded batches, calling
        # the model (on CUDA: launching its kernels), waiting for its outputs on the host,
        # handing them to the writers, waiting for writers to finish, index rewrites
        self.timings = dict.fromkeys(
            ("wait_data", "model", "wait_device", "dispatch", "wait_writers", "index"), 0.0)

    def entry(self, file: InputFile) -> dict:
        """The index row of ``file``'s output."""
        arrays = {name: {"shape": [file.num_frames, *shape], "dtype": dt.name}
                  for name, (shape, dt) in self.layouts.items()}
        row = {"path": file.path, "key": file.key, "output": file.output, "format": self.fmt,
               "num_samples": file.num_samples,
               "duration": round(file.num_samples / SAMPLE_RATE, 4),
               "num_frames": file.num_frames, "frame_rate": self.extractor.frame_rate,
               "layers": self.layers, "arrays": arrays}
        if self.fmt == "npy":
            first = next(iter(arrays.values()))["shape"]
            row["array_shape"] = first if len(self.layers) == 1 else [len(self.layers), *first]
        return row

    def _resume(self, shard_mb: float) -> set[int]:
        """Inputs complete from an earlier run (their entries recorded); opens the shard writer."""
        root = self.root
        if self.fmt == "shard":
            remove_orphan_shards(root)
            for row in shard_entries(root):
                self.entries[row["path"]] = row
            self.shard_writer = ShardWriter(root, int(shard_mb * 2**20), self.tmp_dir, self.fsync)
            return {i for i, file in enumerate(self.files) if file.path in self.entries}
        for row in read_jsonl(root / INDEX):
            if (root / row["output"]).is_file():
                self.entries[row["output"]] = row
        done = set()
        for i, file in enumerate(self.files):
            if (root / file.output).is_file():
                done.add(i)
                self.entries.setdefault(file.output, self.entry(file))
        return done

    def run(self, num_workers: int | None, write_threads: int | None, progress: bool) -> None:
        """Extract every input not done yet; whatever happens, leave the folder consistent."""
        groups = plan_groups(self.files, self.todo, self.extractor.max_batch_samples,
                             self.extractor.max_batch_size)
        _, _, kernel, stride = self.model.conv0
        stream = ChunkBatchStream(self.files, groups, normalize=self.extractor.normalize,
                                  kernel=kernel, stride=stride, group_norm=self.model.group_norm,
                                  max_batch_samples=self.extractor.max_batch_samples)
        cuda = self.model.device.type == "cuda"
        workers = _default_workers(self.model.device) if num_workers is None else int(num_workers)
        workers = min(workers, len(groups))
        loader = DataLoader(
            stream, batch_size=None, num_workers=workers,
            multiprocessing_context="spawn" if workers > 0 else None,
            worker_init_fn=_worker_init if workers > 0 else None,
            prefetch_factor=2 if workers > 0 else None, pin_memory=cuda,
        )
        if write_threads is None:  # parallel fsyncs hide the disk's flush latency
            write_threads = 16 if cuda else 4
        threads = 1 if self.fmt == "shard" else max(1, write_threads)
        self.executor = ThreadPoolExecutor(max_workers=threads)
        total_seconds = sum(self.files[i].num_samples for i in self.todo) / SAMPLE_RATE
        self.bar = tqdm(total=total_seconds, unit="audio-s", desc="extracting",
                        dynamic_ncols=True, disable=not progress or not self.todo,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s "
                                   "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        try:
            self._loop(loader, max_pending=4 * threads)
        finally:
            self._close()

    def _loop(self, loader: DataLoader, max_pending: int) -> None:
        """Run the model on each batch; while the device works on one batch, the previous one's
        outputs go to the writers."""
        last_flush = time.monotonic()
        copying: _CopyingBatch | None = None
        clock = self.timings
        batches = iter(loader)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            clock["wait_data"] += t1 - t0
            if batch is None:
                break
            for i, reason in batch.failures:
                self._fail(i, f"cannot decode: {reason}")
                self._advance(self.files[i].num_samples / SAMPLE_RATE)
            if not batch.rows:
                continue
            t1 = time.perf_counter()
            out, frames = self.model(batch.waveforms, batch.lengths, self._encoder_stats(batch))
            this = _CopyingBatch(batch, _to_host(out, self.store), frames.tolist())
            clock["model"] += time.perf_counter() - t1
            if copying is not None:
                self._dispatch(copying)
            copying = this
            t2 = time.perf_counter()
            while len(self.pending) > max_pending:
                self._collect(block=True)
            self._collect(block=False)
            clock["wait_writers"] += time.perf_counter() - t2
            if time.monotonic() - last_flush > self.index_every:
                self._flush_index()
                last_flush = time.monotonic()
        if copying is not None:
            self._dispatch(copying)
        t2 = time.perf_counter()
        while self.pending:
            self._collect(block=True)
        clock["wait_writers"] += time.perf_counter() - t2
        if self.shard_writer is not None:
            self.shard_writer.close()

    def _encoder_stats(self, batch: ChunkBatch) -> torch.Tensor | None:
        """(B, C, 2) whole-file group-norm statistics of a long file's chunks, or None."""
        if batch.stats is None or batch.stats[2] is None:
            return None
        i = batch.rows[0][0]
        if i not in self.encoder_stats:
            weight, bias, _, _ = self.model.conv0
            self.encoder_stats[i] = group_norm_stats(batch.stats[2], weight, bias)  # (C, 2)
        return self.encoder_stats[i].expand(len(batch.rows), -1, -1)  # (B, C, 2)

    def _advance(self, seconds: float) -> None:
        self.bar.update(min(seconds, self.bar.total - self.bar.n))  # float sums may overshoot

    def _fail(self, i: int, reason: str) -> None:
        if i in self.failed:
            return
        self.failed.add(i)
        self.failures.append(Rejected(self.files[i].path, reason))
        stitched = self.stitching.pop(i, None)
        if stitched is not None:
            stitched.discard()

    def _write(self, i: int, arrays: dict[str, np.ndarray]) -> dict:
        """Write one file's outputs (in a writer thread) -> its index entry."""
        file = self.files[i]
        if self.shard_writer is not None:
            return self.shard_writer.append(self.entry(file), arrays)
        write_output(self.root / file.output, self.tmp_dir, self.fmt, arrays, self.metadata,
                     self.fsync)
        self.written_dirs.add((self.root / file.output).parent)
        return self.entry(file)

    def _submit(self, i: int, arrays: dict[str, np.ndarray],
                stitched: LongFileArrays | None) -> None:
        self.pending[self.executor.submit(self._write, i, arrays)] = _PendingWrite(i, stitched)

    def _collect(self, block: bool) -> None:
        """Record the writes that have finished (waiting for one when ``block``)."""
        if not self.pending:
            return
        finished, _ = wait(list(self.pending), timeout=None if block else 0,
                           return_when=FIRST_COMPLETED)
        for future in finished:
            write = self.pending.pop(future)
            if write.stitched is not None:
                write.stitched.discard()
            file = self.files[write.file]
            try:
                row = future.result()
            except Exception as e:
                self._fail(write.file, f"cannot write {file.output}: {type(e).__name__}: {e}")
                continue
            self.entries[row["path"] if self.fmt == "shard" else row["output"]] = row
            self.extracted += 1
            self.audio_seconds += file.num_samples / SAMPLE_RATE
        self.bar.set_postfix(files=f"{self.extracted}/{len(self.todo)}",
                             failed=len(self.failures), refresh=False)

    def _dispatch(self, copying: _CopyingBatch) -> None:
        """One batch's outputs (once on the host) to the writers, or into long files' arrays."""
        t0 = time.perf_counter()
        host = copying.copy.wait()  # {name: (B, T, ...)}
        t1 = time.perf_counter()
        self.timings["wait_device"] += t1 - t0
        for r, (i, c) in enumerate(copying.batch.rows):
            if i in self.failed:
                continue
            file = self.files[i]
            if not file.long:
                self._submit(i, {name: a[r, : copying.frames[r]] for name, a in host.items()},
                             None)
                self._advance(file.num_samples / SAMPLE_RATE)
                continue
            stitched = self.stitching.get(i)
            if stitched is None:
                stitched = self.stitching[i] = LongFileArrays(
                    file.num_frames, len(file.chunks), i, self.layouts, self.tmp_dir)
            stitched.put(file.chunks[c], {name: a[r] for name, a in host.items()})
            (f0, f1) = file.chunks[c].frames
            self._advance(file.num_samples * (f1 - f0) / file.num_frames / SAMPLE_RATE)
            if stitched.remaining == 0:
                del self.stitching[i]
                self.encoder_stats.pop(i, None)
                for a in stitched.arrays.values():
                    a.flush()
                self._submit(i, dict(stitched.arrays), stitched)
        self.timings["dispatch"] += time.perf_counter() - t1

    def _flush_index(self) -> None:
        """Make this run's renames durable, then rewrite the index."""
        t0 = time.perf_counter()
        if self.fsync:
            for folder in list(self.written_dirs):
                fsync_dir(folder)
                self.written_dirs.discard(folder)
        if self.fmt == "shard":
            rows = shard_entries(self.root)
        else:
            rows = sorted(self.entries.values(), key=lambda r: r["output"])
        write_jsonl(self.root / INDEX, rows, self.tmp_dir)
        self.timings["index"] += time.perf_counter() - t0

    def _close(self) -> None:
        """Whatever happened: stop the writers, drop partial outputs, write the index and the
        failures, remove the temporary folder."""
        self.bar.close()
        for future in list(self.pending):
            future.cancel()
        self.executor.shutdown(wait=True)
        if self.shard_writer is not None:
            self.shard_writer.abandon()
        for stitched in self.stitching.values():
            stitched.discard()
        self._flush_index()
        write_jsonl(self.root / FAILURES,
                    ({"path": f.path, "reason": f.reason} for f in self.failures), self.tmp_dir)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


__all__ = ["Extraction", "HostCopy", "DTYPES"]
