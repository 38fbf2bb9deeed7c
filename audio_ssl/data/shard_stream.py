"""Stream a shard folder (:mod:`audio_ssl.data.shards`) into training batches.

Every choice is made from the index and ``(seed, epoch)``, never from the audio, so any process
can rebuild it and a resumed run continues at a position without replaying anything:

1. Streams: each rank reads ``streams`` streams (one per loader worker); the ``G = world_size *
   streams`` streams of the job are numbered ``rank * streams + j``.
2. Shard order: in epoch ``e`` the shards are permuted (a generator seeded from
   ``(seed, e)``) and stream ``g`` reads shards ``perm[g::G]`` (``perm[g % n]`` when there are
   fewer shards than streams), each from start to end once. Several folders with weights
   (:class:`~audio_ssl.data.shard_mix.ShardMix`): each is read in passes (a permutation of its
   shards from ``(seed, pass, source)`` each), cut into epochs by its share of the hours, and
   an epoch's visits of all folders are interleaved from ``(seed, e)`` (see :class:`ShardPlan`).
3. Within a shard: the shard's cuts are planned by :class:`BucketBatchSampler` (length buckets,
   a sample budget per batch, crop offsets, batch order), seeded from ``(seed, shard, e)``
   (``e``: the visit's pass, the epoch for a single folder).
4. Equal epochs: every stream is padded to the longest stream's batch count by repeating its
   own first batches, so every rank has the same number of batches per epoch.
5. A rank's batch ``p`` comes from its stream ``p % streams`` (its batch ``p // streams``): the
   order a DataLoader's workers deliver in, round robin.

While a stream reads one shard, a background thread fetches the next (``read_ahead`` shards at
most are held): a shard is read whole, in one request, never the whole corpus. A shard that is
missing or unreadable (after retries with backoff) is named once and its batches come back empty
(``B = 0``, the trainer skips them), so positions stay exact and the loss is never silent.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from audio_ssl.config import DataConfig
from audio_ssl.data import storage
from audio_ssl.data.collate import load_batch
from audio_ssl.data.dataset import Batch, _worker_init
from audio_ssl.data.manifest import Rejected
from audio_ssl.data.sampler import BatchRequest, BucketBatchSampler
from audio_ssl.data.shard_mix import ShardMix
from audio_ssl.data.shards import SHAR_DIR, ShardIndex

log = logging.getLogger("audio_ssl")


@dataclass(frozen=True)
class ShardRequest:
    """One batch of a stream: the shard it reads and what to cut (``request.indices`` index
    the shard index's ``cuts``)."""

    shard: int
    request: BatchRequest


class ShardPlan:
    """The batches of every stream of one rank, from the index and ``(seed, epoch)`` alone.

    Args:
        index: the shard folder's index, or a :class:`~audio_ssl.data.shard_mix.ShardMix` of
            several folders with weights (one folder is a mix of one, weight 1).
        cfg: lengths and budgets of the batches (as for a folder of audio).
        seed: the plan's seed; rank, world_size: this process's place in the job.
        streams: streams per rank (the loader's workers, at least 1).

    Shards are numbered globally (source ``i``'s shard ``k`` is ``offsets[i] + k``). Source
    ``i`` is read in passes, one after another: pass ``p`` is a permutation of its shards from
    ``(seed, p, i)`` (``(seed, p)`` when it is the only source), and each shard of pass ``p`` is
    planned by its sampler's epoch ``p``. Its hours (of usable cuts) along the passes are cut
    into epochs of ``weight * H`` hours each (``H``: the hours of all sources together): a
    visit belongs to the epoch its midpoint falls in. An epoch's visits of all sources are
    interleaved from ``(seed, epoch)``, each source's in its own order. Alone, a source's epoch
    ``e`` is its pass ``e``, as it always was.
    """

    def __init__(self, index: ShardIndex | ShardMix, cfg: DataConfig, *, seed: int,
                 rank: int = 0, world_size: int = 1, streams: int = 1) -> None:
        if not 0 <= rank < world_size or streams < 1:
            raise ValueError(f"ShardPlan: expected 0 <= rank < world_size and streams >= 1, got "
                             f"rank {rank}, world_size {world_size}, streams {streams}")
        self.index, self.cfg, self.seed = index, cfg, int(seed)
        self.rank, self.world_size, self.streams = rank, world_size, streams
        mix = index if isinstance(index, ShardMix) else ShardMix((index,), (1.0,))
        self.sources, self.offsets = mix.sources, mix.offsets  # (I + 1,) offsets
        num_shards = mix.num_shards
        cuts = [c for s in self.sources for c in s.cuts]

        def column(name: str) -> np.ndarray:  # (N,) one field of every cut
            return np.fromiter(map(attrgetter(name), cuts), dtype=np.int64, count=len(cuts))

        frames, rates, sr = column("frames"), column("sample_rate"), cfg.sample_rate
        # (N,) samples at the target rate, as ShardCut.samples_at (resampled_length)
        self.lengths = np.where(rates == sr, frames, -(-frames * sr // rates))
        shard_of = column("shard") + np.repeat(self.offsets[:-1], [len(s.cuts)
                                                                 for s in self.sources])  # (N,)
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(num_shards + 1))
        self.by_shard = [order[bounds[k]:bounds[k + 1]] for k in range(num_shards)]
        usable = np.where(self.lengths >= max(cfg.shortest, 1), self.lengths, 0)  # (N,)
        # (num_shards,) usable samples of each shard: what the weights share out
        self.shard_samples = np.bincount(shard_of, weights=usable,
                                         minlength=num_shards).astype(np.int64)
        self.source_samples = [int(self.shard_samples[a:b].sum())
                               for a, b in zip(self.offsets[:-1], self.offsets[1:])]
        for source, held in zip(self.sources, self.source_samples):
            if held == 0:
                raise ValueError(f"{source.url}: none of its {len(source.cuts)} cuts has at "
                                 f"least {cfg.shortest} samples at {cfg.sample_rate} Hz")
        total = sum(self.source_samples)
        self.share = [w * total for w in mix.weights]  # usable samples of each source an epoch
        self._samplers: dict[int, BucketBatchSampler | None] = {}
        self._per_stream: dict[int, int] = {}  # batches of every stream in an epoch
        self._visits: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()  # a few epochs

    # -- plan -----------------------------------------------------------------------------------

    def _sampler(self, shard: int) -> BucketBatchSampler | None:
        if shard not in self._samplers:
            seed = int(np.random.SeedSequence([self.seed, shard]).generate_state(1)[0])
            lengths = self.lengths[self.by_shard[shard]]
            ok = lengths.size and (lengths >= max(self.cfg.shortest, 1)).any()
            c = self.cfg
            self._samplers[shard] = BucketBatchSampler(
                lengths, max_batch_samples=c.max_batch_samples,
                max_crop_samples=c.max_crop_samples, min_samples=c.min_samples,
                pad_min_samples=c.pad_min_samples, num_buckets=c.num_buckets, seed=seed,
                crop_to_shortest=c.crop_to_shortest,
                crop_multiple=c.crop_multiple, batch_multiple=c.batch_multiple,
            ) if ok else None
        return self._samplers[shard]

    def shard_batches(self, shard: int, epoch: int) -> int:
        """Batches of ``shard`` planned with its sampler's ``epoch`` (a visit's pass)."""
        sampler = self._sampler(shard)
        return 0 if sampler is None else sampler.epoch_size(epoch)

    def pass_order(self, source: int, p: int) -> np.ndarray:
        """(shards of ``source``,) its global shards in pass ``p``'s order."""
        key = [self.seed, p] if len(self.sources) == 1 else [self.seed, p, source]
        n = self.sources[source].num_shards
        return self.offsets[source] + np.random.default_rng(key).permutation(n)

    def visits_before(self, source: int, epoch: int) -> int:
        """Visits of ``source`` in the epochs before ``epoch``: along its passes, those whose
        midpoint (in usable samples) lies before ``epoch * share``."""
        if epoch <= 0:
            return 0
        n, held = self.sources[source].num_shards, self.source_samples[source]
        target = epoch * self.share[source]
        full = int(target // held)  # whole passes
        rest = max(target - full * held, 0.0)
        if rest == 0:
            return full * n
        h = self.shard_samples[self.pass_order(source, full)]  # (n,)
        twice_mid = 2 * np.cumsum(h) - h  # (n,) twice each visit's midpoint within the pass
        return full * n + int(np.searchsorted(twice_mid, 2 * rest, side="left"))

    def visits(self, epoch: int) -> list[tuple[int, int]]:
        """(global shard, pass) of each shard visit of ``epoch``, in its order."""
        if epoch in self._visits:
            return self._visits[epoch]
        parts = []
        for i, source in enumerate(self.sources):
            n = source.num_shards
            v = np.arange(self.visits_before(i, epoch), self.visits_before(i, epoch + 1))
            passes = v // n  # (V_i,)
            shards = np.empty_like(v)
            for p in np.unique(passes).tolist():
                at = passes == p
                shards[at] = self.pass_order(i, p)[v[at] % n]
            parts.append((shards, passes))
        if len(parts) == 1:
            shards, passes = parts[0]
        else:  # each source's visits in its own order, the sources interleaved
            labels = np.repeat(np.arange(len(parts)), [p[0].size for p in parts])  # (V,)
            labels = np.random.default_rng([self.seed, epoch]).permutation(labels)
            shards, passes = np.empty_like(labels), np.empty_like(labels)
            for i, (s, p) in enumerate(parts):
                shards[labels == i], passes[labels == i] = s, p
        out = list(zip(shards.tolist(), passes.tolist()))
        self._visits[epoch] = out
        while len(self._visits) > 4:
            self._visits.popitem(last=False)
        return out

    def shard_order(self, epoch: int) -> np.ndarray:
        """(visits,) the global shards of ``epoch``'s visits, in order."""
        return np.array([s for s, _ in self.visits(epoch)], dtype=np.int64)

    def visits_of(self, stream: int, epoch: int) -> list[tuple[int, int]]:
        """The visits (shard, pass) global stream ``stream`` reads in ``epoch``, in order."""
        visits, total = self.visits(epoch), self.world_size * self.streams
        if len(visits) < total:
            return [visits[stream % len(visits)]]
        return visits[stream::total]

    def shards_of(self, stream: int, epoch: int) -> list[int]:
        """The shards global stream ``stream`` reads in ``epoch``, in order."""
        return [s for s, _ in self.visits_of(stream, epoch)]

    def per_stream(self, epoch: int) -> int:
        """Batches of every stream in ``epoch`` (the longest stream's; the others repeat)."""
        if epoch not in self._per_stream:
            total = self.world_size * self.streams
            self._per_stream[epoch] = max(
                sum(self.shard_batches(s, p) for s, p in self.visits_of(g, epoch))
                for g in range(total))
        return self._per_stream[epoch]

    def _epoch_batches(self, stream: int, epoch: int,
                       first: int = 0) -> Iterator[tuple[int, tuple]]:
        """(shard, (global cut indices, starts, num_samples, lengths)) of a global stream's
        batches in ``epoch``, from its ``first`` on: its visits' batches in turn, repeated from
        the start up to :meth:`per_stream`. A visit is planned only when its batches are
        reached (a resumed stream plans one shard, not the epoch's)."""
        visits = self.visits(epoch)
        own = [v for v in self.visits_of(stream, epoch) if self.shard_batches(*v)]
        if not own:  # a stream whose shards hold nothing borrows the first that does
            k = stream % len(visits)
            own = [next(v for v in visits[k:] + visits[:k] if self.shard_batches(*v))]
        ends = np.cumsum([self.shard_batches(*v) for v in own])  # (visits,) batch ends
        want = self.per_stream(epoch)
        i = first
        while i < want:
            j = i % int(ends[-1])  # the stream's batch j, its padding repeating the first ones
            v = int(np.searchsorted(ends, j, side="right"))
            shard, p = own[v]
            cuts = self.by_shard[shard]
            batches = self._sampler(shard).plan_epoch(p)
            for indices, starts, num, lens in batches[j - (int(ends[v - 1]) if v else 0):]:
                yield shard, (tuple(cuts[list(indices)].tolist()), starts, num, lens)
                i += 1
                if i == want:
                    return

    def stream(self, j: int, start: int = 0) -> Iterator[ShardRequest]:
        """Endless requests of this rank's stream ``j``, from its ``start``-th batch on."""
        if not 0 <= j < self.streams:
            raise ValueError(f"stream {j}: expected 0 <= stream < {self.streams}")
        g = self.rank * self.streams + j
        epoch, k = 0, int(start)
        while k >= (n := self.per_stream(epoch)):
            k -= n
            epoch += 1
        local = int(start)
        while True:
            for shard, (indices, starts, num, lens) in self._epoch_batches(g, epoch, k):
                position = local * self.streams + j
                yield ShardRequest(shard, BatchRequest(indices, starts, num, lens, epoch,
                                                       position))
                local += 1
            epoch, k = epoch + 1, 0

    def requests(self, start: int = 0) -> Iterator[ShardRequest]:
        """This rank's requests from position ``start`` on, in the order its loader yields them."""
        s = self.streams
        streams = {j: self.stream(j, first_of(start, j, s)) for j in range(s)}
        p = start
        while True:
            yield next(streams[p % s])
            p += 1


def first_of(start: int, j: int, streams: int) -> int:
    """The first batch of stream ``j`` at or after rank position ``start``."""
    return max(0, (start - j + streams - 1) // streams)


# ---------------------------------------------------------------------------------------------
# Reading shards


class ShardUnreadable(RuntimeError):
    """A shard could not be read: missing, or not a tar of audio."""


def fetch_shard(url: str, audio_format: str) -> dict[str, memoryview]:
    """{cut id: the audio member's bytes} of the recording tar at ``url``: the whole object read
    in one request (retried with backoff on transient errors), its members views into it, not
    copies. A member that runs past the end of the object makes the whole shard unreadable
    (tarfile checks that each member's data is there before it reads the next header), never a
    short clip."""
    suffix = f".{audio_format}"
    try:
        data = storage.read_bytes(url)
        view, members = memoryview(data), {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.isfile() and info.name.endswith(suffix):
                    members[info.name[: -len(suffix)]] = view[
                        info.offset_data: info.offset_data + info.size]
        return members
    except FileNotFoundError:
        raise ShardUnreadable("missing: no such file") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardUnreadable(f"unreadable: {type(e).__name__}: {e}") from None


class ShardReader:
    """Shards of one stream, fetched by a background thread up to ``read_ahead`` shards ahead
    of the one being read; at most ``read_ahead + 1`` are held."""

    def __init__(self, index: ShardIndex | ShardMix, *, read_ahead: int = 1,
                 fetch: Callable[[str, str], dict[str, memoryview]] = fetch_shard) -> None:
        self.index, self.read_ahead, self.fetch = index, max(0, int(read_ahead)), fetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-read-ahead")
        self._held: OrderedDict[int, Future] = OrderedDict()

    def _submit(self, shard: int) -> None:
        if shard not in self._held:
            url = self.index.shard_url(shard)
            self._held[shard] = self._pool.submit(self.fetch, url, self.index.shard_format(shard))

    def get(self, shard: int, upcoming: list[int]) -> dict[str, memoryview]:
        """The members of ``shard``, and the next ``upcoming`` shards set fetching; raises
        :class:`ShardUnreadable`."""
        self._submit(shard)
        keep = [shard, *upcoming[: self.read_ahead]]
        for s in list(self._held):
            if s not in keep:
                self._held.pop(s).cancel()
        for s in keep[1:]:
            self._submit(s)
        return self._held[shard].result()


class ShardStreamDataset(IterableDataset):
    """This rank's batches, streamed from a shard folder (use with ``batch_size=None``).

    In a DataLoader with ``plan.streams`` workers, worker ``w`` reads stream
    ``(start + w) % streams``, so the loader's round robin yields positions ``start, start + 1,
    ...`` in order; without workers the main process reads all streams in turn.

    Args:
        plan: the rank's plan.
        sample_rate, normalize: as for a folder of audio.
        start: the rank position of the first batch.
        read_ahead: shards fetched ahead of the one being read, per stream.
        fetch: reads one shard (tests swap it).
    """

    def __init__(self, plan: ShardPlan, *, sample_rate: int, normalize: bool, start: int = 0,
                 read_ahead: int = 1,
                 fetch: Callable[[str, str], dict[str, memoryview]] = fetch_shard) -> None:
        self.plan, self.sample_rate, self.normalize = plan, int(sample_rate), bool(normalize)
        self.start, self.read_ahead, self.fetch = int(start), read_ahead, fetch

    def __iter__(self) -> Iterator[Batch]:
        s, info = self.plan.streams, get_worker_info()
        if info is None:
            streams = [(self.start + i) % s for i in range(s)]
        elif info.num_workers != s:
            raise ValueError(f"a shard plan of {s} streams read by {info.num_workers} workers")
        else:
            streams = [(self.start + info.id) % s]
        its = [self._stream(j) for j in streams]
        while True:
            for it in its:
                yield next(it)

    def _stream(self, j: int) -> Iterator[Batch]:
        reader = ShardReader(self.plan.index, read_ahead=self.read_ahead, fetch=self.fetch)
        failed: dict[int, str] = {}  # shard -> why, reported with its first batch only
        pending: deque[ShardRequest] = deque()
        source = self.plan.stream(j, first_of(self.start, j, self.plan.streams))
        while True:
            if not pending:
                pending.append(next(source))
            current = pending.popleft()
            upcoming = self._upcoming(current, pending, source)
            yield self._load(reader, current, upcoming, failed)

    def _upcoming(self, current: ShardRequest, pending: deque,
                  source: Iterator[ShardRequest]) -> list[int]:
        """The next ``read_ahead`` shards after the current one (requests buffered up to them;
        no further than the end of the next epoch: a stream of one shard has no next)."""
        found: list[int] = []
        last = current.shard
        for r in pending:
            if r.shard != last:
                found.append(r.shard)
                last = r.shard
        while len(found) < self.read_ahead:
            if pending and pending[-1].request.epoch > current.request.epoch + 1:
                break
            r = next(source)
            pending.append(r)
            if r.shard != last:
                found.append(r.shard)
                last = r.shard
        return found[: self.read_ahead]

    def _load(self, reader: ShardReader, req: ShardRequest, upcoming: list[int],
              failed: dict[int, str]) -> Batch:
        r, index = req.request, self.plan.index
        url = index.shard_url(req.shard)
        members: dict[str, memoryview] | None = None
        shard_failures = []
        if req.shard not in failed:
            try:
                members = reader.get(req.shard, upcoming)
            except ShardUnreadable as e:
                failed[req.shard] = str(e)
                shard_failures.append(Rejected(url, str(e)))
                log.warning("shard %s: %s; its batches are skipped", url, e)
        if members is None:
            return Batch(waveforms=torch.zeros(0, r.num_samples),  # (0, S)
                         lengths=torch.zeros(0, dtype=torch.int64), paths=[],
                         position=r.position, shard_failures=shard_failures)
        ids = [index.cuts[i].id for i in r.indices]
        asked = [k for k, cid in enumerate(ids) if cid in members]
        decoded = load_batch([f"{url}#{ids[k]}" for k in asked], sample_rate=self.sample_rate,
                             normalize=self.normalize, width=r.num_samples,
                             spans=[(r.starts[k], r.lengths[k]) for k in asked],
                             data=[members[ids[k]] for k in asked])  # (B, S), (B,)
        reasons = {k: "not in its shard" for k, cid in enumerate(ids) if cid not in members}
        reasons.update((asked[j], reason) for j, reason in decoded.failures)
        return Batch(
            waveforms=decoded.waveforms, lengths=decoded.lengths,
            paths=[ids[asked[j]] for j in decoded.kept],
            starts=[r.starts[asked[j]] for j in decoded.kept],
            failures=[Rejected(f"{url}#{ids[k]}", reasons[k]) for k in sorted(reasons)],
            position=r.position,
            padded=bool((decoded.lengths < decoded.waveforms.shape[1]).any()),
        )


def make_shard_dataloader(index: ShardIndex | ShardMix, cfg: DataConfig, *, seed: int, rank: int = 0,
                          world_size: int = 1, position: int = 0,
                          read_ahead: int = 1) -> tuple[DataLoader, ShardPlan]:
    """Endless DataLoader of :class:`Batch` for one rank from a shard folder (or a mix of
    several), and its plan
    (``cfg.num_workers`` workers, one stream each; at least one stream). ``position``: as
    :func:`~audio_ssl.data.dataset.make_dataloader`."""
    workers = int(cfg.num_workers)
    plan = ShardPlan(index, cfg, seed=seed, rank=rank, world_size=world_size,
                     streams=max(1, workers))
    dataset = ShardStreamDataset(plan, sample_rate=cfg.sample_rate, normalize=cfg.normalize,
                                 start=position, read_ahead=read_ahead)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                        worker_init_fn=_worker_init if workers > 0 else None,
                        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    return loader, plan


def missing_shards(index: ShardIndex | ShardMix) -> list[str]:
    """The recording tars the index names that its folder does not hold (one listing per
    folder)."""
    gone = []
    for source in index.sources if isinstance(index, ShardMix) else (index,):
        present = storage.list_names(storage.join(source.url, SHAR_DIR))
        gone += [source.shard_url(k) for k in range(source.num_shards)
                 if os.path.basename(source.shard_url(k)) not in present]
    return gone


__all__ = ["ShardRequest", "ShardPlan", "ShardUnreadable", "fetch_shard", "ShardReader",
           "ShardStreamDataset", "make_shard_dataloader", "missing_shards", "first_of"]
