"""Fingerprints of adapters, bases and stacks (sha256 hex). The result cache trusts them, so a
fingerprint must change whenever a prediction can.

    stack fingerprint = sha256(base fingerprint, adapter fingerprint)            (:func:`combine`)

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
import json
import os
from pathlib import Path
from typing import Any

from pytest_modelcompat.atomic import atomic_write
from pytest_modelcompat.cache import cache_home
from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.models.adapters import ADAPTER_SAFETENSORS, check_adapter_files, read_adapter_config

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


# --------------------------------------------------------------------------- bases and stacks


def base_files(base_dir: Path, allow_pickle: bool) -> list[Path]:
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


def local_base_identity(base_dir: Path, allow_pickle: bool) -> dict[str, Any]:
    """A local base dir's identity: the content hash of each file that defines the model."""
    return {"files": {path.name: file_sha256(path) for path in base_files(base_dir, allow_pickle)}}


def hub_base_identity(name: str) -> dict[str, Any]:
    """A hub base's identity: its name and the commit the local hub cache resolves it to (known
    after from_pretrained downloaded it; None when not resolvable)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        cached = None
    return {"hub": name, "commit": Path(cached).parent.name if isinstance(cached, str) else None}


def base_fingerprint(identity: dict[str, Any], dtype: str) -> str:
    """A base's fingerprint: its identity and the dtype it is loaded in."""
    return _sha256_json({"base": identity, "dtype": dtype})


def combine(base_fp: str, adapter_fp: str) -> str:
    """A stack's fingerprint from its base's and its adapter's."""
    return _sha256_json({"base": base_fp, "adapter": adapter_fp})
