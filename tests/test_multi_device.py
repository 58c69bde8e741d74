"""More than one device: `--compat-device cuda:{worker}` gives each pytest-xdist worker its own GPU
(models/devices.py: the string, checked at start-up, pinned when a stack loads), and `muscle eval`
under `accelerate launch` splits every task's instances between the processes
(scoring/processes.py) with the same report and cache as one process."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from muscle import cli
from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.models.devices import check_device, pin_device, resolve_device, worker_number
from pytest_modelcompat.scoring import predictions
from pytest_modelcompat.session import SessionOptions

pytest_plugins = ["pytester"]

FORMS = "auto, cpu, cuda, cuda:N or cuda:{worker}"
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- device strings


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "cuda:{worker}"])
def test_device_forms_are_accepted_as_given(device):
    assert check_device(device, "--device") == device
    options = SessionOptions.create(entry_point="muscle", old_adapter="a1", new_adapter="a2", device=device)
    assert options.device == device


@pytest.mark.parametrize("device", ["tpu", "CUDA", "cuda:", "cuda:-1", "cpu:0", "cuda:{gpu}", "cuda:{worker}x",
                                    "{worker}", "cuda:{ worker }"])
def test_other_device_strings_are_one_line_errors(device):
    with pytest.raises(CompatInputError) as excinfo:
        SessionOptions.create(entry_point="muscle", old_adapter="a1", new_adapter="a2", device=device)
    assert str(excinfo.value) == f"--device must be one of {FORMS}, got {device!r}"


@pytest.mark.parametrize(("environ", "number"), [
    ({}, 0),
    ({"PYTEST_XDIST_WORKER": "gw3"}, 3),
    ({"PYTEST_XDIST_WORKER": "gw12"}, 12),
    ({"LOCAL_RANK": "1"}, 1),                                   # accelerate launch / torchrun
    ({"PYTEST_XDIST_WORKER": "gw2", "LOCAL_RANK": "1"}, 2),     # xdist first
])
def test_worker_number(environ, number):
    assert worker_number(environ) == number


@pytest.mark.parametrize("environ", [{"PYTEST_XDIST_WORKER": "master"}, {"LOCAL_RANK": "-1"}])
def test_an_unreadable_worker_number_is_one_line(environ):
    with pytest.raises(CompatInputError, match=r"^cannot place device \{worker\}: \w+ is '[^']*', not "):
        worker_number(environ)


@pytest.mark.parametrize(("device", "worker", "gpus", "pinned"), [
    ("cuda:{worker}", 3, 8, "cuda:3"),
    ("cuda:{worker}", 5, 2, "cuda:1"),      # more workers than GPUs: round robin
    ("cuda:{worker}", 3, 0, "cuda:3"),      # no GPU: kept, and loading says so
    ("cuda:1", 3, 2, "cuda:1"),
    ("cpu", 3, 2, "cpu"),
])
def test_pin_device(device, worker, gpus, pinned):
    assert pin_device(device, worker, gpus) == pinned


@pytest.fixture
def two_gpus(monkeypatch):
    """torch believes it sees two GPUs: device strings resolve, nothing touches CUDA."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_resolve_device_pins_the_worker_to_a_visible_gpu(two_gpus, monkeypatch):
    import torch

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert resolve_device("cuda:{worker}") == torch.device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(CompatInputError, match=r"^device 'cuda:2' was requested but torch sees 2 CUDA GPU\(s\), "
                                               r"cuda:0 to cuda:1; pick one"):
        resolve_device("cuda:2")


def test_resolve_device_without_a_gpu_names_the_pinned_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    with pytest.raises(CompatInputError, match=re.escape("device 'cuda:3' (from 'cuda:{worker}') was requested but "
                                                         "torch sees no CUDA GPU")):
        resolve_device("cuda:{worker}")


# ---------------------------------------------------------------- through the plugin and muscle


@pytest.mark.parametrize("device", ["cuda:{gpu}", "cuda:x"])
def test_a_bad_compat_device_is_a_usage_error(pytester, device):
    result = pytester.runpytest("--compat-device", device)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --compat-device must be one of {FORMS}, got {device!r}"])
    assert "Traceback" not in result.stderr.str()


def test_a_bad_muscle_device_exits_2(tmp_path, capsys):
    code = cli.main(["eval", "--suite", str(tmp_path / "s.yaml"), "--old-adapter", "a1", "--new-adapter", "a2",
                     "--device", "cuda:{gpu}"])
    assert code == 2
    assert capsys.readouterr().err == f"error: --device must be one of {FORMS}, got 'cuda:{{gpu}}'\n"


