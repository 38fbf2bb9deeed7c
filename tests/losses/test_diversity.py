"""The diversity term (GV - perplexity) / GV at code usages whose perplexity is known."""

import pytest
import torch

from audio_ssl.losses.contrastive import diversity_loss
from audio_ssl.models.quantizer import perplexity

G, V = 2, 8


def test_uniform_code_usage_costs_nothing():
    uniform = torch.full((G, V), 1.0 / V)  # perplexity G * V
    assert diversity_loss(perplexity(uniform), G, V).item() == pytest.approx(0.0, abs=1e-6)


def test_one_code_per_group_costs_all_but_one_in_v():
    one_hot = torch.zeros(G, V)
    one_hot[:, 3] = 1.0  # perplexity G: the collapsed codebook
    expected = (G * V - G) / (G * V)  # 1 - 1 / V
    assert diversity_loss(perplexity(one_hot), G, V).item() == pytest.approx(expected, rel=1e-6)


def test_half_the_codes_used_equally():
    half = torch.zeros(G, V)
    half[:, : V // 2] = 2.0 / V  # perplexity G * V / 2
    assert diversity_loss(perplexity(half), G, V).item() == pytest.approx(0.5, rel=1e-6)
