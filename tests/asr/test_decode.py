"""Greedy CTC decoding by hand, and beam search where only the LM can break the tie."""

from __future__ import annotations

import pytest
import torch

from audio_ssl.asr.decode import BeamSearchDecoder, collapse, greedy_decode
from audio_ssl.asr.lm import build_ngram, tokenize, write_lexicon

VOCAB = ["<blank>", "|", "a", "c", "p", "t"]


def _emissions(frames: list[dict[str, float]]) -> torch.Tensor:
    """(1, T, V) log-probabilities: the given probabilities, the rest of the mass spread evenly."""
    rows = torch.full((len(frames), len(VOCAB)), 1e-3)  # (T, V)
    for t, probs in enumerate(frames):
        for token, p in probs.items():
            rows[t, VOCAB.index(token)] = p
    return (rows / rows.sum(-1, keepdim=True)).log()[None]


def test_collapse_merges_runs_then_drops_blanks():
    assert collapse([0, 2, 2, 0, 2, 3, 3, 1, 0, 0]) == [2, 2, 3, 1]
    assert collapse([]) == []


def test_greedy_decode_by_hand_with_padding():
    # row 0: c c _ a a _ t | _ a t   -> "cat at" ; row 1: a _ a (then padding: p p p) -> "aa"
    ids = [[3, 3, 0, 2, 2, 0, 5, 1, 0, 2, 5],
           [2, 0, 2, 4, 4, 4, 4, 4, 4, 4, 4]]
    logits = torch.nn.functional.one_hot(torch.tensor(ids), len(VOCAB)).float()  # (2, 11, V)
    assert greedy_decode(logits, torch.tensor([11, 3]), VOCAB) == ["cat at", "aa"]
    assert greedy_decode(logits, None, VOCAB)[1] == "aap"


# "ca?" where the last letter is p (0.50) or t (0.45): greedy says "cap"
AMBIGUOUS = [{"c": 0.9}, {"<blank>": 0.9}, {"a": 0.9}, {"<blank>": 0.9}, {"p": 0.5, "t": 0.45},
             {"<blank>": 0.9}]


@pytest.fixture
def cat_text() -> list[str]:
    return ["the cat", "a cat sat", "cat"] * 3


def test_word_lm_with_lexicon_prefers_the_word_it_knows(tmp_path, cat_text):
    emissions = _emissions(AMBIGUOUS)
    assert greedy_decode(emissions, None, VOCAB) == ["cap"]
    write_lexicon(["cat", "cap"], tmp_path / "lexicon.txt")
    without_lm = BeamSearchDecoder(VOCAB, lexicon=tmp_path / "lexicon.txt")
    assert without_lm(emissions, torch.tensor([6])) == ["cap"]
    build_ngram([tokenize(s, "word") for s in cat_text], order=2).write_arpa(tmp_path / "w.arpa")
    with_lm = BeamSearchDecoder(VOCAB, lm=tmp_path / "w.arpa", lexicon=tmp_path / "lexicon.txt",
                                lm_weight=1.0)
    assert with_lm(emissions, torch.tensor([6])) == ["cat"]


def test_char_lm_without_lexicon(tmp_path, cat_text):
    emissions = _emissions(AMBIGUOUS)
    assert BeamSearchDecoder(VOCAB)(emissions, None) == ["cap"]
    build_ngram([tokenize(s, "char") for s in cat_text], order=4).write_arpa(tmp_path / "c.arpa")
    decoder = BeamSearchDecoder(VOCAB, lm=tmp_path / "c.arpa", lm_weight=1.0)
    assert decoder(emissions, torch.tensor([6])) == ["cat"]


def test_beam_search_keeps_double_letters_and_word_breaks():
    frames = [{"c": 0.9}, {"a": 0.9}, {"<blank>": 0.9}, {"a": 0.9}, {"|": 0.9}, {"t": 0.9}]
    assert BeamSearchDecoder(VOCAB)(_emissions(frames), None) == ["caa t"]


def test_word_lm_without_lexicon_is_refused(tmp_path, cat_text):
    build_ngram([tokenize(s, "word") for s in cat_text], order=2).write_arpa(tmp_path / "w.arpa")
    with pytest.raises(ValueError, match="--lexicon"):
        BeamSearchDecoder(VOCAB, lm=tmp_path / "w.arpa")


def test_lexicon_words_the_model_cannot_spell_are_dropped(tmp_path):
    write_lexicon(["cat", "dog"], tmp_path / "lexicon.txt")  # no d, o, g in VOCAB
    decoder = BeamSearchDecoder(VOCAB, lexicon=tmp_path / "lexicon.txt")
    assert decoder(_emissions(AMBIGUOUS), None) == ["cat"]  # the only word it may spell
    write_lexicon(["dog"], tmp_path / "dog.txt")
    with pytest.raises(ValueError, match="no word"):
        BeamSearchDecoder(VOCAB, lexicon=tmp_path / "dog.txt")
