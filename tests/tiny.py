"""Tiny, real HF models and PEFT adapters built in seconds, for tests (no hub, no downloads)."""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "Question: what is two plus two? Answer: four",
    "The cat sat on the mat. The dog ate the bone.",
    "Dialogue: Anna: hi Bob, lunch today? Bob: sure, at noon. Summary: Anna and Bob meet for lunch.",
    "Goal: open a jar. Solution one: twist the lid. Solution two: hit it with a spoon.",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 #### answer is",
    "positive negative great terrible movie film review sentence label yes no true false",
] * 4


def build_tokenizer(out: Path, vocab_size: int = 400) -> Path:
    """Train a small byte-level BPE tokenizer and save it as a transformers tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(out)
    return out


def build_base(out: Path, tokenizer_dir: Path, seed: int, hidden: int = 32, layers: int = 2) -> Path:
    """A randomly initialised Llama-architecture causal LM saved as safetensors with a tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_adapter(out: Path, base_dir: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so the adapter changes predictions."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
        init_lora_weights=False, task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    model.save_pretrained(out)
    # PEFT records the base it was given; make it the local path so loading needs no override.
    return out
