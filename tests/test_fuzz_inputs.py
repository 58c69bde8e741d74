"""Hypothesis fuzzing of what users hand us as files: suite YAML text and data files.

Whatever the bytes, loading a suite and its data ends in task specs and instances or in one
``CompatInputError`` whose message is a single non-empty line; no other exception escapes. The
strategies start from a valid suite and valid rows and damage them (cut, splice, swap values,
raw bytes), so most examples get deep into parsing instead of failing at the first character.
"""

from __future__ import annotations

import json
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.gate import validate_gate
from pytest_modelcompat.tasks.spec import row_ids
from pytest_modelcompat.tasks.suite import load_instances, load_suite
from pytest_modelcompat.tasks.template_source import read_rows

VALID_SUITE = """\
tasks:
  - name: piqa
    kind: multiple_choice
    data: rows.jsonl
    train: rows.jsonl
    text: "Question: {{goal}}\\nAnswer:"
    choices: ["{{sol1}}", "{{sol2}}"]
    label: "{{label}}"
    delimiter: " "
    normalize: false
    limit: 3
    gate: {max_nfr: 0.05, max_nfr_upper: 0.08, min_btc: 0.9, min_acc_delta: 0.0}
  - name: math
    kind: exact_match
    data: rows.csv
    text: "Question: {{goal}}\\nAnswer:"
    target: "{{sol1}}"
    extract: "#### *(-?[0-9.,]+)"
    max_new_tokens: 16
    stop: ["\\n\\n", "Question:"]
  - name: summary
    kind: generative
    data: rows.tsv
    text: "Dialogue:\\n{{goal}}\\nSummary:"
    target: "{{sol2}}"
    metric: rouge1
    gate: {max_nfr_smooth: 0.35, max_m_r: 0.15, min_score_delta: 0.0}
"""
ROWS = [
    {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "hit it", "label": 0},
    {"goal": "Dry hair", "sol1": "use water", "sol2": "use a towel", "label": 1},
    {"goal": "Cut bread", "sol1": "a knife", "sol2": "a spoon", "label": "0"},
]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Pieces that mean something to YAML, Jinja2, JSON or CSV: splicing them in reaches the parsers'
# edge cases much faster than uniform random text.
SYNTAX = st.sampled_from([
    "{{", "}}", "{%", "%}", "{#", "{{ goal }}", "{{ nope }}", "{{ goal|int }}", "{{ 1/0 }}", "{{ goal[5] }}",
    "{% for x in goal %}{{x}}{% endfor %}", "{{ label + 1 }}", ":", "- ", "\n", "\t", "  ", "'", '"', ",",
    "[", "]", "{", "}", "&a", "*a", "!!python/object:os.system", "~", "null", "yes", "1e999", "-1", "0",
    ".nan", "\x00", "\ufeff", "\udcff", "é", "$NOPE", "${HOME}", "../", "/", "kind: nope",
    "tasks:", "data: missing.jsonl", "gate: {max_nfr: 2}", "gate: {max_nfr: x}", "label: '{{label}}'",
])


@st.composite
def damaged_text(draw, valid: str) -> str:
    """``valid`` with a few random cuts, splices of syntax pieces and random characters."""
    text = valid
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        insert = draw(st.one_of(SYNTAX, st.text(max_size=4), st.just("")))
        text = text[:start] + insert + text[end:]
    return text


def _scalar():
    return st.one_of(
        st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True),
        st.text(alphabet=string.printable, max_size=8), SYNTAX,
    )


row_values = st.recursive(_scalar(), lambda inner: st.one_of(st.lists(inner, max_size=2),
                                                             st.dictionaries(st.text(max_size=3), inner, max_size=2)),
                          max_leaves=4)
damaged_rows = st.lists(
    st.fixed_dictionaries({}, optional={
        "goal": row_values, "sol1": row_values, "sol2": row_values, "label": row_values, "id": row_values,
        "idx": row_values,
    }),
    max_size=4,
)


def _one_line(error: CompatInputError) -> None:
    message = str(error)
    assert message.strip(), "an input error must say what is wrong"
    assert "\n" not in message.strip(), message


