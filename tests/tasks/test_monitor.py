import math

import pytest

from audio_ssl.tasks.monitor import CollapseWatch, escape_step
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


def test_escape_step_is_where_the_loss_stays_below_the_line_long_enough():
    uniform = 4.0  # line at 0.9 x 4.0 = 3.6
    dips_back = [(0, 4.0), (10, 3.0), (20, 4.0), (30, 3.5), (40, 3.4), (50, 3.3), (60, 3.2),
                 (70, 3.1), (80, 3.0)]
    assert escape_step(dips_back, uniform, 0.9, hold=50) == 30  # the dip at 10 does not count
    assert escape_step(dips_back, uniform, 0.9, hold=60) is None  # not held long enough yet
    assert escape_step([(0, 4.0), (10, 4.1)], uniform) is None


def test_streaks_count_steps_when_fed_every_few_steps():
    """The training loop feeds only the steps it logs: patience is still in steps."""
    watch = CollapseWatch(num_negatives=100, groups=2, codes=320, patience=50, grace=0)
    stuck = math.log(101)
    said = [(step, w) for step in range(0, 100, 10) for w in watch.update(step, stuck, 300.0)]
    # seen at 0, 10, ..., 50: the steps 0..50 all count
    assert [step for step, _ in said] == [50] and "for 51 steps" in said[0][1]
    restored = CollapseWatch(num_negatives=100, groups=2, codes=320, patience=50, grace=0)
    restored.load_state_dict(watch.state_dict())
    assert restored.update(100, 3.0, 300.0) == [] and restored.state_dict()["last_step"] == 100
