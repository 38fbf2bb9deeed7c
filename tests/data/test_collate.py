import pytest
import torch

from audio_ssl.data.collate import pad_batch


def test_rows_padded_with_zeros_to_the_longest():
    rows = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0]), torch.tensor([])]
    padded, lengths = pad_batch(rows)
    assert padded.dtype == torch.float32 and lengths.dtype == torch.int64
    assert torch.equal(padded, torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert lengths.tolist() == [3, 1, 0]


def test_fixed_width_and_dtype():
    padded, lengths = pad_batch([torch.tensor([5, 6])], width=4, dtype=torch.int64)
    assert padded.dtype == torch.int64
    assert padded.tolist() == [[5, 6, 0, 0]] and lengths.tolist() == [2]


def test_no_rows():
    padded, lengths = pad_batch([], width=7)
    assert padded.shape == (0, 7) and lengths.shape == (0,)
    assert pad_batch([])[0].shape == (0, 0)


def test_row_longer_than_width_raises():
    with pytest.raises(ValueError, match="3 values does not fit a batch of width 2"):
        pad_batch([torch.ones(3)], width=2)
