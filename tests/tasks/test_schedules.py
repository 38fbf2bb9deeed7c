"""The learning-rate schedules against their closed forms."""

from __future__ import annotations

import math

import pytest

from audio_ssl.tasks.schedules import tri_stage, warmup_linear


def _tri_stage_by_definition(step: int, total: int) -> float:
    """fairseq's tri_stage with phase_ratio (0.1, 0.4, 0.5), init_lr_scale 0.01,
    final_lr_scale 0.05: linear from 0.01 to 1 over the warm-up, 1 during the hold, then
    exp(-k t) with k chosen so that the end of the decay is 0.05."""
    warmup, hold = int(0.1 * total), int(0.4 * total)
    decay = total - warmup - hold
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    if step < warmup + hold:
        return 1.0
    k = -math.log(0.05) / decay
    return math.exp(-k * min(step - warmup - hold, decay))


@pytest.mark.parametrize("total", [10, 100, 1234])
def test_tri_stage_is_fairseqs_schedule(total):
    for step in range(total + 5):
        assert tri_stage(step, total) == pytest.approx(_tri_stage_by_definition(step, total),
                                                       rel=1e-12, abs=1e-12), step
    assert tri_stage(0, total) == pytest.approx(0.01)
    assert tri_stage(total, total) == pytest.approx(0.05)
    assert tri_stage(int(0.1 * total), total) == 1.0


def test_warmup_linear_peaks_once_and_ends_at_zero():
    values = [warmup_linear(s, 100, 0.08) for s in range(101)]
    assert values[7] == 1.0 and max(values) == 1.0 and values.index(1.0) == 7
    assert values[0] == pytest.approx(1 / 8) and values[100] == 0.0
    assert all(a >= b for a, b in zip(values[7:], values[8:]))
