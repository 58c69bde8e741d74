"""pytest glue for pytest-modelcompat (registered through the ``pytest11`` entry point).

Thin on purpose: options, fixtures, collection and reporting hooks delegate to the library
modules. Nothing heavy is imported at module level, so unrelated pytest runs stay fast.

- Options (group ``modelcompat``; each also ini ``modelcompat_<name>``, the command line wins)
  are checked in ``pytest_configure``: a bad value raises ``pytest.UsageError``, which pytest
  prints as one ``ERROR:`` line and exits with code 4 (its usage-error code).
- Fixtures: ``old_stack`` / ``new_stack`` (session scope, loaded on first use, once per
  session or xdist worker) and ``compat`` (``compat.evaluate(task, **gate)`` → ``TaskReport``).
- Marker ``@pytest.mark.modelcompat(task=..., suite=..., **gate)``: the task is evaluated before
  the test body (``compat.report`` holds it) and its gate is asserted after the body passed.
- Suite files ``modelcompat.yaml`` / ``compat_*.yaml`` are collected as one item per task.
- Every evaluated task becomes a JSON-able record (``report.task_record``) attached to the test
  report; the controller (the only process under xdist that does so) gathers records from
  ``pytest_runtest_logreport``, prints the summary table and writes ``--compat-report DIR``.
- A failing gate fails its test, so pytest exits 1.
- Baseline snapshots (docs/baseline.md, ``baseline.py``): ``--old-adapter A1
  --compat-save-baseline FILE`` scores the old stack only (suite items pass, Python gate tests are
  skipped after scoring) and the controller writes FILE at the end of a passing run;
  ``--compat-baseline FILE --new-adapter A2`` gates A2 against FILE with no old model. A snapshot
  that does not cover a selected suite task is a usage error at collection (exit 4, nothing
  written); a task first met at run time (``compat.evaluate``) stops the run with exit 4.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pytest_modelcompat.errors import CompatInputError

# (name, help, extra addoption kwargs). Each is also readable from ini `modelcompat_<name>`.
OPTIONS: list[tuple[str, str, dict]] = [
    ("old_adapter", "PEFT adapter dir of the old (deployed) stack", {"metavar": "PATH"}),
    ("new_adapter", "PEFT adapter dir of the new (candidate) stack", {"metavar": "PATH"}),
    ("old_base", "base model of the old stack (default: the adapter's base_model_name_or_path)",
     {"metavar": "PATH"}),
    ("new_base", "base model of the new stack (default: the adapter's base_model_name_or_path)",
     {"metavar": "PATH"}),
    ("compat_report", "write report.json, report.md and report.html into DIR", {"metavar": "DIR"}),
    ("compat_cache", "result cache dir (default: $MODELCOMPAT_HOME/results, "
                     "~/.cache/pytest-modelcompat/results)", {"metavar": "DIR"}),
    ("compat_limit", "evaluate only the first N instances of each task", {"metavar": "N"}),
    ("compat_batch_size", "batch size for scoring (default 16)", {"metavar": "N"}),
    ("compat_device", "device for both stacks: auto, cpu or cuda (default auto)",
     {"metavar": "{auto,cpu,cuda}"}),
    ("compat_save_baseline", "score the old stack only and write its per-instance predictions to FILE "
                             "(a baseline snapshot; needs --old-adapter, no --new-adapter)", {"metavar": "FILE"}),
    ("compat_baseline", "gate --new-adapter against the snapshot FILE instead of an old stack (no old model "
                        "is loaded; do not pass --old-adapter)", {"metavar": "FILE"}),
    ("compat_noise_margin", "a flip whose decision margins on both sides (multiple choice: log-likelihood gap "
                            "of the two best choices, nats) or whose |D(x)| (generative) is below X is "
                            "'unstable' (default 0.01; docs/margins.md)", {"metavar": "X"}),
]
# Opt-ins for weights and code that can run arbitrary Python (off unless asked for: ARCHITECTURE.md, Conventions).
TRUST_FLAGS = (
    ("allow_pickle", "allow loading pickle (.bin/.pt) weights; they can run code, so only from sources you trust"),
    ("trust_remote_code", "allow a base model's own Python code (transformers trust_remote_code)"),
)
DEVICES = ("auto", "cpu", "cuda")
SUITE_FILE_PATTERNS = ("modelcompat.yaml", "compat_*.yaml")
SKIP_REASON = ("modelcompat: no stacks to compare; pass --old-adapter PATH and --new-adapter PATH "
               "(or ini modelcompat_old_adapter / modelcompat_new_adapter), or --compat-baseline FILE "
               "and --new-adapter PATH")
# Key metrics written as JUnit XML properties of each gate test (as `<task>.<metric>`).
JUNIT_METRICS = ("acc_old", "acc_new", "acc_delta", "nfr", "pfr", "nfr_mc", "btc", "mcnemar_p",
                 "score_old", "score_new", "score_delta", "nfr_smooth", "m_r")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("modelcompat", "model compatibility gate (negative flips)")
    for name, help_text, kwargs in OPTIONS:
        flag = "--" + name.replace("_", "-")
        group.addoption(flag, dest=f"modelcompat_{name}", default=None, help=help_text, **kwargs)
        parser.addini(f"modelcompat_{name}", help_text, default=None)
    group.addoption(
        "--compat-no-cache", dest="modelcompat_compat_no_cache", action="store_true", default=False,
        help="do not read or write the result cache",
    )
    parser.addini("modelcompat_compat_no_cache", "do not read or write the result cache",
                  type="bool", default=False)
    for name, help_text in TRUST_FLAGS:
        group.addoption(_flag(name), dest=f"modelcompat_{name}", action="store_true", default=False, help=help_text)
        parser.addini(f"modelcompat_{name}", help_text, type="bool", default=False)


# ---------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class CompatOptions:
    """The validated options of a run (command line over ini; paths absolute)."""

    old_adapter: Path | None
    new_adapter: Path | None
    old_base: str | None
    new_base: str | None
    report_dir: Path | None
    cache_dir: Path | None      # None: caching off
    limit: int | None
    batch_size: int
    device: str
    noise_margin: float | None = None   # None: metrics.DEFAULT_NOISE_MARGIN
    allow_pickle: bool = False
    trust_remote_code: bool = False
    save_baseline: Path | None = None   # --compat-save-baseline FILE
    baseline: Any = None                # the loaded --compat-baseline snapshot (baseline.Snapshot)

    @property
    def mode(self) -> str | None:
        """"compare" (old and new adapters), "save" (old adapter → snapshot), "baseline" (snapshot
        vs new adapter) or None (nothing to evaluate: gate tests skip)."""
        if self.baseline is not None:
            return "baseline"
        if self.save_baseline is not None:
            return "save"
        return "compare" if self.old_adapter is not None else None

    @property
    def stacks_given(self) -> bool:
        return self.mode is not None


def _raw_option(config: pytest.Config, name: str) -> tuple[str | None, Path]:
    """(value, directory a relative path in it is relative to): the command line wins over ini."""
    value = config.getoption(f"modelcompat_{name}")
    if value is not None:
        return str(value), config.invocation_params.dir
    value = config.getini(f"modelcompat_{name}")
    base = config.inipath.parent if config.inipath else config.rootpath
    return (str(value) if value not in (None, "") else None), base


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive_int(config: pytest.Config, name: str) -> int | None:
    value, _ = _raw_option(config, name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise pytest.UsageError(
            f"{_flag(name)} (or ini modelcompat_{name}) must be a positive integer, got {value!r}"
        )
    return number


def _non_negative_float(config: pytest.Config, name: str) -> float | None:
    import math

    value, _ = _raw_option(config, name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not (math.isfinite(number) and number >= 0):
        raise pytest.UsageError(
            f"{_flag(name)} (or ini modelcompat_{name}) must be a number >= 0, got {value!r}"
        )
    return number


def _path(config: pytest.Config, name: str) -> Path | None:
    value, base = _raw_option(config, name)
    return None if value is None else (base / Path(value).expanduser()).resolve()


def _base_reference(config: pytest.Config, name: str) -> str | None:
    """A base is a local path (made absolute when it exists) or a hub model name (kept as is)."""
    value, base = _raw_option(config, name)
    if value is None:
        return None
    candidate = base / Path(value).expanduser()
    return str(candidate.resolve()) if candidate.exists() else value


def read_options(config: pytest.Config) -> CompatOptions:
    """Validate the modelcompat options; ``pytest.UsageError`` (one line) on a bad value."""
    old_adapter, new_adapter = _path(config, "old_adapter"), _path(config, "new_adapter")
    save_path, baseline_path = _path(config, "compat_save_baseline"), _path(config, "compat_baseline")
    _check_mode(old_adapter, new_adapter, save_path, baseline_path)
    for name, adapter in (("old_adapter", old_adapter), ("new_adapter", new_adapter)):
        if adapter is not None and not adapter.is_dir():
            raise pytest.UsageError(
                f"{_flag(name)}: no such directory {str(adapter)!r}; pass a PEFT adapter directory"
            )
    trust = {name: bool(config.getoption(f"modelcompat_{name}") or config.getini(f"modelcompat_{name}"))
             for name, _ in TRUST_FLAGS}
    old_base, new_base = _base_reference(config, "old_base"), _base_reference(config, "new_base")
    device = _raw_option(config, "compat_device")[0] or "auto"
    if device not in DEVICES:
        raise pytest.UsageError(f"--compat-device must be one of {', '.join(DEVICES)}, got {device!r}")
    no_cache = config.getoption("modelcompat_compat_no_cache") or config.getini("modelcompat_compat_no_cache")
    cache_dir = None
    if not no_cache:
        from pytest_modelcompat.cache import cache_home

        cache_dir = _path(config, "compat_cache") or cache_home() / "results"
    report_dir = _path(config, "compat_report")
    limit, batch_size = _positive_int(config, "compat_limit"), _positive_int(config, "compat_batch_size") or 16
    snapshot = None
    if old_adapter is not None or new_adapter is not None:
        from pytest_modelcompat.atomic import check_writable_dir
        from pytest_modelcompat.baseline import check_save_path, load_snapshot
        from pytest_modelcompat.stack import check_stack_files

        # What can be checked without loading a model fails the run now, as a usage error.
        try:
            for which, adapter, base in (("old", old_adapter, old_base), ("new", new_adapter, new_base)):
                if adapter is not None:
                    check_stack_files(adapter, base, allow_pickle=trust["allow_pickle"], which=which)
            for flag, directory in (("--compat-report", report_dir), ("--compat-cache", cache_dir)):
                if directory is not None:
                    check_writable_dir(directory, flag)
            if save_path is not None:
                check_save_path(save_path, "--compat-save-baseline")
            if baseline_path is not None:
                snapshot = load_snapshot(baseline_path)
        except CompatInputError as error:
            raise pytest.UsageError(str(error)) from None
    return CompatOptions(
        old_adapter=old_adapter, new_adapter=new_adapter, old_base=old_base, new_base=new_base,
        report_dir=report_dir, cache_dir=cache_dir, limit=limit, batch_size=batch_size,
        device=device, noise_margin=_non_negative_float(config, "compat_noise_margin"),
        save_baseline=save_path, baseline=snapshot,
        **trust,
    )


def _check_mode(old_adapter: Path | None, new_adapter: Path | None, save_path: Path | None,
                baseline_path: Path | None) -> None:
    """Which adapters / snapshot options go together (pytest.UsageError, one line, otherwise)."""
    if baseline_path is not None:
        if old_adapter is not None:
            raise pytest.UsageError("--old-adapter and --compat-baseline are both given; the snapshot stands for the "
                                    "old stack: drop --old-adapter (or --compat-baseline to load the old model)")
        if save_path is not None:
            raise pytest.UsageError("--compat-save-baseline and --compat-baseline are both given; save a snapshot "
                                    "(with --old-adapter) or gate against one (with --new-adapter), not both")
        if new_adapter is None:
            raise pytest.UsageError("--compat-baseline is given but --new-adapter is not; pass the adapter to gate "
                                    "against the snapshot: --new-adapter PATH")
    elif save_path is not None:
        if old_adapter is None:
            raise pytest.UsageError("--compat-save-baseline is given but --old-adapter is not; pass the adapter whose "
                                    "predictions to save: --old-adapter PATH")
        if new_adapter is not None:
            raise pytest.UsageError("--compat-save-baseline scores the old stack only; drop --new-adapter (gate it "
                                    "later with --compat-baseline FILE --new-adapter PATH)")
    elif (old_adapter is None) != (new_adapter is None):
        given, missing = ("old_adapter", "new_adapter") if new_adapter is None else ("new_adapter", "old_adapter")
        raise pytest.UsageError(f"{_flag(given)} is given but {_flag(missing)} is not; pass both adapters "
                                f"(or --old-adapter with --compat-save-baseline FILE, or --compat-baseline FILE "
                                f"with --new-adapter)")


# ---------------------------------------------------------------- session state


class CompatSession:
    """Per-process state: options, lazily loaded stacks and the task records of the run."""

    def __init__(self, options: CompatOptions) -> None:
        self.options = options
        self.records: list[dict[str, Any]] = []    # gathered from test reports (controller side)
        self.baseline_entries: list[dict[str, Any]] = []   # --compat-save-baseline: scored tasks (controller)
        self.baseline_message: str | None = None   # what became of the snapshot (terminal summary)
        self.refused = False                        # a usage error stopped the run: write nothing
        self._stacks: dict[str, Any] = {}
        self._load_errors: dict[str, str] = {}

    def stack(self, which: str) -> Any:
        """The ``old`` or ``new`` Stack, loaded on first use (skips the test without adapters)."""
        mode = self.options.mode
        if mode is None:
            pytest.skip(SKIP_REASON)
        if which == "new" and mode == "save":
            pytest.skip("modelcompat: --compat-save-baseline scores the old stack only; there is no new stack")
        if which == "old" and mode == "baseline":
            pytest.skip("modelcompat: --compat-baseline stands for the old stack; no old model is loaded")
        if which in self._load_errors:      # fail every later test at once, without reloading
            pytest.fail(self._load_errors[which], pytrace=False)
        if which not in self._stacks:
            from pytest_modelcompat.stack import load_stack

            adapter = getattr(self.options, f"{which}_adapter")
            try:
                self._stacks[which] = load_stack(adapter, getattr(self.options, f"{which}_base"),
                                                 device=self.options.device, allow_pickle=self.options.allow_pickle,
                                                 trust_remote_code=self.options.trust_remote_code)
            except CompatInputError as error:
                self._load_errors[which] = f"{_flag(which + '_adapter')}: {error}"
                pytest.fail(self._load_errors[which], pytrace=False)
        return self._stacks[which]

    def evaluate(self, item: pytest.Item, task: Any, gate: Mapping[str, float] | None = None) -> Any:
        """Evaluate ``task`` on both stacks; record it on ``item`` for reports and JUnit XML."""
        from pytest_modelcompat.assertions import TaskReport
        from pytest_modelcompat.evaluate import evaluate_task
        from pytest_modelcompat.progress import make_progress
        from pytest_modelcompat.report import muscle_train_command, stack_meta, task_record
        from pytest_modelcompat.suite import resolve_task

        task = resolve_task(task)
        snapshot = self.options.baseline
        if self.options.mode == "save":
            self.save_task(item, task)
            pytest.skip(f"modelcompat: task {task.name!r} scored for the baseline snapshot; nothing is gated in a "
                        f"--compat-save-baseline run")
        old = snapshot if snapshot is not None else self.stack("old")
        new = self.stack("new")
        cache = self._cache()
        # Long evaluations show a rich bar on the real terminal (pytest's capture suspended);
        # xdist workers have no terminal, so they stay quiet.
        capture = item.config.pluginmanager.getplugin("capturemanager")
        with (capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()), \
                make_progress(transient=True, disable=_is_xdist_worker(item.config)) as progress:
            try:
                result = evaluate_task(
                    old, new, task, limit=self.options.limit, cache=cache, batch_size=self.options.batch_size,
                    gate_override=gate, progress=progress, noise_margin=self.options.noise_margin,
                )
            except CompatInputError as error:
                self._refuse_baseline(item, error)
                raise
        old_meta = dict(snapshot.stack) if snapshot is not None else stack_meta(old)
        command = muscle_train_command(
            suite=task.source, task=task.name, old_adapter=old_meta["adapter"] if snapshot is not None
            else str(self.options.old_adapter), new_adapter=str(self.options.new_adapter),
            old_base=old_meta["base"] if snapshot is not None else self.options.old_base,
            new_base=self.options.new_base,
        )
        record = task_record(result, old_meta, stack_meta(new), nodeid=item.nodeid, muscle_command=command)
        item.stash.setdefault(_RECORDS, []).append(record)
        for key in JUNIT_METRICS:
            if record["entry"]["metrics"][key] is not None:
                item.user_properties.append((f"{task.name}.{key}", record["entry"]["metrics"][key]))
        if record["entry"]["metrics"]["nfr_ci"] is not None:
            item.user_properties.append((f"{task.name}.nfr_ci_upper", record["entry"]["metrics"]["nfr_ci"][1]))
        item.user_properties.append((f"{task.name}.gate", "PASS" if result.gate.passed else "FAIL"))
        return TaskReport(result, record)

    def _cache(self) -> Any:
        if self.options.cache_dir is None:
            return None
        from pytest_modelcompat.cache import ResultCache

        return ResultCache(self.options.cache_dir)

    def save_task(self, item: pytest.Item, task: Any) -> None:
        """--compat-save-baseline: score ``task`` with the old stack; its snapshot entry rides on the
        test report to the controller, which writes the file at the end of the run."""
        from pytest_modelcompat.evaluate import baseline_entry
        from pytest_modelcompat.progress import make_progress
        from pytest_modelcompat.report import stack_meta
        from pytest_modelcompat.suite import resolve_task

        task = resolve_task(task)
        old = self.stack("old")
        capture = item.config.pluginmanager.getplugin("capturemanager")
        with (capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()), \
                make_progress(transient=True, disable=_is_xdist_worker(item.config)) as progress:
            entry = baseline_entry(old, task, limit=self.options.limit, cache=self._cache(),
                                   batch_size=self.options.batch_size, progress=progress)
        item.stash.setdefault(_BASELINE, []).append({"stack": stack_meta(old), "entry": entry})

    def _refuse_baseline(self, item: pytest.Item, error: CompatInputError) -> None:
        """A snapshot that does not cover a task met at run time stops the run (usage error, exit 4)."""
        from pytest_modelcompat.baseline import BaselineError

        if isinstance(error, BaselineError) and not _is_xdist_worker(item.config):
            self.refused = True
            pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)

    def check_baseline_covers(self, items: list[pytest.Item]) -> None:
        """--compat-baseline: every selected task (suite items, markers) must be in the snapshot with
        the same fingerprint and all the instances this run evaluates: else a usage error now."""
        from pytest_modelcompat.evaluate import effective_limit
        from pytest_modelcompat.suite import load_instances

        snapshot = self.options.baseline
        for item in items:
            task = getattr(item, "task", None)
            marker = item.get_closest_marker("modelcompat") if task is None else None
            if marker is not None:
                name = marker.kwargs.get("task", marker.args[0] if marker.args else None)
                try:
                    task = task_spec(name, marker.kwargs.get("suite"), item.path, item.config.rootpath)
                except CompatInputError:
                    continue            # the test itself reports it
            if task is None or task.lm_eval is not None:
                continue                # lm-eval tasks resolve slowly: checked when evaluated
            try:
                snapshot.check_instances(task, load_instances(task, limit=effective_limit(self.options.limit,
                                                                                          task.limit)))
            except CompatInputError as error:
                self.refused = True
                raise pytest.UsageError(str(error)) from None

    # Hooks of this object (registered as a plugin in pytest_configure).

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if self.options.baseline is not None:
            self.check_baseline_covers(items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.records.extend(getattr(report, "modelcompat_records", ()))
        self.baseline_entries.extend(getattr(report, "modelcompat_baseline", ()))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if _is_xdist_worker(session.config) or self.refused:
            return
        if self.options.mode == "save":
            self._write_baseline(exitstatus)
        if self.records and self.options.report_dir is not None:
            from pytest_modelcompat.report import write_reports

            write_reports(self.options.report_dir, self.records)

    def _write_baseline(self, exitstatus: int) -> None:
        from pytest_modelcompat.baseline import write_snapshot

        path = self.options.save_baseline
        if exitstatus != pytest.ExitCode.OK:
            self.baseline_message = f"modelcompat: baseline snapshot NOT written to {path}: the run did not pass"
            return
        if not self.baseline_entries:
            self.baseline_message = f"modelcompat: no task was scored; baseline snapshot NOT written to {path}"
            return
        stacks = {item["stack"]["fingerprint"]: item["stack"] for item in self.baseline_entries}
        (stack,) = stacks.values()          # one old stack per run
        try:
            write_snapshot(path, stack, [item["entry"] for item in self.baseline_entries])
        except CompatInputError as error:
            self.baseline_message = f"modelcompat: baseline snapshot NOT written: {error}"
            return
        entries = {item["entry"]["name"] for item in self.baseline_entries}
        self.baseline_message = (f"modelcompat: baseline snapshot written to {path} ({len(entries)} task(s); old "
                                 f"stack {stack['fingerprint'][:12]})")

    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config) -> None:
        if _is_xdist_worker(config):
            return
        if self.baseline_message:
            terminalreporter.write_line(self.baseline_message)
        if not self.records:
            return
        from pytest_modelcompat.report import terminal_table

        terminalreporter.section("modelcompat")
        terminalreporter.write(terminal_table(self.records, width=config.get_terminal_writer().fullwidth,
                                              color=terminalreporter.hasmarkup))
        if self.options.report_dir is not None:
            terminalreporter.write_line(f"modelcompat: reports written to {self.options.report_dir}")


_SESSION = pytest.StashKey[CompatSession]()
_RECORDS = pytest.StashKey[list]()
_BASELINE = pytest.StashKey[list]()
_MARKER_REPORT = pytest.StashKey[Any]()


def _session(config: pytest.Config) -> CompatSession:
    return config.stash[_SESSION]


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# ---------------------------------------------------------------- tasks from Python tests


def _find_suite(start: Path, stop: Path) -> Path:
    """The nearest ``modelcompat.yaml`` from a test file's directory up to the rootdir."""
    for directory in (start, *start.parents):
        if (directory / "modelcompat.yaml").is_file():
            return directory / "modelcompat.yaml"
        if directory == stop:
            break
    raise CompatInputError(
        f"no modelcompat.yaml found from {start} up to {stop}; pass suite='path/to/suite.yaml'"
    )


