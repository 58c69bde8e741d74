"""One compatibility run: the object the pytest plugin and ``muscle eval`` both drive.

Modelled on syrupy's ``SnapshotSession``: a :class:`Session` owns everything a run needs beyond
one task, so an entry point only turns its own inputs into :class:`SessionOptions` and calls it.

- **Options, validated once** (:meth:`SessionOptions.create`): which stacks are compared (the
  *mode*: old vs new adapter, old adapter → baseline snapshot, snapshot vs new adapter), limits,
  batch size, noise margin, device and dtype, each with its default (and its forms) from its one
  owner (``scoring.predictions.DEFAULT_BATCH_SIZE``, ``metrics.margins.DEFAULT_NOISE_MARGIN``,
  ``models.devices.DEVICE_FORMS`` / ``DTYPES`` / ``DEFAULT_DEVICE`` / ``DEFAULT_DTYPE``,
  ``cache.results_dir``), which argparse and the pytest options read too. Messages name the
  options as the entry point spells them (:data:`FLAGS`).
- **Preflight** — everything that can be refused without a model, in a second, before the slow
  part: output locations and the snapshot (``Session(options)``), a task's data, templates and
  snapshot coverage (:meth:`Session.check_task`), the adapter and base files
  (:meth:`Session.check_stacks`). Entry points call the last two when their inputs are known
  (pytest: stacks at start-up, tasks at collection; ``muscle eval``: tasks, then stacks).
- **Stacks, loaded lazily** (:meth:`Session.stack`), once per process; a baseline snapshot
  stands in for the old stack and no old model is loaded. A load failure is remembered and
  raised again (:class:`StackLoadError`) without reloading.
- **Tasks resolved once** per run (:meth:`Session.resolve`, ``tasks.suite.resolve_task``).
- :meth:`Session.evaluate` (task, gate) → an :class:`Evaluation`: the ``TaskResult`` and its
  JSON-able report record; :meth:`Session.score_baseline` / :meth:`Session.write_baseline` save
  a snapshot; :meth:`Session.write_reports` writes report.json / .md / .html.
- **Several processes** (``muscle eval`` under ``accelerate launch``; ``scoring/processes.py``):
  each scores a share of every task's instances and gets all the predictions back, so every
  process evaluates the same results; only the main process writes the cache, reports and snapshot.

What stays with the entry points: reading their options (argparse, pytest options and ini),
pytest's items, skips, captured output, xdist and terminal summary (``plugin.py``), and
``muscle eval``'s printing and exit codes (``muscle/cli.py``).

Import-light (no torch): the plugin imports this at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.models.devices import DEFAULT_DEVICE, DEFAULT_DTYPE, DTYPES, check_device
from pytest_modelcompat.scoring.predictions import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    from accelerate import PartialState

    from pytest_modelcompat.cache import ResultCache
    from pytest_modelcompat.models.stack import Stack
    from pytest_modelcompat.scoring.baseline import Snapshot
    from pytest_modelcompat.scoring.evaluate import TaskResult
    from pytest_modelcompat.tasks.spec import TaskSpec

__all__ = ["FLAGS", "Evaluation", "Session", "SessionOptions", "StackLoadError", "non_negative_float",
           "positive_int"]

# How each entry point spells the run's options, for the messages that name them.
FLAGS: dict[str, dict[str, str]] = {
    "pytest": {
        "old_adapter": "--old-adapter", "new_adapter": "--new-adapter", "report_dir": "--compat-report",
        "cache_dir": "--compat-cache", "limit": "--compat-limit", "batch_size": "--compat-batch-size",
        "noise_margin": "--compat-noise-margin", "device": "--compat-device", "dtype": "dtype",
        "save_baseline": "--compat-save-baseline", "baseline": "--compat-baseline",
    },
    "muscle": {
        "old_adapter": "--old-adapter", "new_adapter": "--new-adapter", "report_dir": "--report",
        "cache_dir": "--cache", "limit": "--limit", "batch_size": "--batch-size",
        "noise_margin": "--noise-margin", "device": "--device", "dtype": "--dtype",
        "save_baseline": "--save-baseline", "baseline": "--baseline",
    },
}


# ---------------------------------------------------------------- option values


def positive_int(value: Any, label: str) -> int | None:
    """``value`` (an int, or text as an ini file or command line gives it) as a positive int;
    None stays None. CompatInputError ``<label> must be a positive integer, got <value>``."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise CompatInputError(f"{label} must be a positive integer, got {value!r}")
    return number


