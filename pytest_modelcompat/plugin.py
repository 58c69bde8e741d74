"""pytest glue for pytest-modelcompat (registered through the ``pytest11`` entry point).

Thin on purpose: the run itself — options validated once, preflight, lazily loaded stacks,
evaluating a task into a report record, writing reports and snapshots — is a
``session.Session``, the same object ``muscle eval`` drives. This module turns pytest's options
into the session's, and pytest's hooks, fixtures and items into calls on it; what only pytest
has stays here (items, skips, captured output, xdist, JUnit properties, the terminal summary).
Nothing heavy is imported at module level, so unrelated pytest runs stay fast.

- Options (group ``modelcompat``; each also ini ``modelcompat_<name>``, the command line wins)
  are checked in ``pytest_configure`` (``start_session``): a bad value raises
  ``pytest.UsageError``, which pytest prints as one ``ERROR:`` line and exits with code 4 (its
  usage-error code).
- Fixtures: ``old_stack`` / ``new_stack`` (session scope, loaded on first use, once per
  session or xdist worker) and ``compat`` (``compat.evaluate(task, **gate)`` → ``TaskReport``).
- Marker ``@pytest.mark.modelcompat(task=..., suite=..., **gate)``: the task is evaluated before
  the test body (``compat.report`` holds it) and its gate is asserted after the body passed.
- Suite files ``modelcompat.yaml`` / ``compat_*.yaml`` are collected as one item per task.
- Every evaluated task becomes a JSON-able record (``report.records.task_record``) attached to the test
  report; the controller (the only process under xdist that does so) gathers records from
  ``pytest_runtest_logreport``, prints the summary table and writes ``--compat-report DIR``.
- A failing gate fails its test, so pytest exits 1.
- Baseline snapshots (docs/baseline.md, ``scoring/baseline.py``): ``--old-adapter A1
  --compat-save-baseline FILE`` scores the old stack only (suite items pass, Python gate tests are
  skipped after scoring) and the controller writes FILE at the end of a passing run;
  ``--compat-baseline FILE --new-adapter A2`` gates A2 against FILE with no old model. A snapshot
  that does not cover a selected suite task is a usage error at collection (exit 4, nothing
  written); a task first met at run time (``compat.evaluate``) stops the run with exit 4.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.margins import DEFAULT_NOISE_MARGIN
from pytest_modelcompat.models.devices import DEFAULT_DEVICE, DEVICE_FORMS
from pytest_modelcompat.scoring.predictions import DEFAULT_BATCH_SIZE
from pytest_modelcompat.session import Session, SessionOptions, StackLoadError

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
    ("compat_batch_size", f"batch size for scoring (default {DEFAULT_BATCH_SIZE})", {"metavar": "N"}),
    ("compat_device", f"device for both stacks: {DEVICE_FORMS} (default {DEFAULT_DEVICE}); cuda:{{worker}} puts "
                      "each pytest-xdist worker on its own GPU (gwN: cuda:N, modulo the GPUs visible)",
     {"metavar": "DEVICE"}),
    ("compat_save_baseline", "score the old stack only and write its per-instance predictions to FILE "
                             "(a baseline snapshot; needs --old-adapter, no --new-adapter)", {"metavar": "FILE"}),
    ("compat_baseline", "gate --new-adapter against the snapshot FILE instead of an old stack (no old model "
                        "is loaded; do not pass --old-adapter)", {"metavar": "FILE"}),
    ("compat_noise_margin", "a flip whose decision margins on both sides (multiple choice: log-likelihood gap "
                            "of the two best choices, nats) or whose |D(x)| (generative) is below X is "
                            f"'unstable' (default {DEFAULT_NOISE_MARGIN}; docs/margins.md)", {"metavar": "X"}),
]
# Opt-ins for weights and code that can run arbitrary Python (off unless asked for: ARCHITECTURE.md, Conventions).
TRUST_FLAGS = (
    ("allow_pickle", "allow loading pickle (.bin/.pt) weights; they can run code, so only from sources you trust"),
    ("trust_remote_code", "allow a base model's own Python code (transformers trust_remote_code)"),
)
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


# ---------------------------------------------------------------- options → session


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


def _bool_option(config: pytest.Config, name: str) -> bool:
    return bool(config.getoption(f"modelcompat_{name}") or config.getini(f"modelcompat_{name}"))


def read_options(config: pytest.Config) -> SessionOptions:
    """The modelcompat options (command line over ini, paths absolute) as validated session options;
    ``CompatInputError`` (one line) on a bad value."""
    # values that can come from ini name it in their messages
    labels = {name: f"{_flag(option)} (or ini modelcompat_{option})"
              for name, option in (("limit", "compat_limit"), ("batch_size", "compat_batch_size"),
                                   ("noise_margin", "compat_noise_margin"))}
    return SessionOptions.create(
        entry_point="pytest", labels=labels,
        old_adapter=_path(config, "old_adapter"), new_adapter=_path(config, "new_adapter"),
        old_base=_base_reference(config, "old_base"), new_base=_base_reference(config, "new_base"),
        save_baseline=_path(config, "compat_save_baseline"), baseline=_path(config, "compat_baseline"),
        device=_raw_option(config, "compat_device")[0],
        limit=_raw_option(config, "compat_limit")[0], batch_size=_raw_option(config, "compat_batch_size")[0],
        noise_margin=_raw_option(config, "compat_noise_margin")[0],
        report_dir=_path(config, "compat_report"),
        cache_dir=_path(config, "compat_cache"), no_cache=_bool_option(config, "compat_no_cache"),
        **{name: _bool_option(config, name) for name, _ in TRUST_FLAGS},
    )


def start_session(config: pytest.Config) -> Session:
    """The run's session with its start-up preflight (options, output locations, snapshot, stack
    files): anything refused is a usage error (``pytest.UsageError``: one ``ERROR:`` line, exit 4)."""
    try:
        session = Session(read_options(config))
        session.check_stacks()
    except CompatInputError as error:
        raise pytest.UsageError(str(error)) from None
    return session


# ---------------------------------------------------------------- the session, as pytest sees it


class CompatPlugin:
    """The session's pytest hooks (registered in ``pytest_configure``): gathers the task records
    and baseline entries that test reports carry (on the controller under xdist), prints the
    summary and writes the reports and the snapshot at the end."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.records: list[dict[str, Any]] = []    # gathered from test reports (controller side)
        self.baseline_entries: list[dict[str, Any]] = []   # --compat-save-baseline: scored tasks (controller)
        self.baseline_message: str | None = None   # what became of the snapshot (terminal summary)
        self.refused = False                        # a usage error stopped the run: write nothing

    def check_baseline_covers(self, items: list[pytest.Item]) -> None:
        """--compat-baseline: every selected task (suite items, markers) must be in the snapshot with
        the same fingerprint and all the instances this run evaluates: else a usage error now."""
        for item in items:
            task = getattr(item, "task", None)
            marker = item.get_closest_marker("modelcompat") if task is None else None
            if marker is not None:
                name = marker.kwargs.get("task", marker.args[0] if marker.args else None)
                try:
                    task = task_spec(name, marker.kwargs.get("suite"), item.path, item.config.rootpath)
                except CompatInputError:
                    continue            # the test itself reports it
            if task is None:
                continue
            try:
                self.session.check_task(task)   # lm-eval tasks resolve slowly: checked when evaluated
            except CompatInputError as error:
                self.refused = True
                raise pytest.UsageError(str(error)) from None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if self.session.snapshot is not None:
            self.check_baseline_covers(items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.records.extend(getattr(report, "modelcompat_records", ()))
        self.baseline_entries.extend(getattr(report, "modelcompat_baseline", ()))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if _is_xdist_worker(session.config) or self.refused:
            return
        if self.session.mode == "save":
            self._write_baseline(exitstatus)
        if self.records:
            self.session.write_reports(self.records)

    def _write_baseline(self, exitstatus: int) -> None:
        path = self.session.options.save_baseline
        if exitstatus != pytest.ExitCode.OK:
            self.baseline_message = f"modelcompat: baseline snapshot NOT written to {path}: the run did not pass"
            return
        if not self.baseline_entries:
            self.baseline_message = f"modelcompat: no task was scored; baseline snapshot NOT written to {path}"
            return
        try:
            _, stack = self.session.write_baseline(self.baseline_entries)
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
        from pytest_modelcompat.report.terminal import terminal_table

        terminalreporter.section("modelcompat")
        terminalreporter.write(terminal_table(self.records, width=config.get_terminal_writer().fullwidth,
                                              color=terminalreporter.hasmarkup))
        if self.session.options.report_dir is not None:
            terminalreporter.write_line(f"modelcompat: reports written to {self.session.options.report_dir}")


_SESSION = pytest.StashKey[Session]()
_PLUGIN = pytest.StashKey[CompatPlugin]()
_RECORDS = pytest.StashKey[list]()
_BASELINE = pytest.StashKey[list]()
_MARKER_REPORT = pytest.StashKey[Any]()


def _session(config: pytest.Config) -> Session:
    return config.stash[_SESSION]


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _terminal(item: pytest.Item):
    """Long evaluations show a rich bar on the real terminal: pytest's capture suspended around it."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    return capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()


def _stack(config: pytest.Config, which: str) -> Any:
    """The session's ``old`` / ``new`` stack for a test: skipped where the run has none, failed
    (with the option to fix in front) where it cannot be loaded."""
    mode = _session(config).mode
    if mode is None:
        pytest.skip(SKIP_REASON)
    if which == "new" and mode == "save":
        pytest.skip("modelcompat: --compat-save-baseline scores the old stack only; there is no new stack")
    if which == "old" and mode == "baseline":
        pytest.skip("modelcompat: --compat-baseline stands for the old stack; no old model is loaded")
    try:
        return _session(config).stack(which)
    except StackLoadError as error:     # fails every later test at once: the session does not reload
        pytest.fail(f"{error.flag}: {error}", pytrace=False)


def _evaluate(item: pytest.Item, task: Any, gate: Mapping[str, float] | None = None) -> Any:
    """Evaluate ``task`` through the session; record it on ``item`` for reports and JUnit XML."""
    from pytest_modelcompat.assertions import TaskReport

    session = _session(item.config)
    if session.mode == "save":
        _save(item, task)
        pytest.skip(f"modelcompat: task {task.name!r} scored for the baseline snapshot; nothing is gated in a "
                    f"--compat-save-baseline run")
    if session.mode != "baseline":
        _stack(item.config, "old")
    _stack(item.config, "new")
    # xdist workers have no terminal: they stay quiet.
    with _terminal(item):
        try:
            evaluation = session.evaluate(task, gate, nodeid=item.nodeid, quiet=_is_xdist_worker(item.config))
        except CompatInputError as error:
            _refuse_baseline(item, error)
            raise
    record = evaluation.record
    item.stash.setdefault(_RECORDS, []).append(record)
    name, metrics = record["entry"]["name"], record["entry"]["metrics"]
    for key in JUNIT_METRICS:
        if metrics[key] is not None:
            item.user_properties.append((f"{name}.{key}", metrics[key]))
    if metrics["nfr_ci"] is not None:
        item.user_properties.append((f"{name}.nfr_ci_upper", metrics["nfr_ci"][1]))
    item.user_properties.append((f"{name}.gate", "PASS" if evaluation.passed else "FAIL"))
    return TaskReport(evaluation.result, record)


def _save(item: pytest.Item, task: Any) -> None:
    """--compat-save-baseline: score ``task`` with the old stack; its snapshot entry rides on the
    test report to the controller, which writes the file at the end of the run."""
    session = _session(item.config)
    _stack(item.config, "old")
    with _terminal(item):
        scored = session.score_baseline(task, quiet=_is_xdist_worker(item.config))
    item.stash.setdefault(_BASELINE, []).append(scored)


def _refuse_baseline(item: pytest.Item, error: CompatInputError) -> None:
    """A snapshot that does not cover a task met at run time stops the run (usage error, exit 4)."""
    from pytest_modelcompat.scoring.baseline import BaselineError

    if isinstance(error, BaselineError) and not _is_xdist_worker(item.config):
        item.config.stash[_PLUGIN].refused = True
        pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)


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
    from pytest_modelcompat.tasks.spec import TaskSpec
    from pytest_modelcompat.tasks.suite import load_suite

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
        try:
            spec = task_spec(task, suite, item.path, item.config.rootpath)
            return _evaluate(item, spec, gate)
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
    return _stack(request.config, "old")


@pytest.fixture(scope="session")
def new_stack(request: pytest.FixtureRequest) -> Any:
    """The new (candidate) stack: base + ``--new-adapter``; skips the test without adapters."""
    return _stack(request.config, "new")


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
        report = _evaluate(item, spec, kwargs)
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
        from pytest_modelcompat.tasks.suite import load_instances, load_suite

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
        if _session(self.config).mode == "save":
            _save(self, self.task)      # scored for the snapshot: passes, nothing to gate
            return
        _evaluate(self, self.task).assert_gate()

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(CompatInputError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        kind = self.task.kind or "lm_eval"     # an lm-eval entry is resolved when evaluated, not collected
        return self.path, None, f"{self.path.name}::{self.name} (modelcompat {kind})"


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
    session = start_session(config)
    plugin = CompatPlugin(session)
    config.stash[_SESSION], config.stash[_PLUGIN] = session, plugin
    config.pluginmanager.register(plugin, "modelcompat-session")
