"""The plugin without models: options and ini, skips without adapters, suite collection, marker,
import cost. Every run is an in-process pytester run (the plugin loads through its entry point)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

SUITE = textwrap.dedent("""\
    tasks:
      - name: yesno
        kind: multiple_choice
        data: data.jsonl
        text: "Q: {{q}}"
        choices: ["yes", "no"]
        label: "{{label}}"
        gate: {max_nfr: 0.05}
      - name: echo
        kind: generative
        data: data.jsonl
        text: "Say {{q}}"
        target: "{{q}}"
    """)


@pytest.fixture
def project(pytester):
    pytester.makefile(".jsonl", data='{"q": "a", "label": 0}\n{"q": "b", "label": 1}\n')
    pytester.makefile(".yaml", modelcompat=SUITE)
    return pytester


@pytest.mark.parametrize(("args", "message"), [
    (["--compat-limit", "0"], "ERROR: --compat-limit (or ini modelcompat_compat_limit) must be a positive integer, got '0'"),
    (["--compat-batch-size", "x"], "ERROR: --compat-batch-size (or ini modelcompat_compat_batch_size) must be a positive integer, got 'x'"),
    (["--compat-device", "tpu"], "ERROR: --compat-device must be one of auto, cpu, cuda, cuda:N or cuda:{worker}, "
                                 "got 'tpu'"),
    (["--old-adapter", "."], "ERROR: --old-adapter is given but --new-adapter is not; pass both adapters"),
    (["--old-adapter", ".", "--new-adapter", "nope"], "ERROR: --new-adapter: no such directory"),
])
def test_bad_option_is_one_line_usage_error(pytester, args, message):
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR      # 4
    result.stderr.fnmatch_lines([message + "*"])
    assert "Traceback" not in result.stderr.str()


def test_ini_values_are_read_and_the_command_line_wins(pytester, tiny_adapter):
    pytester.makeini("[pytest]\nmodelcompat_compat_limit = many\nmodelcompat_old_adapter = a1\n"
                     "modelcompat_new_adapter = a2\n")
    shutil.copytree(tiny_adapter, pytester.path / "a1")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # relative ini paths are relative to the ini file
    result.stderr.fnmatch_lines([f"ERROR: --new-adapter: no such directory '{pytester.path / 'a2'}'*"])
    shutil.copytree(tiny_adapter, pytester.path / "a2")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["ERROR: --compat-limit (or ini modelcompat_compat_limit) must be a positive integer, got 'many'"])
    pytester.makepyfile("def test_nothing(): pass")
    assert pytester.runpytest("--compat-limit", "3").ret == pytest.ExitCode.OK


def test_help_lists_the_option_group(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["model compatibility gate (negative flips):", "*--old-adapter=PATH*",
                                 "*--compat-no-cache*", "*modelcompat_compat_limit*"])


def test_without_adapters_gate_tests_are_skipped_with_a_reason(project):
    project.makepyfile(test_gate="""
        import pytest

        def test_helper(compat):
            compat.evaluate("yesno").assert_nfr_below(0.1)

        def test_fixture(old_stack):
            pass

        @pytest.mark.modelcompat(task="yesno", max_nfr=0.1)
        def test_marker():
            pass
    """)
    result = project.runpytest("-rs", "--strict-markers")
    result.assert_outcomes(skipped=5)
    reason = ("modelcompat: no stacks to compare; pass --old-adapter PATH and --new-adapter PATH "
              "(or ini modelcompat_old_adapter / modelcompat_new_adapter), or --compat-baseline FILE "
              "and --new-adapter PATH")
    skips = [line for line in result.stdout.lines if line.startswith("SKIPPED [")]
    assert sum(int(line.split("[")[1].split("]")[0]) for line in skips) == 5
    assert all(line.endswith(reason) for line in skips)


def test_suite_files_are_collected_one_item_per_task(project):
    project.makefile(".yaml", compat_more=SUITE.replace("yesno", "other"))
    project.makefile(".yaml", unrelated="tasks: [oops]")        # not a suite file name
    result = project.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["compat_more.yaml::other", "compat_more.yaml::echo",
                                 "modelcompat.yaml::yesno", "modelcompat.yaml::echo", "4 tests collected*"])


def test_bad_suite_file_is_a_collection_error_with_one_line(pytester):
    pytester.makefile(".yaml", compat_bad="tasks:\n  - name: x\n    kind: essay\n")
    result = pytester.runpytest("-p", "no:warnings")
    assert result.ret == pytest.ExitCode.INTERRUPTED        # collection errors stop the run
    output = result.stdout.str()
    section = output[output.index("ERROR collecting"):output.index("short test summary")]
    lines = [line for line in section.splitlines()[1:] if line.strip("= ")]
    assert len(lines) == 1 and "compat_bad.yaml" in lines[0] and "kind" in lines[0], section
    assert "Traceback" not in output and "raise " not in output


def test_marker_is_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.modelcompat(task, suite=None, **gate):*"])


def test_importing_the_plugin_imports_no_ml_library():
    code = ("import sys, pytest_modelcompat.plugin; "
            "print(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'peft') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_an_adapter_dir_that_is_not_an_adapter_is_a_usage_error(project):
    # Checked without loading a model; failures found only by loading (e.g. adapter shapes that do
    # not fit the base) fail every gate test with one line: tests/test_bad_inputs.py.
    project.mkdir("a1")
    project.mkdir("a2")
    result = project.runpytest("--old-adapter", "a1", "--new-adapter", "a2", "-p", "no:warnings")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --old-adapter: adapter '*a1' has no adapter_config.json; pass a PEFT adapter dir*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
