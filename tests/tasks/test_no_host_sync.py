"""The pretraining step (forward, loss, backward) of a step that writes no record asks the device
for nothing: no op whose output size or value the host must read back, which on a GPU would
stall the step until the device caught up.

Run on the CPU under a dispatch mode that records the ops that synchronise on CUDA, so it needs
no GPU. Logged steps may read values back (metrics); the step tested here is not logged.
"""

from __future__ import annotations

import traceback
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from audio_ssl import config
from audio_ssl.data.dataset import Batch
from audio_ssl.tasks.pretrain import PretrainTask

aten = torch.ops.aten

# ops that make the host wait on CUDA: a value read back, or an output size that depends on values
ALWAYS_SYNC = {
    aten._local_scalar_dense.default,  # .item(), float(t), int(t), bool(t) of one element
    aten.is_nonzero.default,  # `if tensor:`
    aten.equal.default,
    aten.nonzero.default,  # nonzero_static is fine: its size is given
    aten.argwhere.default,
    aten.masked_select.default,
    aten.bincount.default,  # its size is max(input) + 1, read back
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.lift_fresh.default,  # torch.tensor(python data): a blocking copy to the device
}
BOOL_INDEX = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
              aten._index_put_impl_.default}
# host reads of a tensor that bypass the dispatcher, as (method, who may call it): LayerDrop
# draws which layers run on the host by design (a CPU tensor even when training on a GPU)
HOST_READS = {"tolist": ("_dropped_layers",), "numpy": ()}


class SyncRecorder(TorchDispatchMode):
    """Records every op of ``ALWAYS_SYNC``, indexing with a bool index, ``repeat_interleave``
    without ``output_size``, and ``Tensor.tolist`` / ``Tensor.numpy`` calls."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ALWAYS_SYNC:
            self._record(str(func))
        elif func in BOOL_INDEX:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype == torch.bool for i in indices):
                self._record(f"{func} with a bool index")
        elif func.overloadpacket is aten.repeat_interleave and kwargs.get("output_size") is None:
            self._record(f"{func} without output_size")
        return func(*args, **kwargs)

    def _record(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "audio_ssl" in f.filename]
        where = "?"
        if frames:
            where = f"{frames[-1].filename.split('audio_ssl')[-1]}:{frames[-1].lineno}"
        self.syncs.append(f"{what} at {where}")

    def __enter__(self):
        for name, allowed in HOST_READS.items():
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def read(t, *a, _original=original, _name=name, _allowed=allowed, **k):
                caller = traceback.extract_stack()[-2].name
                if caller not in _allowed:
                    self._record(f"Tensor.{_name}")
                return _original(t, *a, **k)

            setattr(torch.Tensor, name, read)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)


def _task(objective: str = "wav2vec2", padded: bool = False, **model) -> PretrainTask:
    cfg = config.preset("tiny")
    m = replace(cfg.model, objective=objective, **model)
    if objective == "best-rq":
        m = replace(m, best_rq=replace(m.best_rq, codes=64))
    if objective == "hubert":
        m = replace(m, hubert=replace(m.hubert, clusters=20))
    cfg = replace(cfg, model=m, data=replace(cfg.data, crop_to_shortest=not padded))
    torch.manual_seed(0)
    task = PretrainTask(cfg)
    # an update that writes no record (log_every 10): step 3 of rank 0 of one
    task._trainer = SimpleNamespace(global_step=3, global_rank=0, world_size=1)
    return task


def _batch(task: PretrainTask, padded: bool, samples: int = 16_000) -> Batch:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([samples, samples - 3_000, samples, samples - 7_321] if padded
                           else [samples] * 4)
    waveforms = torch.randn(4, samples, generator=g)
    waveforms = waveforms * (torch.arange(samples)[None, :] < lengths[:, None])
    labels = None
    if task.cfg.model.objective == "hubert":
        frames = task.model.backbone.frame_lengths(lengths)
        labels = torch.randint(0, 20, (4, int(frames.max())), generator=g)
        labels[torch.arange(labels.shape[1])[None, :] >= frames[:, None]] = -1
    return Batch(waveforms, lengths, [f"{i}.wav" for i in range(4)], labels=labels)


def _step_syncs(task: PretrainTask, batch: Batch) -> list[str]:
    with SyncRecorder() as recorder:
        loss = task.training_step(batch, 0)
        loss.backward()
    assert torch.isfinite(loss.detach()).all()
    return recorder.syncs


CASES = {
    "wav2vec2 (tiny: continuous targets)": ("wav2vec2", {}),
    "wav2vec2 quantized targets": ("wav2vec2", {"quantize_targets": True}),
    "wav2vec2 with LayerDrop": (
        "wav2vec2", {"context": replace(config.preset("tiny").model.context, layer_drop=0.5)}),
    "best-rq": ("best-rq", {}),
    "hubert": ("hubert", {}),
}


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("case", list(CASES))
def test_unlogged_training_step_does_not_sync(case, padded):
    objective, model = CASES[case]
    task = _task(objective, padded, **model)
    assert task.global_step % task.cfg.train.log_every  # not a logged step
    syncs = _step_syncs(task, _batch(task, padded))
    assert syncs == [], "host syncs in the training step:\n" + "\n".join(syncs)


def test_the_recorder_sees_syncs():
    """The recorder is not blind: the usual ways of reading a device value are caught."""
    x = torch.arange(6.0)
    mask = x > 2
    repeats = torch.arange(1, 3)
    with SyncRecorder() as recorder:
        x[mask]
        bool(mask.any())
        x.sum().item()
        torch.repeat_interleave(repeats)
        torch.tensor([1.0])
        mask.tolist()
        torch.repeat_interleave(torch.arange(2), repeats, output_size=3)  # these do not sync
        torch.nonzero_static(mask, size=6)
        x.index_select(0, repeats)
    kinds = "\n".join(recorder.syncs)
    assert len(recorder.syncs) == 6, kinds
    for what in ("bool index", "_local_scalar_dense", "without output_size",
                 "lift_fresh", "Tensor.tolist"):
        assert what in kinds, kinds
