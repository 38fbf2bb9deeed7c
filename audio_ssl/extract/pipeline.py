"""``audio-ssl extract``: every file of a collection to features on disk, fast and safely.

The plan is made in the main process from the files' headers (no audio is read): files short
enough to run whole are sorted by length and cut into batches of at most ``batch_seconds`` of
padded audio; each long file is a group of its own (its chunks, :mod:`.chunking`); worker
processes decode the groups into padded batches (:mod:`.plan`). The main process runs the model
and gives the outputs to writer threads, which write every file atomically (:mod:`.runner`,
:mod:`.writers`). A long file's chunks are stitched into memory-mapped temporary arrays, so
memory stays bounded whatever its length.

This module checks the options, takes the folder's lock (:mod:`.output_folder`) and sums up.

Rerunning into the same folder skips what is complete: an output file (its final name exists
only after the rename), or an input listed in a final shard's entry list. ``OUTPUT/extract.json``
records the settings; a rerun with other layers, format, dtype, normalisation or checkpoint is
refused. ``OUTPUT/index.jsonl`` lists every output (rewritten atomically every minute and at the
end; a rerun adds outputs a killed run wrote after its last index); ``OUTPUT/failures.jsonl``
lists this run's failed inputs with the reason.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from audio_ssl.data import Rejected
from audio_ssl.extract.extractor import FeatureExtractor
from audio_ssl.extract.output_folder import FolderLock
from audio_ssl.extract.runner import DTYPES, Extraction
from audio_ssl.extract.writers import FAILURES, FORMATS, INDEX


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
        timings: where the main thread's time went, in seconds (``setup``: the scan and what
            earlier runs finished; ``wait_data``: waiting for decoded batches; ``model``: the
            forward (on CUDA: launching it); ``wait_device``: waiting for its outputs on the
            host; ``dispatch`` and ``wait_writers``: handing outputs to the writers and waiting
            for them; ``index``: index rewrites). Their sum is close to ``seconds``.
    """

    output: Path
    files: int
    extracted: int
    skipped: int
    failures: list[Rejected]
    audio_seconds: float
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

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
    lock = FolderLock(root)
    try:
        run = Extraction(extractor, Path(source), root, fmt=fmt, dtype=dtype, shard_mb=shard_mb,
                         fsync=fsync, index_every=index_every, progress=progress)
        setup = time.perf_counter() - start_time
        run.run(num_workers, write_threads, progress)
    finally:
        lock.release()
    timings = {"setup": setup, **run.timings}
    return ExtractSummary(root, len(run.files) + len(run.rejected), run.extracted,
                          len(run.done), run.failures, run.audio_seconds,
                          time.perf_counter() - start_time,
                          {name: round(t, 3) for name, t in timings.items()})


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


__all__ = ["ExtractSummary", "run_extraction", "extract_folder", "DTYPES"]
