"""Suite files (README.md, "A suite file") → task entries, and the task-source step that makes
each entry a complete :class:`TaskSpec` exactly once.

:func:`load_suite` parses and strictly validates a suite file (no lm-eval import, so pytest
collection stays fast and skipped runs cost nothing). Its entries come from one of two task
sources, each a module of its own that knows only ``spec.py``:

- template tasks (``kind:`` + Jinja2 templates over a data file): ``template_source.py``; complete as
  parsed;
- lm-eval tasks (``lm_eval:``): ``lmeval_source.py``; their ``kind``, delimiter, stop sequences
  and token budget come from lm-eval's task config, which needs lm-eval's task index (tens of
  seconds for a task *name*) and the task's dataset, so until resolved such an entry has
  ``kind=None``.

:func:`resolve_task` is the one place an entry becomes a resolved spec (entry points call it
once per task: ``session.Session.resolve``, muscle's preflight); :func:`load_instances` reads a
resolved spec's instances from its source. Neither scoring, caching nor comparing ever sees an
unresolved entry (``spec.require_resolved``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.gate import validate_gate
from pytest_modelcompat.metrics.similarity import similarity
from pytest_modelcompat.tasks import template_source
from pytest_modelcompat.tasks.spec import KINDS, Instance, TaskSpec, require_resolved
from pytest_modelcompat.tasks.template_source import compile_templates

__all__ = ["load_instances", "load_suite", "resolve_task"]

_COMMON_KEYS = {"name", "limit", "gate"}
_TEMPLATE_TASK_KEYS = _COMMON_KEYS | {"kind", "data", "train", "text", "delimiter", "max_new_tokens", "stop"}
# key sets per kind: (required, allowed)
_KIND_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "multiple_choice": (
        {"data", "text", "choices", "label"},
        (_TEMPLATE_TASK_KEYS - {"max_new_tokens", "stop"}) | {"choices", "label", "normalize"},
    ),
    "exact_match": ({"data", "text", "target"}, _TEMPLATE_TASK_KEYS | {"target", "extract"}),
    "generative": ({"data", "text", "target"}, _TEMPLATE_TASK_KEYS | {"target", "metric"}),
    # lm-eval's task config supplies prompt, choices, target, delimiter, stop and token budget.
    "lm_eval": ({"lm_eval"}, _COMMON_KEYS | {"lm_eval", "normalize"}),
}
_ALL_TASK_KEYS = set().union(*(allowed for _, allowed in _KIND_KEYS.values()))


def load_suite(path: str | os.PathLike) -> list[TaskSpec]:
    """Parse and strictly validate a suite file; every problem is one-line CompatInputError."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompatInputError(f"cannot read suite file {path}: {exc}; check the path") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        # ReaderError (a control character, bad encoding) has no `problem`, and its str() spans lines
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CompatInputError(f"{path}: invalid YAML{line}: {problem}; fix the YAML syntax") from None
    if not isinstance(document, Mapping) or "tasks" not in document:
        raise CompatInputError(f"{path}: a suite file is a mapping with a `tasks:` list at the top")
    unknown = sorted(str(key) for key in document if key != "tasks")
    if unknown:
        raise CompatInputError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; only `tasks:` is allowed")
    entries = document["tasks"]
    if not isinstance(entries, list) or not entries:
        raise CompatInputError(f"{path}: `tasks:` must be a non-empty list of task mappings")
    specs: list[TaskSpec] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        spec = _parse_task(path, position, entry)
        if spec.name in seen:
            raise CompatInputError(f"{path}: task name {spec.name!r} is used twice; task names must be unique")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def resolve_task(task: TaskSpec) -> TaskSpec:
    """The complete spec of a suite entry: a template task (or an already resolved spec) as it
    is, an ``lm_eval:`` entry with its kind etc. from lm-eval (slow: call it once per task)."""
    if task.resolved:
        return task
    from pytest_modelcompat.tasks import lmeval_source

    return lmeval_source.resolve(task)


def load_instances(
    task: TaskSpec, split: Literal["data", "train"] = "data", limit: int | None = None
) -> list[Instance]:
    """The first ``limit`` instances of a resolved task's split, from its source (``limit``
    defaults to the task's own ``limit:`` for the eval split; the train split is only cut by an
    explicit ``limit``)."""
    if split not in ("data", "train"):
        raise ValueError(f"split must be 'data' or 'train', not {split!r}")
    require_resolved(task, "load_instances()")
    if task.split == "train":
        split = "train"
    if limit is None and split == "data":
        limit = task.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise CompatInputError(f"task {task.name!r}: limit must be a positive integer, got {limit!r}")
    if task.lm_eval is not None:
        from pytest_modelcompat.tasks import lmeval_source

        return lmeval_source.instances(task, split, limit)
    return template_source.instances(task, split, limit)


# ----------------------------------------------------------------------------- suite parsing


