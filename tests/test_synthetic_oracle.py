"""Oracle retrieval levels: hand-built cases with ranks worked out by hand, the expected-over-
ties formulas against a brute force over every tie-breaking order, and the narration parser
against the planned events."""

import itertools
import math

import numpy as np
import pytest

from gradharmony.data.synthetic.events import Event
from gradharmony.data.synthetic.oracle import (
    ORACLES,
    expected_ranks,
    mentions,
    oracle_levels,
    oracle_retrieval,
    oracle_scores,
)
from gradharmony.data.synthetic.plan import plan_split

EVENTS = [Event("ring", "red", "spinning", 2.0), Event("ring", "red", "sliding", 2.0),
          Event("bar", "blue", "bouncing", 2.0)]
TEXTS = ["the red ring is spinning", "now the red one is sliding",
         "you can see the bar bouncing"]


@pytest.mark.parametrize("attributes, rule, v2t, t2v", [
    # shape only: video 1's narration names no shape, so video 1 ranks narration 0 (ring) above
    # its own; narration 0 ties videos 0 and 1 (both rings), narration 1 ties all three
    (("shape",), "specific", ([1, 2, 1], 100 * 2 / 3, 1.0),
     ([1.5, 2, 1], 100 * (1 / 2 + 1 / 3 + 1) / 3, 1.5)),
    # colour and shape: narration 0 (red ring) is more specific than 1 (red) for video 1
    (("shape", "colour"), "specific", ([1, 2, 1], 100 * 2 / 3, 1.0),
     ([1.5, 1.5, 1], 100 * 2 / 3, 1.5)),
    # consistent only: narrations 0 and 1 are both compatible with videos 0 and 1
    (("shape", "colour"), "consistent", ([1.5, 1.5, 1], 100 * 2 / 3, 1.5),
     ([1.5, 1.5, 1], 100 * 2 / 3, 1.5)),
    (("shape", "colour", "motion"), "specific", ([1, 1, 1], 100.0, 1.0), ([1, 1, 1], 100.0, 1.0)),
])
def test_hand_built_case(attributes, rule, v2t, t2v):
    s = oracle_scores(EVENTS, TEXTS, attributes, rule)
    r = oracle_retrieval(EVENTS, TEXTS, attributes, rule=rule)
    for scores, (ranks, r1, medr), d in ((s, v2t, "video_to_text"), (s.T, t2v, "text_to_video")):
        b, t = expected_ranks(scores)
        assert (b + 1 + t / 2).tolist() == ranks
        assert r[d]["R@1"] == pytest.approx(r1)
        assert r[d]["MedR"] == medr
        assert r[d]["R@5"] == 100.0


def test_scores_by_hand():
    s = oracle_scores(EVENTS, TEXTS, ("shape", "colour"))
    # agree - 3 * contradict
    assert s.tolist() == [[2, 1, -3], [2, 1, -3], [-6, -3, 1]]
    assert oracle_scores(EVENTS, TEXTS, ("colour",), "consistent").tolist() == [
        [0, 0, 0], [0, 0, 0], [-1, -1, 0]]


def _brute_force(scores, ks):
    """Average over every order of the candidates used to break ties."""
    n = scores.shape[0]
    ranks = np.zeros(n)
    hits = {k: np.zeros(n) for k in ks}
    perms = list(itertools.permutations(range(scores.shape[1])))
    for q in range(n):
        for perm in perms:
            pos = {c: i for i, c in enumerate(perm)}
            order = sorted(range(scores.shape[1]), key=lambda c: (-scores[q, c], pos[c]))
            rank = order.index(q) + 1
            ranks[q] += rank / len(perms)
            for k in ks:
                hits[k][q] += (rank <= k) / len(perms)
    return ranks, {k: 100 * h.mean() for k, h in hits.items()}


@pytest.mark.parametrize("seed", range(4))
def test_expected_ranks_match_a_brute_force_over_tie_orders(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(5, 5)).astype(float)  # many ties
    b, t = expected_ranks(scores)
    ranks, recall = _brute_force(scores, (1, 2, 3))
    np.testing.assert_allclose(b + 1 + t / 2, ranks)
    from gradharmony.data.synthetic.oracle import _metrics

    got = _metrics(scores, (1, 2, 3))
    for k in (1, 2, 3):
        assert got[f"R@{k}"] == pytest.approx(recall[k])
    assert got["MedR"] == pytest.approx(float(np.median(ranks)))


def test_mentions_read_what_the_narration_says():
    clips = plan_split("retrieval", 300, seed=1)
    for c in clips:
        m = mentions(c["txt"])
        for attr in ("shape", "colour", "motion"):
            assert m[attr] <= {c["event"][attr]}, (c["txt"], c["event"])
        assert m["motion"], c["txt"]  # every description names the motion
    assert mentions("okay the plus sign is wobbling")["shape"] == {"cross"}
    assert mentions("circling around")["shape"] == frozenset()  # not "circle"


def test_levels_on_the_retrieval_split():
    levels = oracle_levels(plan_split("retrieval", 500, seed=0))
    order = ["object", "colour+shape", "full"]
    assert list(ORACLES) == order and "tie_rule" in levels
    for d in ("video_to_text", "text_to_video"):
        r10 = [levels[n][d]["R@10"] for n in order]
        medr = [levels[n][d]["MedR"] for n in order]
        assert r10 == sorted(r10) and medr == sorted(medr, reverse=True)
        for n in order:  # the consistent rule is the weaker oracle, equal on text -> video
            weak = levels[n]["consistent"][d]
            assert weak["R@10"] <= levels[n][d]["R@10"] + 1e-9
            if d == "text_to_video":
                assert weak == pytest.approx(levels[n][d])
    # chance: R@10 = 2 %; knowing the shape only (7 shapes) gives about 7 x chance
    assert 10 < levels["object"]["video_to_text"]["R@10"] < 20
    assert math.isclose(levels["full"]["video_to_text"]["R@10"], 100.0)


@pytest.mark.parametrize("args, match", [
    ((EVENTS, TEXTS, ("size",)), "attributes"),
    ((EVENTS, TEXTS, ()), "attributes"),
    ((EVENTS, TEXTS[:2], ("shape",)), "one length"),
])
def test_bad_oracle_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        oracle_retrieval(*args)
    with pytest.raises(ValueError, match="rule"):
        oracle_scores(EVENTS, TEXTS, ("shape",), rule="optimistic")
    with pytest.raises(ValueError, match="square"):
        expected_ranks(np.zeros((2, 3)))
