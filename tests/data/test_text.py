"""Text normalisation and the CTC character vocabulary."""

from __future__ import annotations

import pytest

from audio_ssl.config import TextConfig
from audio_ssl.data.text import (
    BLANK,
    WORD_SEPARATOR,
    TokenError,
    Vocabulary,
    ctc_frames_needed,
    normalize_text,
)


def test_default_normalisation_is_the_shared_corpora_rule():
    assert normalize_text("Hello, World -- it's 4 O'Clock!") == "hello world it's o'clock"
    assert normalize_text("  Well-known\tfacts\n") == "well known facts"
    assert normalize_text("Café déjà vu") == "cafe deja vu"
    assert normalize_text("don\u2019t") == "don't"  # typographic apostrophe
    assert normalize_text("?!., 123") == ""


def test_normalisation_options():
    assert normalize_text("Ça va? 42", TextConfig(letters="any", strip_accents=False,
                                                  digits=True)) == "ça va 42"
    assert normalize_text("Straße Ωmega", TextConfig(letters="any")) == "straße ωmega"
    assert normalize_text("Hello World", TextConfig(lowercase=False)) == "Hello World"
    assert normalize_text("a_b-c", TextConfig(to_space="_", keep="'-")) == "a b-c"


def test_vocabulary_layout_and_round_trip():
    texts = [normalize_text(t) for t in ["The cat's hat.", "A zebra!"]]
    vocab = Vocabulary.build(texts)
    assert vocab.tokens[:2] == (BLANK, WORD_SEPARATOR)
    assert list(vocab.tokens[2:]) == sorted(set("the cat's hat a zebra") - {" "})
    for text in texts:
        ids = vocab.encode(text)
        assert 0 not in ids  # the blank is never a target
        assert vocab.decode(ids) == text
    assert vocab.encode("a a") == [vocab.tokens.index("a"), 1, vocab.tokens.index("a")]


def test_out_of_vocabulary_characters_are_named():
    vocab = Vocabulary.build(["abc"])
    assert vocab.missing("abd xyx") == ["d", "x", "y"]
    with pytest.raises(TokenError, match="'d'"):
        vocab.encode("abd")


def test_decode_drops_blank_and_special_tokens():
    vocab = Vocabulary(("<pad>", "<s>", "</s>", "<unk>", "|", "A", "B"))  # an HF-style layout
    assert vocab.decode([0, 5, 1, 4, 4, 6, 3]) == "A B"


def test_vocabulary_rejects_bad_layouts():
    with pytest.raises(ValueError, match="repeated"):
        Vocabulary((BLANK, "|", "a", "a"))
    with pytest.raises(ValueError, match="word separator"):
        Vocabulary.build(["a|b"])


def test_ctc_frames_needed_counts_repeats():
    assert ctc_frames_needed([]) == 0
    assert ctc_frames_needed([3, 4, 5]) == 3
    assert ctc_frames_needed([3, 3, 4, 4, 4]) == 5 + 3  # a blank between each equal pair
