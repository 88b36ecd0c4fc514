"""Load, validate and version a directory of YAML rule files.

Every ``*.yaml`` / ``*.yml`` file directly in the directory is read (in name order). A file holds
a mapping with ``rules:`` (a list of rules) and/or ``lists:`` (named lists usable in conditions as
``lists.<name>``)::

    lists:
      high_risk_countries: [NG, KP, IR]
      blocked_bins: {file: lists/blocked_bins.txt}          # one value per line
      blocked_cards: {source: redis, key: rs:list:blocked_cards}   # a Redis set, polled
    rules:
      - id: card_testing_burst
        description: Many small authorisations on one card within an hour.
        condition: f.card_id_count_1h >= 8 && txn.amount < 5
        action: review            # block | review | allow | tag
        reason: card_testing
        priority: 10              # lower is evaluated first; default 100
        enabled: true             # default true
        owner: fraud-ops
        examples:                 # optional, checked at load
          - {txn: {amount: 1.0}, f: {card_id_count_1h: 9}, fires: true}

``lists/*.txt`` files of the directory are lists too (see :mod:`rules.lists`).

Everything wrong with the set is collected and raised at once as a :class:`RuleSetError`, one
line per problem naming the file, line, rule and (for conditions) the position in the condition.
The version is a content hash of the rule files and list files, so it changes exactly when one
does.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cel
import yaml

from rules.expr import MACROS, ROOTS, Token, line_col, max_nesting, scan, tokenize
from rules.lists import RedisList, all_list_files, list_files, read_list_file, resolve_inside
from rules.ruleset import ACTIONS, CompiledRule, Rule, RuleHit, RuleSet
from rules.vector import type_of_value

#: Bounds on hostile or runaway input.
MAX_CONDITION_CHARS = 2000
MAX_NESTING = 32
MAX_FILE_BYTES = 1 << 20
MAX_LIST_ITEMS = 100_000
#: Comprehensions (``exists``, ``all``, ``map``...) per condition; they may not nest.
MAX_MACROS = 4
#: Consecutive unary operators (``!!!!x``, ``----1``).
MAX_UNARY_RUN = 8

#: A transaction as :func:`engine.schemas.validate` produces it; the fields conditions may use
#: (``txn.<field>``) and the sample against which each condition is type-checked at load.
SAMPLE_TRANSACTION: dict[str, Any] = {
    "event_id": "sample-event",
    "ts": 1_700_000_000_000,
    "card_id": "card-1",
    "merchant_id": "merchant-1",
    "amount": 10.0,
    "customer_id": "customer-1",
    "currency": "USD",
    "channel": "web",
    "device_id": "device-1",
    "ip": "192.0.2.1",
    "country": "US",
    "mcc": "5411",
}

_REQUIRED = ("id", "condition", "action", "reason")
_OPTIONAL = ("description", "priority", "enabled", "owner", "examples")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_LIST_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CEL_ERROR = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")


class RuleSetError(ValueError):
    """A rule set that cannot be loaded; ``errors`` lists every problem, one line each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        n = len(self.errors)
        head = f"rule set invalid ({n} error{'s' if n != 1 else ''}):"
        super().__init__("\n".join([head, *self.errors]))


@dataclass
class _Where:
    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class _RawRule:
    data: dict[str, Any]
    where: _Where
    index: int
    #: File line of the condition's first character and whether CEL line 1 starts there.
    cond_line: int = 0
    cond_col: int = 0
    cond_block: bool = False


@dataclass
class _Parsed:
    rules: list[_RawRule] = field(default_factory=list)
    lists: list[tuple[str, Any, _Where]] = field(default_factory=list)


def rule_files(directory: str | Path) -> list[Path]:
    """The rule files of a directory, in the order they are read and hashed."""
    d = Path(directory)
    return sorted(
        (p for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()),
        key=lambda p: p.name,
    )


def content_version(files: Iterable[tuple[str, bytes]]) -> str:
    """sha256 (first 12 hex digits) over each file's name and bytes, in name order."""
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:12]


