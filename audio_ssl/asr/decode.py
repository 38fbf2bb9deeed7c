"""CTC decoding: greedy (best path), and beam search with an n-gram LM through torchaudio's
``ctc_decoder`` (flashlight-text).

Both take log-probabilities (B, T, V) over a CTC vocabulary whose index 0 is the blank and
whose ``|`` is the word separator, with ``frame_lengths`` (B,), and return one string per row.
With a lexicon, beam search only spells words of the lexicon and the LM is over words; without
one, the LM is over the CTC tokens (a ``char`` model from ``audio-ssl lm --unit char``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from audio_ssl import console
from audio_ssl.data.text import WORD_SEPARATOR, Vocabulary


def collapse(ids: Sequence[int], blank: int = 0) -> list[int]:
    """CTC best-path rule: merge runs of the same id, then drop blanks."""
    out: list[int] = []
    previous = None
    for i in ids:
        i = int(i)
        if i != previous and i != blank:
            out.append(i)
        previous = i
    return out


def greedy_decode(log_probs: torch.Tensor, frame_lengths: torch.Tensor | None,
                  vocab: Vocabulary | Sequence[str]) -> list[str]:
    """Best path per row: argmax each frame, collapse, map ids to text.

    log_probs: (B, T, V) (logits work too: the argmax is the same); frame_lengths: (B,) or None
    (every frame is valid).
    """
    vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary(tuple(vocab))
    best = log_probs.argmax(-1).cpu()  # (B, T)
    lengths = ([best.shape[1]] * best.shape[0] if frame_lengths is None
               else frame_lengths.cpu().tolist())
    return [vocab.decode(collapse(row[: int(n)].tolist())) for row, n in zip(best, lengths)]


class BeamSearchDecoder:
    """Beam search over CTC outputs with an optional n-gram LM (ARPA or KenLM binary).

    Args:
        vocab: the model's tokens (index 0 = blank; ``|`` separates words).
        lm: path of an n-gram model, or None (beam search without an LM).
        lexicon: path of a lexicon (``word<TAB>w o r d |`` a line), or None: lexicon-free, and
            then the LM must be over the CTC tokens.
        beam_size, lm_weight, word_score, beam_threshold: torchaudio ``ctc_decoder`` options.
    """

    def __init__(self, vocab: Vocabulary | Sequence[str], *, lm: str | os.PathLike | None = None,
                 lexicon: str | os.PathLike | None = None, beam_size: int = 50,
                 lm_weight: float = 2.0, word_score: float = 0.0,
                 beam_threshold: float = 50.0) -> None:
        from torchaudio.models.decoder import ctc_decoder

        self.vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary(tuple(vocab))
        tokens = list(self.vocab.tokens)
        if WORD_SEPARATOR not in tokens:
            raise ValueError(f"beam search needs the word separator {WORD_SEPARATOR!r} in the "
                             f"vocabulary, got {tokens}")
        self._tmp: tempfile.TemporaryDirectory | None = None
        lexicon_path = None
        if lexicon is not None:
            lexicon_path = self._usable_lexicon(Path(lexicon), set(tokens))
        if lm is not None:
            lm = Path(lm)
            if not lm.is_file():
                raise FileNotFoundError(f"language model {lm} does not exist")
            if lexicon is None and lm.suffix.lower() == ".arpa":
                self._check_token_lm(lm, set(tokens))
        with console.native_output_hidden():  # KenLM's loading chatter and progress stars
            self.decoder = ctc_decoder(
                lexicon=None if lexicon_path is None else str(lexicon_path),
                tokens=tokens, lm=None if lm is None else str(lm), beam_size=beam_size,
                lm_weight=lm_weight, word_score=word_score, beam_threshold=beam_threshold,
                blank_token=tokens[0], sil_token=WORD_SEPARATOR,
                unk_word="<unk>",
            )

    def _usable_lexicon(self, path: Path, tokens: set[str]) -> Path:
        """The lexicon, less the words it spells with tokens the model lacks."""
        if not path.is_file():
            raise FileNotFoundError(f"lexicon {path} does not exist")
        kept, dropped = [], 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise ValueError(f"{path}:{lineno}: expected 'word<TAB>spelling', got {line!r}")
                if all(t in tokens for t in parts[1:]):
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += 1
        if not kept:
            raise ValueError(f"lexicon {path}: no word is spelled with the model's tokens")
        if not dropped:
            return path
        self._tmp = tempfile.TemporaryDirectory(prefix="audio_ssl_lexicon_")
        out = Path(self._tmp.name) / path.name
        out.write_text("".join(kept), encoding="utf-8")
        return out

    @staticmethod
    def _check_token_lm(lm: Path, tokens: set[str]) -> None:
        from audio_ssl.asr.lm import BOS, EOS, UNK, arpa_unigrams

        words = [w for w in arpa_unigrams(lm) if w not in (BOS, EOS, UNK)]
        foreign = [w for w in words if w not in tokens]
        if len(foreign) > len(words) // 2:
            raise ValueError(
                f"{lm} looks like a word-level model ({foreign[:3]}...): lexicon-free decoding "
                "needs a model over the CTC tokens (audio-ssl lm --unit char), or give --lexicon"
            )

    def __call__(self, log_probs: torch.Tensor, frame_lengths: torch.Tensor | None) -> list[str]:
        """log_probs: (B, T, V) log-softmax outputs; frame_lengths: (B,) -> B strings."""
        emissions = log_probs.detach().float().cpu().contiguous()  # (B, T, V)
        lengths = None if frame_lengths is None else frame_lengths.detach().cpu().to(torch.int32)
        hypotheses = self.decoder(emissions, lengths)
        texts = []
        for nbest in hypotheses:
            if not nbest:
                texts.append("")
                continue
            best = nbest[0]
            if best.words:
                texts.append(" ".join(best.words))
            else:
                texts.append(self.vocab.decode(best.tokens.tolist()))  # already collapsed
        return texts


__all__ = ["collapse", "greedy_decode", "BeamSearchDecoder"]
