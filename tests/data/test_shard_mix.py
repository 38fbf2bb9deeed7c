"""Several shard folders with weights: the hours drawn from each match the weights (within half
a shard, as the plan guarantees), passes and their continuation, exact resume, one source is
the single folder's plan, and misuse ends in one line."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_ssl.config import DataConfig
from audio_ssl.data.shard_mix import ShardMix, parse_sources, read_mix
from audio_ssl.data.shard_stream import ShardPlan, make_shard_dataloader
from audio_ssl.data.shard_writer import write_shards
from audio_ssl.data.shards import ShardCut, ShardIndex, read_index

CFG = DataConfig(max_batch_samples=200_000, max_crop_samples=40_000, min_samples=16_000,
                 num_buckets=2, num_workers=0)


def synthetic(name: str, shards: int, per_shard: int, seed: int) -> ShardIndex:
    """A shard folder's index (no audio): cuts of 0.5-6 s at 16 kHz; shard 0 holds only cuts
    too short to use (a visit of it yields nothing)."""
    rng = np.random.default_rng(seed)
    cuts = []
    for k in range(shards):
        frames = rng.integers(8_000 if k == 0 else 16_000, 16_000 if k == 0 else 96_000,
                              per_shard)
        cuts += [ShardCut(f"{name}-{k}-{j}", k, int(f), 16_000, 1, f"/{name}/{k}/{j}.flac")
                 for j, f in enumerate(frames)]
    return ShardIndex(f"/{name}", shards, "flac", tuple(cuts))


def _source_of(plan: ShardPlan, shard: int) -> int:
    return int(np.searchsorted(plan.offsets, shard, side="right")) - 1


# -- what each epoch draws ----------------------------------------------------------------------


@pytest.mark.parametrize("sizes, weights", [
    ([(4, 10), (30, 20)], (0.7, 0.3)),  # a small source oversampled, a large one undersampled
    ([(3, 5), (12, 30), (7, 8)], (0.2, 0.5, 0.3)),
])
def test_realised_hours_match_the_weights_within_half_a_shard(sizes, weights):
    """Over 40 epochs, the usable samples of the cuts the requests name, summed per source, stay
    within half the source's largest shard of ``epochs * weight * H`` at every epoch's end (the
    plan's guarantee: a visit counts in the epoch its midpoint falls in); an epoch holds about
    ``H``."""
    mix = ShardMix(tuple(synthetic(f"s{i}", n, m, i) for i, (n, m) in enumerate(sizes)),
                   weights)
    plan = ShardPlan(mix, CFG, seed=11)
    usable = np.where(plan.lengths >= CFG.min_samples, plan.lengths, 0)  # (N,)
    cut_source = np.repeat(np.arange(len(weights)), [len(s.cuts) for s in mix.sources])  # (N,)
    total = usable.sum()
    half_shard = [plan.shard_samples[a:b].max() / 2
                  for a, b in zip(plan.offsets[:-1], plan.offsets[1:])]
    drawn = np.zeros(len(weights))
    requests = plan.requests(0)
    request = next(requests)
    for epoch in range(40):
        while request.request.epoch == epoch:
            for i in request.request.indices:
                drawn[cut_source[i]] += usable[i]
            request = next(requests)
        expected = (epoch + 1) * np.asarray(weights) * total
        assert np.all(np.abs(drawn - expected) <= np.asarray(half_shard)), (epoch, drawn, expected)
    fractions = drawn / drawn.sum()
    tolerance = np.asarray(half_shard) / (40 * total) * 2  # both numerator and sum may be off
    assert np.all(np.abs(fractions - weights) <= tolerance)


def test_passes_are_fresh_permutations_and_an_undersampled_source_continues():
    """Source 0 (oversampled) cycles through passes, each a permutation of its shards, a
    different one each pass; source 1 (undersampled) reads part of a pass per epoch and the
    next epoch carries on: concatenated, its visits are whole permutations, none repeated."""
    a, b = synthetic("a", 5, 10, 0), synthetic("b", 40, 10, 1)
    plan = ShardPlan(ShardMix((a, b), (0.8, 0.2)), CFG, seed=3)
    per_source: list[list[tuple[int, int]]] = [[], []]
    epochs_per_source = [set(), set()]
    for epoch in range(12):
        for shard, p in plan.visits(epoch):
            i = _source_of(plan, shard)
            per_source[i].append((shard - int(plan.offsets[i]), p))
            epochs_per_source[i].add(epoch)
    for i, n in ((0, 5), (1, 40)):
        visits = per_source[i]
        whole = len(visits) // n
        assert whole >= 1
        for p in range(whole):
            block = visits[p * n:(p + 1) * n]
            assert sorted(s for s, _ in block) == list(range(n))  # a permutation
            assert {q for _, q in block} == {p}  # planned with its pass number
    passes_a = [tuple(s for s, _ in per_source[0][p * 5:(p + 1) * 5])
                for p in range(len(per_source[0]) // 5)]
    assert len(passes_a) > 12 and len(set(passes_a)) > len(passes_a) // 2  # fresh orders
    assert len(per_source[1]) < 12 * 40 and epochs_per_source[1] == set(range(12))


def test_one_source_of_weight_one_is_the_single_folder_plan():
    """Today's rule, written out: epoch e visits the shards in the order of a generator seeded
    from (seed, e), each planned with its sampler's epoch e; a mix of one is exactly that."""
    index = synthetic("one", 9, 12, 4)
    for streams in (1, 3):
        single = ShardPlan(index, CFG, seed=7, streams=streams)
        mixed = ShardPlan(ShardMix((index,), (1.0,)), CFG, seed=7, streams=streams)
        for epoch in range(4):
            perm = np.random.default_rng([7, epoch]).permutation(9)
            assert single.visits(epoch) == [(int(s), epoch) for s in perm]
        seq = [(r.shard, r.request) for r in itertools.islice(single.requests(0), 120)]
        assert [(r.shard, r.request) for r in itertools.islice(mixed.requests(0), 120)] == seq


@pytest.mark.parametrize("world_size, streams", [(1, 1), (2, 3)])
def test_resumed_mix_plan_continues_the_uninterrupted_sequence(world_size, streams):
    mix = ShardMix((synthetic("a", 3, 8, 0), synthetic("b", 11, 8, 1)), (0.6, 0.4))
    for rank in range(world_size):
        plan = ShardPlan(mix, CFG, seed=5, rank=rank, world_size=world_size, streams=streams)
        per_epoch = plan.per_stream(0) * streams
        straight = [(r.shard, r.request) for r in itertools.islice(plan.requests(0), 4 * per_epoch)]
        for start in (1, 7, per_epoch - 1, per_epoch, per_epoch + 5, 3 * per_epoch + 2):
            fresh = ShardPlan(mix, CFG, seed=5, rank=rank, world_size=world_size,
                              streams=streams)
            got = [(r.shard, r.request)
                   for r in itertools.islice(fresh.requests(start), 4 * per_epoch - start)]
            assert got == straight[start:]


# -- real folders: reading, the command line ------------------------------------------------------


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory) -> tuple[Path, Path]:
    """tiny/'s first 12 files as flac shards of 4, its other 11 as wav shards of 3."""
    import json

    from conftest import DATA

    if not (DATA / "tiny").is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    root = tmp_path_factory.mktemp("mix")
    rows = [json.loads(line) for line in (DATA / "tiny" / "manifest.jsonl").open()]
    for row in rows:  # the copies live elsewhere: absolute audio paths
        row["audio"] = str(DATA / "tiny" / row["audio"])
    folders = []
    for name, part, size, fmt in (("a", rows[:12], 4, "flac"), ("b", rows[12:], 3, "wav")):
        manifest = root / f"{name}.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in part))
        write_shards(manifest, str(root / name), shard_size=size, audio_format=fmt,
                     progress=False)
        folders.append(root / name)
    return folders[0], folders[1]


