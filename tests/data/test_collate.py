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


def test_load_batch_pads_what_decodes_and_says_why_the_rest_did_not(tmp_path):
    import numpy as np
    import soundfile as sf

    from audio_ssl.data.collate import load_batch

    rng = np.random.default_rng(0)
    for name, n in [("a.wav", 1600), ("b.wav", 800)]:
        sf.write(tmp_path / name, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
    (tmp_path / "bad.flac").write_bytes(b"fLaC" + bytes(100))
    paths = [str(tmp_path / n) for n in ("a.wav", "bad.flac", "missing.wav", "b.wav")]

    whole = load_batch(paths, sample_rate=16000, normalize=False)
    assert whole.kept == [0, 3] and whole.waveforms.shape == (2, 1600)
    assert whole.lengths.tolist() == [1600, 800]
    assert torch.equal(whole.waveforms[1, 800:], torch.zeros(800))
    reasons = dict(whole.failures)
    assert reasons[1].startswith("cannot decode") and reasons[2] == "no such file"

    checked = load_batch([paths[0], paths[3]], sample_rate=16000, normalize=False,
                         expected=[1600, 900])
    assert checked.kept == [0]
    assert checked.failures == [(1, "decoded 800 samples, expected 900 (has the file changed "
                                    "since it was scanned?)")]

    crops = load_batch([paths[0], paths[3]], sample_rate=16000, normalize=True,
                       spans=[(100, 400), (600, 400)], width=500)
    assert crops.kept == [0] and crops.waveforms.shape == (1, 500)
    assert crops.lengths.tolist() == [400]
    assert abs(crops.waveforms[0, :400].mean().item()) < 1e-4
    assert crops.failures[0][1].startswith("decoded 200 samples from sample 600, expected 400")
