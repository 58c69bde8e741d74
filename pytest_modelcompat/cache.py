"""On-disk caches: the per-instance result cache and the home directory of every cache we keep.

``ResultCache`` stores one JSON file per (stack fingerprint, task fingerprint) under its root:
``<root>/<stack_fp>/<task_fp>.json``. A file maps instance ids to the json-able dict the scoring
module stored for them. Because both fingerprints change whenever anything that changes a
prediction changes (see ``models/fingerprints.py`` and ``tasks.spec.TaskSpec.fingerprint``), an entry found here can
be used as is: an unchanged old stack is never evaluated twice.

Trust model: a file is used only if it parses, carries our schema version and the fingerprints
it is filed under, and its entries match the checksum stored beside them. Anything else (a
truncated write from a killed process, a hand edit, a file from a future version) is treated as
absent and is overwritten by the next ``put_many``; it is never trusted and never an error.

Concurrency (pytest-xdist workers, parallel CI jobs on one cache dir): every write takes a
``filelock`` lock on ``<file>.lock``, re-reads the file, merges its entries with the new ones and
replaces the file through ``atomic_write``; readers take no lock because a rename is atomic, so a
reader sees the old file or the new one, never half of one.

Import-light on purpose (no torch): the plugin imports this at start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_modelcompat.atomic import atomic_write

SCHEMA_VERSION = 1
# Fingerprints become path components: refuse anything that could escape the cache root.
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def cache_home() -> Path:
    """Root of everything pytest-modelcompat caches: ``$MODELCOMPAT_HOME`` or ``~/.cache/pytest-modelcompat``."""
    home = os.environ.get("MODELCOMPAT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "pytest-modelcompat"


def results_dir() -> Path:
    """The result cache's default root, shared by the plugin, ``muscle eval`` and ``muscle train``."""
    return cache_home() / "results"


def _entries_checksum(entries: Mapping[str, Any]) -> str:
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResultCache:
    """Per-instance results keyed by (stack fingerprint, task fingerprint, instance id)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, stack_fp: str, task_fp: str) -> Path:
        for key in (stack_fp, task_fp):
            if not _SAFE_KEY.match(key) or key in {".", ".."}:
                raise ValueError(f"cache key {key!r} is not a fingerprint (expected a hex digest)")
        return self.root / stack_fp / f"{task_fp}.json"

    def _read(self, path: Path, stack_fp: str, task_fp: str) -> dict[str, dict]:
        """The file's entries if it is complete and ours, else {} (treated as a cache miss)."""
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        if not isinstance(payload, dict):
            return {}
        entries = payload.get("entries")
        if (
            payload.get("schema_version") != SCHEMA_VERSION
            or payload.get("stack") != stack_fp
            or payload.get("task") != task_fp
            or not isinstance(entries, dict)
            or payload.get("checksum") != _entries_checksum(entries)
        ):
            return {}
        return {key: value for key, value in entries.items() if isinstance(value, dict)}

    def get_many(self, stack_fp: str, task_fp: str, ids: Iterable[str]) -> dict[str, dict]:
        """The cached results for those of ``ids`` that are present in a valid cache file."""
        entries = self._read(self.path(stack_fp, task_fp), stack_fp, task_fp)
        return {key: entries[key] for key in ids if key in entries}

    def put_many(self, stack_fp: str, task_fp: str, results: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge ``results`` (instance id → json-able dict) into the cache file, under a file lock."""
        from filelock import FileLock

        if not results:
            return
        path = self.path(stack_fp, task_fp)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            entries = self._read(path, stack_fp, task_fp)
            # Round-trip through JSON so the checksum is computed over exactly what a reader loads
            # (tuples become lists, non-str dict keys become str).
            entries.update(json.loads(json.dumps({str(key): dict(value) for key, value in results.items()})))
            payload = {
                "schema_version": SCHEMA_VERSION,
                "stack": stack_fp,
                "task": task_fp,
                "checksum": _entries_checksum(entries),
                "entries": entries,
            }
            atomic_write(path, json.dumps(payload, sort_keys=True, separators=(",", ":")))
