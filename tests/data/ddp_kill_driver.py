"""`audio-ssl pretrain` (this script's arguments) with each rank's training batches recorded, and
the whole run killed at a chosen moment: for tests/data/test_shard_ddp_resume.py.

The test starts one process per rank (torchrun's environment: RANK, WORLD_SIZE, MASTER_PORT,
...) in a process group of their own, which holds the ranks and their loader workers and
nothing else; started plainly, Lightning's launcher runs this file again for rank 1.

Environment:
    BATCH_LOG: each rank appends one JSON line per training step to ``{BATCH_LOG}.rank{r}.jsonl``
        (step, position, cut ids, crop offsets, a SHA-1 of the waveforms), written unbuffered.
    KILL_AT_STEP: SIGKILL the process group when rank 0 starts this step.
    KILL_IN_SAVE: SIGKILL it halfway through writing ``last.ckpt`` after this step (the
        temporary file half written and synced, the previous last.ckpt still in place).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from audio_ssl.io import atomic_path  # noqa: E402
from audio_ssl.tasks.pretrain import AtomicCheckpointIO, PretrainTask  # noqa: E402


def kill_everything() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _env_step(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value is None else int(value)


KILL_AT_STEP, KILL_IN_SAVE = _env_step("KILL_AT_STEP"), _env_step("KILL_IN_SAVE")
_training_step = PretrainTask.training_step
_save_checkpoint = AtomicCheckpointIO.save_checkpoint


def training_step(self, batch, batch_idx):
    step = self.global_step
    if step == KILL_AT_STEP and self.global_rank == 0:
        kill_everything()
    row = {"step": step, "position": batch.position, "ids": list(batch.paths),
           "starts": [int(s) for s in batch.starts],
           "sha1": hashlib.sha1(batch.waveforms.contiguous().numpy().tobytes()).hexdigest()}
    path = f"{os.environ['BATCH_LOG']}.rank{self.global_rank}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)
    return _training_step(self, batch, batch_idx)


def save_checkpoint(self, checkpoint, path, storage_options=None):
    if checkpoint.get("global_step") == KILL_IN_SAVE and Path(path).name == "last.ckpt":
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        with atomic_path(path, sync_dir=False) as tmp, open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            kill_everything()
    return _save_checkpoint(self, checkpoint, path, storage_options)


PretrainTask.training_step = training_step
AtomicCheckpointIO.save_checkpoint = save_checkpoint

if __name__ == "__main__":
    from audio_ssl.cli import main

    sys.exit(main(sys.argv[1:]))
