"""Baseline snapshots: the old stack's per-instance predictions as a file (docs/baseline.md).

``pytest --old-adapter A1 --compat-save-baseline FILE`` (or ``muscle eval --old-adapter A1
--save-baseline FILE``) scores the old stack only and writes its predictions; ``pytest
--compat-baseline FILE --new-adapter A2`` (``muscle eval --baseline FILE --new-adapter A2``) gates
the new stack against them with no old model on the machine.

The format, version 1 (one JSON object; gzip-compressed when the JSON exceeds ``GZIP_THRESHOLD``
bytes, whatever the file's name — readers detect gzip by its magic bytes)::

    {"format": "pytest-modelcompat-baseline",
     "schema_version": 1,
     "generator": "pytest-modelcompat 0.1.0",
     "stack": {"adapter": str, "base": str, "fingerprint": str,      # the old stack scored
               "device": str, "dtype": str},                        # (optional) what it scored on
     "tasks": [                                                      # sorted by name
      {"name": str, "kind": "multiple_choice"|"exact_match"|"generative",
       "fingerprint": str,                                           # TaskSpec.fingerprint()
       "n": int,
       "instances": [                                                # sorted by id, one per line
        {"id": str, "pred": int|str|null, "correct": bool|null, "score": float|null,
         "text": str|null, "logliks": [float, ...]|null},
        ...]}]}

An instance entry is ``scoring.predictions.Prediction.to_dict()`` plus its ``id``: what the gate needs to
recompute every metric, margin and report of the old side. Ids sort numerically when they are
integers ("2" before "10"), else as strings, so re-saving a snapshot after a data change shows as
a small diff. Writing is atomic and deterministic (sorted keys, gzip without a timestamp).

Refusals (``BaselineError``, a ``CompatInputError``: one line, pytest usage error / muscle exit 2):
a missing, unreadable, corrupt or other-format/version file; a task missing from the snapshot;
a task whose fingerprint differs from the snapshot's (data, template, lm-eval task changed);
instances the run needs that the snapshot lacks. Each names the command that refreshes it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_modelcompat.atomic import atomic_write
from pytest_modelcompat.errors import CompatInputError

if TYPE_CHECKING:
    from pytest_modelcompat.scoring.predictions import Prediction
    from pytest_modelcompat.tasks.spec import Instance, TaskSpec

FORMAT = "pytest-modelcompat-baseline"
SCHEMA_VERSION = 1
# The old stack as report.json's "old" object has it: adapter, base, fingerprint (required), and
# device, dtype (optional: a report gated on the snapshot can then say whether scores are batch invariant).
STACK_KEYS = ("adapter", "base", "fingerprint", "device", "dtype")
GZIP_THRESHOLD = 4 << 20            # bytes of JSON; above it the snapshot is written gzip-compressed
_GZIP_MAGIC = b"\x1f\x8b"
_KINDS = ("multiple_choice", "exact_match", "generative")
_PREDICTION_KEYS = ("pred", "correct", "score", "text", "logliks")


class BaselineError(CompatInputError):
    """A snapshot that cannot be used for this run (one line naming the fix)."""


def instance_sort_key(instance_id: str) -> tuple:
    """Integers numerically ("2" < "10"), then other ids as strings."""
    text = str(instance_id)
    return (0, int(text), text) if text.isdigit() else (1, 0, text)


def refresh_command(*, entry_point: str, suite: str | Path, stack: Mapping[str, str], path: str | Path) -> str:
    """The command that (re)writes a snapshot: ``pytest`` or ``muscle`` flavour."""
    if entry_point == "muscle":
        argv = ["muscle", "eval", "--suite", str(suite), "--old-adapter", stack["adapter"],
                "--old-base", stack["base"], "--save-baseline", str(path)]
    else:
        argv = ["pytest", str(suite), "--old-adapter", stack["adapter"], "--old-base", stack["base"],
                "--compat-save-baseline", str(path)]
    return shlex.join(argv)


# ---------------------------------------------------------------- writing


def task_entry(task: TaskSpec, instances: Sequence[Instance], predictions: Sequence[Prediction]) -> dict[str, Any]:
    """One task of a snapshot (JSON-able; instances sorted by id)."""
    rows = []
    for instance, prediction in zip(instances, predictions, strict=True):
        row = {"id": str(instance.id), **prediction.to_dict()}
        values = [row["score"], *(row["logliks"] or [])]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise BaselineError(
                f"task {task.name!r}: the old stack has non-finite scores on instance {instance.id!r} (NaN/inf; "
                f"try dtype float32); a baseline of them would be useless, so none is written"
            )
        rows.append(row)
    rows.sort(key=lambda row: instance_sort_key(row["id"]))
    return {"name": task.name, "kind": task.kind, "fingerprint": task.fingerprint(), "n": len(rows),
            "instances": rows}


def merge_entries(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Task entries of one run merged by name (a task scored by several tests: union of instances)."""
    merged: dict[str, dict[str, Any]] = {}
    for entry in entries:
        known = merged.get(entry["name"])
        if known is None:
            merged[entry["name"]] = {**entry, "instances": list(entry["instances"])}
            continue
        if known["fingerprint"] != entry["fingerprint"] or known["kind"] != entry["kind"]:
            raise BaselineError(
                f"two different tasks are named {entry['name']!r} in this run; a snapshot keys tasks by name: "
                f"rename one, or save them into separate snapshots (select with -k)"
            )
        rows = {row["id"]: row for row in known["instances"]} | {row["id"]: row for row in entry["instances"]}
        known["instances"] = sorted(rows.values(), key=lambda row: instance_sort_key(row["id"]))
        known["n"] = len(known["instances"])
    return [merged[name] for name in sorted(merged)]


