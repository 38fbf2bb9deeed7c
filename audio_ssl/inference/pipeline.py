"""``audio-ssl extract``: every file of a collection to features on disk, fast and safely.

The plan is made in the main process from the files' headers (no audio is read): files short
enough to run whole are sorted by length and cut into batches of at most ``batch_seconds`` of
padded audio; each long file is a unit of its own (its chunks, :mod:`.chunking`). Worker
processes (``spawn``: forking after torch has started its OpenMP threads can hang) decode the
units and hand over padded batches; the main process runs the model and gives the outputs to
writer threads, which write every file atomically (:mod:`.writers`). A long file's chunks are
stitched into memory-mapped temporary arrays, so memory stays bounded whatever its length.

Rerunning into the same folder skips what is complete: an output file (its final name exists
only after the rename), or an input listed in a final shard's entry list. ``OUTPUT/extract.json``
records the settings; a rerun with other layers, format, dtype, normalisation or checkpoint is
refused. ``OUTPUT/index.jsonl`` lists every output (rewritten atomically every minute and at the
end; a rerun adds outputs a killed run wrote after its last index); ``OUTPUT/failures.jsonl``
lists this run's failed inputs with the reason.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from audio_ssl.data import AudioError, Rejected, load_audio, scan
from audio_ssl.inference.chunking import (
    Chunk,
    FileMoments,
    group_chunks,
    group_norm_stats,
    prepare_file,
    read_chunk,
)
from audio_ssl.inference.extract import SAMPLE_RATE, FeatureExtractor, collate
from audio_ssl.inference.features import CODES
from audio_ssl.inference.writers import (
    FAILURES,
    FORMATS,
    INDEX,
    SETTINGS,
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
_COMPARED_SETTINGS = ("checkpoint", "layers", "format", "dtype", "normalize", "frame_rate")


@dataclass
class ExtractSummary:
    """What a run of :func:`run_extraction` did.

    Attributes:
        output: the output folder.
        files: inputs found (usable and rejected).
        extracted: inputs written by this run.
        skipped: inputs already complete from an earlier run.
        failures: inputs that failed (unreadable, too short, decode or write errors), with why.
        audio_seconds: audio extracted by this run.
        seconds: wall time of the run.
    """

    output: Path
    files: int
    extracted: int
    skipped: int
    failures: list[Rejected]
    audio_seconds: float
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def index(self) -> Path:
        return self.output / INDEX

    def summary(self) -> str:
        rate = self.audio_seconds / max(self.seconds, 1e-9)
        lines = [
            f"extracted {self.extracted} of {self.files} files ({self.audio_seconds / 3600:.3f} h "
            f"of audio) in {self.seconds:.1f} s ({rate:.1f} audio-s/s); {self.skipped} already "
            f"done and skipped",
            f"index: {self.index}",
        ]
        if self.failures:
            lines.append(f"FAILED: {len(self.failures)} files, listed with the reason in "
                         f"{self.output / FAILURES}; first: {self.failures[0].path}: "
                         f"{self.failures[0].reason}")
        else:
            lines.append("failures: none")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class Job:
    """One input: where it goes and how it is cut (one chunk = the whole file)."""

    path: str
    num_samples: int
    key: str  # path relative to the input root
    output: str  # output path relative to the output folder (per-file formats)
    chunks: tuple[Chunk, ...]

    @property
    def long(self) -> bool:
        return len(self.chunks) > 1

    @property
    def num_frames(self) -> int:
        return self.chunks[-1].frames[1]


@dataclass(frozen=True)
class Unit:
    """Work for one worker step: whole files batched together, or one long file."""

    jobs: tuple[int, ...]
    long: bool


def output_keys(paths: list[str], source: Path) -> list[str]:
    """Each input's path relative to the source folder (or to the inputs' common folder)."""
    if source.is_dir():
        root = str(source)
    else:
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [os.path.relpath(p, root) for p in paths]


def output_names(keys: list[str], suffix: str) -> list[str]:
    """``a/b.flac`` -> ``a/b.npy``; inputs that would collide (``b.wav`` and ``b.flac``) keep
    their extension (``b.wav.npy``)."""
    stems = [os.path.splitext(k)[0] + suffix for k in keys]
    counts = Counter(stems)
    return [s if counts[s] == 1 else k + suffix for s, k in zip(stems, keys)]


def plan_units(jobs: list[Job], todo: list[int], max_batch_samples: int,
               max_batch_size: int) -> list[Unit]:
    """Whole files sorted by length into batches of at most ``max_batch_samples`` padded
    samples and ``max_batch_size`` files; one unit per long file. Longest first, so a batch too
    large for the device fails at once."""
    whole = sorted((i for i in todo if not jobs[i].long), key=lambda i: jobs[i].num_samples)
    batches: list[list[int]] = []
    for i in whole:  # ascending: the newcomer is the batch's longest
        current = batches[-1] if batches else None
        if (current is not None and len(current) < max_batch_size
                and (len(current) + 1) * jobs[i].num_samples <= max_batch_samples):
            current.append(i)
        else:
            batches.append([i])
    units = [Unit(tuple(b), False) for b in reversed(batches)]
    longs = sorted((i for i in todo if jobs[i].long), key=lambda i: -jobs[i].num_samples)
    return [Unit((i,), True) for i in longs] + units


# ---------------------------------------------------------------------------------------------
# Decoding (in worker processes)


@dataclass
class Piece:
    """A padded batch ready for the model.

    Attributes:
        waveforms: (B, S) float32; lengths: (B,).
        rows: (job index, chunk number) of each row.
        stats: a long file's (mean, scale, moments or None), for its chunks.
        failures: (job index, reason) of inputs that could not be read.
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    rows: list[tuple[int, int]]
    stats: tuple[float, float, FileMoments | None] | None = None
    failures: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> Piece:
        """Called by DataLoader(pin_memory=True): page-locked waveforms copy to the GPU
        asynchronously."""
        self.waveforms = self.waveforms.pin_memory()
        return self


