"""Faults: processes killed mid-write or mid-training, concurrent writers, corrupt cache files and
hostile model text. Kills are real SIGKILLs of child processes (no cleanup code runs), placed at
the worst moment by wrapping the function that would run next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_modelcompat.cache import ResultCache
from pytest_modelcompat.scoring import engine, evaluate, predictions

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
QUESTIONS = ["is the cat on the mat", "did the dog eat the bone", "is two plus two four", "is 42 a number",
             "was the movie great", "is it noon", "did Anna meet Bob", "is the lid twisted", "is the answer yes",
             "is 100 more than 12"]
SUITE = """\
tasks:
  - name: yesno
    kind: multiple_choice
    data: data.jsonl
    train: data.jsonl
    text: "Question: {{q}}?\\nAnswer:"
    choices: ["yes", "no"]
    label: "{{label}}"
    gate: {max_nfr: 1.0}
  - name: echo
    kind: generative
    data: data.jsonl
    text: "Say: {{q}}\\nSummary:"
    target: "{{q}}"
    max_new_tokens: 4
"""


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "modelcompat.yaml").write_text(SUITE, encoding="utf-8")
    rows = [{"q": q, "label": i % 2} for i, q in enumerate(QUESTIONS)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path


def _env() -> dict[str, str]:
    # The thread count is inherited, not pinned: the killed child and the resuming parent must compute
    # alike with whatever torch uses by default, as a user's interrupted run and its --resume do.
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).parents[1]))


def _run_killed_after(target: str, call: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``call`` in a child Python whose ``target`` ("module:function") SIGKILLs the process right
    after (``after``) the wrapped function returns."""
    module, name = target.split(":")
    script = textwrap.dedent(f"""
        import os, signal
        import {module} as target_module
        original = target_module.{name}
        def killed_after(*args, **kwargs):
            original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        target_module.{name} = killed_after
        {call}
    """)
    return subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------ killed muscle train


def _train_argv(project: Path, a1, a2, out: Path, *extra: str) -> list[str]:
    return ["train", "--suite", str(project / "modelcompat.yaml"), "--task", "yesno", "--old-adapter", str(a1),
            "--new-adapter", str(a2), "--output", str(out), "--epochs", "3", "--batch-size", "2", "--lr", "1e-2",
            "--seed", "5", "--device", "cpu", "--objective", "token", "--precompute-teachers", "--top-k", "8",
            *extra]


def test_killed_muscle_train_resumes_to_the_same_adapter(project, tiny_adapter, tiny_adapter_v2, tmp_path):
    from safetensors.torch import load_file

    from muscle import cli, trainer

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(_train_argv(project, tiny_adapter, tiny_adapter_v2, straight)) == 0

    # SIGKILL right after the epoch-1 checkpoint is complete: epochs 2 and 3 never happen.
    killed = _run_killed_after(
        "muscle.trainer:_save_checkpoint",
        f"from muscle.cli import main; main({_train_argv(project, tiny_adapter, tiny_adapter_v2, resumed)!r})")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    work = trainer.work_dir(resumed)
    assert not resumed.exists()                                   # OUT appears only complete
    assert sorted(p.name for p in work.glob("epoch-*")) == ["epoch-1"]
    assert (work / "teacher-m1.safetensors").is_file()            # reused, not recomputed, on resume

    assert cli.main(_train_argv(project, tiny_adapter, tiny_adapter_v2, resumed, "--resume")) == 0
    expected, got = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert got[name].equal(tensor), name
    record = lambda path: json.loads((path / trainer.TRAINING_JSON).read_text())  # noqa: E731
    assert record(straight)["epochs"] == record(resumed)["epochs"]
    assert record(straight)["chosen_epoch"] == record(resumed)["chosen_epoch"]
    assert not work.exists()


# ------------------------------------------------------------------------------ atomic report files


def test_a_process_killed_while_writing_reports_leaves_the_old_report_whole(project, tiny_adapter,
                                                                            tiny_adapter_v2, tmp_path):
    from muscle import cli

    report = tmp_path / "report"
    argv = ["eval", "--suite", str(project / "modelcompat.yaml"), "--task", "yesno", "--old-adapter",
            str(tiny_adapter), "--new-adapter", str(tiny_adapter_v2), "--device", "cpu", "--report", str(report)]
    assert cli.main(argv) == 0
    before = {name: (report / name).read_bytes() for name in ("report.json", "report.md", "report.html")}

    # Killed after the new report.json's bytes are on disk but before the rename makes them visible.
    killed = _run_killed_after("os:fsync", f"from muscle.cli import main; main({[*argv, '--limit', '3']!r})")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list(report.glob(".report.json.*.tmp"))           # it died inside the report.json write
    after = {name: (report / name).read_bytes() for name in before}
    assert after == before
    assert json.loads(after["report.json"])["tasks"][0]["n"] == len(QUESTIONS)


# ------------------------------------------------------------------------------ the result cache


