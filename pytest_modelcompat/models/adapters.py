"""PEFT adapters: reading and checking an adapter directory, and attaching it to a base model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.progress import quiet_third_party_output

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"


def read_adapter_config(adapter: str | os.PathLike) -> dict:
    """The adapter's ``adapter_config.json`` as a dict; CompatInputError if the dir or file is unusable."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise CompatInputError(f"adapter directory {str(adapter)!r} does not exist; pass a PEFT adapter dir (save_pretrained output)")
    config_path = adapter / ADAPTER_CONFIG
    if not config_path.is_file():
        raise CompatInputError(f"adapter {str(adapter)!r} has no {ADAPTER_CONFIG}; pass a PEFT adapter dir (save_pretrained output)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompatInputError(f"{config_path} is not valid JSON ({exc}); re-save the adapter with PEFT save_pretrained") from None
    if not isinstance(config, dict):
        raise CompatInputError(f"{config_path} is not a JSON object; re-save the adapter with PEFT save_pretrained")
    return config


def _adapter_weights(adapter: Path, allow_pickle: bool) -> Path:
    """The weights file PEFT will load, refusing pickle unless allowed."""
    if (adapter / ADAPTER_SAFETENSORS).is_file():
        return adapter / ADAPTER_SAFETENSORS
    if (adapter / ADAPTER_PICKLE).is_file():
        if not allow_pickle:
            raise CompatInputError(
                f"adapter {str(adapter)!r} has only pickle weights ({ADAPTER_PICKLE}); re-save it as "
                f"safetensors (PEFT save_pretrained) or allow pickle loading explicitly (--allow-pickle; allow_pickle=True in Python)"
            )
        return adapter / ADAPTER_PICKLE
    raise CompatInputError(f"adapter {str(adapter)!r} has no {ADAPTER_SAFETENSORS}; pass a PEFT adapter dir (save_pretrained output)")


def check_adapter_files(adapter: str | os.PathLike, *, allow_pickle: bool = False) -> Path:
    """Validate an adapter dir without loading torch: its config parses and its weights file is
    there, allowed (pickle only with ``allow_pickle``) and, for safetensors, has an intact header
    that covers the whole file (catches truncated copies). Returns the weights file."""
    adapter = Path(adapter)
    read_adapter_config(adapter)
    weights = _adapter_weights(adapter, allow_pickle)
    if weights.name == ADAPTER_SAFETENSORS:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="numpy"):
                pass
        except (SafetensorError, OSError) as exc:
            raise CompatInputError(
                f"{weights} is corrupt or truncated ({str(exc).splitlines()[0]}); re-save or re-copy the adapter"
            ) from None
    return weights


def attach_adapter(model, adapter: str | os.PathLike, *, name: str = "default", trainable: bool = False,
                   allow_pickle: bool = False):
    """Put the PEFT adapter at ``adapter`` on ``model`` under ``name`` and return the PeftModel.

    ``model`` is a base from :func:`~pytest_modelcompat.models.bases.load_base` or a PeftModel
    that already carries other adapters (the new one is added with ``load_adapter`` and is *not*
    made active: call ``set_adapter(name)``). PEFT puts the whole model in eval mode when it loads
    a frozen (``trainable=False``) adapter. A shape mismatch between adapter and base is a
    CompatInputError.
    """
    from peft import PeftModel

    quiet_third_party_output()
    adapter = Path(adapter)
    check_adapter_files(adapter, allow_pickle=allow_pickle)
    base_name = model.name_or_path if hasattr(model, "name_or_path") else "the base model"
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter), adapter_name=name, is_trainable=trainable)
            peft_model = model
        else:
            peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name=name, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as exc:
        message = str(exc)
        if "size mismatch" in message or "not found in the base model" in message:
            raise CompatInputError(
                f"adapter {str(adapter)!r} does not fit base {base_name!r} (its LoRA shapes or target "
                f"modules were made for another base); pass the base it was trained on"
            ) from None
        raise
    return peft_model
