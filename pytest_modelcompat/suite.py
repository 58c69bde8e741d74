"""Suite files (README.md, "A suite file") → :class:`TaskSpec`; data files + Jinja2 templates → :class:`Instance`.

Templates render exactly as lm-eval renders ``doc_to_text`` / ``doc_to_choice`` /
``doc_to_target`` (same Jinja2 environment: ``StrictUndefined``, ``keep_trailing_newline``, the
``regex_replace`` filter), and follow lm-eval's conventions around them:

- a template that is exactly the name of a field of the row yields that field's value as is;
- ``choices`` given as one string renders to a Python list literal (``ast.literal_eval``);
- ``label`` renders to a gold index (an int, or a string of digits) or to the text of a choice.

``lm_eval:`` tasks are loaded lazily: :func:`load_suite` only validates them (no lm-eval import, so
pytest collection stays fast and skipped runs cost nothing); their ``kind``, delimiter, stop
sequences and token budget come from lm-eval's task config in :func:`resolve_task`, which needs
lm-eval's task index (tens of seconds for a task *name*) and the task's dataset. Until resolved,
such a spec has ``kind=None``; :func:`load_instances` resolves on its own.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.gate import validate_gate
from pytest_modelcompat.similarity import similarity

Kind = Literal["multiple_choice", "exact_match", "generative"]
KINDS: tuple[str, ...] = ("multiple_choice", "exact_match", "generative")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
# Bumped when the meaning of a fingerprinted field changes, so old cache entries stop matching.
_FINGERPRINT_VERSION = 1

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


@dataclass(frozen=True)
class Instance:
    id: str  # the row's "id"/"idx" field if any, else its 0-based row index
    context: str  # rendered prompt, WITHOUT the delimiter
    choices: tuple[str, ...] | None  # multiple_choice: rendered choices, WITHOUT the delimiter
    gold: int | str  # multiple_choice: gold index; otherwise the rendered target text
    doc: Mapping[str, Any] = field(hash=False, compare=False)  # the raw row


@dataclass(frozen=True)
class TaskSpec:
    """One entry of a suite's ``tasks:`` list, validated; paths resolved against the suite file."""

    name: str
    kind: Kind | None  # None only for an ``lm_eval:`` task not yet passed through resolve_task
    source: Path
    data: Path | None = None
    train: Path | None = None
    text: str | None = None
    choices: str | list[str] | None = field(default=None, hash=False)
    label: str | None = None
    target: str | None = None
    delimiter: str = " "
    normalize: bool = False
    limit: int | None = None
    gate: Mapping[str, float] = field(default_factory=dict, hash=False)
    extract: str | None = None
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    metric: str = "rouge1"
    lm_eval: str | None = None  # an lm-eval task name, or an absolute path to an lm-eval task YAML
    split: Literal["data", "train"] = "data"  # which split ``load_instances(task)`` reads

    def train_split(self) -> TaskSpec:
        """This task scored on its ``train:`` split (what ``muscle`` trains on): the same templates,
        but its own fingerprint, so the result cache never mixes the two splits' instances."""
        return dataclasses.replace(self, split="train", limit=None,
                                   data=self.train if self.lm_eval is None else self.data)

    def fingerprint(self) -> str:
        """sha256 over everything that changes predictions: not ``name``, ``gate`` or ``limit``.

        The data file counts by content (not path or mtime), so moving a checkout keeps the cache.
        An ``lm_eval:`` task counts by its reference, its YAML's content, the lm-eval version
        (which defines the task's prompts) and its dataset's content; call it on the resolved spec.
        """
        if self.kind is None:
            raise ValueError(f"task {self.name!r}: fingerprint() needs the spec from resolve_task()")
        payload: dict[str, Any] = {
            "version": _FINGERPRINT_VERSION,
            **{
                key: getattr(self, key)
                for key in ("kind", "text", "choices", "label", "target", "delimiter", "normalize",
                            "extract", "stop", "max_new_tokens", "metric", "lm_eval")
            },
            "data_sha256": None if self.data is None else _file_sha256(self.data),
        }
        if self.split != "data":  # only then: the eval split's fingerprints (and caches) stay as they were
            payload["split"] = self.split
        if self.lm_eval is not None:
            from importlib.metadata import version

            payload["lm_eval_version"] = version("lm_eval")
            lm_eval_path = Path(self.lm_eval)
            payload["lm_eval_yaml_sha256"] = _file_sha256(lm_eval_path) if lm_eval_path.is_file() else None
            from pytest_modelcompat.lmeval_tasks import dataset_sha256

            payload["lm_eval_dataset_sha256"] = dataset_sha256(self.lm_eval)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


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
    """The complete spec: ``task`` itself, or for an ``lm_eval:`` task its kind etc. from lm-eval."""
    if task.lm_eval is None:
        return task
    from pytest_modelcompat.lmeval_tasks import resolve_lmeval_task

    return resolve_lmeval_task(task)


