"""Scoring spread over the processes a launcher started: ``accelerate launch --num_processes N -m
muscle.cli eval ...``.

Each process scores a contiguous share of a stack's instances (accelerate's
``split_between_processes``) and every process gets all the predictions back in instance order
(``gather_object``); only the main process writes the result cache, reports and snapshots. The
scores are the ones a single process computes: a row is padded to a width that depends on its own
length only (``engine``, "Batch invariance"), so which rows share its process or its batch changes
nothing: bit for bit in float32 on CPU; on GPUs or in bfloat16/float16 to within floating-point
tolerance.

In a plain run (no launcher) nothing is imported or initialised: ``processes`` is None and a
process's share is everything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from accelerate import PartialState

Item = TypeVar("Item")
Result = TypeVar("Result")
# How many processes the launcher started: torchrun (which `accelerate launch` runs) sets
# WORLD_SIZE, MPI launchers the others; accelerate reads the same variables.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes(device: str) -> PartialState | None:
    """accelerate's state of the processes a launcher started, or None in a plain run.

    ``device`` picks how they talk: gloo between CPU processes, NCCL between GPUs (accelerate puts
    each process on its own GPU, which ``cuda`` and ``auto`` then mean)."""
    if all(int(os.environ.get(name, "1")) <= 1 for name in _WORLD_SIZE_VARIABLES):
        return None
    from accelerate import PartialState

    from pytest_modelcompat.models.devices import resolve_device

    return PartialState(cpu=resolve_device(device).type == "cpu")


def is_main_process(processes: PartialState | None) -> bool:
    """Whether this process writes files and prints: always in a plain run."""
    return processes is None or processes.is_main_process


def across_processes(processes: PartialState | None, compute: Callable[[Sequence[Item]], list[Result]],
                     items: Sequence[Item]) -> list[Result]:
    """``compute(items)``, with the items split between ``processes`` (contiguous shares in process
    order) and the results gathered back, in item order, on every process."""
    if processes is None:
        return compute(items)
    from accelerate.utils import gather_object

    with processes.split_between_processes(list(items)) as share:
        return gather_object(compute(share))