def _reason(e: Exception) -> str:
    return e.reason if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"


class PieceStream(IterableDataset):
    """Decodes units into :class:`Piece`; worker w of n takes units w, w + n, ..."""

    def __init__(self, jobs: list[Job], units: list[Unit], *, normalize: bool, kernel: int,
                 stride: int, group_norm: bool, max_batch_samples: int):
        super().__init__()
        self.jobs, self.units = jobs, units
        self.normalize, self.kernel, self.stride = normalize, kernel, stride
        self.group_norm, self.max_batch_samples = group_norm, max_batch_samples

    def __iter__(self) -> Iterator[Piece]:
        info = get_worker_info()
        units = self.units if info is None else self.units[info.id::info.num_workers]
        for unit in units:
            if unit.long:
                yield from self._long(unit.jobs[0])
            else:
                yield self._whole(unit.jobs)

    def _whole(self, indices: tuple[int, ...]) -> Piece:
        rows, keys, failures = [], [], []
        for i in indices:
            job = self.jobs[i]
            try:
                wav = load_audio(job.path, sample_rate=SAMPLE_RATE, normalize=self.normalize)
                if wav.numel() != job.num_samples:
                    raise ValueError(f"decoded {wav.numel()} samples, expected {job.num_samples} "
                                     f"from the header (has the file changed since the scan?)")
            except Exception as e:  # one bad file never stops the run
                failures.append((i, _reason(e)))
                continue
            rows.append(wav)
            keys.append((i, 0))
        if not rows:
            return Piece(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), [], None, failures)
        waveforms, lengths = collate(rows)
        return Piece(waveforms, lengths, keys, None, failures)

    def _long(self, i: int) -> Iterator[Piece]:
        job = self.jobs[i]
        read = partial(_read_span, job.path)
        try:
            stats = prepare_file(read, job.num_samples, self.kernel, self.stride, self.normalize,
                                 self.group_norm)
            for group in group_chunks(list(job.chunks), self.max_batch_samples):
                rows = [read_chunk(read, job.chunks[c], stats[0], stats[1]) for c in group]
                waveforms, lengths = collate(rows)
                yield Piece(waveforms, lengths, [(i, c) for c in group], stats)
        except Exception as e:
            yield Piece(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), [], None,
                        [(i, _reason(e))])


