"""Vectorised evaluation of a CEL subset: one condition, a whole batch, numpy column operations.

A condition is parsed once (its own small recursive-descent parser; CEL has already accepted the
text) into a typed tree whose nodes evaluate to ``(values, errors)`` arrays over the batch. The
semantics are those of the ``cel`` interpreter, checked by a property test against it:

* ``&&`` / ``||`` absorb errors commutatively (``error && false`` is false, ``error || true`` is
  true); otherwise an error propagates and the rule does not fire (and is counted);
* ordering comparisons involving a NaN double are errors; ``==`` on NaN is false;
* ``int`` and ``double`` compare numerically; equality across other types is false;
* int ``+``/``-`` overflow, a missing field or a missing feature are errors.

Supported: literals (int, double, plain strings, bools, lists of those), ``txn.x`` / ``txn['x']``,
``f.x`` / ``f['x']``, ``lists.x``, ``has(txn.x)``, ``has(f.x)``, ``! - && || ?:``, comparisons,
``+ - * /`` on doubles, ``+ -`` on ints, ``in`` (list literal or named list), ``size(s)`` /
``s.size()``, ``s.startsWith/endsWith/contains(t)``, ``double(x)``. Anything else raises
:class:`Unsupported` and the rule is evaluated per event by CEL instead. Transaction values whose
runtime type differs from the field's declared type (an int ``amount``, a ``None``...) are
evaluated per event by CEL too, so results are exactly CEL's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.expr import Token, tokenize

BoolArray = npt.NDArray[np.bool_]
Arr = npt.NDArray[Any]
Result = tuple[Arr, BoolArray]

BOOL, INT, DOUBLE, STRING, LIST = "bool", "int", "double", "string", "list"
NUMERIC = (INT, DOUBLE)
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 64
_TWO_CHAR = {"&&", "||", "==", "!=", "<=", ">="}
_PLAIN_STRING = re.compile(r"""^(?:'([^'\\\n]*)'|"([^"\\\n]*)")$""")


class Unsupported(Exception):
    """The condition uses something the vectorised evaluator does not implement."""


def type_of_value(value: Any) -> str | None:
    """The declared CEL type of a sample transaction value (``None``: not vectorisable)."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, str):
        return STRING
    return None


# -- batch environment -------------------------------------------------------------------------


class Env:
    """One batch: lazily built columns, shared by every rule evaluated over it."""

    def __init__(
        self,
        events: Sequence[Mapping[str, Any]],
        x: npt.NDArray[np.float64],
        feature_index: Mapping[str, int],
        txn_types: Mapping[str, str],
        lists: Mapping[str, Membership],
    ) -> None:
        self.events = events
        self.n = len(events)
        self.x = x
        self.feature_index = feature_index
        self.txn_types = txn_types
        self.lists = lists
        self._txn: dict[str, tuple[Arr, BoolArray, BoolArray]] = {}
        self._feat: dict[str, Result] = {}
        self.false = np.zeros(self.n, dtype=bool)
        self.true = np.ones(self.n, dtype=bool)

    def txn(self, name: str) -> tuple[Arr, BoolArray, BoolArray]:
        """(values, present, odd): odd rows hold a value of another type than declared."""
        col = self._txn.get(name)
        if col is None:
            col = self._build_txn(name)
            self._txn[name] = col
        return col

    def _build_txn(self, name: str) -> tuple[Arr, BoolArray, BoolArray]:
        kind = self.txn_types[name]
        n = self.n
        raw = [e.get(name, _MISSING) for e in self.events]
        present = np.fromiter((v is not _MISSING for v in raw), dtype=bool, count=n)
        if kind == STRING:
            ok = np.fromiter((type(v) is str for v in raw), dtype=bool, count=n)
            vals: Arr = np.array([v if type(v) is str else "" for v in raw] or [""], dtype=object)
            vals = vals[:n]
        elif kind == DOUBLE:
            ok = np.fromiter((type(v) is float for v in raw), dtype=bool, count=n)
            vals = np.fromiter((v if type(v) is float else 0.0 for v in raw), np.float64, n)
        elif kind == INT:
            ok = np.fromiter(
                (type(v) is int and _INT_MIN <= v <= _INT_MAX for v in raw), dtype=bool, count=n
            )
            vals = np.fromiter((v if o else 0 for v, o in zip(raw, ok, strict=True)), np.int64, n)
        else:  # BOOL
            ok = np.fromiter((type(v) is bool for v in raw), dtype=bool, count=n)
            vals = np.fromiter((v is True for v in raw), dtype=bool, count=n)
        return vals, present, present & ~ok

    def feature(self, name: str) -> Result:
        col = self._feat.get(name)
        if col is None:
            j = self.feature_index.get(name)
            if j is None:
                col = (np.zeros(self.n), self.true)
            else:
                col = (np.ascontiguousarray(self.x[:, j]), self.false)
            self._feat[name] = col
        return col


class _Missing:
    pass


_MISSING = _Missing()


class Membership:
    """A list's values prepared for vectorised ``in``: strings, ints and doubles apart."""

    def __init__(self, values: Sequence[Any]) -> None:
        self.strings = frozenset(v for v in values if type(v) is str)
        ints = {v for v in values if type(v) is int and _INT_MIN <= v <= _INT_MAX}
        floats = {v for v in values if type(v) is float and v == v}
        self.ints = np.array(sorted(ints), dtype=np.int64)
        #: What an int value is compared with as a double (float members only: int == int is exact).
        self.floats = np.array(sorted(floats), dtype=np.float64)
        #: What a double value equals: float members and int members as doubles.
        self.doubles = np.array(sorted(floats | {float(v) for v in ints}), dtype=np.float64)
        self.bools = np.array(sorted({v for v in values if type(v) is bool}), dtype=bool)

    def contains(self, vals: Arr, kind: str) -> BoolArray:
        if kind == STRING:
            s = self.strings
            return np.fromiter((v in s for v in vals), dtype=bool, count=len(vals))
        if kind == DOUBLE:
            return np.isin(vals, self.doubles)
        if kind == INT:
            return np.isin(vals, self.ints) | np.isin(vals.astype(np.float64), self.floats)
        if kind == BOOL:
            return np.isin(vals, self.bools)
        msg = f"'in' on {kind}"
        raise Unsupported(msg)


