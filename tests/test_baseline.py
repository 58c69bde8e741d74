"""Baseline snapshots (pytest_modelcompat/scoring/baseline.py, docs/baseline.md): the format on its own,
then end to end on tiny models through pytest (pytester) and `muscle eval`: save with the old
adapter, gate the new adapter against the file with no old model, and every refusal."""

from __future__ import annotations

import gzip
import json
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from muscle import cli
from pytest_modelcompat.scoring import baseline
from pytest_modelcompat.scoring.baseline import (
    BaselineError,
    instance_sort_key,
    load_snapshot,
    write_snapshot,
)
from pytest_modelcompat.scoring.predictions import Prediction
from pytest_modelcompat.tasks.suite import load_instances, load_suite

pytest_plugins = ["pytester"]

QUESTIONS = ["is the cat on the mat", "did the dog eat the bone", "is two plus two four", "is 42 a number",
             "was the movie great", "was the film terrible", "is the lid twisted", "is it noon",
             "did Anna meet Bob", "is the answer yes", "is 100 more than 12", "is the review positive"]
SUITE = textwrap.dedent("""\
    tasks:
      - name: yesno
        kind: multiple_choice
        data: data.jsonl
        text: "Question: {{q}}?\\nAnswer:"
        choices: ["yes", "no"]
        label: "{{label}}"
        gate: {max_nfr: 1.0}
      - name: echo
        kind: generative
        data: data.jsonl
        text: "Dialogue: {{q}}\\nSummary:"
        target: "{{q}}"
        max_new_tokens: 3
        gate: {max_nfr_smooth: 1.0}
    """)
STACK = {"adapter": "/a1", "base": "/b1", "fingerprint": "f" * 64}


def write_project(root: Path, questions=QUESTIONS) -> Path:
    rows = [json.dumps({"q": question, "label": index % 2}) for index, question in enumerate(questions)]
    (root / "data.jsonl").write_text("\n".join(rows) + "\n")
    (root / "modelcompat.yaml").write_text(SUITE)
    return root / "modelcompat.yaml"


def hand_entries(suite: Path) -> list[dict]:
    yesno, echo = load_suite(suite)
    mc = [Prediction(pred=i % 2, correct=i % 2 == inst.gold, score=-1.0 - i, logliks=[-1.0 - i, -1.5 - i])
          for i, inst in enumerate(load_instances(yesno))]
    gen = [Prediction(pred="t", correct=None, score=0.5, text="t") for _ in load_instances(echo)]
    return [baseline.task_entry(yesno, load_instances(yesno), mc), baseline.task_entry(echo, load_instances(echo), gen)]


# ---------------------------------------------------------------------------- the format


def test_round_trip_sorted_one_instance_per_line(tmp_path):
    suite = write_project(tmp_path)
    path = write_snapshot(tmp_path / "base.json", STACK, hand_entries(suite))
    text = path.read_text()
    payload = json.loads(text)
    assert payload["format"] == "pytest-modelcompat-baseline" and payload["schema_version"] == 1
    assert [task["name"] for task in payload["tasks"]] == ["echo", "yesno"]
    ids = [row["id"] for row in payload["tasks"][1]["instances"]]
    assert ids == [str(i) for i in range(12)]           # numeric order: "2" before "10"
    lines = text.splitlines()
    assert sum(line.startswith('   {"correct"') for line in lines) == 24   # one line per instance
    snapshot = load_snapshot(path)
    assert snapshot.stack == STACK and set(snapshot.tasks) == {"echo", "yesno"}
    yesno = load_suite(suite)[0]
    predictions = snapshot.predictions(yesno, load_instances(yesno))
    assert predictions[3] == Prediction(pred=1, correct=True, score=-4.0, logliks=[-4.0, -4.5])
    # deterministic bytes
    again = write_snapshot(tmp_path / "again.json", STACK, list(reversed(hand_entries(suite))))
    assert again.read_bytes() == path.read_bytes()


