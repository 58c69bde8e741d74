"""Adapter stacks: a base model (``bases.py``) plus a PEFT adapter (``adapters.py``), loaded for
inference, with the fingerprint the result cache is keyed by (``fingerprints.py``), and what
loading would refuse, found without loading torch (:func:`check_stack_files`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.models.adapters import attach_adapter, check_adapter_files
from pytest_modelcompat.models.bases import base_reference, base_source, load_base
from pytest_modelcompat.models.devices import DEFAULT_DEVICE, DEFAULT_DTYPE, resolve_device
from pytest_modelcompat.models.fingerprints import (
    adapter_fingerprint,
    base_fingerprint,
    combine,
    local_base_identity,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass
class Stack:
    model: torch.nn.Module          # PeftModel (or the merged plain model), eval mode, on device
    tokenizer: PreTrainedTokenizerBase
    adapter: str                    # adapter dir as given
    base: str                       # base reference as resolved (abs path / hub name / gguf file)
    fingerprint: str                # sha256 hex; see fingerprints.py
    device: torch.device


def check_stack_files(adapter: str | os.PathLike, base: str | os.PathLike | None = None, *,
                      allow_pickle: bool = False, which: str | None = None) -> str:
    """What :func:`load_stack` would refuse, found without loading torch or a model: the adapter
    dir (``adapters.check_adapter_files``) and the base reference (``bases.base_reference``,
    returned).

    ``which`` ("old" / "new") prefixes a message with the option to fix (``--old-adapter`` or,
    for an explicit base, ``--old-base``), as the entry points name them.
    """
    def named(option: str, error: CompatInputError) -> CompatInputError:
        return error if which is None else CompatInputError(f"--{which}-{option}: {error}")

    try:
        check_adapter_files(adapter, allow_pickle=allow_pickle)
    except CompatInputError as exc:
        raise named("adapter", exc) from None
    try:
        return base_reference(adapter, base)
    except CompatInputError as exc:
        raise named("adapter" if base is None else "base", exc) from None


def stack_fingerprint(adapter: str | os.PathLike, base: str | os.PathLike | None = None, *,
                      dtype: str = DEFAULT_DTYPE, allow_pickle: bool = False) -> str | None:
    """The fingerprint :func:`load_stack` gives this stack, without loading the model, so cached
    predictions can be found without it; None for a hub base (its identity is the hub commit,
    known only once loaded)."""
    _, load_from = base_source(base_reference(adapter, base))
    if not isinstance(load_from, Path):
        return None
    base_fp = base_fingerprint(local_base_identity(load_from, allow_pickle), dtype)
    return combine(base_fp, adapter_fingerprint(adapter, allow_pickle=allow_pickle))


def load_stack(adapter: str | os.PathLike, base: str | os.PathLike | None = None, *,
               device: str = DEFAULT_DEVICE, dtype: str = DEFAULT_DTYPE, merge: bool = False, allow_pickle: bool = False,
               trust_remote_code: bool = False) -> Stack:
    """Base + PEFT adapter, ready for inference (eval mode, no grad), with its fingerprint.

    ``base`` overrides the adapter's ``base_model_name_or_path``. ``merge=True`` folds the LoRA
    weights into the base (``merge_and_unload``): faster inference, same predictions up to fp
    rounding.
    """
    torch_device = resolve_device(device)
    adapter_fp = adapter_fingerprint(adapter, allow_pickle=allow_pickle)  # validates before the heavy load
    base = base_reference(adapter, base)
    model, tokenizer, base_fp = load_base(
        base, device=str(torch_device), dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    peft_model = attach_adapter(model, adapter, allow_pickle=allow_pickle)
    final = peft_model.merge_and_unload() if merge else peft_model
    final.eval()
    return Stack(
        model=final,
        tokenizer=tokenizer,
        adapter=str(adapter),
        base=model.name_or_path,
        fingerprint=combine(base_fp, adapter_fp),
        device=torch_device,
    )
