"""pytest glue for pytest-modelcompat (registered through the ``pytest11`` entry point).

Thin on purpose: options, fixtures, collection and reporting hooks delegate to the library
modules. Nothing heavy is imported at module level, so unrelated pytest runs stay fast.
"""

from __future__ import annotations

import pytest

# (name, help, extra addoption kwargs). Each is also readable from ini `modelcompat_<name>`.
OPTIONS: list[tuple[str, str, dict]] = [
    ("old_adapter", "PEFT adapter dir of the old (deployed) stack", {"metavar": "PATH"}),
    ("new_adapter", "PEFT adapter dir of the new (candidate) stack", {"metavar": "PATH"}),
    ("old_base", "base model of the old stack (default: the adapter's base_model_name_or_path)",
     {"metavar": "PATH"}),
    ("new_base", "base model of the new stack (default: the adapter's base_model_name_or_path)",
     {"metavar": "PATH"}),
    ("compat_report", "write report.json, report.md and report.html into DIR", {"metavar": "DIR"}),
    ("compat_cache", "result cache dir (default: .modelcompat-cache)", {"metavar": "DIR"}),
    ("compat_limit", "evaluate only the first N instances of each task", {"metavar": "N"}),
    ("compat_batch_size", "batch size for scoring (default 16)", {"metavar": "N"}),
    ("compat_device", "device for both stacks: auto, cpu or cuda (default auto)",
     {"metavar": "{auto,cpu,cuda}"}),
]


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
