from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.policy import DECISIONS, Hit, Policy

P = Policy(review_threshold=0.5, block_threshold=0.9)


def test_thresholds() -> None:
    assert P.decide(0.1, [])[0] == "allow"
    assert P.decide(0.5, [])[0] == "review"
    assert P.decide(0.9, [])[0] == "block"


def test_first_block_or_allow_rule_decides_over_the_score() -> None:
    hits = [Hit("vip", "allow", "allow_list"), Hit("bad_bin", "block", "bin")]
    assert P.decide(0.99, hits) == ("allow", ["rule:vip", "rule:bad_bin"])
    assert P.decide(0.0, hits[::-1])[0] == "block"


def test_review_rule_raises_allow_to_review_and_tags_only_annotate() -> None:
    assert P.decide(0.1, [Hit("big", "review", "amount")]) == ("review", ["rule:big"])
    assert P.decide(0.1, [Hit("t", "tag", "x")]) == ("allow", ["rule:t"])
    assert P.decide(0.95, [Hit("t", "tag", "x")]) == ("block", ["rule:t", "score>=0.9"])


@given(st.floats(0, 1), st.lists(st.sampled_from(["allow", "review", "block", "tag"]), max_size=4))
def test_decision_is_always_one_of_three_with_reasons_for_every_hit(
    score: float, actions: list[str]
) -> None:
    hits = [Hit(f"r{i}", a, "x") for i, a in enumerate(actions)]
    decision, reasons = P.decide(score, hits)
    assert decision in DECISIONS
    assert [r for r in reasons if r.startswith("rule:")] == [f"rule:r{i}" for i in range(len(hits))]