def version_files(directory: str | Path) -> list[tuple[str, Path]]:
    """(name in the hash, path) of every file that defines the rule set: rule files, then every
    file under ``lists/``."""
    d = Path(directory)
    out = [(p.name, p) for p in rule_files(d)]
    out += [(p.relative_to(d).as_posix(), p) for p in all_list_files(d)]
    return out


def rule_set_version(directory: str | Path) -> str:
    """The version :func:`load_rule_set` would give the directory now (cheap: no parsing).

    Compare with the running set's ``version`` to decide whether to hot-reload.
    """
    return content_version((name, p.read_bytes()) for name, p in version_files(directory))


# -- YAML ------------------------------------------------------------------------------------


def _yaml_error(where: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    extra = f" ({context})" if context else ""
    return f"{where}{pos}: YAML error: {problem}{extra}"


def _parse_file(name: str, text: str, errors: list[str]) -> _Parsed:
    out = _Parsed()
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # e.g. a control character
        errors.append(_yaml_error(name, exc))
        return out
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        errors.append(_yaml_error(name, exc))
        return out
    finally:
        loader.dispose()
    if data is None:
        return out
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        errors.append(f"{name}:1: expected a mapping with 'rules:' and/or 'lists:'")
        return out
    keys = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    for key in data:
        if key not in ("rules", "lists"):
            line = keys[key][0].start_mark.line + 1 if key in keys else 0
            errors.append(f"{_Where(name, line)}: unknown top-level key {key!r} (rules, lists)")
    lists = data.get("lists")
    if lists is not None:
        lnode = keys["lists"][1]
        if not isinstance(lists, dict) or not isinstance(lnode, yaml.MappingNode):
            errors.append(f"{_Where(name, lnode.start_mark.line + 1)}: 'lists' must be a mapping")
        else:
            lines = {k.value: k.start_mark.line + 1 for k, _ in lnode.value}
            for lname, values in lists.items():
                out.lists.append((lname, values, _Where(name, lines.get(lname, 0))))
    rules = data.get("rules")
    if rules is not None:
        rnode = keys["rules"][1]
        if not isinstance(rules, list) or not isinstance(rnode, yaml.SequenceNode):
            errors.append(f"{_Where(name, rnode.start_mark.line + 1)}: 'rules' must be a list")
            return out
        for i, (item, inode) in enumerate(zip(rules, rnode.value, strict=True)):
            where = _Where(name, inode.start_mark.line + 1)
            if not isinstance(item, dict) or not isinstance(inode, yaml.MappingNode):
                errors.append(f"{where}: rule #{i + 1}: expected a mapping")
                continue
            raw = _RawRule(item, where, i)
            seen: set[str] = set()
            for k, v in inode.value:
                if k.value in seen:
                    errors.append(
                        f"{_Where(name, k.start_mark.line + 1)}: rule {_label(item, i)}: "
                        f"key {k.value!r} given twice"
                    )
                seen.add(k.value)
                if k.value == "condition" and isinstance(v, yaml.ScalarNode):
                    raw.cond_block = v.style == "|"
                    raw.cond_line = v.start_mark.line + (2 if raw.cond_block else 1)
                    quoted = 1 if v.style in ("'", '"') else 0
                    raw.cond_col = v.start_mark.column + 1 + quoted
            out.rules.append(raw)
    return out


def _label(data: Mapping[str, Any], index: int) -> str:
    rid = data.get("id")
    return repr(rid) if isinstance(rid, str) and rid else f"#{index + 1}"


# -- validation ------------------------------------------------------------------------------


@dataclass
class _Lists:
    values: dict[str, list[Any]] = field(default_factory=dict)
    redis: list[RedisList] = field(default_factory=list)


def _list_source(
    directory: Path, name: str, spec: dict[str, Any], where: _Where, out: _Lists, errors: list[str]
) -> list[Any] | None:
    """The values of a list given as a mapping (``file:`` or ``source: redis``), or None."""
    prefix = f"{where}: list {name!r}"
    keys = set(spec)
    if spec.get("source") == "redis":
        key = spec.get("key")
        if keys - {"source", "key"} or not isinstance(key, str) or not key:
            errors.append(f"{prefix}: a Redis list is {{source: redis, key: <set key>}}")
            return None
        out.redis.append(RedisList(name, key))
        return []
    rel = spec.get("file")
    if keys != {"file"} or not isinstance(rel, str) or not rel:
        errors.append(
            f"{prefix}: expected a list of values, {{file: <path>}} or "
            "{source: redis, key: <set key>}"
        )
        return None
    try:
        path = resolve_inside(directory, rel)
        values = read_list_file(path)
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        errors.append(f"{prefix}: cannot read {rel!r}: {detail}")
        return None
    return values


def _check_lists(
    parsed: Sequence[_Parsed], errors: list[str], directory: Path | None = None
) -> _Lists:
    out = _Lists()
    lists = out.values
    where_of: dict[str, _Where] = {}
    file_lists: list[tuple[str, Any, _Where]] = []
    if directory is not None:
        for p in list_files(directory):
            where = _Where(str(p))
            try:
                file_lists.append((p.stem, read_list_file(p), where))
            except (OSError, ValueError) as exc:
                errors.append(f"{where}: cannot read list: {exc}")
    declared = [(name, values, where) for p in parsed for name, values, where in p.lists]
    for name, values, where in [*declared, *file_lists]:
        if not isinstance(name, str) or not _LIST_NAME.match(name):
            errors.append(f"{where}: list {name!r}: name must be an identifier")
            continue
        if name in lists:
            errors.append(f"{where}: list {name!r}: already defined at {where_of[name]}")
            continue
        if isinstance(values, dict) and directory is not None:
            got = _list_source(directory, name, values, where, out, errors)
            if got is None:
                continue
            values = got
        if not isinstance(values, list) or len(values) > MAX_LIST_ITEMS:
            errors.append(
                f"{where}: list {name!r}: expected a list of at most {MAX_LIST_ITEMS} values"
            )
            continue
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, str | int | float)]
        if bad:
            errors.append(
                f"{where}: list {name!r}: values must be strings or numbers, got {bad[0]!r}"
            )
            continue
        lists[name] = list(values)
        where_of[name] = where
    return out