def render(stack: Mapping[str, str], entries: Iterable[Mapping[str, Any]]) -> str:
    """The snapshot's JSON text: header fields one per line, one line per instance (diff-friendly)."""
    from pytest_modelcompat import __version__

    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)

    header = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "generator": f"pytest-modelcompat {__version__}",
              "stack": {key: str(stack[key]) for key in STACK_KEYS if key in stack}}
    lines = ["{"] + [f" {dump(key)}: {dump(value)}," for key, value in header.items()] + [' "tasks": [']
    entries = merge_entries(entries)
    for index, entry in enumerate(entries):
        head = {key: entry[key] for key in ("name", "kind", "fingerprint", "n")}
        lines.append("  " + dump(head)[:-1] + ', "instances": [')
        rows = entry["instances"]
        lines += [f"   {dump(row)}{',' if i < len(rows) - 1 else ''}" for i, row in enumerate(rows)]
        lines.append("  ]}" + ("," if index < len(entries) - 1 else ""))
    lines += [" ]", "}"]
    return "\n".join(lines) + "\n"


def write_snapshot(path: str | Path, stack: Mapping[str, str], entries: Iterable[Mapping[str, Any]]) -> Path:
    """Write a snapshot atomically (gzip when large); returns the path."""
    path = Path(path)
    text = render(stack, entries)
    data = text.encode("utf-8")
    if len(data) > GZIP_THRESHOLD or path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write(path, data)
    return path


# ---------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class BaselineTask:
    name: str
    kind: str
    fingerprint: str
    instances: dict[str, dict[str, Any]]    # id -> Prediction fields


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A loaded snapshot. ``refresh`` renders the command that rewrites it for a suite."""

    path: Path
    stack: dict[str, str]
    tasks: dict[str, BaselineTask]
    entry_point: str = "pytest"     # whose refresh command messages name: "pytest" or "muscle"

    @property
    def fingerprint(self) -> str:
        return self.stack["fingerprint"]

    def refresh(self, suite: str | Path) -> str:
        return refresh_command(entry_point=self.entry_point, suite=suite, stack=self.stack, path=self.path)

    def task(self, task: TaskSpec) -> BaselineTask:
        """The snapshot's entry for ``task`` (resolved spec); BaselineError if missing or stale."""
        entry = self.tasks.get(task.name)
        if entry is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise BaselineError(
                f"task {task.name!r} is not in the baseline snapshot {self.path} (it has: {known}); "
                f"refresh it: {self.refresh(task.source)}"
            )
        if entry.kind != task.kind or entry.fingerprint != task.fingerprint():
            raise BaselineError(
                f"task {task.name!r} changed since the baseline snapshot {self.path} was saved (its fingerprint "
                f"differs: data, template or lm-eval task); refresh it: {self.refresh(task.source)}"
            )
        return entry

    def check_instances(self, task: TaskSpec, instances: Sequence[Instance]) -> BaselineTask:
        entry = self.task(task)
        missing = [str(instance.id) for instance in instances if str(instance.id) not in entry.instances]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise BaselineError(
                f"task {task.name!r}: the baseline snapshot {self.path} lacks {len(missing)} of the {len(instances)} "
                f"instances this run evaluates (ids {shown}; saved with a smaller limit?); "
                f"refresh it: {self.refresh(task.source)}"
            )
        return entry

    def predictions(self, task: TaskSpec, instances: Sequence[Instance]) -> list[Prediction]:
        """The old stack's predictions for ``instances``, in their order."""
        from pytest_modelcompat.scoring.predictions import Prediction

        entry = self.check_instances(task, instances)
        out = []
        for instance in instances:
            prediction = Prediction.from_cached(entry.instances[str(instance.id)], task, instance)
            if prediction is None:
                raise BaselineError(
                    f"task {task.name!r}: the baseline snapshot {self.path} has a malformed prediction for instance "
                    f"{instance.id!r}; refresh it: {self.refresh(task.source)}"
                )
            out.append(prediction)
        return out


