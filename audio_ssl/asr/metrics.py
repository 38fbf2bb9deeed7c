"""Word and character error rates through Levenshtein alignment.

WER = (substitutions + deletions + insertions) / reference words, summed over a corpus (not a
mean of per-utterance rates); CER likewise over characters, spaces included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class EditCounts:
    """The cheapest alignment of a hypothesis to a reference (ties: substitutions first)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(self.substitutions + other.substitutions,
                          self.deletions + other.deletions,
                          self.insertions + other.insertions,
                          self.reference_length + other.reference_length)

    @property
    def rate(self) -> float:
        """errors / reference length; an empty reference gives 0.0 with no errors, else inf."""
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length


ZERO = EditCounts(0, 0, 0, 0)


def edit_counts(reference: Sequence, hypothesis: Sequence) -> EditCounts:
    """Levenshtein alignment of two sequences (words, characters, token ids).

    Dynamic programming over (len(reference) + 1) x (len(hypothesis) + 1) cells, one row at a
    time; each cell keeps (cost, substitutions, deletions, insertions) of its best path.
    """
    ref, hyp = list(reference), list(hypothesis)
    # previous row: the empty reference prefix against each hypothesis prefix (all insertions)
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        row = [(i, 0, i, 0)]  # reference prefix against the empty hypothesis: all deletions
        for j in range(1, len(hyp) + 1):
            diag = prev[j - 1]
            if ref[i - 1] == hyp[j - 1]:
                best = diag
            else:
                best = (diag[0] + 1, diag[1] + 1, diag[2], diag[3])
            up = prev[j]  # delete ref[i - 1]
            if up[0] + 1 < best[0]:
                best = (up[0] + 1, up[1], up[2] + 1, up[3])
            left = row[j - 1]  # insert hyp[j - 1]
            if left[0] + 1 < best[0]:
                best = (left[0] + 1, left[1], left[2], left[3] + 1)
            row.append(best)
        prev = row
    _, s, d, n = prev[-1]
    return EditCounts(s, d, n, len(ref))


def word_errors(reference: str, hypothesis: str) -> EditCounts:
    """Alignment of whitespace-separated words."""
    return edit_counts(reference.split(), hypothesis.split())


def char_errors(reference: str, hypothesis: str) -> EditCounts:
    """Alignment of characters (spaces count; runs of whitespace are one space, ends trimmed)."""
    return edit_counts(" ".join(reference.split()), " ".join(hypothesis.split()))


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate."""
    return _corpus(references, hypotheses, word_errors).rate


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate."""
    return _corpus(references, hypotheses, char_errors).rate


def _corpus(references, hypotheses, fn) -> EditCounts:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = ZERO
    for r, h in zip(references, hypotheses):
        total = total + fn(r, h)
    return total


__all__ = ["EditCounts", "edit_counts", "word_errors", "char_errors", "wer", "cer"]