def _check_fields(raw: _RawRule, errors: list[str]) -> Rule | None:
    d, label = raw.data, _label(raw.data, raw.index)
    prefix = f"{raw.where}: rule {label}"
    before = len(errors)
    for key in _REQUIRED:
        if key not in d or d[key] is None or d[key] == "":
            errors.append(f"{prefix}: missing required key {key!r}")
    for key in d:
        if key not in _REQUIRED and key not in _OPTIONAL:
            allowed = ", ".join((*_REQUIRED, *_OPTIONAL))
            errors.append(f"{prefix}: unknown key {key!r} (allowed: {allowed})")
    rid, cond, action, reason = (d.get(k) for k in _REQUIRED)
    for key, value in (("id", rid), ("condition", cond), ("reason", reason)):
        if value is not None and not isinstance(value, str):
            errors.append(
                f"{prefix}: {key} must be a string, got {type(value).__name__} {value!r}"
                " (quote it in YAML)"
            )
    if isinstance(rid, str) and rid and not _ID.match(rid):
        errors.append(
            f"{prefix}: id must be 1-64 characters of letters, digits, '_', '.', ':' or '-'"
        )
    if action is not None and action not in ACTIONS:
        errors.append(f"{prefix}: action {action!r} is not one of {', '.join(ACTIONS)}")
    priority = d.get("priority", 100)
    if isinstance(priority, bool) or not isinstance(priority, int):
        errors.append(f"{prefix}: priority must be an integer, got {priority!r}")
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(f"{prefix}: enabled must be true or false, got {enabled!r}")
    for key in ("description", "owner"):
        if d.get(key) is not None and not isinstance(d.get(key), str):
            errors.append(f"{prefix}: {key} must be a string")
    if len(errors) > before:
        return None
    return Rule(
        id=str(rid),
        condition=str(cond),
        action=str(action),
        reason=str(reason),
        description=d.get("description") or "",
        priority=priority,
        enabled=enabled,
        owner=d.get("owner") or "",
        file=raw.where.file,
        line=raw.where.line,
    )


