"""Oracle retrieval levels of the synthetic benchmark: what a model that recognises some of a
clip's attributes exactly (and nothing else) would reach on the retrieval split.

An oracle knows a set of attributes (``shape``; ``shape`` and ``colour``; or all three with
``motion``) of every video, and reads which values of those attributes each narration
*mentions* (a narration may leave out the colour or the shape: "now the red one is spinning").
For a video ``v`` and a narration ``t``, over the known attributes:

- ``agree``: attributes ``t`` mentions with ``v``'s value;
- ``contradict``: attributes ``t`` mentions with another value only;
- rule ``specific`` (the default): score ``s(v, t) = agree - (A + 1) * contradict`` (``A``
  known attributes): a narration that contradicts what the oracle sees always ranks below one
  that does not, and among those, the more known attributes it confirms the higher (a
  narration naming the right colour *and* shape is more specific than one naming only the
  shape, so it is more likely to be this clip's);
- rule ``consistent``: score ``-contradict``: every narration compatible with what the oracle
  sees ties. This weaker oracle gives the same text -> video numbers (for one narration, every
  compatible video confirms the same attributes) and a lower video -> text level.

The same score matrix ranks narrations for each video (video -> text) and videos for each
narration (text -> video). The oracle cannot tell tied candidates apart, so ties are broken
uniformly at random, and the reported numbers are exact expectations over that draw: with
``b`` candidates scoring higher than the truth and ``t`` others tying with it, the truth's
expected rank is ``b + 1 + t / 2`` and ``P(rank <= K) = clip((K - b) / (t + 1), 0, 1)``.
``R@K`` is the mean of that probability (percent); ``MedR`` the median of the expected ranks.
(``gradharmony eval`` breaks a model's ties pessimistically instead; a trained model's scores
almost never tie.)

Example:
    >>> from gradharmony.data.synthetic.events import Event
    >>> events = [Event("ring", "red", "spinning", 2.0), Event("ring", "blue", "sliding", 2.0)]
    >>> texts = ["the red ring is spinning", "the ring slides across"]
    >>> r = oracle_retrieval(events, texts, ("shape",))
    >>> r["video_to_text"]["R@1"], r["video_to_text"]["MedR"]
    (50.0, 1.5)
    >>> oracle_retrieval(events, texts, ("shape", "colour"))["video_to_text"]["R@1"]
    100.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .events import Event
from .narration import COLOUR_WORDS, MOTION_WORDS, SHAPE_WORDS

__all__ = ["ATTRIBUTES", "ORACLES", "RULES", "expected_ranks", "mentions", "oracle_levels",
           "oracle_retrieval", "oracle_scores"]

ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "motion")
# name -> the attributes the oracle recognises
ORACLES: dict[str, tuple[str, ...]] = {
    "object": ("shape",),
    "colour+shape": ("shape", "colour"),
    "full": ("shape", "colour", "motion"),
}
RULES: tuple[str, ...] = ("specific", "consistent")
_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": SHAPE_WORDS,
    "colour": COLOUR_WORDS,
    "motion": {m: tuple(p for pair in pairs for p in pair) for m, pairs in MOTION_WORDS.items()},
}


def mentions(text: str) -> dict[str, frozenset[str]]:
    """The values of each attribute a narration mentions (whole words or phrases).

    Example:
        >>> m = mentions("okay the scarlet ball is hopping")
        >>> sorted(m["colour"]), sorted(m["shape"]), sorted(m["motion"])
        (['red'], ['circle'], ['bouncing'])
        >>> mentions("now the blue one is spinning")["shape"]
        frozenset()
    """
    padded = f" {' '.join(text.lower().split())} "
    return {attr: frozenset(value for value, phrases in table.items()
                            if any(f" {p} " in padded for p in phrases))
            for attr, table in _PHRASES.items()}


def _check_attributes(attributes: Sequence[str]) -> tuple[str, ...]:
    attrs = tuple(attributes)
    bad = [a for a in attrs if a not in ATTRIBUTES]
    if bad or not attrs or len(set(attrs)) != len(attrs):
        raise ValueError(f"attributes: expected distinct names among {ATTRIBUTES}, "
                         f"got {attributes!r}")
    return attrs


def oracle_scores(events: Sequence[Event], texts: Sequence[str],
                  attributes: Sequence[str], rule: str = "specific") -> np.ndarray:
    """``[videos, texts]`` oracle scores of ``rule`` (module docstring).

    Example:
        >>> ev = [Event("ring", "red", "spinning", 2.0)]
        >>> oracle_scores(ev, ["a red ring", "a blue ring", "something"], ("shape", "colour"))
        array([[ 2., -2.,  0.]])
        >>> oracle_scores(ev, ["a red ring", "a blue ring", "something"], ("shape", "colour"),
        ...               rule="consistent")
        array([[ 0., -1.,  0.]])
    """
    attrs = _check_attributes(attributes)
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    hit, miss = (1.0, -(len(attrs) + 1.0)) if rule == "specific" else (0.0, -1.0)
    said = [mentions(t) for t in texts]
    scores = np.zeros((len(events), len(texts)))
    for a in attrs:
        values = np.array([getattr(e, a) for e in events], dtype=object)
        for j, m in enumerate(said):
            if m[a]:
                agree = np.array([v in m[a] for v in values])
                scores[:, j] += np.where(agree, hit, miss)
    return scores


def expected_ranks(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query (row, truth on the diagonal): candidates scoring strictly higher than the
    truth (``b``) and other candidates tying with it (``t``).

    Example:
        >>> b, t = expected_ranks(np.array([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
        >>> b.tolist(), t.tolist()
        ([0, 1, 0], [1, 1, 2])
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ValueError(f"scores: expected a non-empty square [queries, candidates] matrix, "
                         f"got shape {s.shape}")
    diag = np.diag(s)[:, None]
    return (s > diag).sum(1), (s == diag).sum(1) - 1


def _metrics(scores: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    b, t = expected_ranks(scores)
    out = {f"R@{k}": float(100.0 * np.clip((k - b) / (t + 1.0), 0.0, 1.0).mean()) for k in ks}
    out["MedR"] = float(np.median(b + 1 + t / 2.0))
    return out


def oracle_retrieval(events: Sequence[Event], texts: Sequence[str], attributes: Sequence[str],
                     ks: tuple[int, ...] = (1, 5, 10), rule: str = "specific"
                     ) -> dict[str, dict[str, float]]:
    """Expected retrieval of an oracle that knows ``attributes`` of video ``i`` = ``events[i]``
    paired with narration ``texts[i]``; keys as ``gradharmony eval``'s ``video_to_text`` and
    ``text_to_video``.

    Example:
        >>> ev = [Event("ring", "red", "spinning", 2.0), Event("bar", "red", "sliding", 2.0)]
        >>> r = oracle_retrieval(ev, ["red ring spinning", "red bar sliding"], ("colour",))
        >>> r["text_to_video"]
        {'R@1': 50.0, 'R@5': 100.0, 'R@10': 100.0, 'MedR': 1.5}
    """
    if len(events) != len(texts) or not events:
        raise ValueError(f"events and texts: expected two non-empty lists of one length, got "
                         f"{len(events)} and {len(texts)}")
    s = oracle_scores(events, texts, attributes, rule)
    return {"video_to_text": _metrics(s, ks), "text_to_video": _metrics(s.T, ks)}


def oracle_levels(clips: Sequence[dict]) -> dict[str, dict]:
    """The :data:`ORACLES` on planned clips (``event`` and ``txt``, as from ``plan_split``):
    the ``specific`` rule's retrieval, the ``consistent`` rule's under ``consistent``, and the
    rules in a ``tie_rule`` entry.

    Example:
        >>> from gradharmony.data.synthetic.plan import plan_split
        >>> levels = oracle_levels(plan_split("retrieval", 40, seed=0))
        >>> sorted(levels)
        ['colour+shape', 'full', 'object', 'tie_rule']
        >>> levels["full"]["video_to_text"]["MedR"] <= levels["object"]["video_to_text"]["MedR"]
        True
    """
    events = [Event.from_dict(c["event"]) for c in clips]
    texts = [c["txt"] for c in clips]
    out: dict[str, dict] = {
        name: {"attributes": list(attrs), **oracle_retrieval(events, texts, attrs),
               "consistent": oracle_retrieval(events, texts, attrs, rule="consistent")}
        for name, attrs in ORACLES.items()}
    out["tie_rule"] = ("over the known attributes the narration mentions: score agree - "
                       "(A+1)*contradict ('consistent': -contradict); ties broken uniformly at "
                       "random, R@K and MedR exact expectations (MedR: median of expected "
                       "ranks); see gradharmony.data.synthetic.oracle")
    return out
