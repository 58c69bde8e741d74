"""The bad-input matrix through the real entry points: `muscle eval` / `muscle train` and the pytest
plugin (pytester). Each case is one scenario run through both: `muscle` exits 2 with one
`error: ...` line naming the problem and the fix; pytest stops with a usage error (exit 4) or a
collection error showing that line; neither prints a traceback or leaves a report behind.
docs/troubleshooting.md lists the same matrix for users.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from muscle import cli

pytest_plugins = ["pytester"]

QUESTIONS = ["is the cat on the mat", "did the dog eat the bone", "is two plus two four", "is 42 a number",
             "was the movie great", "is it noon"]
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
"""
USAGE, COLLECTION, TEST_FAILED = (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED,
                                  pytest.ExitCode.TESTS_FAILED)


@dataclass
class Scenario:
    """One run's inputs; a case damages some of them. The same scenario feeds both entry points."""

    root: Path
    old_adapter: Path | None        # None: the option is left out
    new_adapter: Path | None
    suite: Path = None
    out: Path = None
    muscle_extra: list[str] = field(default_factory=list)
    pytest_extra: list[str] = field(default_factory=list)
    never_written: list[Path] = field(default_factory=list)   # outputs a refused run must not leave behind

    def write(self, name: str, text: str) -> Path:
        (self.root / name).write_text(text, encoding="utf-8")
        return self.root / name

    def suite_with(self, old: str, new: str) -> None:
        assert old in SUITE
        self.write("modelcompat.yaml", SUITE.replace(old, new))

    def adapter_copy(self, name: str) -> Path:
        return Path(shutil.copytree(self.old_adapter, self.root / name))

    def both(self, *args: str) -> None:
        self.muscle_extra += args
        self.pytest_extra += args

    def baseline(self, path: Path) -> None:
        """Gate against the snapshot ``path``: `muscle eval --baseline` / `pytest --compat-baseline`."""
        self.muscle_extra += ["--baseline", str(path)]
        self.pytest_extra += ["--compat-baseline", str(path)]

    def save_baseline(self, path: Path) -> None:
        """`muscle eval --save-baseline` / `pytest --compat-save-baseline`: ``path`` must not appear."""
        self.muscle_extra += ["--save-baseline", str(path)]
        self.pytest_extra += ["--compat-save-baseline", str(path)]
        self.never_written.append(path)

    def adapters(self) -> list[str]:
        return [arg for flag, adapter in (("--old-adapter", self.old_adapter), ("--new-adapter", self.new_adapter))
                if adapter is not None for arg in (flag, str(adapter))]

    def muscle_argv(self) -> list[str]:
        return ["eval", "--suite", str(self.suite), *self.adapters(), "--device", "cpu", "--report", str(self.out),
                *self.muscle_extra]

    def pytest_argv(self) -> list[str]:
        return [str(self.suite), *self.adapters(), "--compat-device", "cpu", "--compat-report", str(self.out),
                "--compat-cache", str(self.root / "cache"), "-p", "no:cacheprovider", "-W",
                "ignore::pytest.PytestAssertRewriteWarning", *self.pytest_extra]


def _rows(**changes) -> str:
    rows = [{"q": q, "label": i % 2} for i, q in enumerate(QUESTIONS)]
    rows[1].update(changes)
    return "".join(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in rows)


@pytest.fixture
def scenario(tmp_path, tiny_adapter, tiny_adapter_v2) -> Scenario:
    s = Scenario(root=tmp_path, old_adapter=Path(tiny_adapter), new_adapter=Path(tiny_adapter_v2))
    s.suite = s.write("modelcompat.yaml", SUITE)
    s.write("data.jsonl", _rows())
    s.out = tmp_path / "report"
    return s


# ------------------------------------------------------------------------------ the damage per case


def missing_adapter(s):
    s.old_adapter = s.root / "no-such-adapter"


