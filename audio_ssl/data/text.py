"""Transcripts: normalisation and the CTC character vocabulary.

:func:`normalize_text` applies a :class:`~audio_ssl.config.TextConfig` (default: lower case,
a-z, apostrophe, space). :class:`Vocabulary` is the token list of a CTC model: index 0 is the
blank ``<blank>``, index 1 the word separator ``|`` (a space in text), then the characters of
the training transcripts, sorted. It is saved in checkpoints as a plain ``list[str]``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from audio_ssl.config import TextConfig

BLANK = "<blank>"
WORD_SEPARATOR = "|"
_SPACES = re.compile(r"\s+")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def normalize_text(text: str, cfg: TextConfig = TextConfig()) -> str:
    """``text`` normalised by ``cfg``: see :class:`~audio_ssl.config.TextConfig` for the steps.

    >>> normalize_text("Hello, World -- it's 4 o'clock!")
    "hello world it's o'clock"
    """
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    if cfg.lowercase:
        text = text.lower()
    if cfg.strip_accents:
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    for ch in cfg.to_space:
        text = text.replace(ch, " ")
    kept = []
    for ch in text:
        if ch.isspace():
            kept.append(" ")
        elif ch in cfg.keep or (cfg.digits and ch in "0123456789") or _is_letter(ch, cfg.letters):
            kept.append(ch)
    return _SPACES.sub(" ", "".join(kept)).strip()


def _is_letter(ch: str, letters: str) -> bool:
    if letters == "ascii":
        return ("a" <= ch <= "z") or ("A" <= ch <= "Z")
    return ch.isalpha()


class TokenError(ValueError):
    """A transcript holds characters the vocabulary does not have."""

    def __init__(self, text: str, missing: Sequence[str]):
        self.text = text
        self.missing = list(missing)
        shown = ", ".join(repr(c) for c in self.missing)
        super().__init__(f"characters outside the vocabulary: {shown} in {text!r}")


@dataclass(frozen=True)
class Vocabulary:
    """CTC tokens: ``tokens[0]`` is the blank (``<blank>`` in vocabularies built here; other
    libraries' models name it ``<pad>`` or ``-``), ``|`` the word separator."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if len(tokens) < 2:
            raise ValueError(f"a vocabulary has the blank and at least one token, got {tokens!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"vocabulary has repeated tokens: {tokens!r}")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(tokens)})

    @classmethod
    def build(cls, texts: Iterable[str]) -> Vocabulary:
        """From normalised transcripts: blank, ``|``, then every character seen, sorted."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        chars.discard(" ")
        if WORD_SEPARATOR in chars:
            raise ValueError(f"transcripts contain the word separator {WORD_SEPARATOR!r}: "
                             "drop it in the text normalisation")
        return cls((BLANK, WORD_SEPARATOR, *sorted(chars)))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    @property
    def blank(self) -> int:
        return 0

    def missing(self, text: str) -> list[str]:
        """Characters of ``text`` (besides space) the vocabulary lacks, in order of appearance."""
        out: list[str] = []
        for ch in text:
            if ch != " " and ch not in self._index and ch not in out:
                out.append(ch)
        return out

    def encode(self, text: str) -> list[int]:
        """Normalised text -> token ids (spaces become ``|``); raises :class:`TokenError`."""
        missing = self.missing(text)
        if missing:
            raise TokenError(text, missing)
        sep = self._index.get(WORD_SEPARATOR)
        return [sep if ch == " " else self._index[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text, as given (no CTC collapsing): ``|`` becomes a space, the blank and
        any token of more than one character (``<pad>``, ``<s>``...) is dropped."""
        out = []
        for i in ids:
            token = self.tokens[int(i)]
            if token == WORD_SEPARATOR:
                out.append(" ")
            elif len(token) == 1:
                out.append(token)
        return _SPACES.sub(" ", "".join(out)).strip()


def ctc_frames_needed(ids: Sequence[int]) -> int:
    """Fewest frames a CTC alignment of ``ids`` needs: one per token, plus a blank between each
    pair of equal neighbours."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


__all__ = ["BLANK", "WORD_SEPARATOR", "normalize_text", "TokenError", "Vocabulary",
           "ctc_frames_needed"]
