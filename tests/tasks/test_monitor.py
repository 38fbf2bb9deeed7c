import math

import pytest

from audio_ssl.tasks.monitor import CollapseWatch
from audio_ssl.tasks.schedules import warmup_linear


def test_plateau_at_log_k_plus_one_warns_once_after_patience():
    watch = CollapseWatch(num_negatives=100, groups=2, codes=320, patience=10, grace=5)
    stuck = math.log(101) + 0.005
    said = [w for step in range(30) for w in watch.update(step, stuck, 300.0)]
    assert len(said) == 1 and "log(K+1) = 4.615" in said[0]
    # recovers, then sticks again: warned again
    watch.update(30, 3.0, 300.0)
    said = [w for step in range(31, 45) for w in watch.update(step, stuck, 300.0)]
    assert len(said) == 1


def test_codebook_collapse_warns():
    watch = CollapseWatch(num_negatives=100, groups=2, codes=320, patience=3, grace=0)
    said = [w for step in range(5) for w in watch.update(step, 0.01, 2.1)]
    assert len(said) == 1 and "code perplexity 2.1" in said[0]


def test_healthy_training_is_quiet():
    watch = CollapseWatch(num_negatives=100, groups=2, codes=320, patience=3, grace=0)
    assert not [w for step in range(50) for w in watch.update(step, 4.615 - step * 0.05, 200.0)]


def test_warmup_then_linear_decay():
    total, frac = 100, 0.1
    assert warmup_linear(0, total, frac) == pytest.approx(0.1)
    assert warmup_linear(9, total, frac) == pytest.approx(1.0)
    assert warmup_linear(55, total, frac) == pytest.approx(0.5)
    assert warmup_linear(100, total, frac) == 0.0
