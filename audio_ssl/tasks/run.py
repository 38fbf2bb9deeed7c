"""One function behind `audio-ssl pretrain`: folder in, checkpoints and logs out."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import torch

from audio_ssl.config import PretrainConfig, dump
from audio_ssl.data import Rejected, make_dataloader, scan, write_rejected
from audio_ssl.data.manifest import too_short
from audio_ssl.data.shard_mix import ShardMix, is_weighted, read_mix
from audio_ssl.data.shard_stream import make_shard_dataloader, missing_shards
from audio_ssl.data.shards import ShardIndex, is_shard_folder, read_index
from audio_ssl.data.targets import LabelStore, check_targets
from audio_ssl.interop import CheckpointError, LoadedModel, load_model
from audio_ssl.interop.common import load_exact
from audio_ssl.io import check_run_folder, make_run_folder
from audio_ssl.tasks.pretrain import PretrainTask, pretrain_log
from audio_ssl.tasks.trainer import RunCheckpoint, build_trainer

log = logging.getLogger("audio_ssl")


class PretrainData(L.LightningDataModule):
    """Holds the scanned items (or a shard folder's index); builds this rank's loader at the
    task's data position."""

    def __init__(self, items: list | ShardIndex | ShardMix, cfg: PretrainConfig,
                 labels: LabelStore | None = None):
        super().__init__()
        self.items, self.cfg, self.labels = items, cfg, labels

    def train_dataloader(self):
        trainer = self.trainer
        position = trainer.lightning_module.batches_seen  # restored before loaders are built
        if isinstance(self.items, (ShardIndex, ShardMix)):
            loader, _ = make_shard_dataloader(self.items, self.cfg.data, seed=self.cfg.train.seed,
                                              rank=trainer.global_rank,
                                              world_size=trainer.world_size, position=position)
            return loader
        loader, _ = make_dataloader(
            self.items, self.cfg.data, seed=self.cfg.train.seed, rank=trainer.global_rank,
            world_size=trainer.world_size, position=position, labels=self.labels,
            conv_layers=self.cfg.model.encoder.conv_layers,
        )
        # files that failed before a resume are not tried again
        loader.dataset.failed.update(trainer.lightning_module.run_log.reported["failed_files"])
        return loader


@dataclass
class PretrainResult:
    output_dir: Path
    last_checkpoint: Path | None
    steps: int
    files: int
    hours: float
    rejected: int
    first: dict[str, float]
    last: dict[str, float]
    warnings: list[str]
    seconds: float
    uniform_loss: float  # log(K + 1): the loss of a uniform guess among the candidates
    failed_shards: int = 0  # shards of a shard folder missing or unreadable: their batches skipped

    def summary(self) -> str:
        def row(name: str) -> str:
            a, b = self.first.get(name), self.last.get(name)
            if a is None or b is None:
                return ""
            return f"  {name.removeprefix('train/'):<22} {a:>9.3f} -> {b:>9.3f}\n"

        text = (
            f"pretrained {self.steps} steps on {self.files} files ({self.hours:.2f} h of audio) "
            f"in {self.seconds / 60:.1f} min; {self.rejected} file(s) skipped\n"
        )
        if self.failed_shards:
            text += (f"{self.failed_shards} shard(s) missing or unreadable, their batches "
                     "skipped (named in decode_failures.jsonl)\n")
        text += "what was learned (first logged step -> last):\n"
        for name in ("train/contrastive", "train/masked_loss", "train/accuracy", "train/code_perplexity",
                     "train/prob_perplexity", "train/gumbel_temperature",
                     "train/l1_masked", "train/l1_unmasked", "train/regression",
                     "train/target_std", "train/prediction_std"):
            text += row(name)
        if math.isfinite(self.uniform_loss):  # nan: a regression (data2vec), no uniform guess
            text += f"  (a uniform guess scores {self.uniform_loss:.3f})\n"
        text += (
            f"outputs in {self.output_dir}:\n"
            f"  checkpoint  {self.last_checkpoint}\n"
            f"  config      {self.output_dir / 'config.yaml'}\n"
            f"  metrics     {self.output_dir / 'metrics.jsonl'} (and logs/ for CSV and TensorBoard)\n"
            f"  skipped     {self.output_dir / 'rejected.jsonl'} (and decode_failures.jsonl)\n"
        )
        for w in self.warnings:
            text += f"warning: {w}\n"
        return text


def find_last_checkpoint(output_dir: Path) -> Path | None:
    last = output_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def load_init(init: str | Path) -> LoadedModel:
    """The pretraining model stored at ``init``, in any format :func:`load_model` reads, to
    continue pretraining from (``audio-ssl pretrain --init``)."""
    from audio_ssl.models import PRETRAINING_MODELS

    loaded = load_model(init)
    if not isinstance(loaded.model, PRETRAINING_MODELS):
        raise CheckpointError(
            f"--init {init}: a {type(loaded.model).__name__} ({loaded.source}) has no quantizer; "
            "continued pretraining needs a pretraining checkpoint (audio-ssl pretrain, an HF "
            "Wav2Vec2ForPreTraining folder or a fairseq wav2vec 2.0 pretraining .pt)")
    return loaded


def _read_source(data: str | Path | list, cfg: PretrainConfig, labels: LabelStore | None,
                 progress: bool) -> tuple[list | ShardIndex | ShardMix, list[Rejected]]:
    """The audio of ``data`` (a folder, a manifest, a list, or a shard folder at a path or a
    URL: found by its index; or several shard folders with weights, :func:`read_mix`), and
    what is left out (files, or cuts shorter than ``data.shortest``)."""
    data = list(data) if isinstance(data, (list, tuple)) else [data]
    specs = [str(d) for d in data]
    weighted = is_weighted(specs)
    if not weighted and not is_shard_folder(specs[0]):
        return scan(data[0], progress=progress, min_samples=cfg.data.shortest,
                    sample_rate=cfg.data.sample_rate)
    if labels is not None:
        raise ValueError(f"--targets with the shard folder {' '.join(specs)}: HuBERT labels are "
                         "read by file path; pretrain on the folder or manifest the shards were "
                         "made of")
    index = read_mix(specs) if weighted else read_index(specs[0])
    sr = cfg.data.sample_rate
    short = [replace(r, reason=f"{r.reason}, cut {c.id}") for c in index.cuts  # the one rule
             if (r := too_short(c, cfg.data.shortest, sr)) is not None]
    gone = missing_shards(index)
    if gone:
        log.warning("%d of %d shards of %s are missing; their batches will be skipped (first: %s)",
                    len(gone), index.num_shards, " ".join(specs), gone[0])
    return index, short


def pretrain(data: str | Path | list[str], cfg: PretrainConfig, output_dir: str | Path, *,
             resume: bool = False, progress: bool = True, accelerator: str = "auto",
             init: str | Path | LoadedModel | None = None) -> PretrainResult:
    """Pretrain on ``data`` into ``output_dir``.

    ``init``: start from the weights of this pretraining checkpoint (continued pretraining, e.g.
    on in-domain audio) with a fresh optimizer, schedule and step count; a path, or the
    :func:`load_init` result that ``cfg`` was built from (read once). ``cfg.model`` must
    describe its network (``config.load(..., model=load_init(init).config)``). Ignored on
    ``resume``, whose checkpoint already holds the weights.

    ``resume``: continue from ``checkpoints/last.ckpt``, also in a folder renamed or copied
    since; the logs keep their rows up to the checkpoint. Without it, a folder that a run killed
    before its first checkpoint left is taken, and that run's logs (metrics.jsonl,
    decode_failures.jsonl, the CSV log and TensorBoard's events) are removed: the new run
    starts them anew (:meth:`~audio_ssl.tasks.run_log.RunLog.start`).
    """
    start = time.perf_counter()
    cfg, labels = check_targets(cfg)
    check_memory(cfg, accelerator)
    output = Path(output_dir)
    last = find_last_checkpoint(output)
    check_run_folder(output, resume=resume, last=last)
    ckpt_path = last if resume else None
    init, init_state = _init_weights(init, ckpt_path)

    items, rejected = _read_source(data, cfg, labels, progress)
    make_run_folder(output)  # only now: a refused run writes nothing
    run_log = pretrain_log(output)
    run_log.start(resume)  # a run killed before its first checkpoint left logs: they start anew
    write_rejected(rejected, output / "rejected.jsonl")
    _check_labels(labels, items, data, cfg)
    dump(cfg, output / "config.yaml")
    hours, files = _usable_audio(items, cfg)
    log.info("%d usable files (%.2f h), %d skipped (listed in %s)", files, hours,
             len(rejected), output / "rejected.jsonl")

    torch.manual_seed(cfg.train.seed)  # the same initial weights for the same seed
    task = PretrainTask(cfg, run_log)
    if init_state is not None:  # every key and shape must match cfg.model's network
        load_exact(task.model, init_state, f"--init {init}")
        log.info("weights initialised from %s", init)
    trainer = build_trainer(cfg.train, output, grad_clip=cfg.optim.grad_clip,
                            accelerator=accelerator, progress=progress, callbacks=[
        RunCheckpoint(dirpath=output / "checkpoints", filename="step={step:07d}",
                      auto_insert_metric_name=False, every_n_train_steps=cfg.train.checkpoint_every,
                      save_top_k=-1, save_last=True),
    ], log_every_n_steps=1)  # the task logs only every train.log_every steps itself
    trainer.fit(task, datamodule=PretrainData(items, cfg, labels), ckpt_path=ckpt_path)
    # a file that failed to decode while training is counted out of the usable ones
    failed = len(run_log.reported["failed_files"])
    result = PretrainResult(
        output_dir=output, last_checkpoint=find_last_checkpoint(output), steps=trainer.global_step,
        files=files - failed, hours=hours, rejected=len(rejected) + failed,
        first=run_log.first or {}, last=run_log.last, warnings=run_log.warnings,
        seconds=run_log.clock.before + time.perf_counter() - start,  # the whole run
        uniform_loss=task.uniform_loss, failed_shards=len(run_log.reported["failed_shards"]),
    )
    strict = {} if math.isfinite(result.uniform_loss) else {"uniform_loss": None}  # no NaN
    run_log.write_summary(result, ("output_dir", "last_checkpoint"), **strict,
                          init=None if init is None else str(init))
    return result


def device_memory(accelerator: str) -> tuple[int, str]:
    """(bytes, what) of the memory one training process has: the first GPU's when training
    will run on one, else the host's physical memory."""
    import os

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"the GPU's {props.total_memory / 2**30:.1f} GiB"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total), f"this machine's {total / 2**30:.1f} GiB"


