"""The objective under DDP: 2 CPU processes (gloo) give the loss and gradients of one process
over the same data, because every term is normalised by global counts."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from audio_ssl.models import Wav2Vec2ForPretraining
from audio_ssl.models.masking import compute_span_mask, sample_negatives
from tests.conftest import small_model_config


def _setup(seed=0):
    torch.manual_seed(seed)
    model = Wav2Vec2ForPretraining(small_model_config()).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(4, 12_000, generator=g)
    frames = model.backbone.frame_lengths(torch.tensor([12_000] * 4))
    mask = compute_span_mask(frames, int(frames[0]), model.cfg.mask, g)
    negatives = sample_negatives(mask, 20, g)
    return model, x, mask, negatives


def _run(model, x, mask, negatives):
    model.zero_grad()
    out = model(x, mask=mask, negatives=negatives)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model, x, mask, (indices, valid) = _setup()
    rows = slice(2 * rank, 2 * rank + 2)
    offset = int(mask[: 2 * rank].sum())  # masked frames that belong to rank 0
    count = int(mask[rows].sum())
    local = (indices[offset: offset + count] - offset, valid[offset: offset + count])
    out, grads = _run(model, x[rows], mask[rows], local)
    for g in grads.values():  # what DDP does: average gradients over ranks
        dist.all_reduce(g)
        g /= 2
    if rank == 0:
        torch.save({"total": out.total, "contrastive": out.contrastive, "diversity": out.diversity,
                    "accuracy": out.accuracy, "code_perplexity": out.code_perplexity,
                    "grads": grads}, path)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=2, join=True)
    ddp = torch.load(path)
    model, x, mask, negatives = _setup()
    out, grads = _run(model, x, mask, negatives)
    for name in ("total", "contrastive", "diversity", "accuracy", "code_perplexity"):
        torch.testing.assert_close(ddp[name], getattr(out, name), atol=1e-5, rtol=1e-5)
    assert grads.keys() == ddp["grads"].keys()
    for name, g in grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