# -- nodes -------------------------------------------------------------------------------------


@dataclass
class Node:
    kind: str

    def compute(self, env: Env) -> Result:  # pragma: no cover - overridden
        raise NotImplementedError

    def txn_fields(self) -> set[str]:
        return set()


@dataclass
class Const(Node):
    value: Any

    def compute(self, env: Env) -> Result:
        dtype = {BOOL: bool, INT: np.int64, DOUBLE: np.float64}.get(self.kind, object)
        vals: Arr = np.empty(env.n, dtype=dtype)
        vals[:] = self.value
        return vals, env.false


@dataclass
class ListConst(Node):
    values: list[Any]
    member: Membership


@dataclass
class NamedList(Node):
    name: str


@dataclass
class TxnField(Node):
    name: str

    def compute(self, env: Env) -> Result:
        vals, present, _ = env.txn(self.name)
        return vals, ~present

    def txn_fields(self) -> set[str]:
        return {self.name}


@dataclass
class Feature(Node):
    name: str

    def compute(self, env: Env) -> Result:
        return env.feature(self.name)


@dataclass
class Has(Node):
    root: str
    name: str

    def compute(self, env: Env) -> Result:
        if self.root == "txn":
            return env.txn(self.name)[1], env.false
        present = env.true if self.name in env.feature_index else env.false
        return present, env.false

    def txn_fields(self) -> set[str]:
        return {self.name} if self.root == "txn" else set()


