"""n-gram language models for beam search: interpolated modified Kneser-Ney, written as ARPA.

KenLM's ``lmplz`` does not install here (no wheel, no network to build it), so the estimator is
implemented in Python, following Chen & Goodman (1998) as ``lmplz`` does, without pruning:

- each sentence is ``<s> w1 .. wk </s>``; counts are taken for every order 1..N;
- adjusted counts: raw counts at the highest order and for n-grams starting with ``<s>``; for
  the other lower-order n-grams the number of distinct words seen before them (continuation
  counts);
- three discounts per order from the counts-of-counts t1..t4 of the adjusted counts,
  ``Y = t1 / (t1 + 2 t2)``, ``D1 = 1 - 2Y t2/t1``, ``D2 = 2 - 3Y t3/t2``, ``D3+ = 3 - 4Y t4/t3``;
  when a t is 0 or a D falls outside (0, k] (small texts) the order falls back to
  (0.5, 1.0, 1.5), like ``lmplz --discount_fallback``;
- interpolation: ``p(w|h) = (a(hw) - D(a(hw))) / sum_v a(hv) + gamma(h) p(w|h')`` with
  ``gamma(h) = (D1 N1(h) + D2 N2(h) + D3 N3+(h)) / sum_v a(hv)``, the unigrams interpolated with
  the uniform distribution over the vocabulary (``</s>`` and ``<unk>`` included, ``<s>`` not);
  ``<unk>`` gets only the uniform share;
- the ARPA backoff weight of a context ``h`` is ``gamma(h)``: for an unseen ``hw`` the
  interpolated model gives exactly ``gamma(h) p(w|h')``, which is the ARPA back-off rule.

The model is "word" level (tokens are words; for decoding with a lexicon) or "char" level
(tokens are the CTC characters, ``|`` between words; for lexicon-free decoding).
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from audio_ssl.config import TextConfig
from audio_ssl.data.text import WORD_SEPARATOR, normalize_text

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
Ngram = tuple[str, ...]


def estimate_discounts(counts_of_counts: Sequence[int]) -> tuple[float, float, float] | None:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from t1..t4 (how many n-grams have an
    adjusted count of 1, 2, 3, 4); None when they cannot be estimated (a zero, or a discount
    outside (0, k])."""
    t1, t2, t3, t4 = (int(t) for t in counts_of_counts[:4])
    if min(t1, t2, t3, t4) <= 0:
        return None
    y = t1 / (t1 + 2 * t2)
    d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if any(not (0 < dk <= k) for k, dk in enumerate(d, 1)):
        return None
    return d


@dataclass
class NgramLM:
    """An n-gram model in back-off form (what an ARPA file holds).

    Attributes:
        order: N.
        log10_probs: per order n (index n - 1): n-gram -> log10 p(w | h), interpolated.
        log10_backoffs: per order n < N: context n-gram -> log10 gamma(context).
        discounts: per order, the (D1, D2, D3+) used.
        fallback: per order, True where the discounts were the fallback.
    """

    order: int
    log10_probs: list[dict[Ngram, float]]
    log10_backoffs: list[dict[Ngram, float]]
    discounts: list[tuple[float, float, float]] = field(default_factory=list)
    fallback: list[bool] = field(default_factory=list)

    @property
    def vocabulary(self) -> list[str]:
        return sorted(g[0] for g in self.log10_probs[0])

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context) by the ARPA back-off rule (the context's last N - 1 words;
        unknown words are ``<unk>``)."""
        known = self.log10_probs[0]
        word = word if (word,) in known else UNK
        ctx = tuple(w if (w,) in known else UNK for w in context)[-(self.order - 1):] \
            if self.order > 1 else ()
        backoff = 0.0
        while True:
            gram = (*ctx, word)
            p = self.log10_probs[len(gram) - 1].get(gram)
            if p is not None:
                return backoff + p
            backoff += self.log10_backoffs[len(ctx) - 1].get(ctx, 0.0) if ctx else 0.0
            ctx = ctx[1:]

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        return 10.0 ** self.log10_prob(word, context)

    def write_arpa(self, path: str | os.PathLike) -> None:
        """Write the model as an ARPA file (readable by KenLM and flashlight's decoder)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for n, probs in enumerate(self.log10_probs, 1):
                f.write(f"ngram {n}={len(probs)}\n")
            for n, probs in enumerate(self.log10_probs, 1):
                f.write(f"\n\\{n}-grams:\n")
                backoffs = self.log10_backoffs[n - 1] if n < self.order else {}
                for gram in sorted(probs):
                    line = f"{probs[gram]:.7f}\t{' '.join(gram)}"
                    if n < self.order:
                        line += f"\t{backoffs.get(gram, 0.0):.7f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")
        os.replace(tmp, path)


