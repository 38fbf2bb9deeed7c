"""Exact resume under DDP from a folder, local shards and shards on S3 (moto on loopback): 2 gloo
processes x 2 loader workers, the whole run killed (SIGKILL to every rank and worker) as an
update starts and halfway through writing a checkpoint, resumed each time; every rank trains on
the uninterrupted run's batches (cut ids, crop offsets, samples) and ends with the same weights,
bit for bit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audio_ssl.data.shard_writer import write_shards

DRIVER = Path(__file__).with_name("ddp_kill_driver.py")
STEPS = 8
CONFIG = """
train: {log_every: 1, checkpoint_every: 2}
data: {num_workers: 2, max_batch_samples: 64000, max_crop_samples: 16000}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(source: str | Path, output: Path, log: Path, *, resume: bool = False,
           **kill: int) -> list[subprocess.Popen]:
    """Both ranks at once, as torchrun starts them (Lightning's own launcher starts rank 1 only
    once rank 0 has imported everything and read the data), in one new process group that
    holds them and their loader workers and nothing else: the group the driver kills."""
    args = [sys.executable, str(DRIVER), "pretrain", str(source), "--output", str(output),
            "--max-steps", str(STEPS), "--config", str(output.parent / "ddp.yaml"),
            "--devices", "2", "--accelerator", "cpu", "--precision", "32", "--no-progress",
            *(["--resume"] if resume else [])]
    env = dict(os.environ, BATCH_LOG=str(log), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               LOCAL_WORLD_SIZE="2", GROUP_RANK="0",
               **{name.upper(): str(step) for name, step in kill.items()})
    ranks: list[subprocess.Popen] = []
    for rank in range(2):
        ranks.append(subprocess.Popen(args, env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, process_group=ranks[0].pid if ranks else 0))
    _STARTED.append(ranks[0].pid)
    return ranks


_STARTED: list[int] = []  # process groups this module started


@pytest.fixture(autouse=True)
def _no_rank_outlives_its_test():
    """Whatever ends the test (a failed assertion, an interrupt), no rank or loader worker it
    started is left running, waiting for a peer."""
    yield
    while _STARTED:
        try:
            os.killpg(_STARTED.pop(), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(ranks: list[subprocess.Popen]) -> tuple[list[int], str]:
    """The ranks' exit codes, and the end of their stderr."""
    errors = []
    for run in ranks:
        try:
            _, err = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(ranks[0].pid, signal.SIGKILL)  # the group this test started
            _, err = run.communicate()
        errors.append(err)
    return [r.returncode for r in ranks], errors[0][-3000:] + errors[1][-1500:]


def _rows(log: Path, rank: int) -> list[dict]:
    path = Path(f"{log}.rank{rank}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=False)
    assert checkpoint["global_step"] == STEPS
    return checkpoint["state_dict"]


@pytest.fixture(params=["folder", "shards", "s3"])
def source(request, tmp_path, data_dir) -> str:
    """The corpus each run reads: tiny/'s folder, its shards on disk, its shards on S3."""
    manifest = data_dir / "tiny" / "manifest.jsonl"
    if request.param == "folder":
        return str(manifest.parent)
    if request.param == "shards":
        target = str(tmp_path / "shards")
    else:
        request.getfixturevalue("s3")  # the server, its endpoint in the ranks' environment
        target = "s3://corpus/tiny"
    write_shards(manifest, target, shard_size=5, progress=False)
    return target


@pytest.mark.slow
def test_ddp_run_killed_twice_resumes_on_the_same_batches_and_weights(tmp_path, source):
    shards = source
    (tmp_path / "ddp.yaml").write_text(CONFIG)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    # the uninterrupted run, and beside it the one killed as rank 0 starts update 5 (the
    # checkpoint after 4 updates on disk, the loader workers a few batches ahead)
    runs = [_start(shards, straight, tmp_path / "straight"),
            _start(shards, killed, tmp_path / "seg0", kill_at_step=5)]
    (codes, err), (killed_codes, killed_err) = map(_wait, runs)
    assert codes == [0, 0], err
    assert killed_codes == [-signal.SIGKILL] * 2, killed_err
    # resumed after 4 updates; killed halfway through writing last.ckpt after 6 (step=0000006
    # written whole just before)
    codes, err = _wait(_start(shards, killed, tmp_path / "seg1", resume=True, kill_in_save=6))
    assert codes == [-signal.SIGKILL] * 2, err
    assert list((killed / "checkpoints").glob(".last.ckpt.*"))  # the write the kill cut short
    assert (killed / "checkpoints" / "step=0000006.ckpt").is_file()
    assert torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)["global_step"] == 4
    # resumed after 4 updates again (last.ckpt), to the end
    codes, err = _wait(_start(shards, killed, tmp_path / "seg2", resume=True))
    assert codes == [0, 0], err

    for rank in range(2):
        expected = {row["step"]: row for row in _rows(tmp_path / "straight", rank)}
        assert sorted(expected) == list(range(STEPS))
        assert len({row["position"] for row in expected.values()}) == STEPS
        segments = [_rows(tmp_path / f"seg{k}", rank) for k in range(3)]
        # the updates each segment started: 0-4 (and 5 on rank 1 perhaps), 4-5 (6 perhaps), 4-7
        assert [row["step"] for row in segments[2]] == list(range(4, STEPS))
        assert set(range(5)) <= {row["step"] for row in segments[0]} <= set(range(6))
        assert {4, 5} <= {row["step"] for row in segments[1]} <= {4, 5, 6}
        differences = [(k, row["step"]) for k, rows in enumerate(segments) for row in rows
                       if row != expected[row["step"]]]
        assert differences == [], f"rank {rank}: batches that differ (segment, step)"
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())
    assert diff == 0.0
