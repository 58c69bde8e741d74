"""Reports: task records → report.json / report.md / report.html, the terminal table and verdicts.

- ``records.py``: task records (JSON-able, so xdist workers ship them) and the report.json object;
- ``formatting.py``: what every view shares (numbers, summary rows, margins, top flips);
- ``verdict.py``: the message of a failing gate test;
- ``terminal.py``: the rich summary table;
- ``markdown.py``: report.md; ``html_page.py``: report.html (``templates/report.html``), with
  ``word_diff.py`` (old vs new generation) and ``histogram.py`` (D(x) as inline SVG);
- ``files.py``: writes the three report files;
- ``schema/report.schema.json``: the JSON Schema of report.json (docs/report-schema.md).

``templates/`` and ``schema/`` ship as package data. Nothing here imports rich or jinja2 at import time.
"""