def test_a_loader_over_two_folders_resumes_in_order(two_folders):
    """flac and wav shards read through one loader of two workers: each batch's cuts are the
    plan's, and a loader started at an odd position yields the same samples."""
    a, b = two_folders
    mix = read_mix([f"{a}=0.7", f"{b}=0.3"])
    assert [s.audio_format for s in mix.sources] == ["flac", "wav"]
    cfg = replace(CFG, num_workers=2)
    loader, plan = make_shard_dataloader(mix, cfg, seed=3)
    straight = list(itertools.islice(iter(loader), 14))
    expected = [tuple(mix.cuts[i].id for i in r.request.indices)
                for r in itertools.islice(plan.requests(0), 14)]
    assert [tuple(x.paths) for x in straight] == expected
    assert {_source_of(plan, r.shard) for r in itertools.islice(plan.requests(0), 14)} == {0, 1}
    resumed, _ = make_shard_dataloader(mix, cfg, seed=3, position=5)
    for x, y in zip(straight[5:], itertools.islice(iter(resumed), 9)):
        assert (x.position, x.paths) == (y.position, y.paths)
        assert torch.equal(x.waveforms, y.waveforms)


def test_specs_and_list_files(two_folders, tmp_path):
    a, b = two_folders
    listed = tmp_path / "mix.yaml"
    listed.write_text(f"- {{source: {a}, weight: 2}}\n- {{source: {b}, weight: 1}}\n")
    assert parse_sources([str(listed)]) == [(str(a), 2.0), (str(b), 1.0)]
    assert read_mix([str(listed)]).weights == pytest.approx((2 / 3, 1 / 3))
    relative = a.parent / "relative.yaml"
    relative.write_text("- source: a\n  weight: 1\n- {source: b, weight: 3}\n")
    assert read_mix([str(relative)]).weights == (0.25, 0.75)
    # no weights: each weighs its hours
    plain = read_mix([str(a), str(b)])
    assert plain.weights == pytest.approx([s.hours / (plain.hours) for s in plain.sources])
    one = read_mix([f"{a}=1"])  # one weighted source: the folder's own plan
    assert [(r.shard, r.request) for r in itertools.islice(ShardPlan(one, CFG, seed=2)
                                                            .requests(), 30)] == \
        [(r.shard, r.request) for r in itertools.islice(ShardPlan(read_index(str(a)), CFG,
                                                                  seed=2).requests(), 30)]