def test_two_pytest_processes_sharing_one_cache_leave_valid_entries(project, tiny_adapter, tiny_adapter_v2,
                                                                     tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    command = [sys.executable, "-m", "pytest", f"{project / 'modelcompat.yaml'}::yesno", "-q", "-p", "no:cacheprovider",
               "--old-adapter", str(tiny_adapter), "--new-adapter", str(tiny_adapter_v2), "--compat-device", "cpu",
               "--compat-cache", str(cache_dir), "--rootdir", str(project)]
    runs = [subprocess.Popen(command, env=_env(), cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(2)]
    for run in runs:
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output[-3000:]
    files = sorted(cache_dir.rglob("*.json"))
    assert len(files) == 2                     # one per stack (old, new) for the task
    for path in files:
        payload = json.loads(path.read_text())
        ids = ResultCache(cache_dir).get_many(payload["stack"], payload["task"], [str(i) for i in range(10)])
        assert len(ids) == len(QUESTIONS)       # complete and passing its checksum
    assert not list(cache_dir.rglob("*.tmp"))

    # A third run is served from the cache alone: not one forward pass.
    from pytest_modelcompat.models.stack import load_stack
    from pytest_modelcompat.tasks.suite import load_suite

    monkeypatch.setattr(engine, "loglikelihoods", _forbidden)
    monkeypatch.setattr(engine, "generate", _forbidden)
    old, new = (load_stack(a, device="cpu") for a in (tiny_adapter, tiny_adapter_v2))
    evaluate.evaluate_task(old, new, load_suite(project / "modelcompat.yaml")[0], cache=ResultCache(cache_dir))


def _forbidden(*args, **kwargs):
    raise AssertionError("the model was run although every result was cached")


@pytest.mark.parametrize("damage", ["truncate", "flip-a-byte", "garbage"])
def test_a_corrupt_cache_file_is_recomputed_and_rewritten(project, tiny_adapter, monkeypatch, tmp_path, damage):
    from pytest_modelcompat.models.stack import load_stack
    from pytest_modelcompat.tasks.suite import load_instances, load_suite

    stack = load_stack(tiny_adapter, device="cpu")
    task = load_suite(project / "modelcompat.yaml")[0]
    instances = load_instances(task)
    cache = ResultCache(tmp_path / "cache")
    fresh = predictions.predict(stack, task, instances, cache=cache)
    [path] = (tmp_path / "cache").rglob("*.json")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip-a-byte":  # still valid JSON, wrong checksum: a log-likelihood changed
        index = data.index(b'"logliks":[-') + len(b'"logliks":[-')
        path.write_bytes(data[:index] + (b"9" if data[index:index + 1] != b"9" else b"8") + data[index + 1:])
    else:
        path.write_bytes(os.urandom(len(data)))

    scored: list[int] = []
    real = engine.loglikelihoods

    def counting(stack, requests, **kwargs):
        scored.append(len(requests))
        return real(stack, requests, **kwargs)

    monkeypatch.setattr(engine, "loglikelihoods", counting)
    assert predictions.predict(stack, task, instances, cache=cache) == fresh
    assert scored == [len(instances)]                       # every instance computed again
    assert len(cache.get_many(stack.fingerprint, task.fingerprint(), [i.id for i in instances])) == len(instances)


# ------------------------------------------------------------------------------ hostile model text


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.text: list[str] = []      # what a reader sees: text outside <script> and <style>

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]

    def handle_data(self, data):
        if self.lasttag not in ("script", "style"):
            self.text.append(data)


def test_html_and_js_in_model_output_are_shown_as_text(project, tiny_adapter, tiny_adapter_v2, monkeypatch,
                                                       tmp_path):
    from pytest_modelcompat.models.stack import load_stack
    from pytest_modelcompat.report.files import write_reports
    from pytest_modelcompat.report.records import stack_meta, task_record
    from pytest_modelcompat.tasks.suite import load_suite

    payloads = [XSS_SCRIPT, XSS_IMG, "</script><script>alert(2)</script>", "<!--", "]]>&amp;"]

    def hostile_generate(stack, prompts, **kwargs):  # what the model "said"
        return [payloads[i % len(payloads)] + (" new" if stack is new else "") for i in range(len(prompts))]

    monkeypatch.setattr(engine, "generate", hostile_generate)
    old, new = (load_stack(a, device="cpu") for a in (tiny_adapter, tiny_adapter_v2))
    task = load_suite(project / "modelcompat.yaml")[1]
    result = evaluate.evaluate_task(old, new, task)
    record = task_record(result, stack_meta(old), stack_meta(new), nodeid="faults::echo", muscle_command="muscle")
    paths = write_reports(tmp_path / "report", [record])

    page = paths["html"].read_text(encoding="utf-8")
    elements = _Elements()
    elements.feed(page)
    assert "img" not in elements.tags and "onerror" not in elements.attributes
    assert elements.tags.count("script") == 1             # the page's own script only
    for payload in payloads[:3]:
        assert payload not in page
    # The texts are rendered escaped, so the reader sees them as text, word for word.
    shown = " ".join("".join(elements.text).split())
    for payload in payloads:
        assert " ".join(payload.split()) in shown
    markdown = paths["md"].read_text(encoding="utf-8")
    assert "<script" not in markdown and "<img" not in markdown
    assert json.loads(paths["json"].read_text())["tasks"][0]["instances"][0]["old"]["pred"] == XSS_SCRIPT