def non_negative_float(value: Any, label: str) -> float | None:
    """``value`` (a number or its text) as a finite float >= 0; None stays None."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not (math.isfinite(number) and number >= 0):
        raise CompatInputError(f"{label} must be a number >= 0, got {value!r}")
    return number


def one_of(value: str, choices: Iterable[str], label: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise CompatInputError(f"{label} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_mode(entry_point: str, old_adapter: Any, new_adapter: Any, save_baseline: Any, baseline: Any) -> None:
    """Which adapters and snapshot options go together (CompatInputError, one line, otherwise).

    pytest may be given no stacks at all (gate tests then skip); ``muscle eval`` needs a mode.
    """
    flags = FLAGS[entry_point]
    save, snapshot = flags["save_baseline"], flags["baseline"]
    if baseline is not None:
        if old_adapter is not None:
            raise CompatInputError(f"--old-adapter and {snapshot} are both given; the snapshot stands for the old "
                                   f"stack: drop --old-adapter (or {snapshot} to load the old model)")
        if save_baseline is not None:
            raise CompatInputError(f"{save} and {snapshot} are both given; save a snapshot (with --old-adapter) or "
                                   f"gate against one (with --new-adapter), not both")
        if new_adapter is None:
            raise CompatInputError(f"{snapshot} is given but --new-adapter is not; pass the adapter to gate against "
                                   f"the snapshot: --new-adapter PATH")
    elif save_baseline is not None:
        if old_adapter is None:
            raise CompatInputError(f"{save} is given but --old-adapter is not; pass the adapter whose predictions "
                                   f"to save: --old-adapter PATH")
        if new_adapter is not None:
            raise CompatInputError(f"{save} scores the old stack only; drop --new-adapter (gate it later with "
                                   f"{snapshot} FILE --new-adapter PATH)")
    elif entry_point == "muscle":
        if old_adapter is None or new_adapter is None:
            missing = " and ".join(flag for flag, value in (("--old-adapter", old_adapter),
                                                             ("--new-adapter", new_adapter)) if value is None)
            raise CompatInputError(f"{missing} missing: pass --old-adapter A1 --new-adapter A2 (or --old-adapter A1 "
                                   f"{save} FILE, or {snapshot} FILE --new-adapter A2)")
    elif (old_adapter is None) != (new_adapter is None):
        given, missing = ("--old-adapter", "--new-adapter") if new_adapter is None else ("--new-adapter",
                                                                                       "--old-adapter")
        raise CompatInputError(f"{given} is given but {missing} is not; pass both adapters (or --old-adapter with "
                               f"{save} FILE, or {snapshot} FILE with --new-adapter)")


@dataclass(frozen=True)
class SessionOptions:
    """The validated options of a run. Adapters, bases and paths are kept as the entry point gave
    them (the plugin makes them absolute), so commands printed back show them the same way."""

    entry_point: str = "pytest"               # "pytest" or "muscle": how messages name options
    old_adapter: str | Path | None = None
    new_adapter: str | Path | None = None
    old_base: str | None = None
    new_base: str | None = None
    report_dir: str | Path | None = None
    cache_dir: str | Path | None = None       # None: caching off
    limit: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = DEFAULT_DEVICE
    dtype: str = DEFAULT_DTYPE
    noise_margin: float | None = None         # None: margins.DEFAULT_NOISE_MARGIN
    allow_pickle: bool = False
    trust_remote_code: bool = False
    save_baseline: str | Path | None = None   # write the old stack's predictions to this snapshot file
    baseline: str | Path | None = None        # gate the new stack against this snapshot file

    @classmethod
    def create(cls, *, entry_point: str, labels: Mapping[str, str] | None = None, no_cache: bool = False,
               limit: Any = None, batch_size: Any = None, noise_margin: Any = None, device: str | None = None,
               dtype: str | None = None, cache_dir: str | Path | None = None, **values: Any) -> SessionOptions:
        """Validate and complete the options, in one order for every entry point: the mode, (pytest)
        the adapter directories, then device, dtype, limit, batch size and noise margin.

        Numbers may be given as text (ini files); ``labels`` overrides how a message names an
        option (the plugin adds its ini name). ``cache_dir`` None means the default result cache
        (``cache.results_dir()``), ``no_cache`` none at all.
        """
        name = {**FLAGS[entry_point], **(labels or {})}
        check_mode(entry_point, values.get("old_adapter"), values.get("new_adapter"),
                   values.get("save_baseline"), values.get("baseline"))
        if entry_point == "pytest":
            # pytest resolves relative paths against the ini file or the invocation dir: say which dir
            # it looked for. (muscle reports a missing adapter with the other stack files, after the suite.)
            for key in ("old_adapter", "new_adapter"):
                adapter = values.get(key)
                if adapter is not None and not Path(adapter).is_dir():
                    raise CompatInputError(f"{FLAGS[entry_point][key]}: no such directory {str(adapter)!r}; "
                                           f"pass a PEFT adapter directory")
        if not no_cache and cache_dir is None:
            from pytest_modelcompat.cache import results_dir

            cache_dir = results_dir()
        return cls(
            entry_point=entry_point,
            device=check_device(device or DEFAULT_DEVICE, name["device"]),
            dtype=one_of(dtype or DEFAULT_DTYPE, DTYPES, name["dtype"]),
            limit=positive_int(limit, name["limit"]),
            batch_size=positive_int(batch_size, name["batch_size"]) or DEFAULT_BATCH_SIZE,
            noise_margin=non_negative_float(noise_margin, name["noise_margin"]),
            cache_dir=None if no_cache else cache_dir,
            **values,
        )

    @property
    def mode(self) -> str | None:
        """"compare" (old and new adapters), "save" (old adapter → snapshot), "baseline" (snapshot
        vs new adapter) or None (no stacks given: nothing to evaluate)."""
        if self.baseline is not None:
            return "baseline"
        if self.save_baseline is not None:
            return "save"
        return "compare" if self.old_adapter is not None else None

    @property
    def stacks_given(self) -> bool:
        return self.mode is not None

    def flag(self, name: str) -> str:
        """How this entry point spells option ``name`` (a field name)."""
        return FLAGS[self.entry_point][name]


# ---------------------------------------------------------------- the run


class StackLoadError(CompatInputError):
    """The ``old`` or ``new`` stack could not be loaded: str() is the loader's one line."""

    def __init__(self, which: str, error: CompatInputError) -> None:
        super().__init__(str(error))
        self.which = which

    @property
    def flag(self) -> str:
        return f"--{self.which}-adapter"