def task_spec(task: Any, suite: str | Path | None, test_path: Path, rootpath: Path) -> Any:
    """A TaskSpec from a TaskSpec, or a task name looked up in ``suite`` (relative to the test
    file; default: the nearest modelcompat.yaml)."""
    from pytest_modelcompat.suite import TaskSpec, load_suite

    if isinstance(task, TaskSpec):
        return task
    if not isinstance(task, str):
        raise CompatInputError(f"task must be a task name or a TaskSpec, got {type(task).__name__}")
    suite_path = _find_suite(test_path.parent, rootpath) if suite is None else test_path.parent / suite
    tasks = load_suite(suite_path)
    for spec in tasks:
        if spec.name == task:
            return spec
    raise CompatInputError(
        f"{suite_path}: no task named {task!r}; tasks are {', '.join(spec.name for spec in tasks)}"
    )


class Compat:
    """The ``compat`` fixture: evaluate suite tasks on the old and new stacks from a test."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def evaluate(self, task: Any, *, suite: str | Path | None = None, **gate: float) -> Any:
        """Evaluate ``task`` (a name in ``suite`` or a ``TaskSpec``) → ``TaskReport``.

        ``gate`` keys (``max_nfr=0.05``, ...) override the suite's ``gate:`` for this test.
        """
        item = self._request.node
        session = _session(item.config)
        try:
            spec = task_spec(task, suite, item.path, item.config.rootpath)
            return session.evaluate(item, spec, gate)
        except CompatInputError as error:
            pytest.fail(str(error), pytrace=False)

    @property
    def report(self) -> Any:
        """The ``TaskReport`` of the test's ``@pytest.mark.modelcompat`` task."""
        try:
            return self._request.node.stash[_MARKER_REPORT]
        except KeyError:
            raise AttributeError("compat.report exists only in tests marked @pytest.mark.modelcompat") from None