def _corrupt(path: Path, why: str) -> BaselineError:
    return BaselineError(
        f"baseline snapshot {path} is not usable ({why}); write a new one with --compat-save-baseline "
        f"(pytest) or --save-baseline (muscle eval) and the old adapter"
    )


def load_snapshot(path: str | Path, *, entry_point: str = "pytest") -> Snapshot:
    """Read and validate a snapshot; BaselineError (one line) for anything unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BaselineError(
            f"baseline snapshot {path} does not exist; write it first with the old adapter: "
            + ("muscle eval --suite SUITE --old-adapter A1 --save-baseline " if entry_point == "muscle"
               else "pytest --old-adapter A1 --compat-save-baseline ") + str(path)
        ) from None
    except OSError as error:
        raise _corrupt(path, f"cannot be read: {error.strerror or error}") from None
    try:
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
        payload = json.loads(data.decode("utf-8"))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as error:
        kind = "truncated or corrupt gzip" if data[:2] == _GZIP_MAGIC else "not valid JSON"
        raise _corrupt(path, f"{kind}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _corrupt(path, f"not a pytest-modelcompat baseline snapshot (no \"format\": \"{FORMAT}\")")
    version = payload.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BaselineError(
            f"baseline snapshot {path} has schema_version {version!r}; this pytest-modelcompat reads version "
            f"{SCHEMA_VERSION}: re-save it with this version (--compat-save-baseline / muscle eval --save-baseline)"
        )
    stack, tasks = payload.get("stack"), payload.get("tasks")
    if not (isinstance(stack, dict) and all(isinstance(stack.get(k), str) for k in ("adapter", "base", "fingerprint"))):
        raise _corrupt(path, "its \"stack\" needs adapter, base and fingerprint strings")
    if not isinstance(tasks, list):
        raise _corrupt(path, "its \"tasks\" must be a list")
    loaded: dict[str, BaselineTask] = {}
    for task in tasks:
        if not (isinstance(task, dict) and isinstance(task.get("name"), str) and task.get("kind") in _KINDS
                and isinstance(task.get("fingerprint"), str) and isinstance(task.get("instances"), list)):
            raise _corrupt(path, "a task needs name, kind, fingerprint and instances")
        rows: dict[str, dict[str, Any]] = {}
        for row in task["instances"]:
            if not (isinstance(row, dict) and isinstance(row.get("id"), str) and set(row) == {"id", *_PREDICTION_KEYS}):
                raise _corrupt(path, f"task {task['name']!r} has an instance that is not "
                                     f"{{id, {', '.join(_PREDICTION_KEYS)}}}")
            rows[row["id"]] = {key: row[key] for key in _PREDICTION_KEYS}
        if task["name"] in loaded:
            raise _corrupt(path, f"task {task['name']!r} appears twice")
        loaded[task["name"]] = BaselineTask(task["name"], task["kind"], task["fingerprint"], rows)
    return Snapshot(path=path, stack={k: stack[k] for k in STACK_KEYS if isinstance(stack.get(k), str)}, tasks=loaded,
                    entry_point=entry_point)


def check_save_path(path: str | Path, flag: str) -> Path:
    """A snapshot path that can be written (its directory may not exist yet); CompatInputError if not."""
    from pytest_modelcompat.atomic import check_writable_dir

    path = Path(path)
    if path.is_dir():
        raise BaselineError(f"{flag}: {path} is a directory; pass a file name, e.g. {path / 'baseline.json'}")
    check_writable_dir(path.parent, flag)
    return path
