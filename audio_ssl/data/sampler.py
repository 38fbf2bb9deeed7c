"""Which items go in each batch, and where each is cropped: buckets by length, a sample budget.

The sampler owns every random choice of the data pipeline (membership, order, crop offsets);
the dataset only loads what a :class:`BatchRequest` names. Each epoch's plan is a pure function
of ``(seed, epoch)``, so any rank can rebuild it, and resuming at a position replays nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler


@dataclass(frozen=True)
class BatchRequest:
    """One batch to load.

    Attributes:
        indices: item indices (into the sampler's ``lengths`` / the dataset's items), B of them.
        starts: crop offset of each item, in target-rate samples.
        num_samples: S, the length every row of the batch has. With ``crop_to_shortest`` every
            item is cropped to it; otherwise it is the longest (capped) item and shorter items
            are zero padded (their start is 0).
        lengths: real samples of each row (== ``num_samples`` unless padded).
        epoch: the epoch this batch belongs to.
        position: index of this batch in this rank's stream (0-based): a trainer that has
            consumed this batch resumes at ``position + 1``.
    """

    indices: tuple[int, ...]
    starts: tuple[int, ...]
    num_samples: int
    lengths: tuple[int, ...]
    epoch: int
    position: int


CROP, PAD, SHORT = 0, 1, 2  # how a bucket's batches are cut (BucketBatchSampler._kinds)

_Plan = tuple[tuple[int, ...], tuple[int, ...], int, tuple[int, ...]]  # one BatchRequest's data


def _check_int(name: str, value: int, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"BucketBatchSampler: {name} must be an integer >= {minimum}, got {value!r}"
        )
    return int(value)


class BucketBatchSampler(Sampler[BatchRequest]):
    """Infinite stream of :class:`BatchRequest` for one rank (no ``__len__``).

    Per epoch ``e`` (a ``numpy.random.Generator`` seeded from ``(seed, e)``; the global RNG is
    never used):

    1. Items with ``min_samples`` or more samples are split into ``num_buckets`` length quantiles
       (fixed for the run). With ``pad_min_samples``, items of ``pad_min_samples`` up to
       ``min_samples`` are split into quantiles of their own, whose batches are always padded
       (whatever ``crop_to_shortest``) and never cropped.
    2. Each bucket is shuffled and cut greedily into batches: an item joins the current batch
       while ``(n + 1) * min(crop, max_crop_samples) <= max_batch_samples``, where ``crop`` is the
       batch's shortest item (``crop_to_shortest``) or its longest (padding); a batch holds at
       least one item.
    3. Crop offsets are drawn uniformly for items longer than the crop.
    4. All batches are shuffled, padded to a multiple of ``world_size`` by repeating from the
       start, and rank ``r`` takes ``batches[r::world_size]``: every rank gets the same number
       of batches per epoch, and different data.

    ``position`` counts the batches this rank has been handed, across epochs; ``set_position``
    (or ``load_state_dict``) makes the next iterator continue from any position, rebuilding
    only the epoch plans (no audio is touched).

    Args:
        lengths: samples of each item at the target rate.
        max_batch_samples: budget of samples per batch (B * S).
        max_crop_samples: longest crop S.
        min_samples: shorter items are never sampled, unless ``pad_min_samples`` keeps them.
        pad_min_samples: items from this many samples up to ``min_samples`` are batched whole,
            padded to the batch's longest (rounded up to ``crop_multiple``); 0: none.
        num_buckets: length quantiles; batches never mix buckets.
        seed: the plan depends on ``seed`` and the epoch only (not on the rank).
        rank, world_size: this process's shard.
        crop_to_shortest: crop a batch to its shortest item (no padding; fairseq), else pad.
        crop_multiple: with ``crop_to_shortest``, round each batch's crop down to a multiple of
            this many samples (crops shorter than one multiple are kept); 0: exact.
        batch_multiple: keep the first multiple of this many items of a batch (at least one
            multiple, or the whole batch when it is smaller); the others are not seen this
            epoch. With ``crop_multiple``, a run meets few batch shapes.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        max_batch_samples: int,
        max_crop_samples: int,
        min_samples: int,
        num_buckets: int,
        pad_min_samples: int = 0,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        crop_to_shortest: bool = True,
        crop_multiple: int = 0,
        batch_multiple: int = 1,
    ) -> None:
        self.max_batch_samples = _check_int("max_batch_samples", max_batch_samples, 1)
        self.max_crop_samples = _check_int("max_crop_samples", max_crop_samples, 1)
        self.min_samples = _check_int("min_samples", min_samples, 0)
        self.pad_min_samples = _check_int("pad_min_samples", pad_min_samples, 0)
        self.num_buckets = _check_int("num_buckets", num_buckets, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"BucketBatchSampler: rank {rank} must be < world_size {world_size}")
        self.crop_to_shortest = bool(crop_to_shortest)
        self.crop_multiple = _check_int("crop_multiple", crop_multiple, 0)
        self.batch_multiple = _check_int("batch_multiple", batch_multiple, 1)

        self.lengths = np.asarray(lengths, dtype=np.int64)  # (N,)
        if self.lengths.ndim != 1:
            raise ValueError(
                f"BucketBatchSampler: lengths must be 1-D, got shape {self.lengths.shape}"
            )
        floor = max(self.min_samples, 1)
        shortest = max(self.pad_min_samples, 1) if 0 < self.pad_min_samples < floor else floor
        self._buckets: list[np.ndarray] = []
        # each bucket's batches: CROP (to the shortest), PAD (to the longest), SHORT (padded to
        # the longest rounded up to crop_multiple: items under min_samples)
        self._kinds: list[int] = []
        for lo, hi, kind in ((floor, None, CROP if self.crop_to_shortest else PAD),
                             (shortest, floor, SHORT)):  # the short ones' buckets last
            keep = self.lengths >= lo if hi is None else (self.lengths >= lo) & (self.lengths < hi)
            eligible = np.flatnonzero(keep)  # (N',)
            order = eligible[np.argsort(self.lengths[eligible], kind="stable")]  # by length
            for bucket in np.array_split(order, min(self.num_buckets, max(order.size, 1))):
                if bucket.size:
                    self._buckets.append(bucket)
                    self._kinds.append(kind)
        if not self._buckets:
            raise ValueError(
                f"BucketBatchSampler: none of the {len(self.lengths)} items has at least "
                f"{shortest} samples"
            )
        self._position = 0
        self._batches_per_epoch: dict[int, int] = {}  # per-rank batch count, by epoch

    # -- plan -----------------------------------------------------------------------------------

    def _rows(self, longest: np.ndarray) -> np.ndarray:
        """The row length S of short items' batches whose longest items are ``longest``:
        rounded up to a multiple of ``crop_multiple``, at most ``max_crop_samples``."""
        q = self.crop_multiple
        if q > 1:
            longest = -(-longest // q) * q
        return np.minimum(longest, self.max_crop_samples)

    def _cut(self, lens: np.ndarray, kind: int) -> np.ndarray:
        """Greedy batch ends over one shuffled bucket: (n_batches,) exclusive end offsets."""
        budget, cap, size = self.max_batch_samples, self.max_crop_samples, lens.size
        if lens.min() >= cap:  # every crop is the cap: fixed batch size, same as the greedy loop
            n = max(1, budget // cap)
            return np.append(np.arange(n, size, n), size)
        if kind == SHORT:  # the rows its batches will have (crop_multiple)
            lens = self._rows(lens)
        # the greedy loop, item by item (a batch's crop depends on the items before): plain
        # comparisons, no min()/max() calls, about twice as fast as with them
        lst, shortest = lens.tolist(), kind == CROP
        ends: list[int] = []
        n, crop = 1, lst[0]
        for i in range(1, size):
            length = lst[i]
            c = (length if length < crop else crop) if shortest else \
                (length if length > crop else crop)
            if (n + 1) * (c if c < cap else cap) > budget:
                ends.append(i)
                n, crop = 1, length
            else:
                n, crop = n + 1, c
        ends.append(size)
        return np.asarray(ends, dtype=np.int64)

    def _groups(self, epoch: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray,
                                            np.ndarray, np.ndarray]:
        """Epoch membership: (rng, items (N',) in batch order, batch begins (NB,), ends (NB,),
        kinds (NB,): CROP, PAD or SHORT)."""
        rng = np.random.default_rng([self.seed, epoch])
        flat, ends, kinds, offset = [], [], [], 0
        for bucket, kind in zip(self._buckets, self._kinds):
            perm = bucket[rng.permutation(bucket.size)]  # (n_b,)
            flat.append(perm)
            cut = self._cut(self.lengths[perm], kind)
            ends.append(cut + offset)
            kinds.append(np.full(cut.size, kind))
            offset += bucket.size
        ends_ = np.concatenate(ends)  # (NB,)
        begins = np.concatenate([[0], ends_[:-1]])  # (NB,)
        return rng, np.concatenate(flat), begins, ends_, np.concatenate(kinds)

    def _count(self, epoch: int) -> int:
        """Batches this rank gets in ``epoch`` (all ranks get the same number)."""
        if epoch not in self._batches_per_epoch:
            num_batches = len(self._groups(epoch)[2])
            self._batches_per_epoch[epoch] = -(-num_batches // self.world_size)
        return self._batches_per_epoch[epoch]

    def _rank_batches(self, epoch: int) -> list[_Plan]:
        """This rank's batches of ``epoch``: (indices, starts, num_samples, lengths) each."""
        rng, items, begins, ends, kinds = self._groups(epoch)
        lens = self.lengths[items]  # (N',)
        size, m = ends - begins, self.batch_multiple  # (NB,)
        kept = np.where(size >= m, size // m * m, size)  # (NB,) a batch's first items it keeps
        dropped = np.arange(lens.size) >= np.repeat(begins + kept, size)  # (N',)
        # the crop over the kept items only: dropped ones cannot be the shortest or longest;
        # cropped batches: the shortest, rounded down to crop_multiple; padded: the longest;
        # short items' batches: the longest rounded up (the rows _cut budgeted)
        shortest = np.minimum.reduceat(np.where(dropped, np.iinfo(np.int64).max, lens), begins)
        q = self.crop_multiple
        crop = np.minimum(shortest, self.max_crop_samples)  # (NB,)
        if q > 1:
            crop = np.where(crop >= q, crop // q * q, crop)
        longest = np.maximum.reduceat(np.where(dropped, 0, lens), begins)  # (NB,)
        num = np.select([kinds == CROP, kinds == PAD],
                        [crop, np.minimum(longest, self.max_crop_samples)],
                        self._rows(longest))  # (NB,)
        item_num = np.repeat(num, ends - begins)  # (N',) crop of each item's batch
        starts = rng.integers(0, np.maximum(lens - item_num, 0) + 1)  # (N',)
        real = np.minimum(lens, item_num)  # (N',)
        order = rng.permutation(num.size)  # (NB,) batch order
        pad = -num.size % self.world_size
        order = np.concatenate([order, order[np.arange(pad) % num.size]])
        mine = order[self.rank :: self.world_size].tolist()
        self._batches_per_epoch[epoch] = len(mine)
        return [
            (tuple(items[b:e].tolist()), tuple(starts[b:e].tolist()), int(num[k]),
             tuple(real[b:e].tolist()))
            for k in mine
            for b, e in ((int(begins[k]), int(begins[k] + kept[k])),)
        ]

    def plan_epoch(self, epoch: int) -> list[_Plan]:
        """This rank's batches of ``epoch`` in order, each (indices, starts, num_samples,
        lengths) as its :class:`BatchRequest` holds them: what a shard stream plans each shard
        with (no audio is touched)."""
        return self._rank_batches(epoch)

    def epoch_size(self, epoch: int) -> int:
        """Batches this rank gets in ``epoch``, without building their crops."""
        return self._count(epoch)

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, index within that epoch's batches of this rank) of a stream position."""
        epoch = 0
        while position >= (n := self._count(epoch)):
            position -= n
            epoch += 1
        return epoch, position

    # -- iteration ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[BatchRequest]:
        epoch, offset = self.locate(self._position)
        while True:
            batches = self._rank_batches(epoch)
            for indices, starts, num, lens in batches[offset:]:
                request = BatchRequest(indices, starts, num, lens, epoch, self._position)
                self._position += 1
                yield request
            epoch, offset = epoch + 1, 0

    # -- state ----------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Batches handed out by this sampler's iterators (the next request's position)."""
        return self._position

    def set_position(self, position: int) -> None:
        """Make the next ``iter(self)`` start at stream position ``position``."""
        self._position = _check_int("position", position, 0)



__all__ = ["BatchRequest", "BucketBatchSampler"]
