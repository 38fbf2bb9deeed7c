"""BucketBatchSampler: budget, buckets, crops, determinism, sharding, resume."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from audio_ssl.data import BatchRequest, BucketBatchSampler


def _lengths(n: int = 200, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(4_000, 120_000, size=n).tolist()


def _sampler(lengths, **kw) -> BucketBatchSampler:
    args = dict(max_batch_samples=200_000, max_crop_samples=50_000, min_samples=8_000,
                num_buckets=5, seed=3)
    args.update(kw)
    return BucketBatchSampler(lengths, **args)


def _take(sampler, n: int) -> list[BatchRequest]:
    return list(itertools.islice(iter(sampler), n))


def _epoch(sampler, epoch: int) -> list[BatchRequest]:
    """This rank's batches of ``epoch`` (iterating from position 0)."""
    sampler.set_position(0)
    out = []
    for r in iter(sampler):
        if r.epoch > epoch:
            return out
        if r.epoch == epoch:
            out.append(r)


def test_deterministic_and_seeded_locally():
    lengths = _lengths()
    np.random.seed(0)
    a = _take(_sampler(lengths), 60)
    np.random.seed(123)  # the global RNG plays no part
    state = np.random.get_state()[1].copy()
    b = _take(_sampler(lengths), 60)
    assert a == b
    assert np.array_equal(np.random.get_state()[1], state)  # and is not consumed
    assert _take(_sampler(lengths, seed=4), 60) != a
    assert [r.position for r in a] == list(range(60))
    assert not hasattr(BucketBatchSampler, "__len__")


@pytest.mark.parametrize("crop_to_shortest", [True, False])
def test_budget_crops_and_buckets(crop_to_shortest):
    lengths = _lengths()
    s = _sampler(lengths, crop_to_shortest=crop_to_shortest)
    eligible = sorted((n, i) for i, n in enumerate(lengths) if n >= 8_000)
    bucket_of = {i: b for b, chunk in enumerate(np.array_split([i for _, i in eligible], 5))
                 for i in chunk}
    for epoch in (0, 1):
        batches = _epoch(s, epoch)
        seen = Counter(i for r in batches for i in r.indices)
        assert set(seen) == set(bucket_of) and set(seen.values()) == {1}  # each item once
        for r in batches:
            lens = [lengths[i] for i in r.indices]
            assert len({bucket_of[i] for i in r.indices}) == 1  # one bucket per batch
            crop = min(lens) if crop_to_shortest else max(lens)
            assert r.num_samples == min(crop, 50_000)
            assert len(r.indices) == 1 or len(r.indices) * r.num_samples <= 200_000
            assert r.lengths == tuple(min(n, r.num_samples) for n in lens)
            for n, start in zip(lens, r.starts):
                assert 0 <= start and start + min(n, r.num_samples) <= n
                if n <= r.num_samples:
                    assert start == 0
            assert r.epoch == epoch
    # crops move from epoch to epoch
    assert {r.starts for r in _epoch(s, 0)} != {r.starts for r in _epoch(s, 1)}


def test_batch_size_is_largest_that_fits():
    # every item longer than the cap: batches are exactly budget // cap (the last one fewer)
    s = _sampler([100_000] * 50, max_batch_samples=230_000, max_crop_samples=50_000, num_buckets=3)
    sizes = Counter(len(r.indices) for r in _epoch(s, 0))
    assert max(sizes) == 4 and sum(k * v for k, v in sizes.items()) == 50
    # an item longer than the budget still forms a batch of one
    s = _sampler([300_000, 300_000], max_batch_samples=100_000, max_crop_samples=250_000,
                 num_buckets=1)
    assert [len(r.indices) for r in _epoch(s, 0)] == [1, 1]