def test_sort_key_and_merge():
    assert sorted(["10", "b", "2", "a", "01"], key=instance_sort_key) == ["01", "2", "10", "a", "b"]
    entry = {"name": "t", "kind": "generative", "fingerprint": "x", "n": 1,
             "instances": [{"id": "2", "pred": "a", "correct": None, "score": 0.1, "text": "a", "logliks": None}]}
    other = {**entry, "instances": [{**entry["instances"][0], "id": "10"}]}
    (merged,) = baseline.merge_entries([other, entry])
    assert [row["id"] for row in merged["instances"]] == ["2", "10"] and merged["n"] == 2
    with pytest.raises(BaselineError, match="two different tasks are named 't'"):
        baseline.merge_entries([entry, {**entry, "fingerprint": "y"}])


def test_gzip_when_large_or_named_gz(tmp_path, monkeypatch):
    suite = write_project(tmp_path)
    path = write_snapshot(tmp_path / "named.json.gz", STACK, hand_entries(suite))
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    monkeypatch.setattr(baseline, "GZIP_THRESHOLD", 100)
    big = write_snapshot(tmp_path / "big.json", STACK, hand_entries(suite))
    assert big.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(big.read_bytes()) == gzip.decompress(path.read_bytes())
    assert set(load_snapshot(big).tasks) == {"echo", "yesno"}


