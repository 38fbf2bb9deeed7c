"""The n-gram builder against probabilities computed by hand, and KenLM reading its ARPA."""

from __future__ import annotations

import math
import random

import pytest

from audio_ssl.asr.lm import (
    FALLBACK_DISCOUNTS,
    arpa_unigrams,
    build_lm_file,
    build_ngram,
    estimate_discounts,
    tokenize,
)

FIXED = [(0.5, 1.0, 1.5)] * 2


def test_bigram_probabilities_by_hand():
    # sentences "<s> a b </s>" and "<s> a c </s>", D1 = 0.5, D2 = 1.
    # Unigram adjusted counts = distinct left neighbours: a 1 (<s>), b 1, c 1, </s> 2; total 5.
    # gamma() = (0.5 * 3 + 1 * 1) / 5 = 0.5; vocabulary a b c </s> <unk>: uniform 1/5.
    lm = build_ngram([["a", "b"], ["a", "c"]], order=2, discounts=FIXED)
    assert lm.prob("a") == pytest.approx(0.5 / 5 + 0.5 / 5)  # 0.2
    assert lm.prob("</s>") == pytest.approx(1 / 5 + 0.5 / 5)  # 0.3
    assert lm.prob("<unk>") == pytest.approx(0.5 / 5)  # only the uniform share
    # context <s>: "<s> a" has raw count 2 (n-grams starting with <s> keep raw counts)
    # p(a|<s>) = (2 - 1) / 2 + gamma(<s>) p(a), gamma(<s>) = 1 * 1 / 2
    assert lm.prob("a", ["<s>"]) == pytest.approx(0.5 + 0.5 * 0.2)
    # context a: b 1, c 1; gamma(a) = 0.5 * 2 / 2
    assert lm.prob("b", ["a"]) == pytest.approx(0.5 / 2 + 0.5 * 0.2)
    assert lm.prob("</s>", ["a"]) == pytest.approx(0.5 * 0.3)  # unseen: back-off
    assert lm.prob("zebra", ["a"]) == pytest.approx(0.5 * 0.1)  # unknown word -> <unk>
    assert lm.log10_backoffs[0][("a",)] == pytest.approx(math.log10(0.5))


def test_trigram_continuation_counts_by_hand():
    # "<s> x y </s>" twice and "<s> z y </s>": order 3 with D = 0.5 / 1 / 1.5
    lm = build_ngram([["x", "y"], ["x", "y"], ["z", "y"]], order=3, discounts=[(0.5, 1.0, 1.5)] * 3)
    # unigram continuation counts: x 1 (<s>), z 1, y 2 (x, z), </s> 1 (y) -> total 5
    # gamma() = (0.5 * 3 + 1 * 1) / 5 = 0.5; vocabulary x y z </s> <unk>
    p_y = (2 - 1) / 5 + 0.5 / 5
    assert lm.prob("y") == pytest.approx(p_y)
    # bigram "x y": continuation count 1 (<s> x y); context x has only y: gamma(x) = 0.5 / 1
    p_y_x = (1 - 0.5) / 1 + 0.5 * p_y
    assert lm.prob("y", ["x"]) == pytest.approx(p_y_x)
    # trigram "<s> x y": raw count 2 at the top order; gamma(<s> x) = 1 * 1 / 2
    assert lm.prob("y", ["<s>", "x"]) == pytest.approx((2 - 1) / 2 + 0.5 * p_y_x)


def test_every_context_sums_to_one():
    rng = random.Random(0)
    text = [[rng.choice("abcdefg") for _ in range(rng.randint(1, 8))] for _ in range(300)]
    lm = build_ngram(text, order=4)
    words = [w for w in lm.vocabulary if w != "<s>"]
    for context in [(), ("a",), ("<s>", "a"), ("a", "b", "c"), ("g", "g", "g"), ("q",)]:
        assert sum(lm.prob(w, context) for w in words) == pytest.approx(1.0, abs=1e-9)


def test_discount_estimates_and_fallback():
    # t1..t4 = 10, 4, 2, 1: Y = 10 / 18
    y = 10 / 18
    assert estimate_discounts([10, 4, 2, 1]) == pytest.approx(
        (1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2))
    assert estimate_discounts([5, 0, 1, 1]) is None
    lm = build_ngram([["a", "b"]], order=2)
    assert lm.fallback == [True, True] and lm.discounts[0] == FALLBACK_DISCOUNTS


def test_kenlm_reads_our_arpa_with_the_same_probabilities(tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    lm = build_ngram([["a", "b"], ["a", "c"], ["b", "a", "a"]], order=3)
    path = tmp_path / "lm.arpa"
    lm.write_arpa(path)
    assert sorted(arpa_unigrams(path)) == sorted(lm.vocabulary)
    words = Dictionary()
    for w in ["a", "b", "c", "</s>", "<unk>"]:
        words.add_entry(w)
    kenlm = KenLM(str(path), words)
    state = kenlm.start(False)
    history = ["<s>"]
    for w in ["b", "a", "a", "c"]:
        state, score = kenlm.score(state, words.get_index(w))
        assert score == pytest.approx(lm.log10_prob(w, history), abs=1e-5)
        history.append(w)
    _, score = kenlm.finish(state)
    assert score == pytest.approx(lm.log10_prob("</s>", history), abs=1e-5)


def test_lm_file_word_and_char_units(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The cat sat.\nA cat!\n\n")
    assert tokenize("The cat!", "char") == ["t", "h", "e", "|", "c", "a", "t"]
    result = build_lm_file(text, tmp_path / "w.arpa", unit="word", lexicon=tmp_path / "lex.txt")
    assert (result.order, result.sentences, result.tokens) == (3, 2, 5)
    assert "trigram" not in result.summary() and "3-grams" in result.summary()
    assert (tmp_path / "lex.txt").read_text().splitlines() == [
        "a\ta |", "cat\tc a t |", "sat\ts a t |", "the\tt h e |"]
    result = build_lm_file(text, tmp_path / "c.arpa", unit="char")
    assert result.order == 6 and "|" in arpa_unigrams(tmp_path / "c.arpa")
    with pytest.raises(ValueError, match="at least 2"):
        build_ngram([["a"]], order=1)