def _counts(sentences: Iterable[Sequence[str]], order: int) -> list[Counter[Ngram]]:
    """Raw counts per order n (index n - 1) of every n-gram of ``<s> w1 .. wk </s>``."""
    counts: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    sentences_seen = 0
    for sentence in sentences:
        words = [BOS, *sentence, EOS]
        for w in sentence:
            if w in (BOS, EOS, UNK) or not w or any(c.isspace() for c in w):
                raise ValueError(f"token {w!r} is reserved or holds whitespace")
        sentences_seen += 1
        for n in range(1, order + 1):
            for i in range(len(words) - n + 1):
                counts[n - 1][tuple(words[i:i + n])] += 1
    if sentences_seen == 0:
        raise ValueError("no sentences to build a language model from")
    return counts


def _adjusted_counts(counts: list[Counter[Ngram]]) -> list[dict[Ngram, int]]:
    """Kneser-Ney adjusted counts per order: raw at the highest order and for n-grams starting
    with ``<s>``, else the number of distinct words seen before the n-gram; ``(<s>,)`` left out
    (never predicted)."""
    order = len(counts)
    adjusted: list[dict[Ngram, int]] = [dict() for _ in range(order)]
    adjusted[order - 1] = dict(counts[order - 1])
    for n in range(order - 1, 0, -1):  # orders N-1 .. 1 (index n - 1)
        left = Counter(g[1:] for g in counts[n])  # distinct left extensions of each n-gram
        adjusted[n - 1] = {g: (c if g[0] == BOS else left[g]) for g, c in counts[n - 1].items()}
    del adjusted[0][(BOS,)]  # <s> is never predicted
    return adjusted


def _discounts(adjusted: list[dict[Ngram, int]],
               given: Sequence[tuple[float, float, float]] | None
               ) -> tuple[list[tuple[float, float, float]], list[bool]]:
    """(D1, D2, D3+) per order, ``given`` or estimated from the adjusted counts-of-counts, and
    per order whether the estimate fell back to :data:`FALLBACK_DISCOUNTS`."""
    used, fell_back = [], []
    for n in range(len(adjusted)):
        if given is not None:
            used.append(tuple(float(x) for x in given[n]))
            fell_back.append(False)
            continue
        coc = Counter(v for v in adjusted[n].values() if v <= 4)
        d = estimate_discounts([coc[1], coc[2], coc[3], coc[4]])
        used.append(d if d is not None else FALLBACK_DISCOUNTS)
        fell_back.append(d is None)
    return used, fell_back


def _interpolate(adjusted: list[dict[Ngram, int]], used: list[tuple[float, float, float]]
                 ) -> tuple[list[dict[Ngram, float]], list[dict[Ngram, float]]]:
    """(p(w|h) per order, gamma(h) per order): interpolated probabilities, lowest order first,
    the unigrams with the uniform distribution over the vocabulary (``<unk>`` included)."""
    order = len(adjusted)

    def discount(n: int, a: int) -> float:
        return used[n][min(a, 3) - 1]

    totals: list[dict[Ngram, float]] = []  # per context: sum_v a(hv)
    gammas: list[dict[Ngram, float]] = []
    for n in range(order):
        total: dict[Ngram, float] = defaultdict(float)
        mass: dict[Ngram, float] = defaultdict(float)
        for gram, a in adjusted[n].items():
            total[gram[:-1]] += a
            mass[gram[:-1]] += discount(n, a)
        totals.append(dict(total))
        gammas.append({h: mass[h] / t for h, t in total.items()})

    vocab = {g[0] for g in adjusted[0]} | {UNK}
    uniform = 1.0 / len(vocab)
    p1 = {}
    for w in vocab:
        a = adjusted[0].get((w,), 0)
        own = (a - discount(0, a)) / totals[0][()] if a > 0 else 0.0
        p1[(w,)] = own + gammas[0][()] * uniform
    probs: list[dict[Ngram, float]] = [p1]
    for n in range(1, order):
        pn = {}
        for gram, a in adjusted[n].items():
            h = gram[:-1]
            pn[gram] = (a - discount(n, a)) / totals[n][h] + gammas[n][h] * probs[n - 1][gram[1:]]
        probs.append(pn)
    return probs, gammas