@dataclass
class _Checked:
    program: cel.Program
    txn_fields: set[str] | None
    features: set[str] | None


class _RuleChecker:
    def __init__(
        self,
        known_features: Sequence[str],
        lists: Mapping[str, list[Any]],
        sample_event: Mapping[str, Any],
    ) -> None:
        self.known_features = list(known_features)
        self.feature_set = frozenset(known_features)
        self.lists = lists
        self.sample_event = dict(sample_event)

    def _pos(self, raw: _RawRule, cond: str, line: int, col: int) -> str:
        """``file:line`` of a condition position, and the position within the condition."""
        if raw.cond_block:
            file_line = raw.cond_line + line - 1
        elif "\n" not in cond and raw.cond_line:
            file_line = raw.cond_line
        else:
            file_line = raw.where.line
        return (
            f"{_Where(raw.where.file, file_line)}: rule {raw.data['id']!r}: condition {line}:{col}"
        )

    def check(self, raw: _RawRule, rule: Rule, errors: list[str]) -> _Checked | None:
        cond = rule.condition
        prefix = f"{raw.where}: rule {rule.id!r}"
        if len(cond) > MAX_CONDITION_CHARS:
            errors.append(
                f"{prefix}: condition is {len(cond)} characters (limit {MAX_CONDITION_CHARS})"
            )
            return None
        tokens = tokenize(cond)
        depth = max_nesting(tokens)
        if depth > MAX_NESTING:
            errors.append(f"{prefix}: condition nests {depth} brackets deep (limit {MAX_NESTING})")
            return None
        unbounded = _bounded(tokens)
        if unbounded:
            pos, what = unbounded
            errors.append(f"{self._pos(raw, cond, *line_col(cond, pos))}: {what}")
            return None
        try:
            program = cel.compile(cond)
        except Exception as exc:
            errors.append(self._syntax_error(raw, cond, exc))
            return None
        refs = scan(cond)
        before = len(errors)

        def at(pos: int) -> str:
            return self._pos(raw, cond, *line_col(cond, pos))

        variables = set(program.variables())
        for name in sorted(variables - set(ROOTS) - refs.bound):
            errors.append(
                f"{at(refs.first_pos.get(name, 0))}: unknown identifier {name!r} "
                "(conditions use txn, f and lists)"
            )
        for name, pos in refs.fields["f"]:
            if name not in self.feature_set:
                errors.append(
                    f"{at(pos)}: unknown feature 'f.{name}'{_suggest(name, self.feature_set)}"
                )
        for name, pos in refs.fields["txn"]:
            if name not in self.sample_event:
                errors.append(
                    f"{at(pos)}: unknown transaction field 'txn.{name}'"
                    f"{_suggest(name, self.sample_event)}"
                )
        for name, pos in refs.fields["lists"]:
            if name not in self.lists:
                errors.append(f"{at(pos)}: unknown list 'lists.{name}'{_suggest(name, self.lists)}")
        if len(errors) > before:
            return None
        for label, amount, value in (("small", 1.0, 1.0), ("large", 10_000.0, 10_000.0)):
            txn = {**self.sample_event, "amount": amount}
            feats = dict.fromkeys(self.known_features, value)
            problem = self._run(program, txn, feats)
            if problem:
                errors.append(f"{prefix}: type check on a {label} sample event: {problem}")
                return None
        self._check_examples(raw, rule, program, errors)
        return _Checked(
            program,
            None if "txn" in refs.dynamic else {n for n, _ in refs.fields["txn"]},
            None if "f" in refs.dynamic else {n for n, _ in refs.fields["f"]},
        )

    def _syntax_error(self, raw: _RawRule, cond: str, exc: Exception) -> str:
        text = str(exc)
        m = _CEL_ERROR.search(text)
        if m is None:
            first = text.splitlines()[0] if text else type(exc).__name__
            return f"{raw.where}: rule {raw.data['id']!r}: syntax error: {first}"
        line, col, msg = int(m.group(1)), int(m.group(2)), m.group(3).strip()
        msg = msg.removeprefix("Syntax error: ")
        if len(msg) > 160:
            msg = msg[:157] + "..."
        return f"{self._pos(raw, cond, line, col)}: syntax error: {msg}"

    def _run(self, program: cel.Program, txn: Mapping[str, Any], feats: Mapping[str, float]) -> str:
        ctx = cel.Context(variables={"txn": dict(txn), "f": dict(feats), "lists": dict(self.lists)})
        try:
            result = program.execute(ctx)
        except KeyError as exc:
            return f"no such key {exc}"
        except Exception as exc:
            first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else ""
            return f"{type(exc).__name__}: {first}"
        if not isinstance(result, bool):
            return f"condition must evaluate to a bool, got {type(result).__name__} {result!r}"
        return ""

    def _check_examples(
        self, raw: _RawRule, rule: Rule, program: cel.Program, errors: list[str]
    ) -> None:
        examples = raw.data.get("examples")
        if examples is None:
            return
        prefix = f"{raw.where}: rule {rule.id!r}"
        if not isinstance(examples, list):
            errors.append(f"{prefix}: examples must be a list")
            return
        for k, ex in enumerate(examples, 1):
            if not isinstance(ex, dict) or set(ex) - {"txn", "f", "fires"} or "fires" not in ex:
                errors.append(f"{prefix}: example {k}: expected a mapping with txn, f and fires")
                continue
            txn, feats, fires = ex.get("txn") or {}, ex.get("f") or {}, ex["fires"]
            if not isinstance(txn, dict) or not isinstance(feats, dict):
                errors.append(f"{prefix}: example {k}: txn and f must be mappings")
                continue
            unknown = sorted(str(n) for n in feats if n not in self.feature_set)
            bad = [
                n for n, v in feats.items() if isinstance(v, bool) or not isinstance(v, int | float)
            ]
            if unknown or bad or not isinstance(fires, bool):
                what = f"unknown feature {unknown[0]!r}" if unknown else "f values must be numbers"
                if not isinstance(fires, bool):
                    what = "fires must be true or false"
                errors.append(f"{prefix}: example {k}: {what}")
                continue
            values = {**dict.fromkeys(self.known_features, 0.0)}
            values.update({str(n): float(v) for n, v in feats.items()})
            ctx = cel.Context(variables={"txn": txn, "f": values, "lists": dict(self.lists)})
            try:
                got = program.execute(ctx)
            except Exception as exc:
                errors.append(
                    f"{prefix}: example {k}: evaluation failed: {type(exc).__name__} {exc}"
                )
                continue
            if got is not fires:
                errors.append(
                    f"{prefix}: example {k}: expected fires={fires}, condition gave {got!r}"
                )


