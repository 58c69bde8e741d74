"""What the product shows while it works: one rich progress bar for every long-running step
(scoring, generation, training), the ``progress=`` protocol the scoring functions take, and
third-party progress bars and chatter kept out of the output."""

from __future__ import annotations

from collections.abc import Callable
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


def progress_advancer(progress: Any, description: str, total: int) -> Callable[[int], None]:
    """Turn the ``progress=`` argument into an ``advance(n)`` function.

    ``progress`` may be ``None`` (no reporting), a ``rich.progress.Progress`` (a task named
    ``description`` is added to it), or any callable taking the number of items just finished.
    """
    if progress is None:
        return lambda n: None
    if hasattr(progress, "add_task"):
        task_id = progress.add_task(description, total=total)
        return lambda n: progress.advance(task_id, n)
    return progress


def quiet_third_party_output() -> None:
    """Keep third-party chatter out of the product's output: transformers' per-load tqdm bars
    ("Loading weights", "Writing model shards") and its info logs, and the FutureWarning PEFT
    triggers by reading transformers' renamed ``is_gradient_checkpointing``. Called before every
    model load or save (idempotent); the product shows its own single rich progress instead."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
