"""The summary table of a run in the terminal (rich), as pytest's terminal summary and ``muscle eval`` print it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_modelcompat.report.formatting import summary_row
from pytest_modelcompat.report.records import sorted_records


def terminal_table(records: Sequence[Mapping[str, Any]], *, width: int, color: bool) -> str:
    """The rich summary table, rendered to a string the pytest terminal reporter writes."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows = [summary_row(record["entry"]) for record in sorted_records(records)]
    table = Table(title="modelcompat: old → new stack", title_justify="left", box=box.SIMPLE_HEAD)
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("task", "kind") else "right",
                         no_wrap=column in ("gate", "n"))
    for row in rows:
        cells = list(row.values())
        cells[-1] = f"[bold green]{cells[-1]}[/]" if cells[-1] == "PASS" else f"[bold red]{cells[-1]}[/]"
        table.add_row(*cells)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, highlight=False)
    # Numbers squeezed into "0.5…" are useless: a narrow terminal gets the table at its natural width.
    console.width = max(width, console.measure(table, options=console.options.update_width(10_000)).maximum)
    console.print(table)
    return buffer.getvalue()