def _bounded(tokens: list[Token]) -> tuple[int, str] | None:
    """Why evaluating these tokens could take unbounded time or memory (position, message).

    CEL has no loops, but comprehensions multiply: ``l.map(a, l.map(b, ...))`` over a 100,000
    item list is 10^10 steps. Comprehensions may not nest, may not mention a named list in
    their body, and a condition holds at most :data:`MAX_MACROS` of them.
    """
    n = len(tokens)
    macros = 0
    run = 0
    for i, t in enumerate(tokens):
        if t.kind == "punct" and t.text in "!-":
            run += 1
            if run > MAX_UNARY_RUN:
                return t.pos, f"more than {MAX_UNARY_RUN} unary operators in a row"
        else:
            run = 0
        is_macro = (
            t.kind == "ident"
            and t.text in MACROS
            and i > 0
            and tokens[i - 1].text == "."
            and i + 1 < n
            and tokens[i + 1].text == "("
        )
        if not is_macro:
            continue
        macros += 1
        if macros > MAX_MACROS:
            return t.pos, f"more than {MAX_MACROS} comprehensions ({t.text}...)"
        depth = 0
        for u in tokens[i + 1 :]:
            if u.kind == "punct" and u.text in "([{":
                depth += 1
            elif u.kind == "punct" and u.text in ")]}":
                depth -= 1
                if depth == 0:
                    break
            elif u.kind == "ident" and u.text in MACROS and depth > 0:
                return u.pos, f"nested comprehension {u.text!r} inside {t.text!r} (not allowed)"
            elif u.kind == "ident" and u.text == "lists" and depth > 0:
                return u.pos, f"named list used inside comprehension {t.text!r} (not allowed)"
    return None