def load_instances(
    task: TaskSpec, split: Literal["data", "train"] = "data", limit: int | None = None
) -> list[Instance]:
    """The first ``limit`` rendered instances of a split (``limit`` defaults to the task's own
    ``limit:`` for the eval split; the train split is only cut by an explicit ``limit``)."""
    if split not in ("data", "train"):
        raise ValueError(f"split must be 'data' or 'train', not {split!r}")
    if task.split == "train":
        split = "train"
    if limit is None and split == "data":
        limit = task.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise CompatInputError(f"task {task.name!r}: limit must be a positive integer, got {limit!r}")
    if task.lm_eval is not None:
        from pytest_modelcompat.lmeval_tasks import load_lmeval_instances

        return load_lmeval_instances(resolve_task(task), split=split, limit=limit)
    path = task.data if split == "data" else task.train
    if path is None:
        raise CompatInputError(
            f"{task.source}: task {task.name!r} has no `train:` file; add one to train on this task"
        )
    rows = read_rows(path)
    ids = row_ids(rows, str(path))
    templates = _compile_templates(task)
    where = f"{path}: task {task.name!r}"
    return [
        _render_instance(task, templates, where, index, ids[index], row)
        for index, row in enumerate(rows[:limit] if limit is not None else rows)
    ]


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
        _compile_templates(spec)  # template syntax errors surface at load time, not mid-run
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


# ----------------------------------------------------------------------------- data files


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a .jsonl / .json / .csv / .tsv data file, each a dict (header = keys)."""
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise CompatInputError(f"{path}: unsupported data file type; use one of {', '.join(DATA_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CompatInputError(f"data file {path} does not exist; check the path in the suite") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompatInputError(f"cannot read data file {path} as UTF-8 text: {exc}") from None
    if not text.strip():
        raise CompatInputError(f"data file {path} is empty; it needs at least one row")
    if suffix == ".jsonl":
        rows = _jsonl_rows(path, text)
    elif suffix == ".json":
        rows = _json_rows(path, text)
    else:
        rows = _delimited_rows(path, text, "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise CompatInputError(f"data file {path} has no rows")
    return rows


def _jsonl_rows(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CompatInputError(f"{path}:{number}: malformed JSON line ({exc.msg}); fix or remove it") from None
        if not isinstance(row, dict):
            raise CompatInputError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _json_rows(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompatInputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    rows = document.get("data") if isinstance(document, dict) else document
    if not isinstance(rows, list):
        raise CompatInputError(f"{path}: a .json data file is a list of row objects or {{\"data\": [...]}}")
    for number, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CompatInputError(f"{path}: row {number} must be a JSON object, got {type(row).__name__}")
    return rows


def _delimited_rows(path: Path, text: str, delimiter: str) -> list[dict[str, Any]]:
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        if len(set(header)) != len(header) or not all(column.strip() for column in header):
            raise CompatInputError(f"{path}: the header row needs unique, non-empty column names, got {header}")
        rows = []
        for record in reader:
            if not record:
                continue
            if len(record) != len(header):
                raise CompatInputError(
                    f"{path}:{reader.line_num}: {len(record)} fields but the header has {len(header)}; "
                    "quote fields that contain the delimiter"
                )
            rows.append(dict(zip(header, record, strict=True)))
    except csv.Error as exc:
        raise CompatInputError(f"{path}:{reader.line_num}: malformed {path.suffix[1:]} ({exc})") from None
    return rows


def row_ids(rows: list[Mapping[str, Any]], where: str) -> list[str]:
    """Stable instance ids: each row's ``id`` (or ``idx``) field, else its 0-based index."""
    id_key = next((key for key in ("id", "idx") if rows and key in rows[0]), None)
    if id_key is None:
        return [str(index) for index in range(len(rows))]
    ids: list[str] = []
    first_row: dict[str, int] = {}
    for index, row in enumerate(rows):
        value = row.get(id_key)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
            raise CompatInputError(f"{where}: row {index} has no usable `{id_key}` (got {value!r}); every row needs one")
        instance_id = str(value)
        if instance_id in first_row:
            raise CompatInputError(
                f"{where}: rows {first_row[instance_id]} and {index} share {id_key} {instance_id!r}; ids must be unique"
            )
        first_row[instance_id] = index
        ids.append(instance_id)
    return ids


@lru_cache(maxsize=64)
def _content_sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError as exc:
        raise CompatInputError(f"cannot read {path}: {exc}; check the path in the suite") from None
    return _content_sha256(str(path), stat.st_mtime_ns, stat.st_size)


# ----------------------------------------------------------------------------- templates