def check_memory(cfg: PretrainConfig, accelerator: str = "auto") -> None:
    """Refuse, before anything is read or written, a data2vec run whose student cannot fit:
    its ``clones`` copies of a full batch need more activation memory than the device has
    (:func:`~audio_ssl.models.data2vec.student_activation_bytes`, a lower bound: bf16 values
    unless ``train.precision`` is 32)."""
    if cfg.model.objective != "data2vec":
        return
    from audio_ssl.models.data2vec import student_activation_bytes

    width = 4 if cfg.train.precision == "32" else 2
    need = student_activation_bytes(cfg.model, cfg.data.max_batch_samples, width)
    have, what = device_memory(accelerator)
    if need > have:
        raise ValueError(
            f"model.data2vec.clones {cfg.model.data2vec.clones} with data.max_batch_samples "
            f"{cfg.data.max_batch_samples}: the student's activations alone need at least "
            f"{need / 2**30:.1f} GiB per update, more than {what}: expected fewer clones or a "
            "smaller data.max_batch_samples")


def _init_weights(init: str | Path | LoadedModel | None,
                  ckpt_path: Path | None) -> tuple[str | Path | None, dict | None]:
    """(where ``--init`` points, the state dict to start from): None when there is no
    ``init``, or when the run resumes (its checkpoint holds the weights)."""
    loaded = init if isinstance(init, LoadedModel) else None
    if loaded is not None:
        init = loaded.path
    if init is not None and ckpt_path is not None:
        log.info("resuming from %s: --init %s is not used", ckpt_path, init)
        return init, None
    if init is not None:
        return init, (loaded or load_init(init)).model.state_dict()
    return init, None