def test_misuse_is_one_line_and_exit_2(two_folders, tmp_path, capsys):
    from conftest import DATA

    from audio_ssl.cli import main

    a, b = two_folders
    bad_list = tmp_path / "bad.yaml"
    bad_list.write_text(f"- {{source: {a}, wieght: 2}}\n")
    out = tmp_path / "out"
    cases = [
        ([f"{a}=0", f"{b}=1"], f"{a}=0: expected a weight > 0"),
        ([f"{a}=-0.5", f"{b}=1"], f"{a}=-0.5: expected a weight > 0"),
        ([f"{a}=lots", f"{b}=1"], f"{a}=lots: expected SOURCE=WEIGHT with a number WEIGHT"),
        ([f"{a}=nan", f"{b}=1"], "with a number WEIGHT > 0"),
        (["=0.5", f"{b}=1"], "=0.5: expected SOURCE=WEIGHT, got no SOURCE"),
        ([f"{a}=0.5", f"{a}/=0.5"], f"{a}/: given twice (also as {a})"),
        ([f"{a}=0.5", str(b)], f"{b}: no weight; give every source a weight"),
        ([f"{DATA / 'tiny'}=0.5", f"{b}=1"],
         f"{DATA / 'tiny'}: a weighted source must be a shard folder"),
        ([f"{tmp_path / 'nowhere'}=1"], "a weighted source must be a shard folder"),
        ([str(bad_list)], "entry 1: expected {source: ..., weight: ...}"),
    ]
    for data, message in cases:
        assert main(["pretrain", *data, "--output", str(out), "--no-progress"]) == 2, data
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (data, err)
        assert not out.exists()


@pytest.mark.slow
def test_pretraining_on_a_mix(two_folders, tmp_path, capsys):
    from audio_ssl.cli import main

    a, b = two_folders
    config = tmp_path / "fast.yaml"
    config.write_text("train: {log_every: 1, checkpoint_every: 2}\n"
                      "data: {num_workers: 0, max_batch_samples: 64000, max_crop_samples: 16000}\n")
    run = tmp_path / "run"
    assert main(["pretrain", f"{a}=0.7", f"{b}=0.3", "--output", str(run), "--max-steps", "2",
                 "--config", str(config), "--no-progress", "--accelerator", "cpu"]) == 0
    assert "pretrained 2 steps on 23 files" in capsys.readouterr().out