@pytest.fixture(scope="session")
def old_stack(request: pytest.FixtureRequest) -> Any:
    """The old (deployed) stack: base + ``--old-adapter``; skips the test without adapters."""
    return _session(request.config).stack("old")


@pytest.fixture(scope="session")
def new_stack(request: pytest.FixtureRequest) -> Any:
    """The new (candidate) stack: base + ``--new-adapter``; skips the test without adapters."""
    return _session(request.config).stack("new")


@pytest.fixture
def compat(request: pytest.FixtureRequest) -> Compat:
    """``compat.evaluate(task, **gate)`` → a task report with assertion helpers."""
    return Compat(request)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    marker = item.get_closest_marker("modelcompat")
    if marker is None:
        return (yield)
    kwargs = dict(marker.kwargs)
    task = kwargs.pop("task", marker.args[0] if marker.args else None)
    suite = kwargs.pop("suite", None)
    try:
        if task is None:
            raise CompatInputError("@pytest.mark.modelcompat needs the task: modelcompat(task='<name>', ...)")
        spec = task_spec(task, suite, item.path, item.config.rootpath)
        report = _session(item.config).evaluate(item, spec, kwargs)
    except CompatInputError as error:
        pytest.fail(str(error), pytrace=False)
    item.stash[_MARKER_REPORT] = report
    result = yield
    report.assert_gate()
    return result