@pytest.mark.parametrize(("device", "gpus", "loaded"), [
    ("cpu", 0, "cpu"),
    ("cpu", 2, "cpu"),
    ("cuda:{worker}", 2, "cuda:1"),
])
def test_compat_device_is_pinned_in_the_xdist_worker(pytester, tiny_adapter, monkeypatch, device, gpus, loaded):
    # An in-process run in the environment xdist gives worker gw3. Loading a stack only resolves its
    # device string: no model is loaded (a CUDA tensor would need a GPU).
    import torch

    from pytest_modelcompat.models import stack

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(stack, "load_stack", lambda *args, device, **kwargs: resolve_device(device))
    pytester.makepyfile(test_device=f"""
        def test_device(old_stack, new_stack):
            assert str(old_stack) == str(new_stack) == {loaded!r}
    """)
    result = pytester.runpytest("--old-adapter", str(tiny_adapter), "--new-adapter", str(tiny_adapter),
                                "--compat-device", device, "--compat-no-cache", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_compat_device_on_a_machine_without_gpu_fails_naming_the_workers_device(pytester, tiny_adapter,
                                                                                monkeypatch):
    import torch

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pytester.makepyfile(test_device="def test_device(new_stack): pass")
    result = pytester.runpytest("--old-adapter", str(tiny_adapter), "--new-adapter", str(tiny_adapter),
                                "--compat-device", "cuda:{worker}", "--compat-no-cache", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*device 'cuda:3' (from 'cuda:{worker}') was requested but torch sees no CUDA GPU*"])


# ---------------------------------------------------------------- muscle eval under accelerate launch

ROWS = 7     # shares of 4 and 3: uneven on purpose
SUITE = """tasks:
  - name: pick
    kind: multiple_choice
    data: data.jsonl
    text: "Item {{filler}} {{word}}"
    choices: ["yes", "no", "not really"]
    label: "{{label}}"
  - name: say
    kind: exact_match
    data: data.jsonl
    text: "Item {{filler}} {{word}}"
    target: "{{ ['yes', 'no', 'not really'][label] }}"
    extract: "(yes|no)"
    max_new_tokens: 3
  - name: echo
    kind: generative
    data: data.jsonl
    text: "{{filler}} The {{word}}"
    target: "The {{word}} sat on the mat."
    max_new_tokens: 6
"""
# Run in each launched process: muscle eval, logging which instances each process scores.
LOGGING_MUSCLE = """
import json, os, sys

from muscle import cli
from pytest_modelcompat.scoring import predictions


def logged(predictor):
    def score_share(stack, task, instances, *rest):
        with open(os.environ["SHARES_LOG"], "a") as log:
            log.write(json.dumps([int(os.environ["RANK"]), task.name, [i.id for i in instances]]) + "\\n")
        return predictor(stack, task, instances, *rest)
    return score_share


predictions._PREDICTORS.update({kind: logged(p) for kind, p in predictions._PREDICTORS.items()})
sys.exit(cli.main())
"""


def _launcher_missing() -> str | None:
    if importlib.util.find_spec("accelerate") is None:
        return "accelerate is not installed"
    import torch.distributed

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        return "torch has no gloo backend for CPU processes"
    return None


def _cache_files(root):
    return {path.relative_to(root): path.read_text() for path in sorted(root.rglob("*.json"))}


@pytest.mark.skipif(_launcher_missing() is not None, reason=f"accelerate launch unavailable: {_launcher_missing()}")
def test_two_process_muscle_eval_equals_one_process(tmp_path, tiny_adapter, tiny_adapter_v2, monkeypatch):
    rows = [{"word": word, "filler": " ".join(["the cat sat on the mat"] * n), "label": n % 3}
            for n, word in enumerate("cat dog jar movie Anna Bob lunch".split())]
    assert len(rows) == ROWS
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    suite = tmp_path / "compat_multi.yaml"
    suite.write_text(SUITE)
    argv = ["eval", "--suite", str(suite), "--old-adapter", str(tiny_adapter), "--new-adapter", str(tiny_adapter_v2),
            "--device", "cpu", "--batch-size", "2"]

    one_process = cli.main([*argv, "--cache", str(tmp_path / "cache1"), "--report", str(tmp_path / "one")])

    script = tmp_path / "logging_muscle.py"
    script.write_text(LOGGING_MUSCLE)
    # the script's directory leads sys.path: name this checkout, so the processes run the code under test
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", SHARES_LOG=str(tmp_path / "shares.jsonl"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # as tests/test_muscle_train.py launches training: torchrun workers, which --device cpu makes a gloo group
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(script), *argv, "--cache", str(tmp_path / "cache2"), "--report", str(tmp_path / "two")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == one_process, result.stderr[-3000:]

    # each process scored a contiguous share of every task, for each stack: 4 then 3 instances
    shares = [json.loads(line) for line in (tmp_path / "shares.jsonl").read_text().splitlines()]
    ids = [str(n) for n in range(ROWS)]
    for task in ("pick", "say", "echo"):
        assert sorted((rank, share) for rank, name, share in shares if name == task) == [
            (0, ids[:4]), (0, ids[:4]), (1, ids[4:]), (1, ids[4:])]
    # the same report, and the main process alone wrote it, printed once, and filled the same cache
    assert json.loads((tmp_path / "two" / "report.json").read_text()) == json.loads(
        (tmp_path / "one" / "report.json").read_text())
    assert result.stdout.count("wrote ") == 3 and result.stdout.count("old → new stack") == 1, result.stdout
    assert _cache_files(tmp_path / "cache2") == _cache_files(tmp_path / "cache1") != {}
    # a run from that cache reads every prediction back (nothing to score) and reports the same
    def must_not_score(*args):
        raise AssertionError("scored an instance the cache has")

    monkeypatch.setattr(predictions, "_PREDICTORS", dict.fromkeys(predictions._PREDICTORS, must_not_score))
    assert cli.main([*argv, "--cache", str(tmp_path / "cache2"), "--report", str(tmp_path / "again")]) == one_process
    assert json.loads((tmp_path / "again" / "report.json").read_text()) == json.loads(
        (tmp_path / "one" / "report.json").read_text())
    # --save-baseline under two processes: the old stack's shares gathered into the same snapshot
    # file, byte for byte, as one process writes
    monkeypatch.undo()
    baseline = ["eval", "--suite", str(suite), "--old-adapter", str(tiny_adapter), "--device", "cpu", "--no-cache"]
    assert cli.main([*baseline, "--save-baseline", str(tmp_path / "one.json")]) == 0
    saved = subprocess.run([*cmd[:cmd.index(str(script)) + 1], *baseline, "--save-baseline", str(tmp_path / "two.json")],
                           env=env, capture_output=True, text=True, timeout=600)
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