def _write_valid_data(directory) -> None:
    (directory / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    for name, sep in (("rows.csv", ","), ("rows.tsv", "\t")):
        lines = [sep.join(ROWS[0])] + [sep.join(str(value) for value in row.values()) for row in ROWS]
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _load_everything(suite_path) -> None:
    for spec in load_suite(suite_path):
        spec.fingerprint()
        for split in ("data", "train"):
            if split == "data" or spec.train is not None:
                load_instances(spec, split=split)


def test_the_undamaged_fixture_loads(tmp_path):
    _write_valid_data(tmp_path)
    (tmp_path / "modelcompat.yaml").write_text(VALID_SUITE, encoding="utf-8")
    specs = load_suite(tmp_path / "modelcompat.yaml")
    assert [len(load_instances(spec)) for spec in specs] == [3, 3, 3]


@FUZZ
@given(text=damaged_text(VALID_SUITE))
def test_damaged_suite_yaml_raises_only_input_errors(tmp_path, text):
    _write_valid_data(tmp_path)
    suite = tmp_path / "modelcompat.yaml"
    suite.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        _load_everything(suite)
    except CompatInputError as error:
        _one_line(error)


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt", ""]))
def test_raw_bytes_as_a_data_file_raise_only_input_errors(tmp_path, data, suffix):
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(data)
    try:
        rows = read_rows(path)
        row_ids(rows, str(path))
    except CompatInputError as error:
        _one_line(error)
    else:
        assert rows and all(isinstance(row, dict) for row in rows)


@FUZZ
@given(valid=st.sampled_from(["rows.jsonl", "rows.csv", "rows.tsv"]), data=st.data())
def test_damaged_data_files_raise_only_input_errors(tmp_path, valid, data):
    _write_valid_data(tmp_path)
    (tmp_path / "modelcompat.yaml").write_text(VALID_SUITE, encoding="utf-8")
    path = tmp_path / valid
    path.write_text(data.draw(damaged_text(path.read_text(encoding="utf-8"))), encoding="utf-8",
                    errors="surrogatepass")
    try:
        _load_everything(tmp_path / "modelcompat.yaml")
    except CompatInputError as error:
        _one_line(error)


@FUZZ
@given(rows=damaged_rows, template=st.one_of(SYNTAX, damaged_text("{{goal}} and {{sol1}}")),
       choices=st.one_of(st.lists(st.one_of(SYNTAX, st.just("{{sol1}}")), min_size=1, max_size=3), SYNTAX),
       label=st.one_of(SYNTAX, st.sampled_from(["{{label}}", "label", "{{sol1}}"])))
def test_random_rows_and_templates_raise_only_input_errors(tmp_path, rows, template, choices, label):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task = {"name": "t", "kind": "multiple_choice", "data": "rows.jsonl", "text": template,
            "choices": choices, "label": label}
    (tmp_path / "modelcompat.yaml").write_text(yaml.safe_dump({"tasks": [task]}), encoding="utf-8")
    try:
        for spec in load_suite(tmp_path / "modelcompat.yaml"):
            instances = load_instances(spec)
            assert all(0 <= inst.gold < len(inst.choices) for inst in instances)
    except CompatInputError as error:
        _one_line(error)


@FUZZ
@given(gate=st.one_of(row_values, st.dictionaries(
    st.sampled_from(["max_nfr", "max_nfr_upper", "min_acc_delta", "max_m_r", "bogus"]), row_values, max_size=3)),
    kind=st.sampled_from([None, "multiple_choice", "exact_match", "generative"]))
def test_random_gate_mappings_raise_only_input_errors(gate, kind):
    try:
        checked = validate_gate(gate, kind)
    except CompatInputError as error:
        _one_line(error)
    else:
        assert all(-1.0 <= value <= 1.0 for value in checked.values())


@pytest.mark.parametrize("text", ["", "\x00", "tasks: !!python/object/apply:os.system ['true']", "a: [", "\t- x"])
def test_hostile_suite_text_is_an_input_error(tmp_path, text):
    (tmp_path / "modelcompat.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(CompatInputError) as error:
        load_suite(tmp_path / "modelcompat.yaml")
    _one_line(error.value)
