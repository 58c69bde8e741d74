"""The devices and dtypes a stack can be loaded on: the choices every entry point offers
(``--device``, ``--dtype``, ``--compat-device``) and their defaults, the one owner that argparse
and the pytest options read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_modelcompat.errors import CompatInputError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda if available else cpu; ``cuda`` without a GPU is a CompatInputError."""
    import torch

    kind = device.split(":", 1)[0]
    if kind not in DEVICES or (kind != "cuda" and ":" in device):
        raise CompatInputError(f"device {device!r} is not one of {', '.join(DEVICES)}; pick one of those")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise CompatInputError("device 'cuda' was requested but torch sees no CUDA GPU; use device 'cpu' or 'auto'")
    return torch.device(device)


def torch_dtype(dtype: str) -> torch.dtype:
    """The ``torch.dtype`` of one of :data:`DTYPES`; CompatInputError for anything else."""
    import torch

    if dtype not in DTYPES:
        raise CompatInputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}; pick one of those")
    return getattr(torch, dtype)