def test_short_items_are_never_sampled():
    lengths = [1_000, 50_000, 7_999, 60_000, 8_000]
    s = _sampler(lengths, num_buckets=10)
    assert {i for r in _take(s, 20) for i in r.indices} == {1, 3, 4}
    with pytest.raises(ValueError, match="at least 8000 samples"):
        _sampler([10, 20])


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_sharding(world_size):
    lengths = _lengths(101)
    samplers = [_sampler(lengths, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in (0, 1):
        per_rank = [_epoch(s, epoch) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1  # same count on every rank
        all_batches = [r.indices for b in per_rank for r in b]
        counts = Counter(all_batches)
        repeats = sum(c - 1 for c in counts.values())
        assert repeats < world_size  # only the padding repeats a batch
        # ranks see different data, and together they cover every eligible item
        first = [set(i for r in b for i in r.indices) for b in per_rank]
        assert all(first[0] != f for f in first[1:])
        assert set().union(*first) == {i for i, n in enumerate(lengths) if n >= 8_000}
    # rank r's plan is every world_size-th batch of the one-process plan, padded from its start
    single = [b.indices for b in _epoch(_sampler(lengths), 0)]
    padded = single + single[: -len(single) % world_size]
    for r, s in enumerate(samplers):
        assert [b.indices for b in _epoch(s, 0)] == padded[r::world_size]


def test_resume_equals_uninterrupted():
    lengths = _lengths(60)
    ref = _take(_sampler(lengths, world_size=2, rank=1), 200)  # several epochs
    assert len({r.epoch for r in ref}) > 3
    for n in (0, 1, 17, 33, 150):
        s = _sampler(lengths, world_size=2, rank=1)
        s.set_position(n)
        assert _take(s, 30) == ref[n : n + 30]
    # a fresh iterator continues where the last one stopped
    s = _sampler(lengths, world_size=2, rank=1)
    it = iter(s)
    for _ in range(41):
        next(it)
    assert s.position == 41 and _take(s, 5) == ref[41:46]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="rank 2 must be < world_size 2"):
        _sampler([10_000], rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_batch_samples"):
        _sampler([10_000], max_batch_samples=0)


def test_padding_repeats_from_the_start():
    kw = dict(max_batch_samples=50_000, max_crop_samples=50_000, num_buckets=1)
    plan = [r.indices for r in _epoch(_sampler([60_000] * 3, **kw), 0)]  # 3 batches of one
    r0 = [r.indices for r in _epoch(_sampler([60_000] * 3, rank=0, world_size=2, **kw), 0)]
    r1 = [r.indices for r in _epoch(_sampler([60_000] * 3, rank=1, world_size=2, **kw), 0)]
    assert r0 == [plan[0], plan[2]] and r1 == [plan[1], plan[0]]
    # more ranks than batches: every rank still gets one
    for rank in range(3):
        assert len(_epoch(_sampler([60_000], rank=rank, world_size=3, **kw), 0)) == 1


def test_crop_and_batch_multiples_give_few_shapes():
    """crop_multiple rounds crops down, batch_multiple trims batches: few (B, S) shapes, each
    crop still within every item it cuts, and no item twice in an epoch."""
    lengths = _lengths(600)
    plain = _sampler(lengths)
    s = _sampler(lengths, crop_multiple=3_200, batch_multiple=4)
    for epoch in (0, 1):
        batches = _epoch(s, epoch)
        assert len(batches) == len(_epoch(plain, epoch))  # the same batches, trimmed
        seen = Counter(i for r in batches for i in r.indices)
        assert set(seen.values()) == {1}
        for r in batches:
            lens = [lengths[i] for i in r.indices]
            assert r.num_samples % 3_200 == 0 and r.num_samples <= min(min(lens), 50_000)
            assert len(r.indices) % 4 == 0 or len(r.indices) < 4
            assert len(r.indices) == 1 or len(r.indices) * r.num_samples <= 200_000
            assert r.lengths == tuple(min(n, r.num_samples) for n in lens)
    shapes = {(len(r.indices), r.num_samples) for e in (0, 1) for r in _epoch(s, e)}
    exact = {(len(r.indices), r.num_samples) for e in (0, 1) for r in _epoch(plain, e)}
    assert len(shapes) * 3 < len(exact)


# -- short items kept whole (pad_min_samples) ------------------------------------------------------


@pytest.mark.parametrize("crop_multiple, world_size", [(0, 1), (3_200, 1), (3_200, 2)])
def test_short_items_are_batched_whole_padded_and_apart(crop_multiple, world_size):
    """Checked item by item against the rule, not against the implementation's own arrays."""
    rng = np.random.default_rng(4)
    lengths = rng.integers(500, 60_000, size=300).tolist()
    kw = dict(min_samples=8_000, pad_min_samples=1_600, crop_multiple=crop_multiple,
              max_batch_samples=64_000, max_crop_samples=32_000, world_size=world_size)
    short = {i for i, n in enumerate(lengths) if 1_600 <= n < 8_000}
    long = {i for i, n in enumerate(lengths) if n >= 8_000}
    assert len(short) > 30 and len(long) > 100 and any(n < 1_600 for n in lengths)
    for epoch in (0, 1):
        seen = Counter()
        for rank in range(world_size):
            for r in _epoch(_sampler(lengths, rank=rank, **kw), epoch):
                members = set(r.indices)
                assert members <= short or members <= long  # never mixed
                if members <= long:  # cropped to the shortest, as without pad_min_samples
                    assert all(n == r.num_samples for n in r.lengths)
                    continue
                seen.update(r.indices)
                assert r.starts == (0,) * len(r.indices)  # whole, never cropped
                assert r.lengths == tuple(lengths[i] for i in r.indices)
                assert r.num_samples >= max(r.lengths)
                if crop_multiple:
                    assert r.num_samples % crop_multiple == 0
                    assert r.num_samples - max(r.lengths) < crop_multiple
                else:
                    assert r.num_samples == max(r.lengths)
                assert len(r.indices) == 1 or len(r.indices) * r.num_samples <= 64_000
        assert set(seen) == short  # every short item, each once (twice where a rank repeats)
        assert all(c <= 2 for c in seen.values())


def test_long_batches_are_the_same_with_or_without_short_items():
    lengths = _lengths(300, seed=5) + [3_000, 5_000, 7_999] * 20
    plain = _sampler(lengths)
    padded = _sampler(lengths, pad_min_samples=2_000)
    for epoch in (0, 1):
        a = sorted(r.indices for r in _epoch(plain, epoch))
        b = sorted(r.indices for r in _epoch(padded, epoch)
                   if min(lengths[i] for i in r.indices) >= 8_000)
        assert a == b  # the same batches of long items; their crops and order may differ


def test_items_under_pad_min_samples_are_never_sampled():
    lengths = [1_000, 1_599, 1_600, 5_000, 20_000]
    got = {i for r in _take(_sampler(lengths, pad_min_samples=1_600), 20) for i in r.indices}
    assert got == {2, 3, 4}
    with pytest.raises(ValueError, match="has at least 1600 samples"):
        _sampler([1_000, 1_500], pad_min_samples=1_600)
