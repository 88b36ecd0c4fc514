"""Rules: YAML rule files with CEL conditions, validated and versioned at load.

>>> from rules import load_rule_set, RuleSetError, RuleSet, RuleHit   # doctest: +SKIP
"""

from rules.loader import (
    SAMPLE_TRANSACTION,
    RuleSetError,
    load_rule_set,
    rule_files,
    rule_set_version,
)
from rules.ruleset import ACTIONS, Rule, RuleHit, RuleSet

__all__ = [
    "ACTIONS",
    "SAMPLE_TRANSACTION",
    "Rule",
    "RuleHit",
    "RuleSet",
    "RuleSetError",
    "load_rule_set",
    "rule_files",
    "rule_set_version",
]
