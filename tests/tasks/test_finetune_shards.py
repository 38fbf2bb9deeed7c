"""Fine-tuning from shard folders (local and S3): the same labelled utterances as the manifest
they were made of, a validation pass that reads each cut once, and a run that resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_ssl.cli import main
from audio_ssl.data import load_audio
from audio_ssl.data.labelled import read_labelled
from audio_ssl.data.labelled_shards import ShardLabelledDataset, read_labelled_shards
from audio_ssl.data.shard_writer import write_shards
from audio_ssl.tasks.finetune import finetune
from tests.conftest import DATA, require_shared
from tests.tasks.test_finetune import FAST, _pretrained


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """tiny/ (23 transcribed files) in shards of 5, from its manifest."""
    data = require_shared(DATA)
    out = tmp_path_factory.mktemp("ft-shards") / "tiny"
    write_shards(data / "tiny" / "manifest.jsonl", str(out), shard_size=5, progress=False)
    return out


def test_the_shards_hold_the_manifests_utterances(shards, data_dir):
    """Read two ways: the shard folder's cuts and the manifest it was made of."""
    manifest = data_dir / "tiny" / "manifest.jsonl"
    items, rejected, index = read_labelled_shards(str(shards), min_samples=400)
    direct, direct_rejected = read_labelled(manifest, min_samples=400)
    source = {c.id: c.path for c in index.cuts}
    got = {source[it.id]: (it.text, it.samples) for it in items}
    assert got == {it.path: (it.text, it.samples) for it in direct}
    assert len(rejected) == len(direct_rejected)
    assert all(it.path == f"{index.shard_url(c.shard)}#{c.id}"
               for it, c in zip(items, (c for c in index.cuts if c.id in {i.id for i in items})))


def test_validation_reads_every_cut_once_as_the_file_decodes(shards, data_dir):
    items, _, index = read_labelled_shards(str(shards))
    targets = [[1] * 3 for _ in items]
    data = ShardLabelledDataset(index, items, targets, sample_rate=16_000, normalize=False)
    source = {c.id: c.path for c in index.cuts}
    for world in (1, 2):
        seen = []
        for rank in range(world):
            batches = list(data.valid_loader(max_batch_samples=200_000, rank=rank,
                                             world_size=world))
            assert len(batches) == len(list(data.valid_loader(
                max_batch_samples=200_000, rank=0, world_size=world)))  # the same count
            for batch in batches:
                assert not batch.failures
                for row, i in enumerate(batch.indices):
                    seen.append(i)
                    n = int(batch.lengths[row])
                    expected = load_audio(source[items[i].id]).numpy()  # the original file
                    np.testing.assert_array_equal(batch.waveforms[row, :n].numpy(), expected)
                    assert not batch.waveforms[row, n:].any()
        assert sorted(seen) == list(range(len(items)))


def test_training_batches_are_whole_utterances_with_their_targets(shards):
    items, _, index = read_labelled_shards(str(shards))
    targets = [[1 + k % 5] * (1 + k % 4) for k in range(len(items))]
    data = ShardLabelledDataset(index, items, targets, sample_rate=16_000, normalize=False)
    loader = data.train_loader(max_batch_samples=300_000, num_buckets=2, seed=1, rank=0,
                               world_size=1, position=0, num_workers=0)
    seen = set()
    for _, batch in zip(range(12), loader):
        for row, i in enumerate(batch.indices):
            seen.add(i)
            assert int(batch.lengths[row]) == items[i].samples  # never cropped
            n = int(batch.target_lengths[row])
            assert batch.targets[row, :n].tolist() == targets[i]
    assert seen == set(range(len(items)))
    data.exclude([0, 1, 2])  # left out from the next batch on
    for _, batch in zip(range(12), data.train_loader(
            max_batch_samples=300_000, num_buckets=2, seed=1, rank=0, world_size=1,
            position=0, num_workers=0)):
        assert not {0, 1, 2} & set(batch.indices)


def _metrics(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "train/loss" in r}


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_finetuning_from_shards_resumes_exactly(shards, tmp_path, monkeypatch):
    """A run that dies after its checkpoint of update 4 (two loader workers, validation every
    2 updates, speed perturbation) and is resumed trains updates 4 and 5 on the same batches at
    the same speeds, to the same weights."""
    from audio_ssl.tasks import finetune as finetune_module

    pretrained = _pretrained(tmp_path)
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(FAST.replace("num_workers: 0", "num_workers: 2, speed_factors: [0.9, 1.1]"))
    common = dict(preset="tiny", config_yaml=cfg, progress=False,
                  overrides={"train": {"max_steps": 6}})
    seen: dict[str, list] = {"straight": [], "split": []}
    crash = {"at": None}
    step = finetune_module.FinetuneTask.training_step

    def record(self, batch, batch_idx):
        if self.global_step == crash["at"]:
            raise _Crash
        seen[crash["run"]].append((self.global_step, batch.position, list(batch.indices),
                                   self.speeds(batch, self.global_step).tolist()))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(finetune_module.FinetuneTask, "training_step", record)
    straight, split = tmp_path / "straight", tmp_path / "split"
    crash.update(run="straight")
    assert finetune(pretrained, shards, shards, straight, **common).steps == 6
    crash.update(run="split", at=4)
    with pytest.raises(_Crash):
        finetune(pretrained, shards, shards, split, **common)
    crash.update(at=None)
    finetune(pretrained, shards, shards, split, resume=True, **common)
    assert [r[0] for r in seen["split"]] == [0, 1, 2, 3, 4, 5]  # resumed after update 4
    assert seen["split"] == seen["straight"]  # the same (step, position, utterances, speeds)
    assert {f for r in seen["straight"] for f in r[3]} == {0.9, 1.1}
    a, b = _metrics(straight), _metrics(split)
    assert sorted(a) == sorted(b) == list(range(6))
    assert [b[s]["train/loss"] for s in range(6)] == [a[s]["train/loss"] for s in range(6)]
    x = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    y = torch.load(split / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert x["global_step"] == y["global_step"] == 6
    assert max(float((x["state_dict"][k].float() - y["state_dict"][k].float()).abs().max())
               for k in x["state_dict"]) == 0.0


@pytest.mark.slow
def test_finetuning_from_shards_on_s3(s3, data_dir, tmp_path, capsys):
    url = "s3://corpus/tiny-labelled"
    assert main(["shard", str(data_dir / "tiny" / "manifest.jsonl"), url, "--shard-size", "5",
                 "--no-progress"]) == 0
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(FAST)
    run = tmp_path / "run"
    assert main(["finetune", str(_pretrained(tmp_path)), "--train", url, "--valid", url,
                 "-o", str(run), "--max-steps", "2", "--config", str(cfg), "--no-progress"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    assert main(["finetune", str(_pretrained(tmp_path)), "--train", url, "--valid", url,
                 "--train-split", "train", "-o", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("audio-ssl: error: --train-split 'train': a shard folder")
    assert "Traceback" not in "".join(err)
