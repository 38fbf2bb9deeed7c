"""Probe heads on frozen features, SUPERB-style.

Each layer is standardised with the statistics of the training utterances, then the layers are
combined by a learnable softmax-weighted sum (``layer=None``) or one layer is read alone (the
per-layer sweep). On top:

- **classification**: each layer's frames pooled to their mean and standard deviation, the
  pooled layers weighted and summed (for the mean this is the same as pooling the weighted sum),
  then a linear head (or a one-hidden-layer MLP); cross-entropy; accuracy;
- **recognition**: the weighted sum of the frames, a linear (or MLP) head per frame, CTC over
  characters; greedy decoding; CER and WER.

Training is AdamW with a fixed number of epochs; the epoch kept is the one with the best score
(the later one on a tie) on the fold's dev utterances (taken from the training side of the
split, never from the test set). Everything depends on ``seed`` alone: the head's initial
weights and the batch order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audio_ssl.data.text import BLANK, Vocabulary

HEADS = ("linear", "mlp")
HIDDEN = 256


@dataclass(frozen=True)
class HeadConfig:
    head: str = "linear"
    epochs: int = 30  # classification; recognition uses ``ctc_epochs``
    ctc_epochs: int = 20
    batch_size: int = 256  # utterances (classification), at most; an epoch has >= 8 updates
    ctc_batch_frames: int = 12_000  # frames per recognition batch
    lr: float = 5e-3
    ctc_lr: float = 2e-3
    weight_decay: float = 1e-2

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r}: expected one of {HEADS}")
        if min(self.epochs, self.ctc_epochs, self.batch_size, self.ctc_batch_frames) < 1:
            raise ValueError("probe epochs and batch sizes must be at least 1")


@dataclass
class HeadResult:
    """One head trained on one fold with one seed."""

    score: float  # test accuracy (classification) or test CER (recognition), 0-1
    wer: float | None  # recognition only
    dev_score: float
    epoch: int  # the epoch kept (1-based)
    layer_weights: list[float]  # the softmax weights (one-hot for a single layer)
    predictions: list[str]  # test predictions, in the fold's test order


class LayerMix(nn.Module):
    """(..., L, D) -> (..., D): a softmax-weighted sum of the layers, or one layer."""

    def __init__(self, num_layers: int, layer: int | None):
        super().__init__()
        self.layer = layer
        self.logits = nn.Parameter(torch.zeros(num_layers), requires_grad=layer is None)

    def weights(self) -> torch.Tensor:
        if self.layer is not None:
            return F.one_hot(torch.tensor(self.layer), self.logits.numel()).float()
        return self.logits.softmax(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is not None:
            return x[..., self.layer, :]
        return (x * self.logits.softmax(0)[:, None]).sum(-2)


def _head(dim: int, out: int, kind: str) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, out))
    return nn.Linear(dim, out)


class Probe(nn.Module):
    def __init__(self, num_layers: int, dim: int, out: int, layer: int | None, head: str):
        super().__init__()
        self.mix = LayerMix(num_layers, layer)
        self.head = _head(dim, out, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(x))


def _weights(probe: Probe, layer: int | None, num_layers: int) -> torch.Tensor:
    """(L,) the layer weights: learned, or one-hot on the layer read alone."""
    if layer is None:
        return probe.mix.weights().detach()
    return F.one_hot(torch.tensor(layer), num_layers).float()


def _optimizer(probe: Probe, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW: weight decay on the head's matrices; the layer weights' logits (one number per
    layer) move ten times faster, so that the mix settles within the head's epochs."""
    decay = [p for n, p in probe.head.named_parameters() if p.ndim > 1]
    biases = [p for n, p in probe.head.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": biases, "weight_decay": 0.0}]
    if probe.mix.logits.requires_grad:
        groups.append({"params": [probe.mix.logits], "weight_decay": 0.0, "lr": 10 * lr})
    return torch.optim.AdamW(groups, lr=lr)


# ---------------------------------------------------------------------------------------------
# Classification


def pool(arrays: list[np.ndarray]) -> torch.Tensor:
    """[(L, T, D)] -> (N, L, 2D): each layer's mean and standard deviation over frames."""
    out = []
    for a in arrays:
        x = torch.from_numpy(np.asarray(a, dtype=np.float32))  # (L, T, D)
        out.append(torch.cat([x.mean(1), x.std(1, unbiased=False)], dim=-1))  # (L, 2D)
    return torch.stack(out)


def train_classifier(pooled: torch.Tensor, labels: np.ndarray, classes: list[str],
                     train: list[int], dev: list[int], test: list[int], *, layer: int | None,
                     seed: int, cfg: HeadConfig) -> HeadResult:
    """pooled: (N, L, F) from :func:`pool`; labels: (N,) class names."""
    num_layers = pooled.shape[1]
    if layer is not None:  # read only the layer asked for
        pooled = pooled[:, layer:layer + 1]  # (N, 1, F)
    mean = pooled[train].mean(0)  # (L, F)
    std = pooled[train].std(0, unbiased=False).clamp_min(1e-5)
    x = (pooled - mean) / std  # (N, L, F)
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in labels])  # (N,)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    probe = Probe(x.shape[1], x.shape[2], len(classes), None if layer is None else 0, cfg.head)
    optimizer = _optimizer(probe, cfg.lr, cfg.weight_decay)
    train_t, dev_t = torch.tensor(train), torch.tensor(dev)

    def accuracy(rows: torch.Tensor) -> float:
        with torch.no_grad():
            return float((probe(x[rows]).argmax(-1) == y[rows]).float().mean())

    # at least 8 updates an epoch, however few the utterances
    batch_size = max(16, min(cfg.batch_size, -(-len(train) // 8)))
    best = (-1.0, 0, copy.deepcopy(probe.state_dict()))
    for epoch in range(1, cfg.epochs + 1):
        probe.train()
        order = train_t[torch.randperm(len(train_t), generator=generator)]
        for batch in order.split(batch_size):
            loss = F.cross_entropy(probe(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        probe.eval()
        score = accuracy(dev_t)
        if score >= best[0]:  # a tie goes to the later, better-trained epoch
            best = (score, epoch, copy.deepcopy(probe.state_dict()))
    probe.load_state_dict(best[2])
    probe.eval()
    test_t = torch.tensor(test)
    with torch.no_grad():
        predicted = probe(x[test_t]).argmax(-1)
    return HeadResult(score=float((predicted == y[test_t]).float().mean()), wer=None,
                      dev_score=best[0], epoch=best[1],
                      layer_weights=_weights(probe, layer, num_layers).tolist(),
                      predictions=[classes[int(i)] for i in predicted])


# ---------------------------------------------------------------------------------------------
# Recognition


def standardized_frames(arrays: list[np.ndarray], train: list[int]) -> list[torch.Tensor]:
    """[(L, T, D)] -> [(T, L, D)] float32, each layer's dimensions standardised with the mean
    and standard deviation over every frame of the ``train`` utterances. Computed once per
    fold and shared by every recognition head of it."""
    total = count = squares = 0
    for i in train:
        x = torch.from_numpy(np.asarray(arrays[i], dtype=np.float32))  # (L, T, D)
        total = total + x.sum(1)
        squares = squares + (x * x).sum(1)
        count += x.shape[1]
    mean = total / count  # (L, D)
    std = (squares / count - mean * mean).clamp_min(1e-10).sqrt()
    return [((torch.from_numpy(np.asarray(a, dtype=np.float32)) - mean[:, None]) / std[:, None])
            .transpose(0, 1).contiguous() for a in arrays]


def _batches(lengths: list[int], rows: list[int], max_frames: int,
             generator: torch.Generator | None) -> list[list[int]]:
    """Rows grouped by length into batches of at most ``max_frames`` padded frames."""
    ordered = sorted(rows, key=lambda i: lengths[i])
    out, current = [], []
    for i in ordered:
        if current and (len(current) + 1) * lengths[i] > max_frames:
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    if generator is not None:
        out = [out[int(k)] for k in torch.randperm(len(out), generator=generator)]
    return out


def _padded(frames: list[torch.Tensor], rows: list[int],
            layer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, L, D) frames of ``rows`` (only ``layer``, as L = 1, when given) and (B,) lengths."""
    xs = [frames[i] if layer is None else frames[i][:, layer:layer + 1] for i in rows]
    lengths = torch.tensor([x.shape[0] for x in xs])
    return torch.nn.utils.rnn.pad_sequence(xs, batch_first=True), lengths


def _greedy(log_probs: torch.Tensor, lengths: torch.Tensor, vocab: Vocabulary) -> list[str]:
    """(B, T, V) -> texts: best token per frame, repeats merged, blanks dropped."""
    out = []
    for row, n in zip(log_probs.argmax(-1), lengths.tolist()):
        ids = torch.unique_consecutive(row[:n])
        out.append(vocab.decode([int(i) for i in ids if int(i) != vocab.blank]))
    return out


def _rates(references: list[str], hypotheses: list[str]) -> tuple[float, float]:
    from audio_ssl.asr.metrics import cer, wer

    return cer(references, hypotheses), wer(references, hypotheses)


def train_recognizer(frames: list[torch.Tensor], texts: list[str], train: list[int],
                     dev: list[int], test: list[int], *, layer: int | None, seed: int,
                     cfg: HeadConfig) -> HeadResult:
    """frames: per utterance (T, L, D) from :func:`standardized_frames` (with this ``train``);
    texts: normalised transcripts. Score: test CER."""
    num_layers, dim = frames[0].shape[1:]
    vocab = Vocabulary.build(texts[i] for i in train)
    assert vocab.tokens[0] == BLANK
    # train transcripts only are targets: every character is in the vocabulary
    members = set(train)
    targets = [vocab.encode(text) if i in members else [] for i, text in enumerate(texts)]
    lengths = [f.shape[0] for f in frames]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    probe = Probe(num_layers if layer is None else 1, dim, len(vocab),
                  None if layer is None else 0, cfg.head)
    optimizer = _optimizer(probe, cfg.ctc_lr, cfg.weight_decay)

    def decode(rows: list[int]) -> list[str]:
        probe.eval()
        hypotheses = {}
        with torch.no_grad():
            for batch in _batches(lengths, rows, cfg.ctc_batch_frames, None):
                x, n = _padded(frames, batch, layer)
                for i, text in zip(batch, _greedy(probe(x), n, vocab)):
                    hypotheses[i] = text
        return [hypotheses[i] for i in rows]

    best = (float("inf"), 0, copy.deepcopy(probe.state_dict()))
    usable = [i for i in train if 0 < len(targets[i]) <= lengths[i]]
    for epoch in range(1, cfg.ctc_epochs + 1):
        probe.train()
        for batch in _batches(lengths, usable, cfg.ctc_batch_frames, generator):
            x, n = _padded(frames, batch, layer)
            log_probs = probe(x).float().log_softmax(-1)  # (B, T, V)
            flat = torch.tensor([t for i in batch for t in targets[i]])
            target_lengths = torch.tensor([len(targets[i]) for i in batch])
            loss = F.ctc_loss(log_probs.transpose(0, 1), flat, n, target_lengths,
                              blank=vocab.blank, zero_infinity=True)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % 5 == 0 or epoch == cfg.ctc_epochs:
            dev_cer, _ = _rates([texts[i] for i in dev], decode(dev))
            if dev_cer <= best[0]:
                best = (dev_cer, epoch, copy.deepcopy(probe.state_dict()))
    probe.load_state_dict(best[2])
    hypotheses = decode(test)
    test_cer, test_wer = _rates([texts[i] for i in test], hypotheses)
    return HeadResult(score=test_cer, wer=test_wer, dev_score=best[0], epoch=best[1],
                      layer_weights=_weights(probe, layer, num_layers).tolist(),
                      predictions=hypotheses)


__all__ = ["HeadConfig", "HeadResult", "LayerMix", "Probe", "pool", "train_classifier",
           "standardized_frames", "train_recognizer", "HEADS"]
