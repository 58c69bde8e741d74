"""Suite files → TaskSpec, data + templates → Instance (pytest_modelcompat.tasks.suite)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.tasks.spec import Instance
from pytest_modelcompat.tasks.suite import load_instances, load_suite, resolve_task

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

ROWS = [
    {"idx": 7, "goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
    {"idx": 8, "goal": "Dry hair", "sol1": "use water", "sol2": "use a towel", "label": "1"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_suite(directory: Path, tasks, name: str = "modelcompat.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({"tasks": tasks}, sort_keys=False), encoding="utf-8")
    return path


def mc_task(**overrides):
    task = {
        "name": "piqa",
        "kind": "multiple_choice",
        "data": "data/valid.jsonl",
        "text": "Question: {{goal}}\nAnswer:",
        "choices": ["{{sol1}}", "{{sol2}}"],
        "label": "{{label}}",
    }
    task.update(overrides)
    return {key: value for key, value in task.items() if value is not None}


@pytest.fixture
def suite_dir(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "valid.jsonl", ROWS)
    return tmp_path


def test_spec_example_suite_parses_with_paths_relative_to_the_file(suite_dir, monkeypatch):
    monkeypatch.setenv("SAMSUM_DIR", str(suite_dir / "licensed"))
    suite = suite_dir / "modelcompat.yaml"
    suite.write_text(
        textwrap.dedent(
            """\
            tasks:
              - name: piqa
                kind: multiple_choice
                data: data/valid.jsonl
                train: data/train.jsonl
                text: "Question: {{goal}}\\nAnswer:"
                choices: ["{{sol1}}", "{{sol2}}"]
                label: "{{label}}"
                delimiter: " "
                normalize: true
                limit: 200
                gate: {max_nfr: 0.05, max_nfr_upper: 0.08, max_nfr_mc: 0.10, min_btc: 0.9, min_acc_delta: 0.0}
              - name: gsm8k
                kind: exact_match
                data: data/gsm8k_test.jsonl
                text: "Question: {{question}}\\nAnswer:"
                target: "{{answer}}"
                extract: "#### *(-?[0-9.,]+)"
                max_new_tokens: 256
                stop: ["\\n\\n", "Question:"]
              - name: samsum
                kind: generative
                data: ${SAMSUM_DIR}/validation.csv
                text: "Dialogue:\\n{{dialogue}}\\nSummary:"
                target: "{{summary}}"
                metric: rouge1
                gate: {max_nfr_smooth: 0.35, max_m_r: 0.15, min_score_delta: 0.0}
              - name: hellaswag
                lm_eval: hellaswag
            """
        ),
        encoding="utf-8",
    )
    piqa, gsm8k, samsum, hellaswag = load_suite(suite)
    assert (piqa.kind, piqa.normalize, piqa.limit, piqa.delimiter) == ("multiple_choice", True, 200, " ")
    assert piqa.data == suite_dir / "data" / "valid.jsonl"
    assert piqa.train == suite_dir / "data" / "train.jsonl"
    assert piqa.gate == {"max_nfr": 0.05, "max_nfr_upper": 0.08, "max_nfr_mc": 0.1, "min_btc": 0.9,
                         "min_acc_delta": 0.0}
    assert piqa.source == suite
    assert gsm8k.stop == ("\n\n", "Question:") and gsm8k.extract == "#### *(-?[0-9.,]+)"
    assert samsum.data == suite_dir / "licensed" / "validation.csv"
    assert (samsum.kind, samsum.metric, samsum.max_new_tokens) == ("generative", "rouge1", 256)
    # lm_eval tasks stay unresolved (no lm-eval import) until resolve_task / load_instances
    assert (hellaswag.kind, hellaswag.lm_eval) == (None, "hellaswag")


def test_multiple_choice_instances(suite_dir):
    [task] = load_suite(write_suite(suite_dir, [mc_task()]))
    assert resolve_task(task) is task
    first, second = load_instances(task)
    assert first == Instance("7", "Question: Open a jar\nAnswer:", ("twist the lid", "eat the lid"), 0, ROWS[0])
    assert first.doc == ROWS[0]
    assert (second.id, second.gold) == ("8", 1)  # a digit string is an index, as in lm-eval
    assert [i.id for i in load_instances(task, limit=1)] == ["7"]


def test_label_from_a_field_is_read_like_lm_eval(suite_dir):
    rows = [{"q": "2+2", "options": ["3", "4"], "answer": "4"}, {"q": "1+1", "options": ["2", "5"], "answer": 0}]
    write_jsonl(suite_dir / "data" / "valid.jsonl", rows)
    # a bare field name yields the field's value: a string is a choice's text, an int an index
    [by_field] = load_suite(write_suite(suite_dir, [mc_task(text="{{q}} =", choices="options", label="answer")]))
    first, second = load_instances(by_field)
    assert (first.choices, first.gold) == (("3", "4"), 1)
    assert (second.choices, second.gold) == (("2", "5"), 0)
    assert (first.id, second.id) == ("0", "1")
    # a rendered template of digits is an index: "4" is out of range for two choices
    [rendered] = load_suite(write_suite(suite_dir, [mc_task(text="{{q}}", choices="{{options}}", label="{{answer}}")]))
    with pytest.raises(CompatInputError, match="row 0: label 4 is out of range for 2 choices"):
        load_instances(rendered)
    write_jsonl(suite_dir / "data" / "valid.jsonl", [{"q": "x", "options": ["no", "yes"], "answer": "1"}])
    assert load_instances(rendered)[0].gold == 1
    with pytest.raises(CompatInputError, match="write `{{field}}` to read digits as an index"):
        load_instances(by_field)


def test_choices_list_literal_template(suite_dir):
    write_jsonl(suite_dir / "data" / "valid.jsonl", [{"a": "red", "b": "blue", "gold": "blue"}])
    task = mc_task(text="Color?", choices="{{[a, b]}}", label="{{gold}}")
    [spec] = load_suite(write_suite(suite_dir, [task]))
    [instance] = load_instances(spec)
    assert instance.choices == ("red", "blue") and instance.gold == 1


def test_templates_render_exactly_like_lm_eval(suite_dir):
    from lm_eval.utils import apply_template

    row = {"question": "Is it  spaced?", "answer": "Yes.\n#### 42", "n": 3}
    write_jsonl(suite_dir / "data" / "valid.jsonl", [row])
    text = "{{question | regex_replace('\\\\s+', ' ')}}\n{% if n > 2 %}big{% endif %}\n"
    target = "{{answer.split('####')[-1].strip()}}"
    task = {"name": "t", "kind": "exact_match", "data": "data/valid.jsonl", "text": text, "target": target}
    [spec] = load_suite(write_suite(suite_dir, [task]))
    [instance] = load_instances(spec)
    assert instance.context == apply_template(text, row) == "Is it spaced?\nbig\n"
    assert instance.gold == apply_template(target, row) == "42"


def test_data_formats(tmp_path):
    rows = [{"id": "a", "text": "one, two\nthree", "label": "0"}, {"id": "b", "text": "four", "label": "1"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    write_jsonl(tmp_path / "rows.jsonl", rows)
    (tmp_path / "rows.csv").write_text('id,text,label\na,"one, two\nthree",0\nb,four,1\n', encoding="utf-8")
    (tmp_path / "rows.tsv").write_text("\ufeffid\ttext\tlabel\na\tone, two\\nthree\t0\nb\tfour\t1\n", encoding="utf-8")
    tasks = [
        {"name": name.replace(".", "_"), "kind": "multiple_choice", "data": name, "text": "{{text}}",
         "choices": ["no", "yes"], "label": "{{label}}"}
        for name in ("rows.json", "wrapped.json", "rows.jsonl", "rows.csv", "rows.tsv")
    ]
    for spec in load_suite(write_suite(tmp_path, tasks)):
        instances = load_instances(spec)
        assert [(i.id, i.gold) for i in instances] == [("a", 0), ("b", 1)], spec.name
        expected = "one, two\\nthree" if spec.name == "rows_tsv" else "one, two\nthree"
        assert instances[0].context == expected


def test_task_limit_applies_to_eval_split_and_train_needs_a_file(suite_dir):
    write_jsonl(suite_dir / "data" / "train.jsonl", ROWS * 3)
    rows = [dict(row, idx=n) for n, row in enumerate(ROWS * 3)]
    write_jsonl(suite_dir / "data" / "train.jsonl", rows)
    [spec] = load_suite(write_suite(suite_dir, [mc_task(limit=1, train="data/train.jsonl")]))
    assert len(load_instances(spec)) == 1
    assert len(load_instances(spec, limit=2)) == 2
    assert len(load_instances(spec, split="train")) == 6
    [no_train] = load_suite(write_suite(suite_dir, [mc_task()]))
    with pytest.raises(CompatInputError, match="no `train:` file"):
        load_instances(no_train, split="train")


def test_home_directory_expansion(suite_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(suite_dir))
    [spec] = load_suite(write_suite(suite_dir / "data", [mc_task(data="~/data/valid.jsonl")]))
    assert spec.data == suite_dir / "data" / "valid.jsonl"


def test_fingerprint_tracks_what_changes_predictions(suite_dir, tmp_path_factory):
    suite = write_suite(suite_dir, [mc_task()])
    [base] = load_suite(suite)
    # same content elsewhere (moved checkout), other name / gate / limit: same fingerprint
    moved = tmp_path_factory.mktemp("moved")
    (moved / "data").mkdir()
    write_jsonl(moved / "data" / "valid.jsonl", ROWS)
    [relocated] = load_suite(write_suite(moved, [mc_task(name="other", limit=1, gate={"max_nfr": 0.1})]))
    assert relocated.fingerprint() == base.fingerprint()
    changed = [
        mc_task(text="Q: {{goal}}\nA:"),
        mc_task(choices=["{{sol2}}", "{{sol1}}"]),
        mc_task(delimiter="\n"),
        mc_task(normalize=True),
        mc_task(label="{{1 - label|int}}"),
    ]
    fingerprints = {base.fingerprint()}
    for number, task in enumerate(changed):
        [spec] = load_suite(write_suite(suite_dir, [task], name=f"compat_{number}.yaml"))
        fingerprints.add(spec.fingerprint())
    assert len(fingerprints) == 1 + len(changed)
    before = base.fingerprint()
    write_jsonl(suite_dir / "data" / "valid.jsonl", ROWS[:1])
    assert base.fingerprint() != before  # the data's content changed


BAD_SUITES = {
    "top-level key": ({"tasks": [mc_task()], "extra": 1}, "unknown top-level key(s) extra"),
    "no tasks": ({"tasks": []}, "non-empty list"),
    "not a mapping": (["x"], "mapping with a `tasks:` list"),
    "unknown task key": ({"tasks": [mc_task(colour="red")]}, "task 'piqa': unknown key(s) colour"),
    "unknown kind": ({"tasks": [mc_task(kind="ranking")]}, "task 'piqa': kind must be one of"),
    "missing label": ({"tasks": [mc_task(label=None)]}, "task 'piqa': missing required key(s) label"),
    "missing target": (
        {"tasks": [{"name": "g", "kind": "exact_match", "data": "data/valid.jsonl", "text": "x"}]},
        "task 'g': missing required key(s) target",
    ),
    "key of another kind": ({"tasks": [mc_task(stop=["\n"])]}, "task 'piqa': key(s) stop do not apply"),
    "kind and lm_eval": ({"tasks": [mc_task(lm_eval="piqa")]}, "`kind` comes from the lm-eval task"),
    "lm_eval with template keys": (
        {"tasks": [{"name": "h", "lm_eval": "hellaswag", "text": "x"}]}, "task 'h': key(s) text do not apply"
    ),
    "duplicate name": ({"tasks": [mc_task(), mc_task()]}, "task name 'piqa' is used twice"),
    "no name": ({"tasks": [mc_task(name=None)]}, "entry #1 needs a one-line `name:`"),
    "text not a string": ({"tasks": [mc_task(text=5)]}, "task 'piqa': `text` must be a string"),
    "yaml booleans as choices": ({"tasks": [mc_task(choices=[True, False])]}, "task 'piqa': `choices` must be"),
    "limit zero": ({"tasks": [mc_task(limit=0)]}, "task 'piqa': `limit` must be a positive integer"),
    "limit bool": ({"tasks": [mc_task(limit=True)]}, "`limit` must be a positive integer"),
    "normalize string": ({"tasks": [mc_task(normalize="yes")]}, "`normalize` must be true or false"),
    "bad gate key": ({"tasks": [mc_task(gate={"max_flips": 0.1})]}, "task 'piqa': gate: unknown gate key"),
    "gate of another kind": ({"tasks": [mc_task(gate={"max_m_r": 0.1})]}, "does not apply to a multiple_choice"),
    "bad regex": (
        {"tasks": [{"name": "g", "kind": "exact_match", "data": "d.jsonl", "text": "x", "target": "y",
                    "extract": "(unclosed"}]},
        "task 'g': `extract` is not a valid regex",
    ),
    "regex without group": (
        {"tasks": [{"name": "g", "kind": "exact_match", "data": "d.jsonl", "text": "x", "target": "y",
                    "extract": "[0-9]+"}]},
        "needs a capture group",
    ),
    "unknown metric": (
        {"tasks": [{"name": "s", "kind": "generative", "data": "d.jsonl", "text": "x", "target": "y",
                    "metric": "bleu9"}]},
        "task 's': unknown similarity metric 'bleu9'",
    ),
    "unset variable": ({"tasks": [mc_task(data="${NO_SUCH_VAR_XYZ}/valid.csv")]}, "'NO_SUCH_VAR_XYZ', which is not set"),
    "template syntax": ({"tasks": [mc_task(text="{{goal")]}, "task 'piqa': `text` is not a valid Jinja2 template"),
    "missing lm_eval yaml": ({"tasks": [{"name": "h", "lm_eval": "tasks/none.yaml"}]}, "does not exist"),
}


@pytest.mark.parametrize("content, message", BAD_SUITES.values(), ids=BAD_SUITES.keys())
def test_bad_suites_raise_one_line_naming_file_task_and_key(suite_dir, content, message):
    path = suite_dir / "compat_bad.yaml"
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    with pytest.raises(CompatInputError) as raised:
        load_suite(path)
    text = str(raised.value)
    assert message in text and "\n" not in text.strip()
    assert str(path) in text


def test_invalid_yaml_and_missing_suite(tmp_path):
    path = tmp_path / "modelcompat.yaml"
    path.write_text("tasks:\n  - name: [unclosed\n", encoding="utf-8")
    with pytest.raises(CompatInputError, match="invalid YAML at line"):
        load_suite(path)
    with pytest.raises(CompatInputError, match="cannot read suite file"):
        load_suite(tmp_path / "missing.yaml")


BAD_DATA = {
    "missing file": (None, "does not exist"),
    "empty file": ("", "is empty"),
    "malformed line": ('{"goal": "a", "sol1": "b", "sol2": "c", "label": 0}\n{"goal": \n', "valid.jsonl:2: malformed JSON"),
    "not an object": ('{"goal": "a", "sol1": "b", "sol2": "c", "label": 0}\n[1, 2]\n', "valid.jsonl:2: each line must be"),
    "missing field": ('{"goal": "a", "sol1": "b", "label": 0}\n', "row 0: `choices` uses a field the row lacks ('sol2'"),
    "label out of range": ('{"goal": "a", "sol1": "b", "sol2": "c", "label": 2}\n', "row 0: label 2 is out of range"),
    "label not a choice": ('{"goal": "a", "sol1": "b", "sol2": "c", "label": "d"}\n', "row 0: label 'd' is neither"),
    "duplicate ids": (
        '{"idx": 1, "goal": "a", "sol1": "b", "sol2": "c", "label": 0}\n'
        '{"idx": 1, "goal": "a", "sol1": "b", "sol2": "c", "label": 0}\n',
        "rows 0 and 1 share idx '1'",
    ),
}


@pytest.mark.parametrize("content, message", BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_data_raises_one_line_naming_the_row(suite_dir, content, message):
    data = suite_dir / "data" / "valid.jsonl"
    if content is None:
        data.unlink()
    else:
        data.write_text(content, encoding="utf-8")
    [spec] = load_suite(write_suite(suite_dir, [mc_task()]))
    with pytest.raises(CompatInputError) as raised:
        load_instances(spec)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_bad_csv_rows(tmp_path):
    (tmp_path / "rows.csv").write_text("id,text\na,one\nb,two,three\n", encoding="utf-8")
    task = {"name": "c", "kind": "generative", "data": "rows.csv", "text": "{{text}}", "target": "{{id}}"}
    [spec] = load_suite(write_suite(tmp_path, [task]))
    with pytest.raises(CompatInputError, match=r"rows.csv:3: 3 fields but the header has 2"):
        load_instances(spec)
    (tmp_path / "rows.csv").write_text("id,text,text\na,one,two\n", encoding="utf-8")
    with pytest.raises(CompatInputError, match="unique, non-empty column names"):
        load_instances(spec)


def test_template_errors_are_input_errors(suite_dir):
    [spec] = load_suite(write_suite(suite_dir, [mc_task(text="{{ goal + 1 }}")]))
    with pytest.raises(CompatInputError, match=r"row 0: rendering `text` failed \(TypeError"):
        load_instances(spec)
    [spec] = load_suite(write_suite(suite_dir, [mc_task(choices="{{goal}}")]))
    with pytest.raises(CompatInputError, match="not a Python list literal"):
        load_instances(spec)


def test_normalize_with_an_empty_choice_is_an_input_error_not_a_division_by_zero(suite_dir):
    rows = [ROWS[0], {"idx": 9, "goal": "Sit", "sol1": "use a chair", "sol2": "", "label": 0}]
    write_jsonl(suite_dir / "data" / "valid.jsonl", rows)
    [plain] = load_suite(write_suite(suite_dir, [mc_task()]))
    assert load_instances(plain)[1].choices == ("use a chair", "")  # acc (no division) accepts it
    [spec] = load_suite(write_suite(suite_dir, [mc_task(normalize=True)]))
    with pytest.raises(CompatInputError) as raised:
        load_instances(spec)
    message = str(raised.value)
    assert "\n" not in message
    assert "valid.jsonl: task 'piqa', row 1: choice 1 rendered empty" in message
    assert "set `normalize: false`" in message


@pytest.mark.skipif(not (SHARED_DATA / "samsum").is_dir(), reason="shared data not present")
def test_real_shared_data_via_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARED_DATA", str(SHARED_DATA))
    tasks = [
        {"name": "samsum", "kind": "generative", "data": "${SHARED_DATA}/samsum/validation.csv",
         "text": "Dialogue:\n{{dialogue}}\nSummary:", "target": "{{summary}}", "limit": 5},
        {"name": "sst2", "kind": "multiple_choice", "data": "$SHARED_DATA/sst2/dev.tsv",
         "text": "{{sentence}}\nSentiment:", "choices": ["negative", "positive"], "label": "{{label}}"},
    ]
    samsum, sst2 = load_suite(write_suite(tmp_path, tasks))
    instances = load_instances(samsum)
    assert len(instances) == 5 and instances[0].id == "13817023"
    assert instances[0].context.startswith("Dialogue:\nA: Hi Tom") and instances[0].gold.startswith("A will go")
    sst2_instances = load_instances(sst2)
    assert len(sst2_instances) == 872
    assert sst2_instances[0].context == "it 's a charming and often affecting journey . \nSentiment:"
    assert sst2_instances[0].gold == 1


def test_importing_suite_stays_light():
    code = (
        "import sys, pytest_modelcompat.tasks.suite\n"
        "heavy = {'torch', 'transformers', 'lm_eval', 'datasets'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- property test

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=True), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
templates = st.one_of(
    st.sampled_from(["{{goal}}", "{{sol1}}", "label", "{{label}}", "{{missing}}", "{{goal", "{{ [sol1, sol2] }}",
                     "{{ label + 1 }}", "{% for x in goal %}{{x}}{% endfor %}", "{{ goal | regex_replace('a', 'b') }}"]),
    st.text(max_size=12),
)
task_entries = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["a", "b"]), scalars)},
    optional={
        "kind": st.one_of(st.sampled_from(["multiple_choice", "exact_match", "generative"]), scalars),
        "data": st.sampled_from(["data/valid.jsonl", "data/rows.csv", "data/none.jsonl", "$NOPE/x.tsv", ""]),
        "text": st.one_of(templates, scalars),
        "choices": st.one_of(templates, st.lists(templates, max_size=3), scalars),
        "label": st.one_of(templates, scalars),
        "target": st.one_of(templates, scalars),
        "delimiter": st.one_of(st.just(" "), scalars),
        "normalize": scalars,
        "limit": scalars,
        "gate": st.one_of(st.dictionaries(st.sampled_from(["max_nfr", "min_btc", "max_m_r", "bogus"]), scalars, max_size=2), scalars),
        "extract": st.one_of(st.sampled_from(["#### (\\d+)", "(", "x"]), scalars),
        "stop": st.one_of(st.lists(st.text(max_size=3), max_size=2), scalars),
        "max_new_tokens": scalars,
        "metric": st.one_of(st.sampled_from(["rouge1", "rougeL", "nope"]), scalars),
        "extra": scalars,
    },
)
suites = st.one_of(values, st.fixed_dictionaries({"tasks": st.one_of(st.lists(task_entries, max_size=3), values)}))
row_values = st.dictionaries(st.sampled_from(["idx", "goal", "sol1", "sol2", "label"]), values, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=suites, rows=st.lists(row_values, max_size=4), raw_csv=st.text(max_size=40))
def test_random_suites_and_rows_raise_only_input_errors(tmp_path, document, rows, raw_csv):
    (tmp_path / "data").mkdir(exist_ok=True)
    write_jsonl(tmp_path / "data" / "valid.jsonl", rows)
    (tmp_path / "data" / "rows.csv").write_text(raw_csv, encoding="utf-8")
    path = tmp_path / "modelcompat.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    try:
        for spec in load_suite(path):
            if spec.lm_eval is None:
                spec.fingerprint()
                load_instances(spec)
    except CompatInputError as error:
        assert "\n" not in str(error).strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row_values, min_size=1, max_size=4), choices=st.sampled_from([["{{sol1}}", "{{sol2}}"], "{{sol1}}", "sol1"]),
       label=st.sampled_from(["{{label}}", "label"]))
def test_random_rows_under_valid_suites_raise_only_input_errors(tmp_path, rows, choices, label):
    (tmp_path / "data").mkdir(exist_ok=True)
    write_jsonl(tmp_path / "data" / "valid.jsonl", rows)
    tasks = [
        mc_task(choices=choices, label=label),
        {"name": "gen", "kind": "generative", "data": "data/valid.jsonl", "text": "{{goal}}", "target": "sol1"},
    ]
    for spec in load_suite(write_suite(tmp_path, tasks)):
        try:
            instances = load_instances(spec)
        except CompatInputError as error:
            assert "\n" not in str(error).strip()
        else:
            assert len(instances) == len(rows)
            assert all(isinstance(i.context, str) and isinstance(i.gold, (int, str)) for i in instances)


def test_train_split_is_its_own_task_for_the_cache(suite_dir):
    # muscle's teacher predictions live in the result cache under the train split's fingerprint: the same
    # ids (row 0, 1, ...) in the eval and train files must never share entries.
    write_jsonl(suite_dir / "data" / "train.jsonl", [dict(row, label=1 - int(row["label"])) for row in ROWS])
    [task] = load_suite(write_suite(suite_dir, [mc_task(train="data/train.jsonl", limit=2)]))
    train = task.train_split()
    assert train.fingerprint() != task.fingerprint()
    assert [i.gold for i in load_instances(train)] == [1 - int(row["label"]) for row in ROWS]   # all rows, no limit
    assert [i.id for i in load_instances(train)] == [i.id for i in load_instances(task, limit=len(ROWS))]
    # the eval split's fingerprint does not depend on the train file (its cache entries stay valid)
    [without_train] = load_suite(write_suite(suite_dir, [mc_task(limit=2)]))
    assert without_train.fingerprint() == task.fingerprint()