def _check_labels(labels: LabelStore | None, items: list | ShardIndex | ShardMix, data,
                  cfg: PretrainConfig) -> None:
    """HuBERT's labels (``--targets``) for the files of ``data``: none at all is an error, the
    files without any are named (they are skipped)."""
    if labels is None or isinstance(items, (ShardIndex, ShardMix)):
        return
    data = " ".join(map(str, data)) if isinstance(data, (list, tuple)) else data
    missing = labels.missing([item.path for item in items])
    if len(missing) == len(items):
        raise FileNotFoundError(f"--targets {cfg.data.targets} holds no labels for any file "
                                f"of {data}: make them with `audio-ssl targets {data}`")
    if missing:
        log.warning("%d of %d files have no labels in %s and will be skipped (first: %s)",
                    len(missing), len(items), cfg.data.targets, missing[0])


def _usable_audio(items: list | ShardIndex | ShardMix,
                  cfg: PretrainConfig) -> tuple[float, int]:
    """(hours, files) of the audio the run samples from (shard folders' long enough cuts)."""
    usable = items
    if isinstance(items, (ShardIndex, ShardMix)):  # the cuts the plan samples from
        usable = [c for c in items.cuts if c.samples_at(cfg.data.sample_rate)
                  >= cfg.data.shortest]
    return sum(item.duration for item in usable) / 3600, len(usable)
