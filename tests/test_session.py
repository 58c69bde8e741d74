"""The compatibility run as one object (pytest_modelcompat/session.py) and the task-source step:
the pytest plugin and `muscle eval` share its defaults and validation, and each suite entry is
resolved exactly once per run; nothing below that step accepts an unresolved entry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pytest_modelcompat.cache import results_dir
from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics import margins
from pytest_modelcompat.models import devices
from pytest_modelcompat.scoring import evaluate, predictions
from pytest_modelcompat.session import Session, SessionOptions
from pytest_modelcompat.tasks import lmeval_source
from pytest_modelcompat.tasks.suite import load_instances, load_suite, resolve_task

pytest_plugins = ["pytester"]

DOCS = [{"id": f"q{n}", "question": f"Is {n} even?", "options": ["yes", "no"], "answer": n % 2} for n in range(6)]
MC_YAML = {
    "task": "session_mc", "dataset_path": "json", "test_split": "test", "output_type": "multiple_choice",
    "doc_to_text": "Q: {{question}}\nA:", "doc_to_choice": "{{options}}", "doc_to_target": "answer",
    "metric_list": [{"metric": "acc"}],
}


@pytest.fixture
def lm_suite(tmp_path: Path) -> Path:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS), encoding="utf-8")
    (tmp_path / "mc.yaml").write_text(yaml.safe_dump({**MC_YAML, "dataset_kwargs": {"data_files": {"test": str(docs)}}}))
    suite = tmp_path / "compat_lm.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [{"name": "mc", "lm_eval": "mc.yaml", "gate": {"max_nfr": 1.0}}]}))
    return suite


@pytest.fixture
def count_resolutions(monkeypatch) -> list[str]:
    """Every lm-eval resolution of the run, by task name."""
    calls: list[str] = []
    original = lmeval_source.resolve

    def counting(task):
        calls.append(task.name)
        return original(task)

    monkeypatch.setattr(lmeval_source, "resolve", counting)
    return calls


def test_defaults_have_one_owner_that_argparse_and_pytest_read():
    from muscle import cli

    options = SessionOptions.create(entry_point="muscle", old_adapter="a1", new_adapter="a2")
    assert (options.batch_size, options.device, options.dtype, options.noise_margin, options.cache_dir) == (
        predictions.DEFAULT_BATCH_SIZE, devices.DEFAULT_DEVICE, devices.DEFAULT_DTYPE, None, results_dir())
    ev = cli.build_parser().parse_args(["eval", "--suite", "s.yaml"])
    assert (ev.batch_size, ev.device, ev.dtype) == (options.batch_size, options.device, options.dtype)
    from pytest_modelcompat.plugin import OPTIONS

    helps = {name: text for name, text, _ in OPTIONS}
    assert f"(default {predictions.DEFAULT_BATCH_SIZE})" in helps["compat_batch_size"]
    assert f"(default {margins.DEFAULT_NOISE_MARGIN};" in helps["compat_noise_margin"]
    assert all(device in helps["compat_device"] for device in devices.DEVICES)


@pytest.mark.parametrize(("values", "message"), [
    ({"limit": "0"}, "--limit must be a positive integer, got '0'"),
    ({"limit": 0}, "--limit must be a positive integer, got 0"),
    ({"batch_size": "x"}, "--batch-size must be a positive integer, got 'x'"),
    ({"noise_margin": "nan"}, "--noise-margin must be a number >= 0, got 'nan'"),
    ({"device": "tpu"}, "--device must be one of auto, cpu, cuda, cuda:N or cuda:{worker}, got 'tpu'"),
    ({"new_adapter": None}, "--new-adapter missing: pass --old-adapter A1 --new-adapter A2"),
])
def test_options_are_validated_in_one_place(values, message):
    with pytest.raises(CompatInputError, match="^" + re.escape(message)):
        SessionOptions.create(entry_point="muscle", **{"old_adapter": "a1", "new_adapter": "a2", **values})


def test_pytest_without_stacks_checks_nothing_it_would_not_use(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    session = Session(SessionOptions.create(entry_point="pytest", report_dir=not_a_dir / "report"))
    assert session.mode is None and session.snapshot is None


def test_unresolved_entries_go_no_further_than_the_task_source_step(lm_suite):
    [entry] = load_suite(lm_suite)
    assert entry.kind is None and not entry.resolved
    for call in (lambda: load_instances(entry), lambda: predictions.predict(None, entry, []),
                 lambda: evaluate.evaluate_task(None, None, entry), lambda: entry.fingerprint()):
        with pytest.raises(ValueError, match="needs the spec from resolve_task"):
            call()
    task = resolve_task(entry)
    assert task.kind == "multiple_choice" and resolve_task(task) is task       # resolving is done once
    assert [i.gold for i in load_instances(task)] == [doc["answer"] for doc in DOCS]


def test_muscle_eval_resolves_each_lm_eval_task_once(lm_suite, tiny_adapter, tiny_adapter_v2, count_resolutions,
                                                    tmp_path, capsys):
    from muscle import cli

    code = cli.main(["eval", "--suite", str(lm_suite), "--old-adapter", str(tiny_adapter), "--new-adapter",
                     str(tiny_adapter_v2), "--device", "cpu", "--no-cache", "--report", str(tmp_path / "report")])
    assert code == 0, capsys.readouterr().err
    assert count_resolutions == ["mc"]
    [entry] = json.loads((tmp_path / "report" / "report.json").read_text())["tasks"]
    assert (entry["name"], entry["kind"], entry["n"]) == ("mc", "multiple_choice", len(DOCS))


def test_pytest_resolves_each_lm_eval_task_once_per_run(lm_suite, tiny_adapter, tiny_adapter_v2, count_resolutions,
                                                        pytester):
    pytester.makepyfile(test_helper=f"""
        def test_helper(compat):
            compat.evaluate("mc", suite={str(lm_suite)!r}).assert_nfr_below(1.0)
    """)
    result = pytester.runpytest_inprocess(str(lm_suite), "test_helper.py", "--old-adapter", str(tiny_adapter),
                                          "--new-adapter", str(tiny_adapter_v2), "--compat-device", "cpu",
                                          "--compat-no-cache", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert count_resolutions == ["mc"]      # the suite item and the helper share the session's resolution