def _read_span(path: str, start: int, num_samples: int) -> torch.Tensor:
    return load_audio(path, sample_rate=SAMPLE_RATE, start=start, num_samples=num_samples)


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


# ---------------------------------------------------------------------------------------------
# Output folder


class _Lock:
    """An exclusive lock on OUTPUT/.lock: one extraction per folder at a time (released by the
    system when the process dies, even by SIGKILL)."""

    def __init__(self, root: Path):
        self.path = root / ".lock"
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self.file.close()
            raise RuntimeError(f"{root}: another audio-ssl extract is writing to this folder "
                               f"(lock {self.path} is held)") from e

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _check_settings(root: Path, settings: dict, tmp_dir: Path) -> None:
    path = root / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        diffs = [f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now"
                 for k in _COMPARED_SETTINGS if before.get(k) != settings.get(k)]
        if diffs:
            raise ValueError(f"{root} holds features extracted with other settings "
                             f"({'; '.join(diffs)}): extract into another folder")
    write_jsonl(path, [settings], tmp_dir)  # one JSON object (a one-line JSONL is valid JSON)


class _Assembly:
    """A long file's outputs, stitched chunk by chunk into memory-mapped temporary arrays."""

    def __init__(self, job: Job, index: int, layouts: dict[str, tuple[tuple[int, ...], np.dtype]],
                 tmp_dir: Path):
        self.remaining = len(job.chunks)
        self.paths = [tmp_dir / f"assembly-{index}-{name}.npy" for name in layouts]
        self.arrays = {
            name: np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                            shape=(job.num_frames, *shape))
            for path, (name, (shape, dtype)) in zip(self.paths, layouts.items())
        }

    def put(self, chunk: Chunk, rows: dict[str, np.ndarray]) -> None:
        (k0, k1), (f0, f1) = chunk.keep, chunk.frames
        for name, a in rows.items():
            self.arrays[name][f0:f1] = a[k0:k1]
        self.remaining -= 1

    def discard(self) -> None:
        self.arrays = {}
        for path in self.paths:
            try:
                path.unlink()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Run