# ---------------------------------------------------------------- suite files


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if any(fnmatch(file_path.name, pattern) for pattern in SUITE_FILE_PATTERNS):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    """A suite YAML: one ``TaskItem`` per entry of ``tasks:``."""

    def collect(self):
        from pytest_modelcompat.suite import load_instances, load_suite

        for task in load_suite(self.path):
            if task.lm_eval is None:
                # A missing/empty data file or a row the templates cannot render is a collection
                # error now (cheap: no model), not a failure after the stacks were loaded.
                load_instances(task)
            yield TaskItem.from_parent(self, name=task.name, task=task)

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(CompatInputError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class TaskItem(pytest.Item):
    """One suite task gated on its ``gate:`` mapping."""

    def __init__(self, *, task: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task

    def setup(self) -> None:
        if not _session(self.config).options.stacks_given:
            pytest.skip(SKIP_REASON)

    def runtest(self) -> None:
        session = _session(self.config)
        if session.options.mode == "save":
            session.save_task(self, self.task)      # scored for the snapshot: passes, nothing to gate
            return
        session.evaluate(self, self.task).assert_gate()

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(CompatInputError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::{self.name} (modelcompat {self.task.kind})"


# ---------------------------------------------------------------- records → reports


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    records = item.stash.get(_RECORDS, None)
    if records:
        # A plain attribute of the report survives xdist's report serialisation unchanged.
        report.modelcompat_records = list(records)
        records.clear()
    entries = item.stash.get(_BASELINE, None)
    if entries:
        report.modelcompat_baseline = list(entries)
        entries.clear()
    return report


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "modelcompat(task, suite=None, **gate): evaluate a suite task on the old and new stacks before "
        "the test and fail it when the gate (suite gate + these keys, e.g. max_nfr=0.05) fails",
    )
    session = CompatSession(read_options(config))
    config.stash[_SESSION] = session
    config.pluginmanager.register(session, "modelcompat-session")