@cache
def _jinja_environment():
    """lm-eval's template environment (lm_eval.utils.env), rebuilt here to keep imports light."""
    from jinja2 import BaseLoader, Environment, StrictUndefined

    environment = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)
    environment.filters["regex_replace"] = lambda string, pattern, repl, count=0: re.sub(
        pattern, repl, string, count=count
    )
    return environment


def _compile_templates(task: TaskSpec) -> dict[str, Any]:
    """Compiled templates by key; ``choices`` as a list maps to a list of compiled templates."""
    from jinja2 import TemplateSyntaxError

    where = f"{task.source}: task {task.name!r}"
    compiled: dict[str, Any] = {}
    for key in ("text", "choices", "label", "target"):
        source = getattr(task, key)
        if source is None:
            continue
        try:
            if isinstance(source, list):
                compiled[key] = [(choice, _jinja_environment().from_string(choice)) for choice in source]
            else:
                compiled[key] = (source, _jinja_environment().from_string(source))
        except TemplateSyntaxError as exc:
            raise CompatInputError(f"{where}: `{key}` is not a valid Jinja2 template ({exc.message})") from None
    return compiled


def _render(template: tuple[str, Any], row: Mapping[str, Any], where: str, key: str) -> Any:
    """lm-eval's rule: a template naming a field yields the field's value; else render it."""
    source, compiled = template
    if source in row:
        return row[source]
    from jinja2 import UndefinedError

    try:
        return compiled.render(**row)
    except UndefinedError as exc:
        raise CompatInputError(f"{where}: `{key}` uses a field the row lacks ({exc.message}); fix the template or add the field to every row") from None
    except Exception as exc:  # the template is user code: any failure is an input problem
        raise CompatInputError(f"{where}: rendering `{key}` failed ({type(exc).__name__}: {exc})") from None


def _as_text(value: Any, where: str, key: str) -> str:
    if isinstance(value, (dict, list, tuple)) or value is None:
        raise CompatInputError(f"{where}: `{key}` gave {value!r}, not text; point it at a text field")
    return str(value)


def _render_instance(
    task: TaskSpec, templates: dict[str, Any], file_where: str, index: int, instance_id: str, row: dict
) -> Instance:
    where = f"{file_where}, row {index}"
    keys = [key for key in row if not isinstance(key, str)]
    if keys:
        raise CompatInputError(f"{where}: column names must be strings, got {keys[0]!r}")
    context = _as_text(_render(templates["text"], row, where, "text"), where, "text")
    if task.kind == "multiple_choice":
        choices = _render_choices(templates["choices"], row, where)
        if task.normalize and "" in choices:
            # acc_norm divides each choice's log-likelihood by its length in characters
            raise CompatInputError(
                f"{where}: choice {choices.index('')} rendered empty and `normalize: true` divides by "
                "each choice's length; give every choice text or set `normalize: false`"
            )
        label = _render(templates["label"], row, where, "label")
        # lm-eval reads digits as an index only from a rendered template, not from a bare field
        if task.label not in row and isinstance(label, str) and label.isdigit() and label.isascii():
            label = int(label)
        gold = _gold_index(label, choices, where)
        return Instance(instance_id, context, choices, gold, row)
    target = _as_text(_render(templates["target"], row, where, "target"), where, "target")
    return Instance(instance_id, context, None, target, row)


def _render_choices(template: Any, row: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if isinstance(template, list):
        choices = [_render(choice, row, where, "choices") for choice in template]
    else:
        value = _render(template, row, where, "choices")
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise CompatInputError(
                    f"{where}: `choices` rendered {value[:80]!r}, not a Python list literal; "
                    "render a list like ['a', 'b'] or give a list of templates"
                ) from None
        if not isinstance(value, (list, tuple)):
            raise CompatInputError(f"{where}: `choices` gave {type(value).__name__}, not a list of choices")
        choices = list(value)
    if not choices:
        raise CompatInputError(f"{where}: `choices` is empty; a multiple-choice instance needs choices")
    return tuple(_as_text(choice, where, "choices") for choice in choices)


def _gold_index(label: Any, choices: tuple[str, ...], where: str) -> int:
    """lm-eval's reading of a gold label: an index or a choice's text."""
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(choices):
            raise CompatInputError(
                f"{where}: label {label} is out of range for {len(choices)} choices; "
                f"use an index from 0 to {len(choices) - 1} or the text of a choice"
            )
        return label
    if isinstance(label, str) and label in choices:
        return choices.index(label)
    hint = "; write `{{field}}` to read digits as an index" if isinstance(label, str) and label.isdigit() else ""
    raise CompatInputError(
        f"{where}: label {label!r} is neither a choice index nor the text of one of {len(choices)} choices{hint}"
    )
