"""The rich progress bar every long-running step shows (scoring, generation, training)."""

from __future__ import annotations

from typing import Any


def make_progress(*, disable: bool = False, transient: bool = False, console: Any = None):
    """A ``rich.progress.Progress`` with description, bar, count, elapsed and remaining time.

    Pass it as ``progress=`` to the engine / ``evaluate_task``; each call adds its own task.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), disable=disable, transient=transient, console=console,
    )
