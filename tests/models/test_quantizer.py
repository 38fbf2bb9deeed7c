import math

import pytest
import torch

from audio_ssl.config import QuantizerConfig
from audio_ssl.models.quantizer import GumbelQuantizer, perplexity


def test_perplexity_closed_form():
    G, V = 2, 8
    uniform = torch.full((G, V), 1 / V)
    assert perplexity(uniform).item() == pytest.approx(G * V, rel=1e-5)
    one_hot = torch.zeros(G, V)
    one_hot[:, 3] = 1
    assert perplexity(one_hot).item() == pytest.approx(G, rel=1e-5)
    half = torch.zeros(G, V)
    half[:, :2] = 0.5  # two codes used equally -> exp(log 2) = 2 per group
    assert perplexity(half).item() == pytest.approx(2 * G, rel=1e-5)
    p = torch.tensor([[0.5, 0.25, 0.25]])
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert perplexity(p).item() == pytest.approx(math.exp(entropy), rel=1e-5)


def test_code_perplexity_counts_hard_choices():
    cfg = QuantizerConfig(groups=2, codes=4, dim=8)
    q = GumbelQuantizer(3, cfg).eval()
    with torch.no_grad():
        q.weight_proj.weight.zero_()
        q.weight_proj.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0, 0, 0, 5.0]))
    out = q(torch.randn(10, 3), temperature=1.0)
    assert torch.equal(out.codes, torch.tensor([[0, 3]] * 10))
    assert out.code_perplexity.item() == pytest.approx(2.0, rel=1e-5)  # collapsed: G
    # softmax([5, 0, 0, 0]) in each group: perplexity of that distribution, times G
    p = torch.softmax(torch.tensor([5.0, 0, 0, 0]), 0)
    assert out.prob_perplexity.item() == pytest.approx(2 * math.exp(-(p * p.log()).sum().item()), rel=1e-4)


def test_quantized_vectors_are_codebook_entries_and_straight_through():
    cfg = QuantizerConfig(groups=2, codes=16, dim=8)
    q = GumbelQuantizer(5, cfg).train()
    x = torch.randn(32, 5, requires_grad=True)
    out = q(x, temperature=2.0)
    book = q.codevectors.view(2, 16, 4)
    expected = torch.cat([book[0, out.codes[:, 0]], book[1, out.codes[:, 1]]], -1)
    assert torch.allclose(out.quantized, expected, atol=1e-6)
    out.quantized.sum().backward()  # the straight-through estimator passes gradient to x
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_temperature_is_a_pure_function_of_the_step():
    cfg = QuantizerConfig()
    assert cfg.temperature(0) == 2.0
    assert cfg.temperature(100_000) == pytest.approx(2.0 * 0.999995**100_000)
    assert cfg.temperature(10_000_000) == 0.5