def _suggest(name: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- entry point -----------------------------------------------------------------------------


def load_rule_set(
    directory: str | Path,
    known_features: Sequence[str],
    *,
    sample_event: Mapping[str, Any] | None = None,
) -> RuleSet:
    """Load and validate every rule file in ``directory``; raise :class:`RuleSetError` if invalid.

    ``known_features`` are the feature names conditions may use as ``f.<name>``;
    ``sample_event`` (default :data:`SAMPLE_TRANSACTION`) lists the transaction fields they may use
    as ``txn.<field>`` and is the event every condition is type-checked against.
    """
    d = Path(directory)
    if not d.is_dir():
        raise RuleSetError([f"{d}: not a directory"])
    paths = rule_files(d)
    if not paths:
        raise RuleSetError([f"{d}: no rule files (*.yaml)"])
    errors: list[str] = []
    contents: list[tuple[str, bytes]] = []
    parsed: list[_Parsed] = []
    for p in paths:
        data = p.read_bytes()
        contents.append((p.name, data))
        shown = str(p)
        if len(data) > MAX_FILE_BYTES:
            errors.append(f"{shown}: {len(data)} bytes (limit {MAX_FILE_BYTES})")
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(f"{shown}: not UTF-8 (byte {exc.start})")
            continue
        parsed.append(_parse_file(shown, text, errors))
    for name, p in version_files(d)[len(paths) :]:
        contents.append((name, p.read_bytes()))
    checked_lists = _check_lists(parsed, errors, d)
    version = content_version(contents)
    lists = checked_lists.values
    sample = dict(sample_event or SAMPLE_TRANSACTION)
    checker = _RuleChecker(known_features, lists, sample)
    seen: dict[str, _Where] = {}
    compiled: list[tuple[tuple[int, int, int], CompiledRule]] = []
    txn_fields: set[str] | None = set()
    features: set[str] | None = set()
    for file_no, in_file in enumerate(parsed):
        for raw in in_file.rules:
            rule = _check_fields(raw, errors)
            rid = raw.data.get("id")
            if isinstance(rid, str):
                if rid in seen:
                    errors.append(f"{raw.where}: rule {rid!r}: duplicate id (first at {seen[rid]})")
                    continue
                seen[rid] = raw.where
            if rule is None:
                continue
            checked = checker.check(raw, rule, errors)
            if checked is None:
                continue
            if rule.enabled:
                if txn_fields is not None:
                    txn_fields = (
                        None if checked.txn_fields is None else txn_fields | checked.txn_fields
                    )
                if features is not None:
                    features = None if checked.features is None else features | checked.features
            hit = RuleHit(rule.id, rule.action, rule.reason)
            key = (rule.priority, file_no, raw.index)
            compiled.append((key, CompiledRule(rule, checked.program, hit)))
    if errors:
        raise RuleSetError(errors)
    compiled.sort(key=lambda kv: kv[0])
    return RuleSet(
        version,
        [c for _, c in compiled],
        lists,
        None if txn_fields is None else frozenset(txn_fields),
        None if features is None else frozenset(features),
        files=[name for name, _ in contents],
        txn_types={k: t for k, v in sample.items() if (t := type_of_value(v)) is not None},
        redis_lists=checked_lists.redis,
    )
