"""Named lists from files, hot reload with a watcher, and bounds on hostile conditions."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rules import RuleSetError, load_rule_set, rule_set_version
from rules.reload import RuleSetWatcher

FEATURES = ["card_id_count_1h", "card_id_sum_1h"]
RULE = """\
lists:
  bins: {file: lists/extra/bins.csv}
rules:
  - id: vip
    condition: txn.card_id in lists.vip_cards
    action: allow
    reason: vip
  - id: bin
    condition: txn.card_id.startsWith('4') && txn.card_id in lists.bins
    action: review
    reason: bin
"""


def write(d: Path, name: str, text: str) -> None:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))


def ids(rs, events):  # type: ignore[no-untyped-def]
    out = rs.evaluate_batch(events, np.zeros((len(events), 0)), [])
    return [[h.rule_id for h in hits] for hits in out]


def test_lists_from_txt_files(tmp_path: Path) -> None:
    write(tmp_path, "r.yaml", RULE)
    write(tmp_path, "lists/vip_cards.txt", "# VIPs\ncard_1\n\n  card_2  \n")
    write(tmp_path, "lists/extra/bins.csv", "411111\n")
    rs = load_rule_set(tmp_path, FEATURES)
    assert rs.lists == {"bins": ["411111"], "vip_cards": ["card_1", "card_2"]}
    assert ids(rs, [{"card_id": "card_2"}, {"card_id": "411111"}, {"card_id": "x"}]) == [
        ["vip"],
        ["bin"],
        [],
    ]
    assert rs.per_event_rules == {}
    # Editing a list file is a new version (so the watcher reloads it).
    v1 = rule_set_version(tmp_path)
    assert v1 == rs.version
    write(tmp_path, "lists/vip_cards.txt", "card_3\n")
    v2 = rule_set_version(tmp_path)
    assert v2 != v1
    write(tmp_path, "lists/extra/bins.csv", "5\n")
    assert rule_set_version(tmp_path) not in (v1, v2)


def test_list_file_errors_name_the_list(tmp_path: Path) -> None:
    write(tmp_path, "r.yaml", "lists:\n  a: {file: ../outside.txt}\n  b: {file: nope.txt}\n"
          "  c: {source: redis}\nrules: []\n")  # fmt: skip
    err = pytest.raises(RuleSetError, load_rule_set, tmp_path, FEATURES).value
    text = "\n".join(err.errors)
    assert "list 'a': cannot read '../outside.txt': list file must be under" in text
    assert "list 'b': cannot read 'nope.txt'" in text
    assert "list 'c': a Redis list is {source: redis, key: <set key>}" in text
    assert all(line.startswith(str(tmp_path / "r.yaml")) for line in err.errors)


def test_set_list_takes_effect_next_batch(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.yaml",
        "lists:\n  blocked: {source: redis, key: k}\nrules:\n"
        "  - {id: b, condition: txn.card_id in lists.blocked, action: block, reason: b}\n",
    )
    rs = load_rule_set(tmp_path, FEATURES)
    assert ids(rs, [{"card_id": "c1"}]) == [[]]
    rs.set_list("blocked", ["c1"])
    assert ids(rs, [{"card_id": "c1"}]) == [["b"]]


GOOD = "rules:\n  - {id: big, condition: txn.amount > 100.0, action: review, reason: big}\n"


def test_watcher_swaps_good_sets_and_keeps_running_on_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "r.yaml", GOOD)
    seen = []
    w = RuleSetWatcher(tmp_path, FEATURES, poll_seconds=0, on_change=lambda o, n: seen.append(n))
    v1 = w.current().version
    assert not w.poll()  # unchanged
    write(tmp_path, "r.yaml", GOOD.replace("100.0", "200.0"))
    assert w.poll()
    v2 = w.current().version
    assert v2 != v1 and seen == [w.current()] and w.reloads == 1
    assert w.current().evaluate({"amount": 150.0}, {}) == []
    # A broken set never replaces the running one; it is counted once, logged, kept in last_error.
    write(tmp_path, "r.yaml", GOOD.replace("txn.amount", "txn.amout"))
    with caplog.at_level(logging.ERROR, logger="rules.reload"):
        assert not w.poll()
        assert not w.poll()
    assert w.current().version == v2
    assert w.reload_failures == 1
    assert w.last_error is not None and "unknown transaction field 'txn.amout'" in w.last_error
    assert any("rejected" in r.message for r in caplog.records)
    # Fixing it goes live and clears the error.
    write(tmp_path, "r.yaml", GOOD.replace("100.0", "300.0"))
    assert w.poll()
    assert w.last_error is None and w.reload_failures == 1


def test_watcher_refuses_to_start_on_an_invalid_set(tmp_path: Path) -> None:
    bad = "rules:\n  - {id: x, condition: 'f.nope > 1', action: tag, reason: r}\n"
    write(tmp_path, "r.yaml", bad)
    with pytest.raises(RuleSetError):
        RuleSetWatcher(tmp_path, FEATURES)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("[1,2].exists(a, [1,2].exists(b, a == b))", "nested comprehension 'exists'"),
        ("[1].map(a, lists.l).size() > 0", "named list used inside comprehension"),
        ("!!!!!!!!!!true", "unary operators in a row"),
        (
            "[1].all(a, a>0) && [1].all(a, a>0) && [1].all(a, a>0) && [1].all(a, a>0) && "
            "[1].all(a, a>0)",
            "more than 4 comprehensions",
        ),  # fmt: skip
    ],
)
def test_unbounded_conditions_are_rejected(tmp_path: Path, condition: str, message: str) -> None:
    write(tmp_path, "r.yaml", f'lists: {{l: [1]}}\nrules:\n  - {{id: h, condition: "{condition}", '
          "action: tag, reason: r}\n")  # fmt: skip
    err = pytest.raises(RuleSetError, load_rule_set, tmp_path, FEATURES).value
    assert len(err.errors) == 1
    assert message in err.errors[0]
    assert err.errors[0].startswith(f"{tmp_path / 'r.yaml'}:3: rule 'h': condition 1:")
