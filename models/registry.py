"""File-system model registry: immutable content-addressed model dirs plus a champion pointer.

Layout under ``root`` (normally ``$RISKSTREAM_DATA_DIR/models``)::

    <version>/model.txt       native LightGBM text model (hashes to <version>)
    <version>/metadata.json   feature names/order, metrics, training window, created_at, extras
    champion                  one line: the champion version (replaced atomically on promote)

Model dirs are published with a directory rename, so a reader sees a complete model or none;
workers poll :meth:`ModelRegistry.champion_version` (one small file read) to pick up promotions
without restarting.
"""

from __future__ import annotations

import builtins
import json
import math
import re
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models._atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from models.errors import ModelIntegrityError, UnknownModelError
from models.lgbm import VERSION_HEX_CHARS, LightGBMScorer

MODEL_FILE = "model.txt"
METADATA_FILE = "metadata.json"
CHAMPION_FILE = "champion"

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


class ModelRegistry:
    """Register, list, promote and load LightGBM models stored under ``root``."""

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

    def promote(self, version: str) -> None:
        """Make ``version`` the champion (atomic pointer swap; workers pick it up on next poll)."""
        self._existing_dir(version)
        atomic_write_bytes(self.root / CHAMPION_FILE, (version + "\n").encode("ascii"))

    # -- reading ---------------------------------------------------------------------------
    def metadata(self, version: str) -> dict[str, Any]:
        """The stored metadata of ``version``."""
        d = self._existing_dir(version)
        data: dict[str, Any] = json.loads((d / METADATA_FILE).read_text(encoding="utf-8"))
        return data

    def list(self) -> builtins.list[dict[str, Any]]:
        """Metadata of every registered model, oldest first, with ``champion: bool`` added."""
        if not self.root.is_dir():
            return []
        champion = self.champion_version()
        out: builtins.list[dict[str, Any]] = []
        for d in self.root.iterdir():
            if not (_VERSION_RE.match(d.name) and (d / MODEL_FILE).is_file()):
                continue  # temp dirs, the champion file, stray files
            meta = self.metadata(d.name)
            meta["champion"] = d.name == champion
            out.append(meta)
        out.sort(key=lambda m: (str(m.get("created_at", "")), str(m.get("version", ""))))
        return out

    def champion_version(self) -> str | None:
        """The promoted version, or ``None`` if nothing was ever promoted."""
        try:
            text = (self.root / CHAMPION_FILE).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        return text or None

    def load(self, version: str, num_threads: int = 0) -> LightGBMScorer:
        """Load ``version``; raises :class:`UnknownModelError` or, if the file was altered,
        :class:`ModelIntegrityError` (its content no longer hashes to its version)."""
        d = self._existing_dir(version)
        scorer = LightGBMScorer.from_file(d / MODEL_FILE, num_threads=num_threads)
        if scorer.version != version:
            msg = f"model file {d / MODEL_FILE} hashes to {scorer.version}, expected {version}"
            raise ModelIntegrityError(msg)
        return scorer

    def load_champion(self, num_threads: int = 0) -> LightGBMScorer | None:
        """The champion scorer, or ``None`` if no champion was promoted."""
        version = self.champion_version()
        return None if version is None else self.load(version, num_threads=num_threads)
