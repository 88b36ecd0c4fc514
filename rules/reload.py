"""Hot reload: watch a rule directory and swap in a new rule set when its content changes.

>>> w = RuleSetWatcher("rules", known_features)            # doctest: +SKIP
>>> rules = w.current()        # per batch: the running set (one attribute read)
>>> w.poll()                   # from a timer, every second or so: True if a new set went live

``poll`` hashes the directory (cheap: no parsing) and loads it only when the hash differs from the
last one it tried. A set that fails validation never replaces the running one: the failure is
logged, counted in ``reload_failures`` and kept in ``last_error``; the same broken content is not
retried (nor counted again) until it changes. The swap is a single reference assignment, so a
batch evaluated concurrently sees either the old set or the new one, never a mix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rules.loader import RuleSetError, load_rule_set, rule_set_version
from rules.ruleset import RuleSet

log = logging.getLogger(__name__)


class RuleSetWatcher:
    """The running rule set of a directory, reloaded by :meth:`poll` when the files change.

    The first load happens in the constructor and raises :class:`RuleSetError` if the directory
    is invalid (a worker must not start without rules). ``redis_client`` (optional) is attached
    to every loaded set for its Redis-backed lists (see :meth:`RuleSet.attach_redis`);
    ``on_change(old, new)`` is called after each successful swap.
    """

    def __init__(
        self,
        directory: str | Path,
        known_features: Sequence[str],
        poll_seconds: float = 2.0,
        *,
        sample_event: Mapping[str, Any] | None = None,
        redis_client: Any = None,
        list_ttl_seconds: float = 5.0,
        on_change: Callable[[RuleSet, RuleSet], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.known_features = list(known_features)
        self.poll_seconds = poll_seconds
        self.sample_event = sample_event
        self.redis_client = redis_client
        self.list_ttl_seconds = list_ttl_seconds
        self.on_change = on_change
        #: Reloads that failed (invalid set, unreadable directory); the old set kept running.
        self.reload_failures = 0
        #: The last failure's message (one line per problem), or None after a good reload.
        self.last_error: str | None = None
        #: Successful swaps after the first load.
        self.reloads = 0
        self._lock = threading.Lock()
        self._current = self._load()
        self._tried = self._current.version
        self._last_poll = time.monotonic()

    def _load(self) -> RuleSet:
        rs = load_rule_set(self.directory, self.known_features, sample_event=self.sample_event)
        if self.redis_client is not None:
            rs.attach_redis(self.redis_client, self.list_ttl_seconds)
        return rs

    def current(self) -> RuleSet:
        """The running rule set."""
        return self._current

    @property
    def version(self) -> str:
        return self._current.version

    def poll(self, force: bool = False) -> bool:
        """Load the directory if its content changed since the last attempt; True if swapped.

        Never raises: every failure is logged and counted, and the running set stays.
        """
        with self._lock:
            self._last_poll = time.monotonic()
            try:
                version = rule_set_version(self.directory)
            except OSError as exc:
                return self._failed(f"{self.directory}: cannot read rule directory: {exc}", None)
            if version == self._tried and not force:
                return False
            self._tried = version
            if version == self._current.version and not force:
                self.last_error = None
                return False
            try:
                new = self._load()
            except RuleSetError as exc:
                return self._failed(str(exc), version)
            except Exception as exc:  # e.g. a file vanished mid-read
                return self._failed(f"{self.directory}: {type(exc).__name__}: {exc}", version)
            old, self._current = self._current, new
            self.reloads += 1
            self.last_error = None
        log.info("rule set %s is live (was %s, %d rules)", new.version, old.version, len(new))
        if self.on_change is not None:
            try:
                self.on_change(old, new)
            except Exception:
                log.exception("rule set on_change callback failed")
        return True

    def poll_if_due(self) -> bool:
        """:meth:`poll` when ``poll_seconds`` have passed since the last poll (call per batch)."""
        if time.monotonic() - self._last_poll < self.poll_seconds:
            return False
        return self.poll()

    def _failed(self, message: str, version: str | None) -> bool:
        self.reload_failures += 1
        self.last_error = message
        what = f"version {version}" if version else "directory"
        log.error(
            "rule set %s rejected, keeping %s running: %s",
            what,
            self._current.version,
            message.replace("\n", " | "),
        )
        return False
