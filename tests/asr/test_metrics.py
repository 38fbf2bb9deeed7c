"""WER and CER against values counted by hand."""

from __future__ import annotations

import pytest

from audio_ssl.asr.metrics import EditCounts, cer, char_errors, edit_counts, wer, word_errors


def test_edit_counts_by_kind():
    # kitten -> sitting: k->s, e->i substitutions, g inserted
    assert edit_counts("kitten", "sitting") == EditCounts(2, 0, 1, 6)
    assert edit_counts("abc", "") == EditCounts(0, 3, 0, 3)
    assert edit_counts("", "ab") == EditCounts(0, 0, 2, 0)
    assert edit_counts("abc", "abc").errors == 0


def test_word_errors_known_example():
    ref = "the cat sat on the mat"
    hyp = "cat sit on the mat today"
    counts = word_errors(ref, hyp)  # "the" deleted, sat->sit, "today" inserted
    assert (counts.substitutions, counts.deletions, counts.insertions) == (1, 1, 1)
    assert counts.rate == pytest.approx(3 / 6)


def test_corpus_rates_sum_errors_not_average_rates():
    refs = ["a b c d", "e"]
    hyps = ["a b c d", "x"]
    assert wer(refs, hyps) == pytest.approx(1 / 5)  # the mean of per-utterance rates is 0.5
    assert cer(["ab cd"], ["ab  cx"]) == pytest.approx(1 / 5)  # spaces count, runs fold
    assert char_errors("ab", "ba").errors == 2
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])


def test_empty_reference():
    assert word_errors("", "").rate == 0.0
    assert word_errors("", "extra").rate == float("inf")
