"""Reports: task records → report.json / report.md / report.html, the terminal table and verdicts.

- ``records.py``: records, report.json and its views;
- ``templates/report.html``: the Jinja2 template of report.html; ``schema/report.schema.json``:
  the JSON Schema of report.json (docs/report-schema.md). Both ship as package data.
"""