@dataclass(frozen=True)
class Evaluation:
    """One evaluated task: the ``TaskResult`` and its JSON-able report record
    (``report.task_record``: what report.json / .md / .html and the verdicts show)."""

    result: TaskResult
    record: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.result.gate.passed)


class Session:
    """A compatibility run. Creating one runs the preflight that needs neither a suite nor a model
    (output locations, the snapshot); see the module docstring for the rest. ``processes``
    (``scoring.processes.launched_processes``): the processes the run's scoring is spread over."""

    def __init__(self, options: SessionOptions, processes: PartialState | None = None) -> None:
        self.options = options
        self.processes = processes
        self.snapshot: Snapshot | None = None      # the loaded baseline snapshot (mode "baseline")
        self._stacks: dict[str, Stack] = {}
        self._load_errors: dict[str, StackLoadError] = {}
        self._resolved: dict[TaskSpec, TaskSpec] = {}
        self._cache: ResultCache | None = None
        self._preflight()

    @property
    def mode(self) -> str | None:
        return self.options.mode

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes the run's files and shows progress (always, in one process)."""
        from pytest_modelcompat.scoring.processes import is_main_process

        return is_main_process(self.processes)

    # -------------------------------------------------- preflight (no model)

    def _preflight(self) -> None:
        """Output locations and the snapshot. Without stacks (pytest without adapters) nothing is
        checked: the plugin is installed in environments that never run a gate."""
        from pytest_modelcompat.atomic import check_writable_dir
        from pytest_modelcompat.scoring.baseline import check_save_path, load_snapshot

        options = self.options
        if options.mode is None:
            return
        for name in ("report_dir", "cache_dir"):
            if getattr(options, name) is not None:
                check_writable_dir(getattr(options, name), options.flag(name))
        if options.save_baseline is not None:
            check_save_path(options.save_baseline, options.flag("save_baseline"))
        if options.baseline is not None:
            self.snapshot = load_snapshot(options.baseline, entry_point=options.entry_point)

    def check_stacks(self) -> None:
        """The adapter and base files of each stack given (no torch, no model): what loading would
        refuse, with the option to fix in front (``--old-adapter: ...``)."""
        from pytest_modelcompat.models.stack import check_stack_files

        for which in ("old", "new"):
            adapter = getattr(self.options, f"{which}_adapter")
            if adapter is not None:
                check_stack_files(adapter, getattr(self.options, f"{which}_base"),
                                  allow_pickle=self.options.allow_pickle, which=which)

    def check_task(self, task: TaskSpec) -> None:
        """A template task's data and templates over the instances this run evaluates and, with a
        snapshot, that the snapshot covers them (BaselineError otherwise). ``lm_eval:`` tasks are
        checked when evaluated: resolving them is slow."""
        from pytest_modelcompat.scoring.evaluate import effective_limit
        from pytest_modelcompat.tasks.suite import load_instances

        if task.lm_eval is not None:
            return
        instances = load_instances(task, limit=effective_limit(self.options.limit, task.limit))
        if self.snapshot is not None:
            self.snapshot.check_instances(task, instances)

    # -------------------------------------------------- tasks and stacks

    def resolve(self, task: TaskSpec) -> TaskSpec:
        """The resolved spec of a suite entry, asked of its task source once per run."""
        if task not in self._resolved:
            from pytest_modelcompat.tasks.suite import resolve_task

            self._resolved[task] = resolve_task(task)
        return self._resolved[task]

    def stack(self, which: str) -> Stack:
        """The ``old`` or ``new`` Stack, loaded on first use; StackLoadError (every time, without
        reloading) when it cannot be loaded."""
        adapter = getattr(self.options, f"{which}_adapter")
        if adapter is None or (which == "old" and self.snapshot is not None):
            raise ValueError(f"this run has no {which} stack to load (mode {self.mode!r})")
        if which in self._load_errors:
            raise self._load_errors[which]
        if which not in self._stacks:
            from pytest_modelcompat.models.stack import load_stack

            try:
                self._stacks[which] = load_stack(
                    adapter, getattr(self.options, f"{which}_base"), device=self.options.device,
                    dtype=self.options.dtype, allow_pickle=self.options.allow_pickle,
                    trust_remote_code=self.options.trust_remote_code,
                )
            except CompatInputError as error:
                self._load_errors[which] = StackLoadError(which, error)
                raise self._load_errors[which] from None
        return self._stacks[which]

    def old_side(self) -> Stack | Snapshot:
        """What stands for the old stack: the baseline snapshot, or the loaded old stack."""
        return self.snapshot if self.snapshot is not None else self.stack("old")

    def old_meta(self) -> dict[str, str]:
        """The old stack's {"adapter", "base", "fingerprint"} (the snapshot's, with a snapshot)."""
        from pytest_modelcompat.report.records import stack_meta

        return dict(self.snapshot.stack) if self.snapshot is not None else stack_meta(self.stack("old"))

    @property
    def cache(self) -> ResultCache | None:
        if self._cache is None and self.options.cache_dir is not None:
            from pytest_modelcompat.cache import ResultCache

            self._cache = ResultCache(Path(self.options.cache_dir))
        return self._cache

    # -------------------------------------------------- evaluate, save, report

    def evaluate(self, task: TaskSpec, gate: Mapping[str, Any] | None = None, *, nodeid: str,
                 suite: str | Path | None = None, quiet: bool = False) -> Evaluation:
        """Evaluate ``task`` (a suite entry) on the old side and the new stack; ``gate`` keys replace
        the task's own. ``nodeid`` names the task in reports; ``suite`` is how the printed
        ``muscle train`` command names the suite (default: the task's file); ``quiet``: no
        progress bar (none but the main process shows one)."""
        from pytest_modelcompat.progress import make_progress
        from pytest_modelcompat.report.records import stack_meta, task_record
        from pytest_modelcompat.scoring.evaluate import evaluate_task

        task = self.resolve(task)
        old, new = self.old_side(), self.stack("new")
        with make_progress(transient=True, disable=quiet or not self.is_main_process) as progress:
            result = evaluate_task(old, new, task, limit=self.options.limit, cache=self.cache,
                                   batch_size=self.options.batch_size, gate_override=gate, progress=progress,
                                   noise_margin=self.options.noise_margin, processes=self.processes)
        record = task_record(result, self.old_meta(), stack_meta(new), nodeid=nodeid,
                             muscle_command=self.muscle_command(task, suite))
        return Evaluation(result, record)

    def muscle_command(self, task: TaskSpec, suite: str | Path | None = None) -> str:
        """The ``muscle train`` command that would train a compatibility adapter for ``task``."""
        from pytest_modelcompat.report.records import muscle_train_command

        options = self.options
        if self.snapshot is not None:
            old_adapter, old_base = self.snapshot.stack["adapter"], self.snapshot.stack["base"]
        else:
            old_adapter, old_base = str(options.old_adapter), options.old_base
        return muscle_train_command(suite=task.source if suite is None else suite, task=task.name,
                                    old_adapter=old_adapter, new_adapter=str(options.new_adapter),
                                    old_base=old_base, new_base=options.new_base)

    def score_baseline(self, task: TaskSpec, *, quiet: bool = False) -> dict[str, Any]:
        """Score ``task`` with the old stack only → ``{"stack": ..., "entry": ...}``, one task of the
        snapshot :meth:`write_baseline` writes (JSON-able: xdist workers ship it as is)."""
        from pytest_modelcompat.progress import make_progress
        from pytest_modelcompat.report.records import stack_meta
        from pytest_modelcompat.scoring.evaluate import baseline_entry

        task = self.resolve(task)
        old = self.stack("old")
        with make_progress(transient=True, disable=quiet or not self.is_main_process) as progress:
            entry = baseline_entry(old, task, limit=self.options.limit, cache=self.cache,
                                   batch_size=self.options.batch_size, progress=progress, processes=self.processes)
        return {"stack": stack_meta(old), "entry": entry}

    def write_baseline(self, scored: Iterable[Mapping[str, Any]]) -> tuple[Path, dict[str, str]]:
        """Write the snapshot of the tasks :meth:`score_baseline` scored → (path, old stack meta); the
        main process writes it."""
        from pytest_modelcompat.scoring.baseline import write_snapshot

        scored = list(scored)
        stacks = {item["stack"]["fingerprint"]: item["stack"] for item in scored}
        (stack,) = stacks.values()          # one old stack per run
        path = Path(self.options.save_baseline)
        if self.is_main_process:
            write_snapshot(path, stack, [item["entry"] for item in scored])
        return path, stack

    def write_reports(self, records: Iterable[Mapping[str, Any]]) -> dict[str, Path]:
        """report.json / report.md / report.html into the report dir, if the run has one (the main
        process writes them; the others get {})."""
        from pytest_modelcompat.report.files import write_reports

        if self.options.report_dir is None or not self.is_main_process:
            return {}
        return write_reports(Path(self.options.report_dir), list(records))