@dataclass
class Op(Node):
    op: str
    args: list[Node]

    def txn_fields(self) -> set[str]:
        out: set[str] = set()
        for a in self.args:
            out |= a.txn_fields()
        return out

    def compute(self, env: Env) -> Result:  # noqa: C901 - one dispatch over operators
        op = self.op
        if op in ("&&", "||"):
            (a, ea), (b, eb) = self.args[0].compute(env), self.args[1].compute(env)
            if op == "&&":
                false = (~ea & ~a) | (~eb & ~b)
                return ~false & ~ea & ~eb, ~false & (ea | eb)
            true = (~ea & a) | (~eb & b)
            return true, ~true & (ea | eb)
        if op == "!":
            a, ea = self.args[0].compute(env)
            return ~a, ea
        if op == "?:":
            (c, ec), (t, et), (f, ef) = (n.compute(env) for n in self.args)
            return np.where(c, t, f), ec | np.where(c, et, ef)
        if op == "in":
            a, ea = self.args[0].compute(env)
            lst = self.args[1]
            if isinstance(lst, ListConst):
                member = lst.member
            elif isinstance(lst, NamedList):
                member = env.lists[lst.name]
            else:  # pragma: no cover - rejected at compile time
                msg = "in"
                raise Unsupported(msg)
            return member.contains(a, self.args[0].kind), ea
        if op == "neg":
            a, ea = self.args[0].compute(env)
            with np.errstate(all="ignore"):
                return np.negative(a), ea
        if op in _STRING_FUNCS:
            (a, ea), (b, eb) = self.args[0].compute(env), self.args[1].compute(env)
            fn = _STRING_FUNCS[op]
            return np.fromiter(map(fn, a, b), dtype=bool, count=env.n), ea | eb
        if op == "size":
            a, ea = self.args[0].compute(env)
            sizes = np.fromiter((len(s.encode()) for s in a), dtype=np.int64, count=env.n)
            return sizes, ea
        if op == "double":
            a, ea = self.args[0].compute(env)
            return a.astype(np.float64), ea
        (a, ea), (b, eb) = self.args[0].compute(env), self.args[1].compute(env)
        err = ea | eb
        ka, kb = self.args[0].kind, self.args[1].kind
        if op in ("==", "!="):
            if (ka in NUMERIC) != (kb in NUMERIC) or (ka not in NUMERIC and ka != kb):
                eq = env.false
            else:
                if ka != kb:
                    a, b = a.astype(np.float64), b.astype(np.float64)
                eq = np.asarray(a == b, dtype=bool)
            return (eq if op == "==" else ~eq), err
        if op in ("<", "<=", ">", ">="):
            if ka != kb:
                a, b = a.astype(np.float64), b.astype(np.float64)
            if a.dtype == np.float64:
                err = err | np.isnan(a) | np.isnan(b)
            cmp = _CMP[op]
            return np.asarray(cmp(a, b), dtype=bool), err
        # arithmetic
        with np.errstate(all="ignore"):
            if op == "+":
                r = a + b
            elif op == "-":
                r = a - b
            elif op == "*":
                r = a * b
            else:
                r = a / b
        if self.kind == INT:
            if op == "+":
                err = err | (((a ^ r) & (b ^ r)) < 0)
            else:
                err = err | (((a ^ b) & (a ^ r)) < 0)
        return r, err


_CMP: dict[str, Callable[[Arr, Arr], Arr]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}
_STRING_FUNCS: dict[str, Callable[[str, str], bool]] = {
    "startsWith": str.startswith,
    "endsWith": str.endswith,
    "contains": str.__contains__,
}


# -- parser ------------------------------------------------------------------------------------


