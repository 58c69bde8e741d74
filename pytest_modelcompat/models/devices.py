"""The devices and dtypes a stack can be loaded on: the choices every entry point offers
(``--device``, ``--dtype``, ``--compat-device``), their defaults, and how a device string becomes a
torch device; the one owner that argparse and the pytest options read.

A device is ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` (the current GPU),
``cuda:N``, or ``cuda:{worker}``: one GPU per worker process, so that pytest-xdist workers spread
over the machine's GPUs. ``{worker}`` becomes this process's :func:`worker_number` modulo the number
of GPUs torch sees (after ``CUDA_VISIBLE_DEVICES``): on two GPUs gw0 → cuda:0, gw1 → cuda:1,
gw2 → cuda:0. Options keep the placeholder (checking them needs no torch, :func:`check_device`);
it is replaced when a stack is loaded (:func:`resolve_device`), in the process that loads it: an
xdist worker, never the controller.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pytest_modelcompat.errors import CompatInputError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"
DEVICES = ("auto", "cpu", "cuda")           # the kinds; cuda also as cuda:N and cuda:{worker}
DEFAULT_DEVICE = "auto"
WORKER = "{worker}"
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or cuda:{worker}"
_DEVICE = re.compile(r"auto|cpu|cuda(?::(?:\d+|\{worker\}))?")
_XDIST_WORKER = re.compile(r"gw(\d+)")


def check_device(device: str, label: str) -> str:
    """``device`` when it has one of the forms :data:`DEVICE_FORMS` (nothing is resolved, no torch);
    CompatInputError ``<label> must be one of ..., got <device>`` otherwise."""
    if not _DEVICE.fullmatch(device):
        raise CompatInputError(f"{label} must be one of {DEVICE_FORMS}, got {device!r}")
    return device


def worker_number(environ: Mapping[str, str] = os.environ) -> int:
    """This process's number among the workers on its machine: the pytest-xdist worker's
    (``PYTEST_XDIST_WORKER``, gw3 → 3), else the launcher's ``LOCAL_RANK`` (``accelerate launch``,
    torchrun), else 0."""
    worker = environ.get("PYTEST_XDIST_WORKER")
    if worker is not None:
        match = _XDIST_WORKER.fullmatch(worker)
        if match is None:
            raise CompatInputError(f"cannot place device {WORKER}: PYTEST_XDIST_WORKER is {worker!r}, not gw<N>")
        return int(match.group(1))
    local_rank = environ.get("LOCAL_RANK", "0")
    if not local_rank.isdigit():
        raise CompatInputError(f"cannot place device {WORKER}: LOCAL_RANK is {local_rank!r}, not a number")
    return int(local_rank)


def pin_device(device: str, worker: int, gpus: int) -> str:
    """``device`` with ``{worker}`` replaced by ``worker`` modulo ``gpus``, the number of GPUs
    visible (0: none; the number is kept, and loading then says that there is no GPU)."""
    return device.replace(WORKER, str(worker % gpus if gpus else worker))


def resolve_device(device: str) -> torch.device:
    """The torch device of a device string: ``auto`` → cuda if available else cpu; ``cuda:{worker}``
    → this worker's GPU (:func:`pin_device`). A CUDA device that torch does not see is a
    CompatInputError, as is a string of none of the forms."""
    import torch

    check_device(device, "device")
    if device == "cpu":
        return torch.device("cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return torch.device("cuda" if gpus else "cpu")
    pinned = pin_device(device, worker_number(), gpus) if WORKER in device else device
    named = repr(pinned) if pinned == device else f"{pinned!r} (from {device!r})"
    if not gpus:
        raise CompatInputError(f"device {named} was requested but torch sees no CUDA GPU; use device 'cpu' or 'auto'")
    index = torch.device(pinned).index
    if index is not None and index >= gpus:
        raise CompatInputError(f"device {named} was requested but torch sees {gpus} CUDA GPU(s), cuda:0 to "
                               f"cuda:{gpus - 1}; pick one of those (CUDA_VISIBLE_DEVICES decides which are seen)")
    return torch.device(pinned)


def torch_dtype(dtype: str) -> torch.dtype:
    """The ``torch.dtype`` of one of :data:`DTYPES`; CompatInputError for anything else."""
    import torch

    if dtype not in DTYPES:
        raise CompatInputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}; pick one of those")
    return getattr(torch, dtype)
