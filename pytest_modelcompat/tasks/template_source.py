"""Template tasks, one of the two task sources: a suite entry with ``kind:`` whose Jinja2 templates
(``text``, ``choices``, ``label``, ``target``) render the rows of a data file into instances.

Templates render exactly as lm-eval renders ``doc_to_text`` / ``doc_to_choice`` /
``doc_to_target`` (same Jinja2 environment: ``StrictUndefined``, ``keep_trailing_newline``, the
``regex_replace`` filter), and follow lm-eval's conventions around them:

- a template that is exactly the name of a field of the row yields that field's value as is;
- ``choices`` given as one string renders to a Python list literal (``ast.literal_eval``);
- ``label`` renders to a gold index (an int, or a string of digits) or to the text of a choice
  (``spec.gold_index``).

A template entry is complete as parsed (its ``kind`` is in the suite): it needs no resolving.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.tasks.spec import Instance, TaskSpec, gold_index, row_ids

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def instances(task: TaskSpec, split: Literal["data", "train"], limit: int | None) -> list[Instance]:
    """The first ``limit`` rendered instances of the task's ``data:`` or ``train:`` file."""
    path = task.data if split == "data" else task.train
    if path is None:
        raise CompatInputError(
            f"{task.source}: task {task.name!r} has no `train:` file; add one to train on this task"
        )
    rows = read_rows(path)
    ids = row_ids(rows, str(path))
    templates = compile_templates(task)
    where = f"{path}: task {task.name!r}"
    return [
        _render_instance(task, templates, where, index, ids[index], row)
        for index, row in enumerate(rows[:limit] if limit is not None else rows)
    ]


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


def compile_templates(task: TaskSpec) -> dict[str, Any]:
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
        gold = gold_index(label, choices, where)
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