class _Parser:
    def __init__(
        self, text: str, txn_types: Mapping[str, str], lists: Mapping[str, Sequence[Any]]
    ) -> None:
        self.toks = _merge(tokenize(text))
        self.i = 0
        self.depth = 0
        self.txn_types = txn_types
        self.lists = lists

    # token helpers
    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def at(self, text: str) -> bool:
        t = self.peek()
        return t is not None and t.text == text and t.kind in ("punct", "ident")

    def take(self, text: str | None = None) -> Token:
        t = self.peek()
        if t is None or (text is not None and t.text != text):
            msg = f"expected {text!r}"
            raise Unsupported(msg)
        self.i += 1
        return t

    def parse(self) -> Node:
        node = self.expr()
        if self.peek() is not None:
            msg = "trailing input"
            raise Unsupported(msg)
        return node

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            msg = "too deep"
            raise Unsupported(msg)

    def expr(self) -> Node:
        self._enter()
        cond = self.binary(0)
        if self.at("?"):
            self.take("?")
            t = self.binary(0)
            self.take(":")
            f = self.expr()
            _need(cond, BOOL)
            if t.kind != f.kind or t.kind == LIST:
                msg = "ternary branches of different types"
                raise Unsupported(msg)
            cond = Op(t.kind, "?:", [cond, t, f])
        self.depth -= 1
        return cond

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("==", "!=", "<", "<=", ">", ">=", "in"),
        ("+", "-"),
        ("*", "/", "%"),
    )

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        ops = self._LEVELS[level]
        while True:
            t = self.peek()
            if t is None or t.text not in ops or t.kind == "str":
                return left
            self.take()
            right = self.binary(level + 1)
            left = _binary(t.text, left, right)

    def unary(self) -> Node:
        t = self.peek()
        if t is not None and t.kind == "punct" and t.text in ("!", "-"):
            self.take()
            self._enter()
            arg = self.unary()
            self.depth -= 1
            if t.text == "!":
                _need(arg, BOOL)
                return Op(BOOL, "!", [arg])
            if arg.kind not in NUMERIC:
                msg = "negation of a non-number"
                raise Unsupported(msg)
            if isinstance(arg, Const):
                return Const(arg.kind, -arg.value)
            return Op(arg.kind, "neg", [arg])
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while self.at("."):
            self.take(".")
            name = self.take()
            if name.kind != "ident":
                msg = "selection"
                raise Unsupported(msg)
            if not self.at("("):
                msg = "field selection on a value"
                raise Unsupported(msg)
            args = self.call_args()
            node = _method(name.text, node, args)
        if self.at("["):
            msg = "indexing"
            raise Unsupported(msg)
        return node

    def call_args(self) -> list[Node]:
        self.take("(")
        args: list[Node] = []
        if not self.at(")"):
            args.append(self.expr())
            while self.at(","):
                self.take(",")
                args.append(self.expr())
        self.take(")")
        return args

    def primary(self) -> Node:  # noqa: C901 - one dispatch over token shapes
        t = self.take()
        if t.kind == "num":
            return _number(t.text)
        if t.kind == "str":
            return Const(STRING, _string(t.text))
        if t.text == "(":
            self._enter()
            node = self.expr()
            self.depth -= 1
            self.take(")")
            return node
        if t.text == "[":
            values: list[Any] = []
            while not self.at("]"):
                item = self.unary()
                if not isinstance(item, Const):
                    msg = "non-constant list item"
                    raise Unsupported(msg)
                values.append(item.value)
                if not self.at(","):
                    break
                self.take(",")
            self.take("]")
            return ListConst(LIST, values, Membership(values))
        if t.kind != "ident":
            msg = f"token {t.text!r}"
            raise Unsupported(msg)
        if t.text in ("true", "false"):
            return Const(BOOL, t.text == "true")
        if t.text in ("txn", "f", "lists"):
            return self.root(t.text)
        if t.text == "has":
            self.take("(")
            root = self.take()
            if root.text not in ("txn", "f"):
                msg = "has() on something else than txn or f"
                raise Unsupported(msg)
            name = self.field_name()
            self.take(")")
            if root.text == "txn" and name not in self.txn_types:
                msg = "has() on an undeclared field"
                raise Unsupported(msg)
            return Has(BOOL, root.text, name)
        if t.text in ("size", "double") and self.at("("):
            args = self.call_args()
            if len(args) != 1:
                msg = f"{t.text}() arity"
                raise Unsupported(msg)
            if t.text == "size":
                _need(args[0], STRING)
                return Op(INT, "size", args)
            if args[0].kind not in NUMERIC:
                msg = "double() of a non-number"
                raise Unsupported(msg)
            return Op(DOUBLE, "double", args)
        msg = f"identifier {t.text!r}"
        raise Unsupported(msg)

    def field_name(self) -> str:
        if self.at("."):
            self.take(".")
            name = self.take()
            if name.kind != "ident":
                msg = "field"
                raise Unsupported(msg)
            return name.text
        if self.at("["):
            self.take("[")
            s = self.take()
            if s.kind != "str":
                msg = "dynamic index"
                raise Unsupported(msg)
            self.take("]")
            return _string(s.text)
        msg = "bare root"
        raise Unsupported(msg)

    def root(self, root: str) -> Node:
        name = self.field_name()
        if self.at("("):
            msg = "call on a root"
            raise Unsupported(msg)
        if root == "f":
            return Feature(DOUBLE, name)
        if root == "txn":
            kind = self.txn_types.get(name)
            if kind is None:
                msg = f"undeclared field txn.{name}"
                raise Unsupported(msg)
            return TxnField(kind, name)
        if name not in self.lists:
            msg = f"unknown list {name}"
            raise Unsupported(msg)
        return NamedList(LIST, name)


