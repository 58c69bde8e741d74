"""What a task is, independent of where it comes from: :class:`TaskSpec`, :class:`Instance`, the
instance-id rule (:func:`row_ids`) and the gold-index rule (:func:`gold_index`).

The two task sources build on this module and on nothing of each other:

- ``template_source.py``: a suite entry with ``kind:`` and Jinja2 templates over a data file;
- ``lmeval_source.py``: a suite entry with ``lm_eval:``, lm-eval's own task definition.

``suite.py`` parses a suite file into entries and is the one task-source step
(``resolve_task``, ``load_instances``). A *resolved* spec has its ``kind``: a template entry is
resolved as parsed, an ``lm_eval:`` entry only after ``suite.resolve_task`` asked lm-eval (slow,
so collection never does it). Everything that scores, caches or compares takes resolved specs
only (:func:`require_resolved`); nothing below the task-source step sees ``kind=None``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pytest_modelcompat.errors import CompatInputError

Kind = Literal["multiple_choice", "exact_match", "generative"]
KINDS: tuple[str, ...] = ("multiple_choice", "exact_match", "generative")
# Bumped when the meaning of a fingerprinted field changes, so old cache entries stop matching.
_FINGERPRINT_VERSION = 1


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
    kind: Kind | None  # None only for an ``lm_eval:`` entry not yet passed through suite.resolve_task
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
    # what identifies an lm-eval task's definition and data (set when it is resolved):
    # lm_eval_version, lm_eval_yaml_sha256, lm_eval_dataset_sha256 — part of the fingerprint
    source_digest: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @property
    def resolved(self) -> bool:
        """Whether this spec is complete (its ``kind`` known): what scoring and caching need."""
        return self.kind is not None

    def train_split(self) -> TaskSpec:
        """This task scored on its ``train:`` split (what ``muscle`` trains on): the same templates,
        but its own fingerprint, so the result cache never mixes the two splits' instances."""
        return dataclasses.replace(self, split="train", limit=None,
                                   data=self.train if self.lm_eval is None else self.data)

    def fingerprint(self) -> str:
        """sha256 over everything that changes predictions: not ``name``, ``gate`` or ``limit``.

        The data file counts by content (not path or mtime), so moving a checkout keeps the cache.
        An ``lm_eval:`` task counts by its reference and its ``source_digest`` (its YAML's content,
        the lm-eval version, which defines the task's prompts, and its dataset's content).
        """
        require_resolved(self, "fingerprint()")
        payload: dict[str, Any] = {
            "version": _FINGERPRINT_VERSION,
            **{
                key: getattr(self, key)
                for key in ("kind", "text", "choices", "label", "target", "delimiter", "normalize",
                            "extract", "stop", "max_new_tokens", "metric", "lm_eval")
            },
            "data_sha256": None if self.data is None else file_sha256(self.data),
        }
        if self.split != "data":  # only then: the eval split's fingerprints (and caches) stay as they were
            payload["split"] = self.split
        if self.lm_eval is not None and self.kind == "exact_match":
            payload["pred"] = "exact_match normal form"   # cached preds before that held the raw answer
        if self.lm_eval is not None:
            if not self.source_digest:
                raise ValueError(f"task {self.name!r}: fingerprint() needs the spec from resolve_task()")
            payload.update(self.source_digest)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def require_resolved(task: TaskSpec, what: str) -> TaskSpec:
    """``task`` itself when resolved; ValueError (a caller's mistake, not bad input) otherwise."""
    if task.kind is None:
        raise ValueError(f"task {task.name!r}: {what} needs the spec from resolve_task()")
    return task


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


def gold_index(label: Any, choices: tuple[str, ...], where: str) -> int:
    """lm-eval's reading of a multiple-choice gold label: an index into ``choices`` or the text of
    one of them (a template source turns a rendered string of digits into an int before this)."""
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


@lru_cache(maxsize=64)
def _content_sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's content (memoised per path, mtime and size)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise CompatInputError(f"cannot read {path}: {exc}; check the path in the suite") from None
    return _content_sha256(str(path), stat.st_mtime_ns, stat.st_size)
