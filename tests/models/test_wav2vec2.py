from dataclasses import replace

import pytest
import torch

from audio_ssl import config
from audio_ssl.models import Wav2Vec2ForPretraining, Wav2Vec2Model, pretraining_model
from tests.conftest import small_model_config


@pytest.mark.parametrize("norm,pre", [("group", False), ("layer", True)])
def test_padded_batch_equals_items_one_by_one(norm, pre):
    torch.manual_seed(0)
    model = Wav2Vec2Model(small_model_config(norm, pre)).eval()
    lengths = torch.tensor([16_000, 11_000, 6_400])
    batch = torch.zeros(3, 16_000)
    items = [torch.randn(int(n)) for n in lengths]
    for i, item in enumerate(items):
        batch[i, : len(item)] = item
    batch[1, 11_000:] = 3.0  # garbage in the padding must not matter
    with torch.no_grad():
        out = model(batch, lengths, return_layers=True)
        for i, item in enumerate(items):
            single = model(item[None], return_layers=True)
            t = single.context.shape[1]
            assert int(out.frame_lengths[i]) == t
            torch.testing.assert_close(out.context[i, :t], single.context[0], atol=1e-5, rtol=1e-4)
            for a, b in zip(out.hidden_states, single.hidden_states):
                torch.testing.assert_close(a[i, :t], b[0], atol=1e-5, rtol=1e-4)


def test_base_preset_matches_hf_parameter_count():
    model = Wav2Vec2ForPretraining(config.preset("base").model)
    assert sum(p.numel() for p in model.parameters()) == 95_044_608  # HF Wav2Vec2ForPreTraining


@pytest.mark.parametrize("objective", ["cpc", "wav2vec2"])
def test_tiny_preset_is_a_few_million_parameters(objective):
    cfg = config.preset("tiny").model
    assert cfg.objective == "cpc"  # the default since the objectives study (docs/studies)
    n = sum(p.numel() for p in pretraining_model(replace(cfg, objective=objective)).parameters())
    assert 1e6 < n < 10e6


def test_mask_embedding_replaces_masked_frames():
    """The frames entering the context network are the mask embedding at the masked positions
    and the unmasked run's frames everywhere else (read by a hook on the context network)."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(small_model_config()).eval()
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    t = int(model.frame_lengths(torch.tensor([8000]))[0])
    mask = torch.zeros(2, t, dtype=torch.bool)
    mask[0, 5:10] = True
    mask[1, [0, 7, t - 1]] = True
    entered = []
    model.context.register_forward_pre_hook(lambda _, args: entered.append(args[0]))
    with torch.no_grad():
        model(x, mask=mask)
        model(x)
    masked, unmasked = entered  # (B, T, D) each
    assert torch.equal(masked[mask], model.mask_embedding.expand(int(mask.sum()), -1))
    assert torch.equal(masked[~mask], unmasked[~mask])
    assert not torch.allclose(unmasked[mask], masked[mask])  # the run without a mask keeps them


@pytest.mark.parametrize("pre", [False, True])
def test_first_n_layers_are_the_states_of_the_full_run(pre):
    """``num_layers=N`` runs layers 1..N: its states are the full run's first N + 1, and its
    output is layer N's (after the final layer norm only when N is the last layer)."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(small_model_config("layer", pre)).eval()
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([8000, 6000])
    depth = len(model.context.layers)
    with torch.no_grad():
        full = model(x, lengths, return_layers=True)
        for n in range(depth + 1):
            part = model(x, lengths, return_layers=True, num_layers=n)
            assert len(part.hidden_states) == n + 1
            assert all(torch.equal(a, b) for a, b in zip(part.hidden_states, full.hidden_states))
            assert torch.equal(part.context, full.hidden_states[n])
    with pytest.raises(ValueError, match=f"num_layers must be in 0..{depth}, got {depth + 1}"):
        model(x, num_layers=depth + 1)
