"""Narration vocabulary and tokenizer (HF ``tokenizers``, word level).

The vocabulary is built from the training narrations (``gradharmony build-vocab``), saved as
the ``tokenizers`` JSON (``vocab.json``) with the run, and reloaded for evaluation. Text is
NFD-normalised, accents stripped, lower-cased and split on whitespace and punctuation
(``\\w+|[^\\w\\s]+``). Special tokens: ``[PAD]`` = 0, ``[UNK]`` = 1. Words seen fewer than
``min_freq`` times map to ``[UNK]``.

Example:
    >>> tok = TextTokenizer.from_texts(["Cut the onion.", "cut the bread"])
    >>> ids, mask = tok.encode(["Cut the onion!"], length=5)
    >>> tok.decode(ids[0])
    'cut the onion [UNK]'
    >>> mask[0].tolist()
    [True, True, True, True, False]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1


def _new_tokenizer(vocab: dict[str, int] | None = None):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel(vocab=vocab or {PAD: PAD_ID, UNK: UNK_ID}, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


class TextTokenizer:
    """Word-level tokenizer encoding narrations to fixed-length ids and masks.

    Build with :meth:`from_texts`, save with :meth:`save`, reload with :meth:`load`.

    Example:
        >>> tok = TextTokenizer.from_texts(["a red ball bounces"])
        >>> tok.vocab_size
        6
        >>> text, mask, cand = tok.encode_candidates("a ball", ["red"], k=3, length=4)
        >>> text.tolist()
        [[2, 3, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]]
        >>> cand.tolist()
        [True, True, False]
    """

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self._memo: dict[str, list[int]] = {}  # narrations recur as neighbours: memoise
        vocab = tokenizer.get_vocab()
        if vocab.get(PAD) != PAD_ID or vocab.get(UNK) != UNK_ID:
            raise ValueError(f"TextTokenizer: the vocabulary must map {PAD}->0 and {UNK}->1, got "
                             f"{PAD}->{vocab.get(PAD)}, {UNK}->{vocab.get(UNK)}")

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, min_freq: int = 1,
                   max_size: int | None = None) -> TextTokenizer:
        """Build the vocabulary from narrations (most frequent words first, ties by word)."""
        if min_freq < 1:
            raise ValueError(f"TextTokenizer.from_texts: min_freq must be >= 1, got {min_freq}")
        base = _new_tokenizer()
        counts: dict[str, int] = {}
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"TextTokenizer.from_texts: texts must be str, got "
                                 f"{type(text).__name__}")
            norm = base.normalizer.normalize_str(text)
            for word, _ in base.pre_tokenizer.pre_tokenize_str(norm):
                counts[word] = counts.get(word, 0) + 1
        words = sorted((w for w, c in counts.items() if c >= min_freq and w not in (PAD, UNK)),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max(0, max_size - 2)]
        vocab = {PAD: PAD_ID, UNK: UNK_ID}
        vocab.update({w: i + 2 for i, w in enumerate(words)})
        return cls(_new_tokenizer(vocab))

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Load a vocabulary saved by :meth:`save` (``vocab.json``)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TextTokenizer.load: no vocabulary file at {path}")
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        """Write the tokenizer JSON to ``path``."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return self._tok.get_vocab_size()

    def tokenize(self, text: str) -> list[int]:
        """Token ids of one text, without padding or truncation."""
        ids = self._memo.get(text)
        if ids is None:
            ids = self._tok.encode(text).ids
            if len(self._memo) >= 200_000:
                self._memo.clear()
            self._memo[text] = ids
        return list(ids)

    def encode(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode to int64 ids ``[N, length]`` (0-padded, truncated) and a bool mask."""
        if length < 1:
            raise ValueError(f"TextTokenizer.encode: length must be >= 1, got {length}")
        ids = np.zeros((len(texts), length), np.int64)
        for i, text in enumerate(texts):
            row = self.tokenize(text)[:length]
            ids[i, :len(row)] = row
        return ids, ids != PAD_ID

    def encode_candidates(self, text: str, neighbors: Sequence[str], k: int, length: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """k candidate narrations: ``text`` first, then ``neighbors`` in order (nearest first).

        Returns ids ``[k, length]``, token mask ``[k, length]`` and ``candidate_mask`` ``[k]``
        (False on padding candidates). Empty neighbours are dropped, not counted.
        """
        if k < 1:
            raise ValueError(f"TextTokenizer.encode_candidates: k must be >= 1, got {k}")
        texts = [text] + [n for n in neighbors if isinstance(n, str) and n.strip()]
        texts = texts[:k]
        ids = np.zeros((k, length), np.int64)
        enc, _ = self.encode(texts, length)
        ids[:len(texts)] = enc
        cand = np.zeros(k, bool)
        cand[:len(texts)] = True
        return ids, ids != PAD_ID, cand

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Words of the non-padding ids, joined by spaces."""
        return self._tok.decode([int(i) for i in ids if int(i) != PAD_ID])
