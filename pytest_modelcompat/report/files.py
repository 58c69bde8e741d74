"""Writing a run's report files: report.json, report.md and report.html, each atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_modelcompat.atomic import atomic_write
from pytest_modelcompat.report.html_page import render_html
from pytest_modelcompat.report.markdown import render_markdown
from pytest_modelcompat.report.records import build_report


def write_reports(directory: str | Path, records: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``directory``, each atomically."""
    directory = Path(directory)
    report = build_report(records)
    paths = {name: directory / f"report.{name}" for name in ("json", "md", "html")}
    atomic_write(paths["json"], json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write(paths["md"], render_markdown(report, records))
    atomic_write(paths["html"], render_html(report, records))
    return paths