def build_ngram(sentences: Iterable[Sequence[str]], order: int = 3,
                discounts: Sequence[tuple[float, float, float]] | None = None) -> NgramLM:
    """Estimate an interpolated modified Kneser-Ney model of ``order`` from tokenised sentences
    (the steps of the module docstring: counts, adjusted counts, discounts, interpolation).

    ``discounts``: per order (D1, D2, D3+) to use instead of estimating them (tests, or texts too
    small to estimate from).
    """
    if order < 2:
        raise ValueError(f"order must be at least 2 (KenLM reads bigram models and up), got {order}")
    if discounts is not None and len(discounts) != order:
        raise ValueError(f"expected {order} (D1, D2, D3) triples, got {len(discounts)}")
    adjusted = _adjusted_counts(_counts(sentences, order))
    used, fell_back = _discounts(adjusted, discounts)
    probs, gammas = _interpolate(adjusted, used)
    log_probs = [{g: math.log10(p) for g, p in pn.items()} for pn in probs]
    log_probs[0][(BOS,)] = -99.0  # in the vocabulary as a context, never predicted
    backoffs = [{h: math.log10(g) for h, g in gammas[n + 1].items() if g > 0}
                for n in range(order - 1)]
    return NgramLM(order, log_probs, backoffs, used, fell_back)


def tokenize(line: str, unit: str, text: TextConfig | None = TextConfig()) -> list[str]:
    """One line of text -> LM tokens: words, or characters with ``|`` between words.
    ``text=None`` leaves the line as it is (split on whitespace)."""
    line = normalize_text(line, text) if text is not None else " ".join(line.split())
    if unit == "word":
        return line.split()
    if unit == "char":
        return [WORD_SEPARATOR if ch == " " else ch for ch in line]
    raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")


@dataclass
class LMResult:
    """What `audio-ssl lm` built."""

    path: Path
    unit: str
    order: int
    sentences: int
    tokens: int
    ngrams: list[int]
    fallback: list[bool]
    lexicon: Path | None

    def summary(self) -> str:
        counts = ", ".join(f"{n}-grams {c:,}" for n, c in enumerate(self.ngrams, 1))
        text = (f"{self.unit}-level {self.order}-gram model (interpolated modified Kneser-Ney) "
                f"from {self.sentences:,} sentences, {self.tokens:,} tokens: {counts}\n"
                f"  written to {self.path}\n")
        if any(self.fallback):
            orders = ", ".join(str(n) for n, f in enumerate(self.fallback, 1) if f)
            text += (f"  order(s) {orders}: too little text to estimate the discounts; used "
                     f"{FALLBACK_DISCOUNTS}\n")
        if self.lexicon is not None:
            text += f"  lexicon {self.lexicon}\n"
        return text


def write_lexicon(words: Iterable[str], path: str | os.PathLike) -> int:
    """A flashlight lexicon: ``word<TAB>w o r d |`` a line, sorted; returns the word count."""
    words = sorted({w for w in words if w not in (BOS, EOS, UNK)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for w in words:
            f.write(f"{w}\t{' '.join(w)} {WORD_SEPARATOR}\n")
    return len(words)


def build_lm_file(text_file: str | os.PathLike, output: str | os.PathLike, *, order: int | None = None,
                  unit: str = "word", text: TextConfig | None = TextConfig(),
                  lexicon: str | os.PathLike | None = None) -> LMResult:
    """`audio-ssl lm`: a text file (one sentence a line) -> ARPA model (and a lexicon of its
    words). Default order: 3 for words, 6 for characters."""
    src = Path(text_file)
    if not src.is_file():
        raise FileNotFoundError(f"text file {src} does not exist")
    order = order if order is not None else (3 if unit == "word" else 6)
    sentences = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            tokens = tokenize(line, unit, text)
            if tokens:
                sentences.append(tokens)
    if not sentences:
        raise ValueError(f"{src}: no text left after normalisation")
    lm = build_ngram(sentences, order)
    lm.write_arpa(output)
    lex_path = None
    if lexicon is not None:
        words = {w for s in sentences for w in s} if unit == "word" else \
            {w for s in sentences for w in "".join(s).split(WORD_SEPARATOR) if w}
        write_lexicon(words, lexicon)
        lex_path = Path(lexicon)
    return LMResult(Path(output), unit, order, len(sentences), sum(len(s) for s in sentences),
                    [len(p) for p in lm.log10_probs], lm.fallback, lex_path)


def arpa_unigrams(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA file's 1-gram section."""
    words: list[str] = []
    section = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if section == 1:
                    break
                section = 1 if line == "\\1-grams:" else None
                continue
            if section == 1 and line:
                parts = line.split()
                if len(parts) >= 2:
                    words.append(parts[1])
    if not words:
        raise ValueError(f"{path}: not an ARPA file (no \\1-grams: section)")
    return words


__all__ = ["BOS", "EOS", "UNK", "FALLBACK_DISCOUNTS", "estimate_discounts", "NgramLM",
           "build_ngram", "tokenize", "LMResult", "write_lexicon", "build_lm_file",
           "arpa_unigrams"]
