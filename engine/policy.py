"""Decision policy: rules that block or allow decide first, then the score meets thresholds.

>>> p = Policy(review_threshold=0.5, block_threshold=0.9)
>>> p.decide(0.95, [])
('block', ['score>=0.9'])
>>> p.decide(0.2, [Hit("vip", "allow", "allow_list")])
('allow', ['rule:vip'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

ALLOW, REVIEW, BLOCK = "allow", "review", "block"
DECISIONS = (ALLOW, REVIEW, BLOCK)


class Hit(NamedTuple):
    """A fired rule, as the policy sees it (any object with these attributes will do)."""

    rule_id: str
    action: str
    reason: str


@dataclass(frozen=True)
class Policy:
    review_threshold: float = 0.5
    block_threshold: float = 0.9

    def decide(self, score: float, hits: Sequence[Any]) -> tuple[str, list[str]]:
        """The decision and its reason codes, for one scored event.

        Hits arrive in rule priority order; the first block/allow rule decides. Otherwise the
        score is compared with the thresholds, and any review rule raises allow to review.
        """
        if not hits:  # most events: thresholds only
            if score >= self.block_threshold:
                return BLOCK, [f"score>={self.block_threshold:g}"]
            if score >= self.review_threshold:
                return REVIEW, [f"score>={self.review_threshold:g}"]
            return ALLOW, []
        reasons = [f"rule:{h.rule_id}" for h in hits]
        for h in hits:
            if h.action in (BLOCK, ALLOW):
                return h.action, reasons
        if score >= self.block_threshold:
            return BLOCK, [*reasons, f"score>={self.block_threshold:g}"]
        if score >= self.review_threshold:
            return REVIEW, [*reasons, f"score>={self.review_threshold:g}"]
        if any(h.action == REVIEW for h in hits):
            return REVIEW, reasons
        return ALLOW, reasons
