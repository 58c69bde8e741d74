"""Base models: which base a stack is built on, where it is loaded from, and loading it.

An explicit ``base`` wins, else the adapter's ``base_model_name_or_path``. A reference ending in
``.gguf`` is a GGUF file: it is converted once to a safetensors directory under
``<cache home>/gguf/<sha256 of the file>/`` (``gguf.py``) and that copy is what is loaded (and
hashed) from then on. An existing directory is a local Hugging Face model dir (safetensors only
unless ``allow_pickle``). Anything else that does not look like a filesystem path is a hub name,
loaded with a plain ``from_pretrained(name)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.models.adapters import read_adapter_config
from pytest_modelcompat.models.devices import DEFAULT_DEVICE, DEFAULT_DTYPE, resolve_device, torch_dtype
from pytest_modelcompat.models.fingerprints import base_fingerprint, hub_base_identity, local_base_identity
from pytest_modelcompat.models.gguf import convert_gguf
from pytest_modelcompat.progress import quiet_third_party_output


def _looks_like_path(reference: str) -> bool:
    return (
        os.path.isabs(reference) or reference.startswith((".", "~")) or reference.count("/") > 1
        or os.sep != "/" and os.sep in reference
    )


def check_base_path(base: str | os.PathLike) -> None:
    """Without loading anything: CompatInputError when ``base`` names a local model that is not
    there (a missing .gguf file or directory, or a plain file); a hub name passes."""
    reference = os.path.expanduser(str(base))
    if reference.endswith(".gguf"):
        if not os.path.isfile(reference):
            raise CompatInputError(f"GGUF file {reference!r} does not exist; pass an existing .gguf model file")
    elif not os.path.isdir(reference) and (os.path.exists(reference) or _looks_like_path(reference)):
        what = "is a file, not a model directory" if os.path.exists(reference) else "does not exist"
        raise CompatInputError(
            f"base {reference!r} {what}; pass a Hugging Face model dir, a .gguf file or a hub name"
        )


def base_reference(adapter: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """The base a stack is built on: ``base`` if given, else the adapter's ``base_model_name_or_path``.

    Cheap (no model load): CompatInputError when the adapter names no base or the reference is a
    filesystem path that does not exist here (hub names are only checked when loaded).
    """
    if base is None:
        base = read_adapter_config(adapter).get("base_model_name_or_path")
        if not base:
            raise CompatInputError(
                f"adapter {str(adapter)!r} does not name its base (base_model_name_or_path); pass the base explicitly (--old-base/--new-base)"
            )
        named = os.path.expanduser(base)
        if _looks_like_path(named) and not os.path.exists(named):  # typically trained on another machine
            raise CompatInputError(
                f"adapter {str(adapter)!r} names base {base!r} (base_model_name_or_path), which does not exist here; "
                f"pass the base explicitly (--old-base/--new-base)"
            )
        return base
    check_base_path(base)
    return str(base)


def base_source(base: str | os.PathLike) -> tuple[str, str | Path]:
    """(resolved reference, what from_pretrained loads: a local dir as a Path, else a hub name).

    A .gguf base is converted once to a cached safetensors dir.
    """
    reference = os.path.expanduser(str(base))
    check_base_path(reference)
    if reference.endswith(".gguf"):
        reference = os.path.abspath(reference)
        return reference, convert_gguf(reference)
    if os.path.isdir(reference):
        reference = os.path.abspath(reference)
        return reference, Path(reference)
    return reference, reference


def _load_error(reference: str, load_from: str | Path, exc: Exception) -> CompatInputError:
    if isinstance(load_from, Path):
        return CompatInputError(
            f"base {reference!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"re-save it with save_pretrained"
        )
    return CompatInputError(
        f"base {reference!r} is not a local model dir or .gguf file and could not be loaded from the "
        f"Hugging Face hub ({type(exc).__name__}); check the name and network, or pass a local base dir"
    )


def _tokenizer_from(reference: str, load_from: str | Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(load_from, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error(reference, load_from, exc) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CompatInputError(f"the tokenizer of base {reference!r} has neither a pad nor an eos token; add one to it")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(base: str | os.PathLike, *, trust_remote_code: bool = False):
    """The tokenizer of a base (as :func:`load_base` returns it) without loading the model: cheap
    enough to compare vocabularies before any model load."""
    return _tokenizer_from(*base_source(base), trust_remote_code)


def _skeleton(base: str | os.PathLike, trust_remote_code: bool):
    """A meta-device model of the base's config (no weights are read); None when the config cannot
    be read without loading (a hub name not in the local cache)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    _, load_from = base_source(base)
    try:
        config = AutoConfig.from_pretrained(load_from, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def linear_module_names(base: str | os.PathLike, *, trust_remote_code: bool = False) -> set[str] | None:
    """The names (last component, as PEFT's ``target_modules`` match them) of the base's linear
    layers, from a meta-device skeleton of its config: no weights are read. None when the config
    cannot be read without loading (a hub name not in the local cache)."""
    import torch

    skeleton = _skeleton(base, trust_remote_code)
    if skeleton is None:
        return None
    return {name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules()
            if isinstance(module, torch.nn.Linear)}


def parameter_shapes(base: str | os.PathLike, *, trust_remote_code: bool = False) -> dict[str, tuple] | None:
    """name → shape of every parameter of the base, from a meta-device skeleton of its config (no
    weights are read): two bases of one architecture have equal ones. None when the config cannot
    be read without loading."""
    skeleton = _skeleton(base, trust_remote_code)
    if skeleton is None:
        return None
    return {name: tuple(p.shape) for name, p in skeleton.named_parameters()}


def load_base(base: str | os.PathLike, *, device: str = DEFAULT_DEVICE, dtype: str = DEFAULT_DTYPE,
              allow_pickle: bool = False, trust_remote_code: bool = False):
    """Load a base model and its tokenizer; return ``(model, tokenizer, base_fingerprint)``.

    The model is in eval mode with gradients off, on ``device``; its ``name_or_path`` is the
    resolved reference (absolute path, hub name or GGUF file) so adapters trained on it record a
    base that :func:`~pytest_modelcompat.models.stack.load_stack` can find again. The tokenizer
    has a pad token (eos if it had none; the vocabulary is unchanged).
    """
    from transformers import AutoModelForCausalLM

    quiet_third_party_output()
    torch_device = resolve_device(device)
    dtype_of_weights = torch_dtype(dtype)
    reference, load_from = base_source(base)
    # A hub name's identity is filled in after loading, when the hub cache knows the commit.
    identity: dict[str, Any] = local_base_identity(load_from, allow_pickle) if isinstance(load_from, Path) else {}
    tokenizer = _tokenizer_from(reference, load_from, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            load_from, dtype=dtype_of_weights, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError) as exc:
        raise _load_error(reference, load_from, exc) from None
    if not identity:
        identity = hub_base_identity(reference)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.name_or_path = reference
    model.requires_grad_(False)
    model.to(torch_device).eval()
    return model, tokenizer, base_fingerprint(identity, dtype)
