from __future__ import annotations

import pytest

from tests import tiny


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return tiny.build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_tokenizer):
    """v1 base: a tiny random Llama saved as safetensors."""
    return tiny.build_base(tmp_path_factory.mktemp("base_v1"), tiny_tokenizer, seed=1)


@pytest.fixture(scope="session")
def tiny_base_v2(tmp_path_factory, tiny_tokenizer):
    """v2 base: same architecture and vocabulary, different weights."""
    return tiny.build_base(tmp_path_factory.mktemp("base_v2"), tiny_tokenizer, seed=2)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_base):
    """A1: random-initialised LoRA on the v1 base (base_model_name_or_path = its local dir)."""
    return tiny.build_adapter(tmp_path_factory.mktemp("adapter_v1"), tiny_base, seed=11)


@pytest.fixture(scope="session")
def tiny_adapter_v2(tmp_path_factory, tiny_base_v2):
    """A2: random-initialised LoRA on the v2 base."""
    return tiny.build_adapter(tmp_path_factory.mktemp("adapter_v2"), tiny_base_v2, seed=12)


# CI machines are small and shared: hypothesis' per-example deadline would only add flakiness.
from hypothesis import settings  # noqa: E402

settings.register_profile("modelcompat", deadline=None)
settings.load_profile("modelcompat")
