"""pytest-modelcompat: gate LLM + adapter updates on negative flips.

The public API: what ``muscle``, the benchmarks and users import, all from here
(``from pytest_modelcompat import load_stack, load_suite, evaluate_task``). The layout behind it
is ARCHITECTURE.md's: ``tasks/`` (suite entries and their sources), ``models/`` (base + adapter
stacks), ``scoring/`` (engine, predictions, baseline snapshots, old vs new), ``metrics/`` (flip
metrics, intervals, margins, gate), ``report/`` (records, report files, verdicts), and the run on
top (``session.py``, ``assertions.py``, ``plugin.py``).

- Errors: :class:`CompatInputError` — every bad input, one line naming the problem and the fix.
- A run: :class:`Session` over validated :class:`SessionOptions` (what the pytest plugin and
  ``muscle eval`` drive), :class:`Evaluation`, :class:`StackLoadError`; :class:`TaskReport`
  (what the ``compat`` fixture returns).
- Tasks: :func:`load_suite` (suite YAML → entries), :func:`resolve_task` (an entry → a complete
  :class:`TaskSpec`, once), :func:`load_instances` (its :class:`Instance` rows).
- Models: :func:`load_stack` → :class:`Stack`; :func:`stack_fingerprint` (without loading),
  :func:`check_stack_files` and :func:`check_adapter_files` (before loading); the pieces muscle
  builds students from: :func:`load_base`, :func:`load_tokenizer`, :func:`linear_module_names`, :func:`parameter_shapes`,
  :func:`attach_adapter`,
  :func:`read_adapter_config`, :func:`adapter_fingerprint`; GGUF bases: :func:`convert_gguf`,
  :func:`smollm2_gguf_path`, :func:`gemma3_gguf_path`; the device and dtype choices
  :data:`DEVICES` (and their forms, :data:`DEVICE_FORMS`), :data:`DTYPES` and their defaults
  :data:`DEFAULT_DEVICE`, :data:`DEFAULT_DTYPE`.
- Scoring: :func:`predict` (one stack, cached) → :class:`Prediction`; :func:`decision_values` (what a
  multiple-choice decision takes the argmax of); :func:`evaluate_task`
  (old stack or snapshot vs new stack) and :func:`compare` (two prediction columns) →
  :class:`TaskResult`; :data:`DEFAULT_BATCH_SIZE`; the engine's :func:`loglikelihoods`,
  :func:`generate`, and what muscle trains through: :func:`packed_choice_loglikelihoods`,
  :func:`encode_request` (lm-eval's context/continuation split), :func:`pad_token_id`;
  :func:`launched_processes` (the processes ``accelerate launch`` started, which a
  :class:`Session` spreads its scoring over).
- Metrics: :func:`discriminative_metrics`, :func:`generative_metrics` and their per-instance
  :func:`discriminative_quadrants`, :func:`generative_quadrants` (docs/metrics.md),
  :data:`DEFAULT_NOISE_MARGIN` (docs/margins.md), :func:`validate_gate`, :func:`evaluate_gate`
  → :class:`GateResult`, :func:`similarity` / :func:`register_similarity`.
- Baseline snapshots (docs/baseline.md): :func:`load_snapshot` → :class:`Snapshot`,
  :func:`write_snapshot`, :class:`BaselineError`.
- Result cache: :class:`ResultCache`, :func:`results_dir` (its default root), :func:`cache_home`.
- Reports (docs/report-schema.md): :func:`write_reports`, :func:`build_report`,
  :func:`terminal_table`, :func:`schema_path` (report.json's JSON Schema).
- Output: :func:`atomic_write`, :func:`atomic_directory`, :func:`check_writable_dir` (every file
  the product writes), :func:`make_progress` (the one progress bar), :func:`quiet_third_party_output`.

Import-light on purpose: pytest imports this package (through its plugin) in every run of the
environment, so only :class:`CompatInputError` is imported eagerly; every other name is imported
from the module that owns it on first access (module ``__getattr__``), and nothing here imports
torch, transformers or lm-eval at import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pytest_modelcompat.errors import CompatInputError

if TYPE_CHECKING:
    from pytest_modelcompat.assertions import TaskReport
    from pytest_modelcompat.atomic import atomic_directory, atomic_write, check_writable_dir
    from pytest_modelcompat.cache import ResultCache, cache_home, results_dir
    from pytest_modelcompat.metrics.flips import (
        discriminative_metrics,
        discriminative_quadrants,
        generative_metrics,
        generative_quadrants,
    )
    from pytest_modelcompat.metrics.gate import GateResult, evaluate_gate, validate_gate
    from pytest_modelcompat.metrics.margins import DEFAULT_NOISE_MARGIN
    from pytest_modelcompat.metrics.similarity import register_similarity, similarity
    from pytest_modelcompat.models.adapters import attach_adapter, check_adapter_files, read_adapter_config
    from pytest_modelcompat.models.bases import (
        linear_module_names,
        load_base,
        load_tokenizer,
        parameter_shapes,
    )
    from pytest_modelcompat.models.devices import DEFAULT_DEVICE, DEFAULT_DTYPE, DEVICE_FORMS, DEVICES, DTYPES
    from pytest_modelcompat.models.fingerprints import adapter_fingerprint
    from pytest_modelcompat.models.gguf import convert_gguf, gemma3_gguf_path, smollm2_gguf_path
    from pytest_modelcompat.models.stack import Stack, check_stack_files, load_stack, stack_fingerprint
    from pytest_modelcompat.progress import make_progress, quiet_third_party_output
    from pytest_modelcompat.report.files import write_reports
    from pytest_modelcompat.report.records import build_report, schema_path
    from pytest_modelcompat.report.terminal import terminal_table
    from pytest_modelcompat.scoring.baseline import BaselineError, Snapshot, load_snapshot, write_snapshot
    from pytest_modelcompat.scoring.engine import (
        encode_request,
        generate,
        loglikelihoods,
        packed_choice_loglikelihoods,
        pad_token_id,
    )
    from pytest_modelcompat.scoring.evaluate import TaskResult, compare, evaluate_task
    from pytest_modelcompat.scoring.predictions import (
        DEFAULT_BATCH_SIZE,
        Prediction,
        decision_values,
        predict,
    )
    from pytest_modelcompat.scoring.processes import launched_processes
    from pytest_modelcompat.session import Evaluation, Session, SessionOptions, StackLoadError
    from pytest_modelcompat.tasks.spec import Instance, TaskSpec
    from pytest_modelcompat.tasks.suite import load_instances, load_suite, resolve_task

__version__ = "0.1.0"

# Each public name → the module that owns it (imported on first access).
_OWNERS: dict[str, str] = {
    **dict.fromkeys(("TaskReport",), "assertions"),
    **dict.fromkeys(("atomic_directory", "atomic_write", "check_writable_dir"), "atomic"),
    **dict.fromkeys(("BaselineError", "Snapshot", "load_snapshot", "write_snapshot"), "scoring.baseline"),
    **dict.fromkeys(("ResultCache", "cache_home", "results_dir"), "cache"),
    **dict.fromkeys(("discriminative_metrics", "discriminative_quadrants", "generative_metrics",
                     "generative_quadrants"), "metrics.flips"),
    **dict.fromkeys(("GateResult", "evaluate_gate", "validate_gate"), "metrics.gate"),
    **dict.fromkeys(("DEFAULT_NOISE_MARGIN",), "metrics.margins"),
    **dict.fromkeys(("register_similarity", "similarity"), "metrics.similarity"),
    **dict.fromkeys(("attach_adapter", "check_adapter_files", "read_adapter_config"), "models.adapters"),
    **dict.fromkeys(("linear_module_names", "load_base", "load_tokenizer", "parameter_shapes"), "models.bases"),
    **dict.fromkeys(("DEFAULT_DEVICE", "DEFAULT_DTYPE", "DEVICE_FORMS", "DEVICES", "DTYPES"),
                    "models.devices"),
    **dict.fromkeys(("adapter_fingerprint",), "models.fingerprints"),
    **dict.fromkeys(("convert_gguf", "gemma3_gguf_path", "smollm2_gguf_path"), "models.gguf"),
    **dict.fromkeys(("Stack", "check_stack_files", "load_stack", "stack_fingerprint"), "models.stack"),
    **dict.fromkeys(("make_progress", "quiet_third_party_output"), "progress"),
    **dict.fromkeys(("write_reports",), "report.files"),
    **dict.fromkeys(("build_report", "schema_path"), "report.records"),
    **dict.fromkeys(("terminal_table",), "report.terminal"),
    **dict.fromkeys(("encode_request", "generate", "loglikelihoods", "packed_choice_loglikelihoods",
                     "pad_token_id"), "scoring.engine"),
    **dict.fromkeys(("TaskResult", "compare", "evaluate_task"), "scoring.evaluate"),
    **dict.fromkeys(("DEFAULT_BATCH_SIZE", "Prediction", "decision_values", "predict"), "scoring.predictions"),
    **dict.fromkeys(("launched_processes",), "scoring.processes"),
    **dict.fromkeys(("Evaluation", "Session", "SessionOptions", "StackLoadError"), "session"),
    **dict.fromkeys(("Instance", "TaskSpec"), "tasks.spec"),
    **dict.fromkeys(("load_instances", "load_suite", "resolve_task"), "tasks.suite"),
}

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_DEVICE", "DEFAULT_DTYPE", "DEFAULT_NOISE_MARGIN", "DEVICE_FORMS", "DEVICES",
    "DTYPES",
    "BaselineError", "CompatInputError", "Evaluation", "GateResult", "Instance", "Prediction", "ResultCache",
    "Session", "SessionOptions", "Snapshot", "Stack", "StackLoadError", "TaskReport", "TaskResult", "TaskSpec",
    "__version__", "adapter_fingerprint", "atomic_directory", "atomic_write", "attach_adapter", "build_report",
    "cache_home", "check_adapter_files", "check_stack_files", "check_writable_dir", "compare", "convert_gguf",
    "decision_values", "discriminative_metrics", "discriminative_quadrants", "encode_request", "evaluate_gate", "evaluate_task", "gemma3_gguf_path", "generate",
    "generative_metrics", "generative_quadrants", "launched_processes", "linear_module_names", "load_base", "load_instances", "parameter_shapes",
    "load_snapshot", "load_stack", "load_suite", "load_tokenizer", "loglikelihoods", "make_progress",
    "packed_choice_loglikelihoods", "pad_token_id",
    "predict", "quiet_third_party_output", "read_adapter_config", "register_similarity", "resolve_task",
    "results_dir", "schema_path", "similarity", "smollm2_gguf_path", "stack_fingerprint", "terminal_table",
    "validate_gate", "write_reports", "write_snapshot",
]


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{owner}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