def test_non_finite_old_scores_are_not_saved(tmp_path):
    suite = write_project(tmp_path)
    yesno = load_suite(suite)[0]
    instances = load_instances(yesno)[:1]
    with pytest.raises(BaselineError, match="non-finite scores on instance '0'"):
        baseline.task_entry(yesno, instances, [Prediction(pred=None, correct=False, score=None,
                                                          logliks=[float("nan"), -1.0])])


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist; write it first with the old adapter: pytest --old-adapter A1 --compat-save-baseline"),
    (b"{not json", "is not usable (not valid JSON"),
    (b"\x1f\x8b\x08\x00broken", "is not usable (truncated or corrupt gzip"),
    (b'{"format": "something-else"}', "not a pytest-modelcompat baseline snapshot"),
    (b'{"format": "pytest-modelcompat-baseline", "schema_version": 2}', "has schema_version 2; this "
                                                                        "pytest-modelcompat reads version 1"),
    (b'{"format": "pytest-modelcompat-baseline", "schema_version": 1, "stack": {}, "tasks": []}',
     "needs adapter, base and fingerprint"),
    (json.dumps({"format": "pytest-modelcompat-baseline", "schema_version": 1, "stack": STACK,
                 "tasks": [{"name": "t", "kind": "generative", "fingerprint": "x", "instances": [{"id": "0"}]}]}
                ).encode(), "task 't' has an instance that is not"),
])
def test_unusable_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "base.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BaselineError) as info:
        load_snapshot(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_stale_or_missing_tasks_name_the_refresh_command(tmp_path):
    suite = write_project(tmp_path)
    entries = hand_entries(suite)
    path = write_snapshot(tmp_path / "base.json", STACK, entries[:1])       # yesno only
    snapshot = load_snapshot(path)
    refresh = f"pytest {suite} --old-adapter /a1 --old-base /b1 --compat-save-baseline {path}"
    yesno, echo = load_suite(suite)
    with pytest.raises(BaselineError, match="task 'echo' is not in the baseline snapshot") as info:
        snapshot.task(echo)
    assert str(info.value).endswith(f"(it has: yesno); refresh it: {refresh}")
    # a data change changes the task's fingerprint
    write_project(tmp_path, [*QUESTIONS[:-1], "is the review negative"])
    yesno = load_suite(suite)[0]
    with pytest.raises(BaselineError, match="task 'yesno' changed since the baseline snapshot") as info:
        snapshot.task(yesno)
    assert str(info.value).endswith(refresh)
    # more instances than were saved
    write_project(tmp_path)
    short = write_snapshot(tmp_path / "short.json", STACK, [
        {**entries[0], "instances": entries[0]["instances"][:5], "n": 5}])
    muscle = load_snapshot(short, entry_point="muscle")
    with pytest.raises(BaselineError, match=r"lacks 7 of the 12 instances this run evaluates \(ids 5, 6, 7, 8, 9, "
                                            r"\.\.\.; saved with a smaller limit\?\)") as info:
        muscle.predictions(yesno, load_instances(yesno))
    assert str(info.value).endswith(f"muscle eval --suite {suite} --old-adapter /a1 --old-base /b1 "
                                    f"--save-baseline {short}")
    assert len(muscle.predictions(yesno, load_instances(yesno, limit=5))) == 5


# ---------------------------------------------------------------------------- pytest end to end


@pytest.fixture
def project(pytester, tiny_adapter, tiny_adapter_v2):
    write_project(pytester.path)
    pytester.makeini("[pytest]\nfilterwarnings = ignore::pytest.PytestAssertRewriteWarning\n")
    # the old adapter lives where the gate run cannot reach it: removed before gating
    pytester.old_adapter = Path(shutil.copytree(tiny_adapter, pytester.path / "old-adapter"))
    pytester.new_adapter = Path(tiny_adapter_v2)
    pytester.common = ["--compat-cache", str(pytester.path / "cache"), "--compat-device", "cpu",
                       "-p", "no:cacheprovider"]
    return pytester


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_pytest_save_then_gate_without_the_old_model(project):
    compare = project.runpytest("--old-adapter", str(project.old_adapter), "--new-adapter",
                                str(project.new_adapter), "--compat-report", "direct", *project.common)
    assert compare.ret == pytest.ExitCode.OK
    project.makepyfile(test_py="""
        def test_helper(compat):
            compat.evaluate("yesno").assert_nfr_below(1.0)
    """)
    saved = project.runpytest("--old-adapter", str(project.old_adapter), "--compat-save-baseline", "snap/base.json",
                              "--compat-report", "nothing", *project.common)
    assert saved.ret == pytest.ExitCode.OK
    saved.assert_outcomes(passed=2, skipped=1)     # suite items scored; the Python gate test skipped
    saved.stdout.fnmatch_lines(["modelcompat: baseline snapshot written to *base.json (2 task(s); old stack *)"])
    assert not (project.path / "nothing").exists()  # nothing to report in a save run
    snapshot = load_snapshot(project.path / "snap" / "base.json")
    assert snapshot.stack == read_json(project.path / "direct" / "report.json")["old"]

    shutil.rmtree(project.old_adapter)              # no old adapter (nor its base) needed from here on
    gated = project.runpytest("--compat-baseline", "snap/base.json", "--new-adapter", str(project.new_adapter),
                              "--compat-report", "via-baseline", *project.common)
    assert gated.ret == pytest.ExitCode.OK
    gated.assert_outcomes(passed=3)
    direct, via = read_json(project.path / "direct" / "report.json"), read_json(project.path / "via-baseline" /
                                                                                 "report.json")
    assert via["old"] == direct["old"] and via["new"] == direct["new"]
    by_name = {task["name"]: task for task in via["tasks"]}
    for task in direct["tasks"]:
        assert by_name[task["name"]] == task       # same predictions, margins, metrics and gate


def test_pytest_refusals_are_usage_errors_and_write_nothing(project):
    snap = project.path / "base.json"
    saved = project.runpytest("--old-adapter", str(project.old_adapter), "--compat-save-baseline", str(snap),
                              "-k", "yesno", *project.common)
    assert saved.ret == pytest.ExitCode.OK and snap.exists()
    new = ["--new-adapter", str(project.new_adapter)]
    (project.path / "corrupt.json").write_text("{")
    (project.path / "v2.json").write_text(snap.read_text().replace('"schema_version": 1', '"schema_version": 2'))
    refresh = f"pytest {project.path / 'modelcompat.yaml'} --old-adapter {project.old_adapter} --old-base "
    cases = [
        (["--compat-baseline", str(snap), "--old-adapter", str(project.old_adapter), *new],
         "ERROR: --old-adapter and --compat-baseline are both given; the snapshot stands for the old stack*"),
        (["--compat-baseline", str(snap)], "ERROR: --compat-baseline is given but --new-adapter is not*"),
        (["--compat-save-baseline", "x.json", *new, "--old-adapter", str(project.old_adapter)],
         "ERROR: --compat-save-baseline scores the old stack only; drop --new-adapter*"),
        (["--compat-save-baseline", "x.json"], "ERROR: --compat-save-baseline is given but --old-adapter is not*"),
        (["--compat-baseline", "missing.json", *new], "ERROR: baseline snapshot *missing.json does not exist*"),
        (["--compat-baseline", "corrupt.json", *new], "ERROR: baseline snapshot *corrupt.json is not usable*"),
        (["--compat-baseline", "v2.json", *new], "ERROR: baseline snapshot *v2.json has schema_version 2*"),
        # saved with -k yesno: echo is not in it
        (["--compat-baseline", str(snap), *new],
         f"ERROR: task 'echo' is not in the baseline snapshot {snap} (it has: yesno); refresh it: {refresh}*"),
    ]
    for args, line in cases:
        result = project.runpytest(*args, "--compat-report", "out", *project.common)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, (args, result.stdout.str())
        result.stderr.fnmatch_lines([line])
        assert "Traceback" not in result.stderr.str()
        assert not (project.path / "out").exists() and not (project.path / "x.json").exists()
    # a task first met at run time (compat.evaluate) stops the run the same way
    project.makepyfile(test_py="""
        def test_helper(compat):
            compat.evaluate("echo").assert_nfr_smooth_below(1.0)
    """)
    result = project.runpytest("--compat-baseline", str(snap), *new, "test_py.py", "--compat-report", "out",
                               *project.common)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([f"*task 'echo' is not in the baseline snapshot {snap} (it has: yesno)*"])
    assert not (project.path / "out").exists()
    # the data changed after the snapshot: the task's fingerprint differs
    write_project(project.path, [*QUESTIONS[:-1], "is the review negative"])
    result = project.runpytest("--compat-baseline", str(snap), *new, "-k", "yesno", "--compat-report", "out",
                               *project.common)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: task 'yesno' changed since the baseline snapshot {snap} was saved "
                                 f"(its fingerprint differs: data, template or lm-eval task); refresh it: {refresh}*"])
    assert not (project.path / "out").exists()


