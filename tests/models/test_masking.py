import math

import torch

from audio_ssl.config import MaskConfig
from audio_ssl.models.masking import compute_span_mask, sample_negatives


def test_mask_fraction_matches_the_paper():
    cfg = MaskConfig()
    g = torch.Generator().manual_seed(0)
    lengths = torch.full((256,), 500)
    mask = compute_span_mask(lengths, 500, cfg, g)
    expected = 1 - (1 - cfg.prob) ** cfg.length  # 0.489
    assert abs(mask.float().mean().item() - expected) < 0.03


def _spans(row: torch.Tensor) -> list[tuple[int, int]]:
    spans, start = [], None
    for t, m in enumerate(row.tolist() + [False]):
        if m and start is None:
            start = t
        if not m and start is not None:
            spans.append((start, t))
            start = None
    return spans


def test_masked_runs_are_whole_spans_and_min_masks_holds():
    cfg = MaskConfig(prob=0.01, length=10, min_masks=2)
    g = torch.Generator().manual_seed(1)
    mask = compute_span_mask(torch.full((64,), 120), 120, cfg, g)
    for row in mask:
        runs = _spans(row)
        assert all(end - start >= cfg.length for start, end in runs)  # overlaps only lengthen
        assert row.sum() >= cfg.length  # at least two spans; overlap may merge them
        # prob * T = 1.2 -> 2 spans forced: at most 2 * length frames
        assert row.sum() <= 2 * cfg.length


def test_padding_is_never_masked():
    cfg = MaskConfig()
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([300, 120, 37, 5, 1])
    mask = compute_span_mask(lengths, 300, cfg, g)
    positions = torch.arange(300)
    assert not (mask & (positions[None] >= lengths[:, None])).any()
    assert (mask.sum(-1) > 0).all()  # even a 1-frame utterance gets its frame masked


def test_mask_is_deterministic_for_a_generator():
    cfg = MaskConfig()
    a = compute_span_mask(torch.tensor([200, 150]), 200, cfg, torch.Generator().manual_seed(3))
    b = compute_span_mask(torch.tensor([200, 150]), 200, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_distractors_come_from_other_masked_frames_of_the_same_utterance():
    g = torch.Generator().manual_seed(4)
    # several utterances with different masked counts: an offset error would cross utterances
    mask = torch.zeros(4, 50, dtype=torch.bool)
    mask[0, 3:13] = True
    mask[1, 0:30] = True
    mask[2, 40:42] = True
    mask[3, 7:27] = True
    indices, valid = sample_negatives(mask, 100, g)
    utt = mask.nonzero()[:, 0]  # (M,) utterance of each masked frame, row-major
    M = int(mask.sum())
    assert indices.shape == (M, 100) and valid.all()
    assert (utt[indices] == utt[:, None]).all()  # same utterance
    assert (indices != torch.arange(M)[:, None]).all()  # never the positive


def test_distractors_are_uniform_over_the_others():
    g = torch.Generator().manual_seed(5)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, :6] = True
    indices, _ = sample_negatives(mask, 60_000, g)
    for i in range(6):
        counts = torch.bincount(indices[i], minlength=6).float()
        assert counts[i] == 0
        others = counts[torch.arange(6) != i] / 60_000
        assert torch.allclose(others, torch.full((5,), 0.2), atol=0.01)


def test_single_masked_frame_has_no_valid_distractor():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 4] = True
    mask[1, 2:5] = True
    _, valid = sample_negatives(mask, 7, torch.Generator().manual_seed(0))
    assert not valid[0].any() and valid[1:].all()
    assert math.isclose(valid.float().mean().item(), 3 / 4)
