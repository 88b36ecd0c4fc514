"""File-system model registry: immutable content-addressed model dirs plus role assignments.

Layout under ``root`` (normally ``$RISKSTREAM_DATA_DIR/models``)::

    <version>/model.txt       native LightGBM text model (hashes to <version>)
    <version>/metadata.json   feature names/order, metrics, training window, data fingerprint,
                              reference histograms, created_at, extras
    roles.json                {"champion": v, "shadows": [...], "retired": [...], "history": [...]}
    .roles.lock               flock() taken while roles.json is read-modified-written

Roles: exactly one **champion** decides; any number of **shadows** are scored on every
transaction, recorded in the decision and evaluated, but never decide; **retired** models keep
their files (for audit and rollback) and are not loaded. A registered model with no role is a
**candidate**. Promoting a version makes the previous champion retired (``shadow`` it again to keep
it challenging); a version cannot be champion and shadow at once, and the champion cannot be
retired (promote another one first: the engine would silently go rules-only otherwise).

Every write is atomic: model dirs are published with a directory rename, roles.json is replaced
with ``os.replace`` (under an exclusive lock, so two concurrent ``riskstream models`` commands
cannot lose each other's change). Workers poll :meth:`ModelRegistry.roles` (one small file read)
to pick up promotions and shadows without restarting. A registry written before roles existed
(a one-line ``champion`` file) is still read; the first role change migrates it.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models._atomic import atomic_write_text, fsync_dir
from models.errors import ModelIntegrityError, ModelLoadError, RoleError, UnknownModelError
from models.lgbm import VERSION_HEX_CHARS, LightGBMScorer, content_version

MODEL_FILE = "model.txt"
METADATA_FILE = "metadata.json"
ROLES_FILE = "roles.json"
LOCK_FILE = ".roles.lock"
LEGACY_CHAMPION_FILE = "champion"
CHAMPION, SHADOW, RETIRED, CANDIDATE = "champion", "shadow", "retired", "candidate"
ROLES = (CHAMPION, SHADOW, RETIRED, CANDIDATE)
#: Role changes kept in roles.json (the full audit trail belongs in logs; this is for `show`).
HISTORY_KEEP = 200

_VERSION_RE = re.compile(rf"^[0-9a-f]{{{VERSION_HEX_CHARS}}}$")


def _jsonable(obj: Any) -> Any:
    """Strict-JSON form: numpy scalars/arrays to Python, NaN/inf to null, other objects to str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar or array
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


@dataclass(frozen=True)
class Roles:
    """Who scores: one champion (or none), shadows in the order they were added, retired ones."""

    champion: str | None = None
    shadows: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    def role_of(self, version: str) -> str:
        if version == self.champion:
            return CHAMPION
        if version in self.shadows:
            return SHADOW
        if version in self.retired:
            return RETIRED
        return CANDIDATE

    def to_json(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "shadows": list(self.shadows),
            "retired": list(self.retired),
            "history": list(self.history)[-HISTORY_KEEP:],
        }