def _merge(tokens: list[Token]) -> list[Token]:
    """Adjacent single-character punctuation that forms a CEL operator, as one token."""
    out: list[Token] = []
    for t in tokens:
        if out and t.kind == "punct" and out[-1].kind == "punct":
            prev = out[-1]
            pair = prev.text + t.text
            if pair in _TWO_CHAR and prev.pos + 1 == t.pos:
                out[-1] = Token("punct", pair, prev.pos)
                continue
        out.append(t)
    return out


def _need(node: Node, kind: str) -> None:
    if node.kind != kind:
        msg = f"expected {kind}, got {node.kind}"
        raise Unsupported(msg)


def _number(text: str) -> Const:
    if text[-1] in "uU" or text[:2] in ("0x", "0X"):
        msg = "unsigned or hex literal"
        raise Unsupported(msg)
    if any(c in text for c in ".eE"):
        return Const(DOUBLE, float(text))
    value = int(text)
    if value > _INT_MAX:
        msg = "int literal out of range"
        raise Unsupported(msg)
    return Const(INT, value)


def _string(text: str) -> str:
    m = _PLAIN_STRING.match(text)
    if m is None:
        msg = "string literal with escapes or prefixes"
        raise Unsupported(msg)
    return m.group(1) if m.group(1) is not None else m.group(2)


def _method(name: str, target: Node, args: list[Node]) -> Node:
    if name == "size" and not args:
        _need(target, STRING)
        return Op(INT, "size", [target])
    if name in _STRING_FUNCS and len(args) == 1:
        _need(target, STRING)
        _need(args[0], STRING)
        return Op(BOOL, name, [target, args[0]])
    msg = f"method {name}"
    raise Unsupported(msg)


def _binary(op: str, a: Node, b: Node) -> Node:
    if op in ("&&", "||"):
        _need(a, BOOL)
        _need(b, BOOL)
        return Op(BOOL, op, [a, b])
    if a.kind == LIST or (b.kind == LIST and op != "in"):
        msg = "list operand"
        raise Unsupported(msg)
    if op == "in":
        if b.kind != LIST or a.kind not in (STRING, INT, DOUBLE, BOOL):
            msg = "'in' needs a list on the right"
            raise Unsupported(msg)
        return Op(BOOL, "in", [a, b])
    if op in ("==", "!="):
        return Op(BOOL, op, [a, b])
    if op in ("<", "<=", ">", ">="):
        numeric = a.kind in NUMERIC and b.kind in NUMERIC
        if not numeric and not (a.kind == b.kind == STRING):
            msg = f"{a.kind} {op} {b.kind}"
            raise Unsupported(msg)
        if a.kind == b.kind == STRING:
            return Op(BOOL, op, [a, b])
        return Op(BOOL, op, [a, b])
    # arithmetic
    if a.kind != b.kind or a.kind not in NUMERIC:
        msg = f"{a.kind} {op} {b.kind}"
        raise Unsupported(msg)
    if op == "%" or (a.kind == INT and op in ("*", "/")):
        msg = f"{a.kind} {op}"
        raise Unsupported(msg)
    return Op(a.kind, op, [a, b])


# -- entry points ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorProgram:
    """A condition compiled to column operations."""

    source: str
    root: Node
    txn_fields: frozenset[str]

    def run(self, env: Env) -> tuple[BoolArray, BoolArray, BoolArray]:
        """(fires, errors, odd rows to evaluate with CEL instead)."""
        odd = env.false
        for name in self.txn_fields:
            odd = odd | env.txn(name)[2]
        vals, err = self.root.compute(env)
        fires = np.asarray(vals, dtype=bool) & ~err & ~odd
        return fires, err & ~odd, odd


def compile_vector(
    condition: str, txn_types: Mapping[str, str], lists: Mapping[str, Sequence[Any]]
) -> VectorProgram:
    """Compile ``condition``; raise :class:`Unsupported` if it is outside the vectorised subset.

    ``txn_types`` maps each transaction field to its declared type (:func:`type_of_value`);
    ``lists`` are the named lists (only their names are used: contents are read per batch).
    """
    root = _Parser(condition, txn_types, lists).parse()
    if root.kind != BOOL:
        msg = "condition is not boolean"
        raise Unsupported(msg)
    return VectorProgram(condition, root, frozenset(root.txn_fields()))
