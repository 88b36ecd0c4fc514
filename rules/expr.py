"""Static analysis of CEL condition text: size limits and the names a condition refers to.

The ``cel`` package reports which top-level variables an expression uses, not which fields of
them, so the field references (``f.card_id_count_1h``, ``txn.amount``, ``lists.high_risk``) are
found here with a small tokenizer that skips string literals and comments. A root used in any
way that cannot be resolved statically (``size(f)``, ``'x' in txn``, ``f[name]``, a macro over
it) is reported as *dynamic*: its references cannot be checked and the evaluator then supplies
the whole map.

>>> refs = scan("has(txn.country) && f.card_id_count_1h > 3 && txn['amount'] < 5")
>>> sorted(n for n, _ in refs.fields["txn"]), [n for n, _ in refs.fields["f"]], refs.dynamic
(['amount', 'country'], ['card_id_count_1h'], set())
>>> scan("'f.nope' == txn.note // f.nope").fields["f"]
[]
>>> scan("size(f) > 2").dynamic
{'f'}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROOTS = ("txn", "f", "lists")
#: Comprehension macros: ``<target>.<macro>(<bound var>, ...)`` binds a new identifier.
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*)
  | (?P<str>
        (?:[rR][bB]?|[bB][rR])(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*")
      | [bB]?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
              |'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")
    )
  | (?P<num>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_PLAIN_STRING = re.compile(r"""^(?:'([^'\\]*)'|"([^"\\]*)")$""")
_OPENERS, _CLOSERS = "([{", ")]}"


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    pos: int


@dataclass
class Refs:
    """What a condition refers to. Positions are character offsets into the condition."""

    #: root -> [(field name, offset)] for ``root.name`` and ``root['name']``.
    fields: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: {r: [] for r in ROOTS})
    #: Roots used in a way whose field references cannot be listed statically.
    dynamic: set[str] = field(default_factory=set)
    #: Identifiers bound by comprehension macros (``x`` in ``l.exists(x, x > 1)``).
    bound: set[str] = field(default_factory=set)
    #: First offset of every identifier, for error positions.
    first_pos: dict[str, int] = field(default_factory=dict)


def tokenize(text: str) -> list[Token]:
    """Tokens of ``text`` without whitespace and comments (text CEL already parsed)."""
    out: list[Token] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "punct"
        if kind not in ("ws", "comment"):
            out.append(Token(kind, m.group(), m.start()))
    return out


def max_nesting(tokens: list[Token]) -> int:
    """The deepest nesting of ``()``, ``[]`` and ``{}`` outside string literals."""
    depth = deepest = 0
    for t in tokens:
        if t.kind != "punct":
            continue
        if t.text in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif t.text in _CLOSERS:
            depth = max(0, depth - 1)
    return deepest


def line_col(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of offset ``pos`` in ``text``."""
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _is_select_target(tok: Token | None) -> bool:
    """Whether ``tok`` can end an operand, making a following ``.name`` a field selection."""
    if tok is None:
        return False
    return tok.kind in ("ident", "str", "num") or tok.text in _CLOSERS


def scan(text: str) -> Refs:
    """The root-variable field references of a CEL expression (see the module docstring)."""
    toks = tokenize(text)
    refs = Refs()
    n = len(toks)

    def at(i: int) -> Token | None:
        return toks[i] if 0 <= i < n else None

    for i, t in enumerate(toks):
        if t.kind != "ident":
            continue
        refs.first_pos.setdefault(t.text, t.pos)
        prev, nxt = at(i - 1), at(i + 1)
        # ``<target>.<macro>(<var>, ...)``: record the bound variable.
        if (
            t.text in MACROS
            and prev is not None
            and prev.text == "."
            and nxt is not None
            and nxt.text == "("
        ):
            var, comma = at(i + 2), at(i + 3)
            if var is not None and var.kind == "ident" and comma is not None:
                if comma.text == ",":
                    refs.bound.add(var.text)
        if t.text not in ROOTS:
            continue
        if prev is not None and prev.text == "." and _is_select_target(at(i - 2)):
            continue  # ``x.f`` is a field of something else
        if nxt is not None and nxt.text == "(":
            continue  # a function call named like a root (undefined; evaluation reports it)
        a, b = at(i + 2), at(i + 3)
        if nxt is not None and nxt.text == "." and a is not None and a.kind == "ident":
            if b is not None and b.text == "(":
                refs.dynamic.add(t.text)  # ``f.exists(k, ...)`` and friends
            else:
                refs.fields[t.text].append((a.text, a.pos))
            continue
        if nxt is not None and nxt.text == "[" and a is not None and a.kind == "str":
            m = _PLAIN_STRING.match(a.text)
            if m is not None and b is not None and b.text == "]":
                refs.fields[t.text].append((m.group(1) or m.group(2) or "", a.pos))
                continue
        refs.dynamic.add(t.text)
    # A root shadowed by a comprehension variable cannot be analysed textually.
    refs.dynamic |= refs.bound & set(ROOTS)
    return refs