class ModelRegistry:
    """Register, list, assign roles to and load LightGBM models stored under ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------
    def _dir(self, version: str) -> Path:
        """The model dir of ``version``; rejects anything that is not a version (no path tricks)."""
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise UnknownModelError(str(version), self.root)
        return self.root / version

    def _existing_dir(self, version: str) -> Path:
        d = self._dir(version)
        if not (d / MODEL_FILE).is_file():
            raise UnknownModelError(version, self.root)
        return d

    # -- writing ---------------------------------------------------------------------------
    def register(self, scorer: LightGBMScorer, metadata: Mapping[str, Any] | None = None) -> str:
        """Store the model and its metadata; returns its version.

        Idempotent: registering a model whose version already exists changes nothing (the first
        registration's metadata is kept) and returns the same version. ``metadata`` may carry
        ``metrics``, ``training_window`` (e.g. ``{"start": iso, "end": iso}``), drift reference
        histograms or anything JSON-serialisable; ``version``, ``feature_names``, ``num_trees``
        and ``created_at`` (ISO-8601 UTC) are filled in by the registry.
        """
        version = scorer.version
        final = self._dir(version)
        if (final / MODEL_FILE).is_file():
            return version
        meta: dict[str, Any] = {"metrics": {}, "training_window": None, **(metadata or {})}
        meta.update(
            version=version,
            feature_names=scorer.feature_names,
            num_trees=scorer.num_trees,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        payload = json.dumps(_jsonable(meta), indent=2, sort_keys=True, allow_nan=False)

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.root))
        try:
            scorer.save(tmp / MODEL_FILE)
            atomic_write_text(tmp / METADATA_FILE, payload + "\n")
            try:
                tmp.rename(final)  # atomic publish; fails if someone else won the race
            except OSError:
                if not (final / MODEL_FILE).is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(self.root)
        return version

    # -- roles -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _change(self, version: str, action: str) -> Roles:
        """Apply one role change atomically; returns the new roles."""
        self._existing_dir(version)
        with self._locked():
            old = self.roles()
            shadows = [v for v in old.shadows if v != version]
            retired = [v for v in old.retired if v != version]
            champion = old.champion
            if action == "promote":
                if old.champion and old.champion != version:
                    retired.append(old.champion)
                champion = version
            elif action == "shadow":
                if version == old.champion:
                    msg = f"{version} is the champion; promote another version before shadowing it"
                    raise RoleError(msg)
                shadows.append(version)
            elif action == "retire":
                if version == old.champion:
                    msg = (
                        f"{version} is the champion; promote another version first "
                        "(retiring it would leave the engine deciding with rules only)"
                    )
                    raise RoleError(msg)
                retired.append(version)
            else:  # pragma: no cover - internal misuse
                msg = f"unknown role action {action!r}"
                raise ValueError(msg)
            event = {
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "action": action,
                "version": version,
                "previous_role": old.role_of(version),
            }
            new = Roles(champion, tuple(shadows), tuple(retired), (*old.history, event))
            payload = json.dumps(new.to_json(), indent=2, sort_keys=True)
            atomic_write_text(self.root / ROLES_FILE, payload + "\n")
            legacy = self.root / LEGACY_CHAMPION_FILE
            if legacy.exists():  # migrated: roles.json is the only source of truth from now on
                legacy.unlink()
                fsync_dir(self.root)
            return new

    def promote(self, version: str) -> Roles:
        """Make ``version`` the champion; the previous champion becomes retired."""
        return self._change(version, "promote")

    def shadow(self, version: str) -> Roles:
        """Score ``version`` in shadow on every transaction (never deciding)."""
        return self._change(version, "shadow")

    def retire(self, version: str) -> Roles:
        """Stop scoring ``version`` (a shadow, or a candidate); its files are kept."""
        return self._change(version, "retire")

    def roles(self) -> Roles:
        """The current role assignment (one small file read; what workers poll)."""
        try:
            data = json.loads((self.root / ROLES_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            try:
                text = (self.root / LEGACY_CHAMPION_FILE).read_text(encoding="ascii").strip()
            except FileNotFoundError:
                return Roles()
            return Roles(champion=text or None)
        return Roles(
            champion=data.get("champion") or None,
            shadows=tuple(data.get("shadows") or ()),
            retired=tuple(data.get("retired") or ()),
            history=tuple(data.get("history") or ()),
        )

    def role(self, version: str) -> str:
        """``champion``, ``shadow``, ``retired`` or ``candidate`` (raises if unknown)."""
        self._existing_dir(version)
        return self.roles().role_of(version)

    def shadow_versions(self) -> builtins.list[str]:
        """Versions to score in shadow, in the order they were added."""
        return list(self.roles().shadows)

    # -- reading ---------------------------------------------------------------------------
    def metadata(self, version: str) -> dict[str, Any]:
        """The stored metadata of ``version``."""
        d = self._existing_dir(version)
        data: dict[str, Any] = json.loads((d / METADATA_FILE).read_text(encoding="utf-8"))
        return data

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every model's metadata, oldest first, plus ``role`` and ``champion: bool``."""
        if not self.root.is_dir():
            return []
        roles = self.roles()
        out: builtins.list[dict[str, Any]] = []
        for d in self.root.iterdir():
            if not (_VERSION_RE.match(d.name) and (d / MODEL_FILE).is_file()):
                continue  # temp dirs, the champion file, stray files
            meta = self.metadata(d.name)
            meta["role"] = roles.role_of(d.name)
            meta["champion"] = d.name == roles.champion
            out.append(meta)
        out.sort(key=lambda m: (str(m.get("created_at", "")), str(m.get("version", ""))))
        return out

    def champion_version(self) -> str | None:
        """The promoted version, or ``None`` if nothing was ever promoted."""
        return self.roles().champion

    def load(
        self, version: str, num_threads: int = 0, explain_threads: int | None = None,
        explain: str = "shap",
    ) -> LightGBMScorer:  # fmt: skip
        """Load ``version``, checked; every failure is one of three clear errors.

        :class:`UnknownModelError`: no such version (or its model file is gone).
        :class:`ModelLoadError` (a :class:`ModelIntegrityError`): the file exists but does not
        hash to its version (corrupt, truncated, altered), cannot be read or parsed, or disagrees
        with its metadata's feature names.
        """
        d = self._existing_dir(version)
        path = d / MODEL_FILE
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError as exc:  # deleted between the check and the read
            raise UnknownModelError(version, self.root) from exc
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"model file {path} (version {version}) cannot be read: {exc}"
            raise ModelLoadError(msg) from exc
        # Check the content hash *before* parsing: LightGBM's parser can abort the whole
        # process on some truncated files instead of raising, so it only ever sees intact text.
        if content_version(text) != version:
            msg = (
                f"model file {path} does not hash to its version {version} "
                "(corrupt, truncated or altered); refusing to load it"
            )
            raise ModelLoadError(msg)
        try:
            scorer = LightGBMScorer.from_string(text, num_threads, explain_threads, explain)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            msg = f"model file {path} (version {version}) cannot be loaded: {first}"
            raise ModelLoadError(msg) from exc
        try:
            expected = json.loads((d / METADATA_FILE).read_text(encoding="utf-8"))["feature_names"]
        except (OSError, ValueError, KeyError, TypeError):
            expected = None  # metadata is informative; the model file is the authority
        if expected is not None and list(expected) != scorer.feature_names:
            msg = (
                f"model file {path} has features {scorer.feature_names}, "
                f"but its metadata says {expected}"
            )
            raise ModelLoadError(msg)
        if scorer.version != version:
            msg = f"model file {d / MODEL_FILE} hashes to {scorer.version}, expected {version}"
            raise ModelIntegrityError(msg)
        return scorer

    def load_champion(
        self, num_threads: int = 0, explain_threads: int | None = None, explain: str = "shap"
    ) -> LightGBMScorer | None:
        """The champion scorer, or ``None`` if no champion was promoted."""
        version = self.champion_version()
        if version is None:
            return None
        return self.load(version, num_threads, explain_threads, explain)
