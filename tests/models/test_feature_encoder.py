import pytest
import torch

from audio_ssl.config import BASE_CONV, FeatureEncoderConfig
from audio_ssl.models.feature_encoder import FeatureEncoder, frame_lengths, receptive_field


def test_base_stack_has_20ms_hop_and_25ms_field():
    assert receptive_field(BASE_CONV) == (400, 320)


@pytest.mark.parametrize("samples", [400, 401, 719, 720, 16_000, 16_001, 35_999, 160_000])
def test_frame_lengths_match_the_conv_stack(samples):
    enc = FeatureEncoder(FeatureEncoderConfig(conv_layers=((8, 10, 5),) + ((8, 3, 2),) * 4 + ((8, 2, 2),) * 2))
    with torch.no_grad():
        z = enc(torch.randn(1, samples))
    assert z.shape[1] == int(frame_lengths(torch.tensor([samples]), enc.cfg.conv_layers)[0])
    # closed form for the paper's stack: floor((S - 400) / 320) + 1
    assert z.shape[1] == (samples - 400) // 320 + 1


def test_short_input_gives_zero_frames():
    assert frame_lengths(torch.tensor([0, 100, 399]), BASE_CONV).tolist() == [0, 0, 0]


def test_gradient_into_the_encoder_is_scaled():
    torch.manual_seed(0)
    cfg = FeatureEncoderConfig(conv_layers=((8, 10, 5), (8, 3, 2)), grad_scale=1.0)
    a = FeatureEncoder(cfg)
    b = FeatureEncoder(FeatureEncoderConfig(conv_layers=cfg.conv_layers, grad_scale=0.1))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1000)
    a(x).sum().backward()
    b(x).sum().backward()
    ga, gb = a.layers[0].conv.weight.grad, b.layers[0].conv.weight.grad
    assert torch.allclose(gb, 0.1 * ga, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bias", [False, True])
def test_channels_last_path_equals_the_plain_path(bias):
    torch.manual_seed(0)
    cfg = FeatureEncoderConfig(conv_layers=((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2,
                               norm="layer", conv_bias=bias)
    enc = FeatureEncoder(cfg)
    assert enc.channels_last
    x = torch.randn(3, 8000)
    fast = enc(x)
    fast.square().sum().backward()
    fast_grads = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    enc.channels_last = False
    plain = enc(x)
    plain.square().sum().backward()
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)
    for a, p in zip(fast_grads, enc.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-4, rtol=1e-3)
