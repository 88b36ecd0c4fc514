"""Named lists usable in conditions as ``lists.<name>``: inline, from files, or from Redis sets.

In a rule file::

    lists:
      high_risk_countries: [KP, IR, SY]                         # inline values
      blocked_bins: {file: lists/bins/blocked.txt}              # one value per line
      blocked_cards: {source: redis, key: "rs:list:blocked_cards"}  # a Redis set

Every ``lists/*.txt`` file of the rule directory is also a list, named after the file
(``lists/vip_cards.txt`` is ``lists.vip_cards``); ``{file: ...}`` lists must live under
``lists/`` too. Text files hold one value per line (strings; blank lines and lines starting with
``#`` are skipped). Every file under ``lists/`` is part of the rule set's content hash, so editing
one is a new version that the watcher hot-reloads. Redis lists are data:
their members are fetched with one ``SMEMBERS`` per list every ``ttl`` seconds (see
:meth:`rules.ruleset.RuleSet.attach_redis`), so adding a card to a block list takes effect within
seconds, without a reload, and without changing the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_LIST_FILE_BYTES = 8 << 20
LIST_DIR = "lists"


@dataclass(frozen=True, slots=True)
class RedisList:
    """A list whose members are the Redis set at ``key`` (strings)."""

    name: str
    key: str


def read_list_file(path: Path) -> list[str]:
    """Values of a text list file: one per line, stripped, without blanks and ``#`` comments."""
    data = path.read_bytes()
    if len(data) > MAX_LIST_FILE_BYTES:
        msg = f"{len(data)} bytes (limit {MAX_LIST_FILE_BYTES})"
        raise ValueError(msg)
    out: list[str] = []
    for line in data.decode("utf-8").splitlines():
        value = line.strip()
        if value and not value.startswith("#"):
            out.append(value)
    return out


def list_files(directory: Path) -> list[Path]:
    """``lists/*.txt`` under a rule directory, in name order."""
    d = directory / LIST_DIR
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.suffix == ".txt" and p.is_file()), key=str)


def all_list_files(directory: Path) -> list[Path]:
    """Every file under ``lists/`` (recursively): what the version hashes besides rule files."""
    d = directory / LIST_DIR
    if not d.is_dir():
        return []
    return sorted((p for p in d.rglob("*") if p.is_file()), key=str)


def resolve_inside(directory: Path, relative: str) -> Path:
    """``directory / relative``, which must be a file under the directory's ``lists/``."""
    if Path(relative).is_absolute():
        msg = "list file must be a path relative to the rule directory, under lists/"
        raise ValueError(msg)
    base = (directory / LIST_DIR).resolve()
    p = (directory.resolve() / relative).resolve()
    if base not in p.parents:
        msg = "list file must be under the rule directory's lists/"
        raise ValueError(msg)
    return p


def decode_members(members: Any) -> list[str]:
    """Redis set members (bytes or str) as sorted strings."""
    out = [m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m) for m in members]
    out.sort()
    return out