def test_pytest_save_run_that_fails_writes_no_snapshot(project):
    project.makepyfile(test_py="def test_broken(): assert False")
    result = project.runpytest("--old-adapter", str(project.old_adapter), "--compat-save-baseline", "base.json",
                               *project.common)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["modelcompat: baseline snapshot NOT written to *base.json: the run did not pass"])
    assert not (project.path / "base.json").exists()


# ---------------------------------------------------------------------------- muscle eval


def run_muscle(argv, capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_muscle_eval_save_then_gate(tmp_path, capsys, tiny_adapter, tiny_adapter_v2):
    suite = write_project(tmp_path)
    common = ["--suite", str(suite), "--device", "cpu", "--cache", str(tmp_path / "cache"), "--task", "yesno"]
    old = Path(shutil.copytree(tiny_adapter, tmp_path / "old-adapter"))
    code, out, _ = run_muscle(["eval", *common, "--old-adapter", str(old), "--new-adapter", str(tiny_adapter_v2),
                               "--report", str(tmp_path / "direct")], capsys)
    assert code == 0
    code, out, err = run_muscle(["eval", *common, "--old-adapter", str(old), "--save-baseline",
                                 str(tmp_path / "base.json.gz")], capsys)
    assert code == 0, err
    assert "wrote" in out and "(baseline snapshot: 1 task(s), 12 instances; old stack" in out
    shutil.rmtree(old)
    code, out, err = run_muscle(["eval", *common, "--baseline", str(tmp_path / "base.json.gz"), "--new-adapter",
                                 str(tiny_adapter_v2), "--report", str(tmp_path / "via")], capsys)
    assert code == 0, err
    direct, via = read_json(tmp_path / "direct" / "report.json"), read_json(tmp_path / "via" / "report.json")
    assert via == direct
    # refusals: one line, exit 2, nothing written
    cases = [
        (["--baseline", str(tmp_path / "base.json.gz"), "--old-adapter", str(tiny_adapter), "--new-adapter",
          str(tiny_adapter_v2)], "--old-adapter and --baseline are both given"),
        (["--baseline", str(tmp_path / "base.json.gz")], "--baseline is given but --new-adapter is not"),
        (["--save-baseline", str(tmp_path / "x.json")], "--save-baseline is given but --old-adapter is not"),
        (["--save-baseline", str(tmp_path / "x.json"), "--old-adapter", str(tiny_adapter), "--new-adapter",
          str(tiny_adapter_v2)], "--save-baseline scores the old stack only"),
        (["--old-adapter", str(tiny_adapter)], "--new-adapter missing: pass --old-adapter A1 --new-adapter A2"),
        (["--baseline", str(tmp_path / "nope.json"), "--new-adapter", str(tiny_adapter_v2)],
         "does not exist; write it first with the old adapter: muscle eval --suite SUITE --old-adapter A1 "
         "--save-baseline"),
    ]
    for extra, fragment in cases:
        code, _, err = run_muscle(["eval", *common, *extra, "--report", str(tmp_path / "out")], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
        assert not (tmp_path / "out").exists() and not (tmp_path / "x.json").exists()
    # the suite's echo task is not in the snapshot (saved with --task yesno)
    code, _, err = run_muscle(["eval", "--suite", str(suite), "--device", "cpu", "--no-cache", "--baseline",
                               str(tmp_path / "base.json.gz"), "--new-adapter", str(tiny_adapter_v2),
                               "--report", str(tmp_path / "out")], capsys)
    assert code == 2 and "task 'echo' is not in the baseline snapshot" in err
    assert f"refresh it: muscle eval --suite {suite} --old-adapter {old} --old-base " in err
    assert not (tmp_path / "out").exists()


def test_evaluate_task_accepts_a_snapshot_for_the_old_side(tmp_path):
    """No model at all on the old side: a stack-less snapshot plus a fake new 'stack' via the cache."""
    from pytest_modelcompat.cache import ResultCache
    from pytest_modelcompat.scoring.evaluate import evaluate_task

    suite = write_project(tmp_path)
    entries = hand_entries(suite)
    snapshot = load_snapshot(write_snapshot(tmp_path / "base.json", STACK, entries))
    yesno = load_suite(suite)[0]
    cache = ResultCache(tmp_path / "cache")
    new = SimpleNamespace(fingerprint="e" * 64)     # every prediction comes from the cache: no model
    cache.put_many(new.fingerprint, yesno.fingerprint(), {
        row["id"]: {**{k: row[k] for k in ("pred", "correct", "score", "text", "logliks")}, "pred": 0,
                    "correct": yesno_gold == 0, "score": row["logliks"][0]}
        for row, yesno_gold in zip(entries[0]["instances"], [i % 2 for i in range(12)])})
    result = evaluate_task(snapshot, new, yesno, cache=cache)
    assert result.metrics["n"] == 12
    assert [p.pred for p in result.old] == [i % 2 for i in range(12)]
    assert result.metrics["acc_old"] == 1.0 and result.metrics["acc_new"] == 0.5


def test_xdist_save_writes_the_serial_snapshot(project):
    # one worker keeps it fast; the worker scores, the controller writes from the shipped reports
    serial = project.runpytest("--old-adapter", str(project.old_adapter), "--compat-save-baseline", "serial.json",
                               *project.common)
    parallel = project.runpytest("--old-adapter", str(project.old_adapter), "--compat-save-baseline", "parallel.json",
                                 *project.common, "--compat-cache", str(project.path / "cache2"), "-n", "1")
    assert serial.ret == parallel.ret == pytest.ExitCode.OK
    assert (project.path / "parallel.json").read_bytes() == (project.path / "serial.json").read_bytes()