def _parse_task(path: Path, position: int, entry: Any) -> TaskSpec:
    if not isinstance(entry, Mapping):
        raise CompatInputError(f"{path}: tasks entry #{position} must be a mapping with name/kind/data/...")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise CompatInputError(f"{path}: tasks entry #{position} needs a one-line `name:` string")
    where = f"{path}: task {name!r}"

    unknown = sorted(str(key) for key in entry if key not in _ALL_TASK_KEYS)
    if unknown:
        raise CompatInputError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(_ALL_TASK_KEYS))}"
        )
    if "lm_eval" in entry:
        if "kind" in entry:
            raise CompatInputError(f"{where}: `kind` comes from the lm-eval task; remove `kind:` or `lm_eval:`")
        kind_key = "lm_eval"
    else:
        kind_key = entry.get("kind")
        if kind_key not in KINDS:
            raise CompatInputError(
                f"{where}: kind must be one of {', '.join(KINDS)} (or give `lm_eval:`), got {kind_key!r}"
            )
    required, allowed = _KIND_KEYS[kind_key]
    missing = sorted(required - set(entry))
    if missing:
        raise CompatInputError(f"{where}: missing required key(s) {', '.join(missing)} for kind {kind_key}")
    extra = sorted(set(entry) - allowed)
    if extra:
        raise CompatInputError(f"{where}: key(s) {', '.join(extra)} do not apply to kind {kind_key}; remove them")

    values: dict[str, Any] = {"name": name, "source": path, "kind": None if kind_key == "lm_eval" else kind_key}
    for key in ("text", "label", "target", "delimiter", "extract", "metric"):
        if key in entry:
            values[key] = _expect(entry[key], str, where, key, "a string (quote it in YAML)")
    for key in ("data", "train"):
        if key in entry:
            values[key] = _resolve_path(_expect(entry[key], str, where, key, "a file path string"), path, where, key)
    if "choices" in entry:
        values["choices"] = _parse_choices(entry["choices"], where)
    if "normalize" in entry:
        values["normalize"] = _expect(entry["normalize"], bool, where, "normalize", "true or false")
    for key in ("limit", "max_new_tokens"):
        if key in entry:
            values[key] = _positive_int(entry[key], where, key)
    if "stop" in entry:
        values["stop"] = _parse_stop(entry["stop"], where)
    if "extract" in values:
        _check_extract(values["extract"], where)
    if "metric" in values:
        try:
            similarity(values["metric"])
        except CompatInputError as exc:
            raise CompatInputError(f"{where}: {exc}") from None
    if "lm_eval" in entry:
        values["lm_eval"] = _lm_eval_reference(entry["lm_eval"], path, where)
    values["gate"] = validate_gate(entry.get("gate"), values["kind"], where=f"{where}: gate")
    spec = TaskSpec(**values)
    if spec.kind is not None:
        compile_templates(spec)  # template syntax errors surface at load time, not mid-run
    return spec


def _expect(value: Any, kind: type, where: str, key: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CompatInputError(f"{where}: `{key}` must be {what}, got {type(value).__name__} {value!r}")
    return value


def _positive_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CompatInputError(f"{where}: `{key}` must be a positive integer, got {value!r}")
    return value


def _parse_choices(value: Any, where: str) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(choice, str) for choice in value):
        return list(value)
    raise CompatInputError(
        f"{where}: `choices` must be a non-empty list of template strings (quote each: YAML reads "
        f"yes/no/1 as non-strings) or one template rendering a list, got {value!r}"
    )


def _parse_stop(value: Any, where: str) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) and stop for stop in stops):
        raise CompatInputError(f"{where}: `stop` must be a non-empty string or a list of them, got {value!r}")
    return tuple(stops)


def _check_extract(pattern: str, where: str) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise CompatInputError(f"{where}: `extract` is not a valid regex ({exc}); fix the pattern") from None
    if compiled.groups < 1:
        raise CompatInputError(f"{where}: `extract` needs a capture group: the answer is group 1")


_ENV_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def _resolve_path(raw: str, suite: Path, where: str, key: str) -> Path:
    """``~`` and ``$VAR`` / ``${VAR}`` expanded, then relative to the suite file's directory."""
    if not raw.strip():
        raise CompatInputError(f"{where}: `{key}` is an empty path")

    def substitute(match: re.Match[str]) -> str:
        variable = match.group("braced") if match.group("braced") is not None else match.group("plain")
        if variable not in os.environ:
            raise CompatInputError(
                f"{where}: `{key}: {raw}` uses environment variable {variable!r}, which is not set; "
                "export it or change the path"
            )
        return os.environ[variable]

    expanded = os.path.expanduser(_ENV_VARIABLE.sub(substitute, raw))
    if expanded.startswith("~"):
        raise CompatInputError(f"{where}: `{key}: {raw}` names an unknown user's home directory")
    return (suite.parent / expanded).resolve()


def _lm_eval_reference(value: Any, suite: Path, where: str) -> str:
    """A task name stays a name; anything that looks like a YAML file becomes an absolute path."""
    reference = _expect(value, str, where, "lm_eval", "an lm-eval task name or a task YAML path")
    if not reference.strip():
        raise CompatInputError(f"{where}: `lm_eval` is empty; give an lm-eval task name or a YAML path")
    if reference.endswith((".yaml", ".yml")):
        path = _resolve_path(reference, suite, where, "lm_eval")
        if not path.is_file():
            raise CompatInputError(f"{where}: lm-eval task file {path} does not exist; check `lm_eval:`")
        return str(path)
    return reference
