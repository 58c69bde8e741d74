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
               "(or ini modelcompat_old_adapter / modelcompat_new_adapter)")
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

    @property
    def stacks_given(self) -> bool:
        return self.old_adapter is not None


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
    if (old_adapter is None) != (new_adapter is None):
        given, missing = ("old_adapter", "new_adapter") if new_adapter is None else ("new_adapter", "old_adapter")
        raise pytest.UsageError(f"{_flag(given)} is given but {_flag(missing)} is not; pass both adapters")
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
    if old_adapter is not None:
        from pytest_modelcompat.atomic import check_writable_dir
        from pytest_modelcompat.stack import check_stack_files

        # What can be checked without loading a model fails the run now, as a usage error.
        try:
            for which, adapter, base in (("old", old_adapter, old_base), ("new", new_adapter, new_base)):
                check_stack_files(adapter, base, allow_pickle=trust["allow_pickle"], which=which)
            for flag, directory in (("--compat-report", report_dir), ("--compat-cache", cache_dir)):
                if directory is not None:
                    check_writable_dir(directory, flag)
        except CompatInputError as error:
            raise pytest.UsageError(str(error)) from None
    return CompatOptions(
        old_adapter=old_adapter, new_adapter=new_adapter, old_base=old_base, new_base=new_base,
        report_dir=report_dir, cache_dir=cache_dir, limit=limit, batch_size=batch_size,
        device=device, noise_margin=_non_negative_float(config, "compat_noise_margin"),
        **trust,
    )


# ---------------------------------------------------------------- session state


class CompatSession:
    """Per-process state: options, lazily loaded stacks and the task records of the run."""

    def __init__(self, options: CompatOptions) -> None:
        self.options = options
        self.records: list[dict[str, Any]] = []    # gathered from test reports (controller side)
        self._stacks: dict[str, Any] = {}
        self._load_errors: dict[str, str] = {}

    def stack(self, which: str) -> Any:
        """The ``old`` or ``new`` Stack, loaded on first use (skips the test without adapters)."""
        if not self.options.stacks_given:
            pytest.skip(SKIP_REASON)
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

        old, new = self.stack("old"), self.stack("new")
        cache = None
        if self.options.cache_dir is not None:
            from pytest_modelcompat.cache import ResultCache

            cache = ResultCache(self.options.cache_dir)
        # Long evaluations show a rich bar on the real terminal (pytest's capture suspended);
        # xdist workers have no terminal, so they stay quiet.
        capture = item.config.pluginmanager.getplugin("capturemanager")
        with (capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()), \
                make_progress(transient=True, disable=_is_xdist_worker(item.config)) as progress:
            result = evaluate_task(
                old, new, task, limit=self.options.limit, cache=cache, batch_size=self.options.batch_size,
                gate_override=gate, progress=progress, noise_margin=self.options.noise_margin,
            )
        command = muscle_train_command(
            suite=task.source, task=task.name, old_adapter=str(self.options.old_adapter),
            new_adapter=str(self.options.new_adapter), old_base=self.options.old_base,
            new_base=self.options.new_base,
        )
        record = task_record(result, stack_meta(old), stack_meta(new), nodeid=item.nodeid,
                             muscle_command=command)
        item.stash.setdefault(_RECORDS, []).append(record)
        for key in JUNIT_METRICS:
            if record["entry"]["metrics"][key] is not None:
                item.user_properties.append((f"{task.name}.{key}", record["entry"]["metrics"][key]))
        if record["entry"]["metrics"]["nfr_ci"] is not None:
            item.user_properties.append((f"{task.name}.nfr_ci_upper", record["entry"]["metrics"]["nfr_ci"][1]))
        item.user_properties.append((f"{task.name}.gate", "PASS" if result.gate.passed else "FAIL"))
        return TaskReport(result, record)

    # Hooks of this object (registered as a plugin in pytest_configure).

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.records.extend(getattr(report, "modelcompat_records", ()))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if _is_xdist_worker(session.config) or not self.records:
            return
        if self.options.report_dir is not None:
            from pytest_modelcompat.report import write_reports

            write_reports(self.options.report_dir, self.records)

    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config) -> None:
        if _is_xdist_worker(config) or not self.records:
            return
        from pytest_modelcompat.report import terminal_table

        terminalreporter.section("modelcompat")
        terminalreporter.write(terminal_table(self.records, width=config.get_terminal_writer().fullwidth,
                                              color=terminalreporter.hasmarkup))
        if self.options.report_dir is not None:
            terminalreporter.write_line(f"modelcompat: reports written to {self.options.report_dir}")


_SESSION = pytest.StashKey[CompatSession]()
_RECORDS = pytest.StashKey[list]()
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
        _session(self.config).evaluate(self, self.task).assert_gate()

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
