"""The feature penalty: the mean of the squared conv features over the valid frames."""

import torch

from audio_ssl.losses.contrastive import feature_penalty


def test_sum_and_count_without_padding():
    features = torch.tensor([[[1.0, -2.0], [3.0, 0.0]]])  # (B, T, C) = (1, 2, 2)
    total, count = feature_penalty(features)
    assert total.item() == 14.0 and count.item() == 4.0


def test_padded_frames_are_left_out():
    features = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [100.0, 100.0]]])
    valid = torch.tensor([[True, True], [True, False]])  # (B, T): row 1's last frame is padding
    total, count = feature_penalty(features, valid)
    assert total.item() == 1 + 4 + 9 + 16 + 1 + 1 and count.item() == 6.0
    assert (total / count).item() == torch.tensor([1.0, 4, 9, 16, 1, 1]).mean().item()


def test_computed_in_fp32():
    features = torch.full((1, 3, 4), 300.0, dtype=torch.bfloat16)  # 300^2 * 12 > bf16's precision
    total, count = feature_penalty(features)
    assert total.dtype == torch.float32 and total.item() == 300.0 ** 2 * 12 and count.item() == 12