def _default_workers(device: torch.device) -> int:
    """On a GPU decoding must keep up with the model: most of the cores. On the CPU the model
    is the bottleneck (decoding a file takes well under 1% of its forward with BASE): 0."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(16, cpus - 2))
    return 0


def run_extraction(extractor: FeatureExtractor, source: str | os.PathLike,
                   output: str | os.PathLike, *, fmt: str | None = None, dtype: str = "float32",
                   shards: bool = False, shard_mb: float = 1024.0, num_workers: int | None = None,
                   write_threads: int | None = None, progress: bool = True,
                   fsync: bool = True,
                   index_every: float = 60.0) -> ExtractSummary:
    """Extract every audio file of ``source`` into ``output``.

    Args:
        extractor: the model, layers, chunking and batching.
        source: a folder (recursive), a JSONL manifest or a list of files.
        output: the output folder (created; a rerun continues where a run stopped).
        fmt: ``npy`` (default), ``pt`` or ``safetensors``; not with ``shards``.
        dtype: ``float32`` or ``float16`` for stored features (codes are int64).
        shards: write ``shards/shard-NNNNN.bin`` files of about ``shard_mb`` MB each.
        num_workers: decoding processes (default: all cores but two, up to 16, on CUDA; 0 on the
            CPU, where decoding takes under 1% of the time; 0 decodes in this process).
        write_threads: threads writing files (default 16 on CUDA, 4 on the CPU; one in shard
            mode).
        progress: a progress bar of audio seconds, with files done and failed.
        fsync: flush every output to disk before its rename (durable across a power cut; costs
            the disk's write bandwidth). Without it outputs are still renamed into place whole.
        index_every: seconds between rewrites of index.jsonl during the run.

    Raises:
        FileNotFoundError, NoAudioError: ``source`` does not exist or holds no usable audio.
        ValueError: bad options, or ``output`` holds features of other settings.
        RuntimeError: another extraction holds ``output``.
    """
    start_time = time.perf_counter()
    if shards and fmt is not None:
        raise ValueError(f"--shards writes its own shard files: do not give a format ({fmt!r})")
    fmt = "shard" if shards else (fmt or "npy")
    if fmt != "shard" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {list(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {list(DTYPES)}")
    model = extractor.model
    if fmt == "npy" and not model.selection.stackable and len(extractor.layers) > 1:
        raise ValueError(f"format npy holds one array, and layers {list(extractor.layers)} have "
                         f"different widths: use --format pt or safetensors, or --shards")
    if shard_mb <= 0:
        raise ValueError(f"shard size must be positive, got {shard_mb} MB")

    root = Path(output).absolute()
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"output {output} is a file: expected a folder for the features")
    root.mkdir(parents=True, exist_ok=True)
    lock = _Lock(root)
    try:
        return _run(extractor, Path(source), root, fmt, dtype, shard_mb, num_workers,
                    write_threads, progress, fsync, index_every, start_time)
    finally:
        lock.release()


def _run(extractor: FeatureExtractor, source: Path, root: Path, fmt: str, dtype: str,
         shard_mb: float, num_workers: int | None, write_threads: int | None, progress: bool,
         fsync: bool, index_every: float, start_time: float) -> ExtractSummary:
    model = extractor.model
    tmp_dir = root / TMP_DIR
    shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed run (we hold the lock)
    tmp_dir.mkdir()
    layers = list(extractor.layers)
    settings = {
        "checkpoint": str(extractor.checkpoint) if extractor.checkpoint else None,
        "layers": layers, "format": fmt, "dtype": dtype, "normalize": extractor.normalize,
        "frame_rate": extractor.frame_rate, "sample_rate": SAMPLE_RATE,
        "chunk_seconds": extractor.chunk_seconds, "context_seconds": extractor.context_seconds,
        "precision": model.precision,
    }
    _check_settings(root, settings, tmp_dir)

    items, rejected = scan(source, progress=progress, min_samples=model.receptive_field,
                           sample_rate=SAMPLE_RATE)
    unique = list({it.path: it for it in items}.values())
    paths = [it.path for it in unique]
    keys = output_keys(paths, source.absolute())
    names = output_names(keys, SUFFIX.get(fmt, ""))
    jobs = [Job(it.path, it.samples_at(SAMPLE_RATE), key, name,
                tuple(extractor.plan(it.samples_at(SAMPLE_RATE))))
            for it, key, name in zip(unique, keys, names)]

    float_dtype = DTYPES[dtype]
    store = torch.float16 if dtype == "float16" else torch.float32
    layouts = {name: (shape, np.dtype(np.int64) if name == CODES else np.dtype(float_dtype))
               for name, (shape, _) in model.output_shapes().items()}

    def entry(job: Job) -> dict:
        arrays = {name: {"shape": [job.num_frames, *shape], "dtype": dt.name}
                  for name, (shape, dt) in layouts.items()}
        row = {"path": job.path, "key": job.key, "output": job.output, "format": fmt,
               "num_samples": job.num_samples, "duration": round(job.num_samples / SAMPLE_RATE, 4),
               "num_frames": job.num_frames, "frame_rate": extractor.frame_rate,
               "layers": layers, "arrays": arrays}
        if fmt == "npy":
            first = next(iter(arrays.values()))["shape"]
            row["array_shape"] = first if len(layers) == 1 else [len(layers), *first]
        return row

    # what is done already
    entries: dict[str, dict] = {}  # per-file formats: output -> entry; shards: path -> entry
    shard_writer = None
    if fmt == "shard":
        remove_orphan_shards(root)
        for row in shard_entries(root):
            entries[row["path"]] = row
        done = {i for i, job in enumerate(jobs) if job.path in entries}
        shard_writer = ShardWriter(root, int(shard_mb * 2**20), tmp_dir, fsync)
    else:
        for row in read_jsonl(root / INDEX):
            if (root / row["output"]).is_file():
                entries[row["output"]] = row
        done = set()
        for i, job in enumerate(jobs):
            if (root / job.output).is_file():
                done.add(i)
                entries.setdefault(job.output, entry(job))
    todo = [i for i in range(len(jobs)) if i not in done]

    failures: list[Rejected] = list(rejected)
    units = plan_units(jobs, todo, extractor.max_batch_samples, extractor.max_batch_size)
    weight, bias, kernel, stride = model.conv0
    stream = PieceStream(jobs, units, normalize=extractor.normalize, kernel=kernel, stride=stride,
                         group_norm=model.group_norm, max_batch_samples=extractor.max_batch_samples)
    workers = _default_workers(model.device) if num_workers is None else int(num_workers)
    workers = min(workers, len(units))
    loader = DataLoader(
        stream, batch_size=None, num_workers=workers,
        multiprocessing_context="spawn" if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=2 if workers > 0 else None,
        pin_memory=model.device.type == "cuda",
    )
    metadata = {"frame_rate": str(extractor.frame_rate), "layers": ",".join(layers)}
    if write_threads is None:  # parallel fsyncs hide the disk's flush latency
        write_threads = 16 if model.device.type == "cuda" else 4
    threads = 1 if fmt == "shard" else max(1, write_threads)
    executor = ThreadPoolExecutor(max_workers=threads)
    pending: dict[Future, tuple[int, _Assembly | None]] = {}
    assemblies: dict[int, _Assembly] = {}
    encoder_stats: dict[int, torch.Tensor | None] = {}
    failed_jobs: set[int] = set()
    extracted, audio_seconds = 0, 0.0
    total_seconds = sum(jobs[i].num_samples for i in todo) / SAMPLE_RATE
    bar = tqdm(total=total_seconds, unit="audio-s", desc="extracting", dynamic_ncols=True,
               disable=not progress or not todo,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s "
                          "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def advance(seconds: float) -> None:
        bar.update(min(seconds, bar.total - bar.n))  # float sums may overshoot the total

    def fail(i: int, reason: str) -> None:
        if i in failed_jobs:
            return
        failed_jobs.add(i)
        failures.append(Rejected(jobs[i].path, reason))
        assembly = assemblies.pop(i, None)
        if assembly is not None:
            assembly.discard()

    written_dirs: set[Path] = set()  # folders whose renames are not fsynced yet

    def write(i: int, arrays: dict[str, np.ndarray]) -> dict:
        job = jobs[i]
        if shard_writer is not None:
            return shard_writer.append(entry(job), arrays)
        write_output(root / job.output, tmp_dir, fmt, arrays, metadata, fsync)
        written_dirs.add((root / job.output).parent)
        return entry(job)

    def collect(block: bool) -> None:
        nonlocal extracted, audio_seconds
        if not pending:
            return
        finished, _ = wait(list(pending), timeout=None if block else 0,
                           return_when=FIRST_COMPLETED)
        for future in finished:
            i, assembly = pending.pop(future)
            if assembly is not None:
                assembly.discard()
            try:
                row = future.result()
            except Exception as e:
                fail(i, f"cannot write {jobs[i].output}: {type(e).__name__}: {e}")
                continue
            entries[row["path"] if fmt == "shard" else row["output"]] = row
            extracted += 1
            audio_seconds += jobs[i].num_samples / SAMPLE_RATE
        bar.set_postfix(files=f"{extracted}/{len(todo)}", failed=len(failures), refresh=False)

    def flush_index() -> None:
        """Make this run's renames durable, then rewrite the index."""
        if fsync:
            for folder in list(written_dirs):
                fsync_dir(folder)
                written_dirs.discard(folder)
        if fmt == "shard":
            rows = shard_entries(root)
        else:
            rows = sorted(entries.values(), key=lambda r: r["output"])
        write_jsonl(root / INDEX, rows, tmp_dir)

    def dispatch(piece: Piece, copy: HostCopy, frames: list[int]) -> None:
        """One batch's outputs (once on the host) to files or long-file assemblies."""
        host = copy.wait()  # {name: (B, T, ...)}
        for r, (i, c) in enumerate(piece.rows):
            if i in failed_jobs:
                continue
            job = jobs[i]
            if not job.long:
                arrays = {name: a[r, : frames[r]] for name, a in host.items()}
                pending[executor.submit(write, i, arrays)] = (i, None)
                advance(job.num_samples / SAMPLE_RATE)
                continue
            assembly = assemblies.get(i)
            if assembly is None:
                assembly = assemblies[i] = _Assembly(job, i, layouts, tmp_dir)
            assembly.put(job.chunks[c], {name: a[r] for name, a in host.items()})
            (f0, f1) = job.chunks[c].frames
            advance(job.num_samples * (f1 - f0) / job.num_frames / SAMPLE_RATE)
            if assembly.remaining == 0:
                del assemblies[i]
                encoder_stats.pop(i, None)
                for a in assembly.arrays.values():
                    a.flush()
                pending[executor.submit(write, i, dict(assembly.arrays))] = (i, assembly)

    last_flush = time.monotonic()
    try:
        in_flight = None  # the previous batch, its outputs still on their way to the host
        for piece in loader:
            for i, reason in piece.failures:
                fail(i, f"cannot decode: {reason}")
                advance(jobs[i].num_samples / SAMPLE_RATE)
            if not piece.rows:
                continue
            stats = None
            if piece.stats is not None and piece.stats[2] is not None:
                i = piece.rows[0][0]
                if i not in encoder_stats:
                    encoder_stats[i] = group_norm_stats(piece.stats[2], weight, bias)
                stats = encoder_stats[i].expand(len(piece.rows), -1, -1)  # (B, C, 2)
            out, frames = model(piece.waveforms, piece.lengths, stats)
            # queue this batch's copy to the host, then hand the previous one to the writers
            # while the device works on this one
            copied = (piece, _to_host(out, store), frames.tolist())
            if in_flight is not None:
                dispatch(*in_flight)
            in_flight = copied
            while len(pending) > 4 * threads:
                collect(block=True)
            collect(block=False)
            if time.monotonic() - last_flush > index_every:
                flush_index()
                last_flush = time.monotonic()
        if in_flight is not None:
            dispatch(*in_flight)
        while pending:
            collect(block=True)
        if shard_writer is not None:
            shard_writer.close()
    finally:
        bar.close()
        for future in list(pending):
            future.cancel()
        executor.shutdown(wait=True)
        if shard_writer is not None:
            shard_writer.abandon()
        for assembly in assemblies.values():
            assembly.discard()
        flush_index()
        write_jsonl(root / FAILURES, ({"path": f.path, "reason": f.reason} for f in failures),
                    tmp_dir)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ExtractSummary(root, len(jobs) + len(rejected), extracted, len(done), failures,
                          audio_seconds, time.perf_counter() - start_time)


def extract_folder(checkpoint: str | os.PathLike | FeatureExtractor, source: str | os.PathLike,
                   output: str | os.PathLike, *, layers: str | int | list = "last",
                   device: str | None = None, precision: str = "auto",
                   normalize: bool | None = None, chunk_seconds: float = 30.0,
                   context_seconds: float = 5.0, batch_seconds: float | None = None,
                   max_batch_size: int = 64, **options):
    """Extract features of every audio file of ``source`` into ``output`` (the Python side of
    ``audio-ssl extract``) and return an :class:`ExtractSummary`.

    ``checkpoint`` is a path (any format :func:`audio_ssl.interop.load_model` reads) or a
    :class:`FeatureExtractor` (then the model arguments here are ignored). ``options`` go to
    :func:`run_extraction`: ``fmt``, ``dtype``, ``shards``,
    ``shard_mb``, ``num_workers``, ``progress``, ``fsync``.
    """
    if isinstance(checkpoint, FeatureExtractor):
        extractor = checkpoint
    else:
        extractor = FeatureExtractor.from_checkpoint(
            checkpoint, layers=layers, device=device, precision=precision, normalize=normalize,
            chunk_seconds=chunk_seconds, context_seconds=context_seconds,
            batch_seconds=batch_seconds, max_batch_size=max_batch_size)
    return run_extraction(extractor, source, output, **options)


__all__ = ["ExtractSummary", "Job", "Unit", "Piece", "PieceStream", "plan_units", "output_keys",
           "output_names", "run_extraction", "extract_folder", "DTYPES"]