def adapter_without_config(s):
    s.old_adapter = s.adapter_copy("no-config")
    (s.old_adapter / "adapter_config.json").unlink()


def truncated_safetensors(s):
    s.old_adapter = s.adapter_copy("truncated")
    weights = s.old_adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])


def garbage_safetensors(s):
    s.old_adapter = s.adapter_copy("garbage")
    (s.old_adapter / "adapter_model.safetensors").write_bytes(b"\x00not a safetensors file")


def pickle_only_adapter(s):
    import torch
    from safetensors.torch import load_file

    s.old_adapter = s.adapter_copy("pickled")
    weights = s.old_adapter / "adapter_model.safetensors"
    torch.save(load_file(weights), s.old_adapter / "adapter_model.bin")
    weights.unlink()


def base_path_missing(s):
    s.both("--old-base", str(s.root / "no-such-base"))


def adapter_names_missing_base(s):
    s.old_adapter = s.adapter_copy("moved")
    config = json.loads((s.old_adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nonexistent/machine/base"
    (s.old_adapter / "adapter_config.json").write_text(json.dumps(config))


def malformed_yaml(s):
    s.suite_with("    gate: {max_nfr: 1.0}\n", "    gate: {max_nfr: 1.0\n")


def unknown_key(s):
    s.suite_with("    kind: multiple_choice\n", "    kind: multiple_choice\n    prompt: nope\n")


def unknown_kind(s):
    s.suite_with("kind: multiple_choice", "kind: classification")


def template_missing_field(s):
    s.suite_with("{{q}}?", "{{question}}?")


def data_file_missing(s):
    (s.root / "data.jsonl").unlink()


def data_file_empty(s):
    s.write("data.jsonl", "")


def row_missing_field(s):
    s.write("data.jsonl", _rows(q=None))


def label_out_of_range(s):
    s.write("data.jsonl", _rows(label=5))


def gate_not_a_number(s):
    s.suite_with("{max_nfr: 1.0}", "{max_nfr: low}")


def gate_out_of_range(s):
    s.suite_with("{max_nfr: 1.0}", "{max_nfr: 1.5}")


def limit_zero(s):
    s.muscle_extra += ["--limit", "0"]
    s.pytest_extra += ["--compat-limit", "0"]


def limit_negative(s):
    s.muscle_extra += ["--limit", "-3"]
    s.pytest_extra += ["--compat-limit", "-3"]


def report_dir_not_writable(s):
    # Root ignores permission bits: a path under a regular file can never be created.
    s.out = s.write("file.txt", "a file") / "report"


def report_dir_is_a_file(s):
    s.out = s.write("report", "a file, not a directory")


def write_baseline(s, *, name: str = "yesno", limit: int | None = None, schema_version: int = 1) -> Path:
    """A snapshot of the scenario's task as `--compat-save-baseline` writes it, made by hand (no model)."""
    from pytest_modelcompat.scoring.baseline import task_entry, write_snapshot
    from pytest_modelcompat.scoring.predictions import Prediction
    from pytest_modelcompat.tasks.suite import load_instances, load_suite

    [task] = load_suite(s.suite)
    task = dataclasses.replace(task, name=name)
    instances = load_instances(task, limit=limit)
    predictions = [Prediction(pred=0, correct=instance.gold == 0, score=-1.0, logliks=[-1.0, -1.5])
                   for instance in instances]
    stack = {"adapter": str(s.old_adapter), "base": "tiny-base", "fingerprint": "f" * 64}
    path = write_snapshot(s.root / "baseline.json", stack, [task_entry(task, instances, predictions)])
    if schema_version != 1:
        path.write_text(path.read_text().replace('"schema_version": 1,', f'"schema_version": {schema_version},'))
    return path


def gate_against(s, path: Path) -> None:
    """The new adapter against the snapshot ``path``; no --old-adapter."""
    s.old_adapter = None
    s.baseline(path)


def baseline_missing(s):
    gate_against(s, s.root / "no-such-baseline.json")


def baseline_corrupt(s):
    gate_against(s, s.write("baseline.json", '{"format": "pytest-modelcompat-baseline", "schema'))


def baseline_other_version(s):
    gate_against(s, write_baseline(s, schema_version=2))


def baseline_task_changed(s):
    path = write_baseline(s)
    s.write("data.jsonl", _rows(label=0))   # the task's data changed since the snapshot: its fingerprint differs
    gate_against(s, path)


def baseline_task_missing(s):
    gate_against(s, write_baseline(s, name="other"))


def baseline_lacks_instances(s):
    gate_against(s, write_baseline(s, limit=3))


def baseline_and_old_adapter(s):
    s.baseline(write_baseline(s))


def baseline_without_new_adapter(s):
    gate_against(s, write_baseline(s))
    s.new_adapter = None


def save_baseline_with_new_adapter(s):
    s.save_baseline(s.root / "saved.json")


def save_baseline_without_old_adapter(s):
    s.old_adapter = None
    s.save_baseline(s.root / "saved.json")


def save_baseline_and_baseline(s):
    gate_against(s, write_baseline(s))
    s.new_adapter = None
    s.save_baseline(s.root / "saved.json")


# (case, the damage, fragments of the one line: problem ... fix, pytest exit code)
MATRIX = [
    ("missing adapter dir", missing_adapter, ["no-such-adapter", "PEFT adapter"], USAGE),
    ("adapter without adapter_config.json", adapter_without_config, ["no adapter_config.json", "PEFT adapter dir"], USAGE),
    ("truncated safetensors", truncated_safetensors, ["corrupt or truncated", "re-save or re-copy the adapter"], USAGE),
    ("garbage safetensors", garbage_safetensors, ["corrupt or truncated", "re-save or re-copy the adapter"], USAGE),
    ("pickle-only weights", pickle_only_adapter, ["only pickle weights (adapter_model.bin)", "--allow-pickle"], USAGE),
    ("base path missing", base_path_missing, ["--old-base: base ", "no-such-base", "does not exist", "pass a Hugging Face model dir"], USAGE),
    ("adapter names a base absent here", adapter_names_missing_base,
     ["--old-adapter: adapter ", "/nonexistent/machine/base", "does not exist here", "--old-base"], USAGE),
    ("suite YAML malformed", malformed_yaml, ["invalid YAML", "fix the YAML syntax"], COLLECTION),
    ("suite unknown key", unknown_key, ["unknown key(s) prompt", "valid keys are"], COLLECTION),
    ("suite unknown kind", unknown_kind, ["kind must be one of", "'classification'"], COLLECTION),
    ("template references a missing field", template_missing_field,
     ["'question' is undefined", "fix the template"], COLLECTION),
    ("data file missing", data_file_missing, ["data.jsonl does not exist", "check the path"], COLLECTION),
    ("data file empty", data_file_empty, ["data.jsonl is empty", "at least one row"], COLLECTION),
    ("row missing a field", row_missing_field, ["row 1", "'q' is undefined", "fix the template"], COLLECTION),
    ("label out of range", label_out_of_range, ["row 1", "label 5 is out of range for 2 choices", "use an index from 0 to 1"], COLLECTION),
    ("gate threshold not a number", gate_not_a_number, ["max_nfr must be a number", "'low'", "write e.g. max_nfr: 0.05"], COLLECTION),
    ("gate threshold out of range", gate_out_of_range, ["max_nfr = 1.5 is out of range [0, 1]", "fractions"], COLLECTION),
    ("limit zero", limit_zero, ["limit", "must be a positive integer", "0"], USAGE),
    ("limit negative", limit_negative, ["limit", "must be a positive integer", "-3"], USAGE),
    ("report dir not writable", report_dir_not_writable, ["file.txt' is a file, not a directory", "choose another path"],
     USAGE),
    ("report dir is a file", report_dir_is_a_file, ["is a file, not a directory", "choose a directory path"], USAGE),
    ("baseline snapshot missing", baseline_missing,
     ["baseline snapshot ", "no-such-baseline.json does not exist; write it first with the old adapter: ",
      "--old-adapter A1 --", "save-baseline ", "no-such-baseline.json"], USAGE),
    ("baseline snapshot corrupt", baseline_corrupt,
     ["baseline.json is not usable (not valid JSON: ", "write a new one with --compat-save-baseline (pytest) "
      "or --save-baseline (muscle eval) and the old adapter"], USAGE),
    ("baseline snapshot of another schema version", baseline_other_version,
     ["baseline.json has schema_version 2; this pytest-modelcompat reads version 1: re-save it with this "
      "version (--compat-save-baseline / muscle eval --save-baseline)"], USAGE),
    ("baseline snapshot task changed", baseline_task_changed,
     ["task 'yesno' changed since the baseline snapshot ", "was saved (its fingerprint differs: data, template "
      "or lm-eval task); refresh it: ", "--old-base tiny-base --", "save-baseline "], USAGE),
    ("baseline snapshot task missing", baseline_task_missing,
     ["task 'yesno' is not in the baseline snapshot ", "(it has: other); refresh it: ", "save-baseline "], USAGE),
    ("baseline snapshot lacks instances", baseline_lacks_instances,
     ["task 'yesno': the baseline snapshot ", "lacks 3 of the 6 instances this run evaluates (ids 3, 4, 5; "
      "saved with a smaller limit?); refresh it: "], USAGE),
    ("baseline and old adapter both given", baseline_and_old_adapter,
     ["--old-adapter and --", "baseline are both given; the snapshot stands for the old stack: drop "
      "--old-adapter (or --", "baseline to load the old model)"], USAGE),
    ("baseline without new adapter", baseline_without_new_adapter,
     ["baseline is given but --new-adapter is not; pass the adapter to gate against the snapshot: "
      "--new-adapter PATH"], USAGE),
    ("save baseline with new adapter", save_baseline_with_new_adapter,
     ["save-baseline scores the old stack only; drop --new-adapter (gate it later with --",
      "baseline FILE --new-adapter PATH)"], USAGE),
    ("save baseline without old adapter", save_baseline_without_old_adapter,
     ["save-baseline is given but --old-adapter is not; pass the adapter whose predictions to save: "
      "--old-adapter PATH"], USAGE),
    ("save baseline and baseline both given", save_baseline_and_baseline,
     ["save-baseline and --", "baseline are both given; save a snapshot (with --old-adapter) or gate against "
      "one (with --new-adapter), not both"], USAGE),
]
CASES = [pytest.param(damage, fragments, code, id=name) for name, damage, fragments, code in MATRIX]


def run_muscle(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse errors exit from inside parse_args
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_error_line(err: str, fragments) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("damage", "fragments", "pytest_code"), CASES)
def test_muscle_eval_refuses_with_one_line(scenario, capsys, damage, fragments, pytest_code):
    damage(scenario)
    report_was_there = scenario.out.exists()
    code, err = run_muscle(scenario.muscle_argv(), capsys)
    assert code == 2, err
    assert_one_error_line(err, fragments)
    assert scenario.out.exists() == report_was_there  # nothing written, nothing half-written
    assert not any(path.exists() for path in scenario.never_written)


@pytest.mark.parametrize(("damage", "fragments", "pytest_code"), CASES)
def test_pytest_plugin_refuses_with_one_line(scenario, pytester, damage, fragments, pytest_code):
    damage(scenario)
    report_was_there = scenario.out.exists()
    result = pytester.runpytest(*scenario.pytest_argv())
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest_code, output
    assert "Traceback" not in output and "site-packages" not in output, output
    if pytest_code == USAGE:
        [line] = [line for line in result.stderr.lines if line.startswith("ERROR: ")]
    else:  # the collection error's body is exactly our one line
        body = output.split(" ERROR collecting ", 1)[1].split("\n", 1)[1]
        line = body.split("=" * 10, 1)[0].strip()
        assert "\n" not in line, body
    for fragment in fragments:
        assert fragment in line, output
    assert scenario.out.exists() == report_was_there
    assert not any(path.exists() for path in scenario.never_written)


# ------------------------------------------------------------------------------ cases needing models


def test_adapter_shapes_not_matching_the_base(scenario, pytester, capsys, tmp_path, tiny_tokenizer):
    from tests import tiny

    wider = tiny.build_base(tmp_path / "wider-base", tiny_tokenizer, seed=3, hidden=48)
    scenario.both("--old-base", str(wider))
    code, err = run_muscle(scenario.muscle_argv(), capsys)
    assert code == 2
    assert_one_error_line(err, ["does not fit base", "pass the base it was trained on"])
    assert not scenario.out.exists()
    # The plugin finds this only when it loads the stack: every gate test fails with that one line.
    result = pytester.runpytest(*scenario.pytest_argv())
    assert result.ret == TEST_FAILED
    result.stdout.fnmatch_lines(["*--old-adapter: adapter * does not fit base *; pass the base it was trained on*"])
    assert "Traceback" not in result.stdout.str()
    assert not scenario.out.exists()


def test_muscle_train_refuses_different_vocabularies(scenario, capsys, tmp_path):
    from tests import tiny

    tokenizer = tiny.build_tokenizer(tmp_path / "tok")
    spec = json.loads((tokenizer / "tokenizer.json").read_text())
    spec["added_tokens"].append({"id": len(spec["model"]["vocab"]), "content": "<extra>", "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (tokenizer / "tokenizer.json").write_text(json.dumps(spec))
    other_base = tiny.build_base(tmp_path / "other-base", tokenizer, seed=5)
    out = tmp_path / "a2c"
    code, err = run_muscle(["train", "--suite", str(scenario.suite), "--task", "yesno", "--old-adapter",
                            str(scenario.old_adapter), "--old-base", str(other_base), "--new-adapter",
                            str(scenario.new_adapter), "--output", str(out), "--device", "cpu", "--epochs", "1",
                            "--objective", "token"], capsys)
    assert code == 2
    assert_one_error_line(err, ["different tokenizer vocabularies", "use --objective choice"])
    assert not out.exists() and not out.with_name(".a2c.work").exists()


def test_muscle_train_output_not_writable_fails_before_loading(scenario, capsys):
    out = scenario.write("file.txt", "x") / "a2c"
    code, err = run_muscle(["train", "--suite", str(scenario.suite), "--task", "yesno", "--old-adapter",
                            str(scenario.old_adapter), "--new-adapter", str(scenario.new_adapter), "--output",
                            str(out), "--device", "cpu"], capsys)
    assert code == 2
    assert_one_error_line(err, ["--output", "is a file, not a directory", "choose another path"])
    assert "Loading weights" not in err  # refused before any model was loaded


def test_pickle_weights_load_only_with_allow_pickle(scenario, pytester, capsys):
    pickle_only_adapter(scenario)
    scenario.both("--allow-pickle")
    code, err = run_muscle(scenario.muscle_argv(), capsys)
    assert code == 0, err
    assert json.loads((scenario.out / "report.json").read_text())["tasks"][0]["n"] == len(QUESTIONS)
    result = pytester.runpytest(*scenario.pytest_argv())
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()


def test_remote_code_is_never_run_by_default(scenario, capsys, tmp_path, tiny_base):
    """A base whose config points at its own Python code loads with transformers' built-in class;
    the shipped code runs only with --trust-remote-code."""
    base = Path(shutil.copytree(tiny_base, tmp_path / "base-with-code"))
    marker = tmp_path / "remote-code-ran"
    (base / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                           "from transformers import LlamaForCausalLM as EvilForCausalLM\n")
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (base / "config.json").write_text(json.dumps(config))
    scenario.both("--old-base", str(base))
    code, err = run_muscle(scenario.muscle_argv(), capsys)
    assert code in (0, 1) and "Traceback" not in err
    assert not marker.exists()
    for command in ("train", "finetune", "eval"):
        assert "--trust-remote-code" in cli.build_parser()._subparsers._group_actions[0].choices[command].format_help()


def test_nonfinite_loglikelihoods_fail_the_gate_and_are_never_correct(scenario, pytester, capsys, monkeypatch):
    """An adapter with an inf weight gives NaN log-likelihoods: reported, counted wrong, gate failed
    (exit 1, a gate verdict, not an input error), even with a gate that passes anything else."""
    import torch
    from safetensors.torch import load_file, save_file

    scenario.new_adapter = Path(shutil.copytree(scenario.new_adapter, scenario.root / "nan-adapter"))
    weights = scenario.new_adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    for name in tensors:
        if "lora_B" in name:
            tensors[name] = torch.full_like(tensors[name], float("inf"))
    save_file(tensors, weights)
    with pytest.warns(RuntimeWarning, match="new stack: 6 of 6 instances have non-finite log-likelihoods"):
        code, err = run_muscle(scenario.muscle_argv(), capsys)
    assert code == 1 and "Traceback" not in err
    task = json.loads((scenario.out / "report.json").read_text())["tasks"][0]
    assert task["gate"]["passed"] is False
    assert [c["metric"] for c in task["gate"]["checks"] if not c["passed"]] == ["nonfinite_scores"]
    assert all(i["new"]["correct"] is False and i["new"]["pred"] is None for i in task["instances"])
    shutil.rmtree(scenario.out)
    # the suite item and an assertion helper on the same task both fail on it
    helper = pytester.makepyfile(test_helper=f"""
        def test_helper(compat):
            compat.evaluate("yesno", suite={str(scenario.suite)!r}).assert_nfr_below(1.0)
    """)
    # On CI (env CI set) pytest's short summary repeats each whole failure message; count the
    # verdicts in the failure sections only.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    result = pytester.runpytest(*scenario.pytest_argv(), str(helper))
    assert result.ret == TEST_FAILED
    result.assert_outcomes(failed=2)
    assert result.stdout.str().count("FAILED nonfinite_scores = 6.0000 (must be <= 0.0000)") == 2


# ------------------------------------------------------------------------------ muscle's own argparse


@pytest.mark.parametrize(("argv", "fragments"), [
    ([], ["muscle: the following arguments are required: command", "muscle --help"]),
    (["bogus"], ["invalid choice: 'bogus'", "muscle --help"]),
    (["eval"], ["muscle eval: the following arguments are required: --suite", "muscle eval --help"]),
    (["eval", "--suite", "s.yaml"], ["--old-adapter and --new-adapter missing: pass --old-adapter A1 "
                                     "--new-adapter A2 (or --old-adapter A1 --save-baseline FILE, or "
                                     "--baseline FILE --new-adapter A2)"]),
    (["train", "--epochs", "three"], ["muscle train: argument --epochs: invalid int value: 'three'",
                                      "muscle train --help"]),
    (["finetune", "--suite", "s.yaml", "--task", "t", "--base", "b", "--output", "o", "--mask", "paper"],
     ["unrecognized arguments: --mask paper", "muscle --help"]),
])
def test_muscle_argparse_errors_are_one_line_exit_2(capsys, argv, fragments):
    code, err = run_muscle(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert_one_error_line(err, fragments)


def test_muscle_console_script_prints_exactly_one_line():
    """The real executable: a usage error is one stderr line, exit 2, no traceback."""
    result = subprocess.run([sys.executable, "-m", "muscle.cli", "eval", "--suite", "x.yaml", "--old-adapter",
                             "/nonexistent/a1", "--new-adapter", "/nonexistent/a2"],
                            capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and "x.yaml" in result.stderr

