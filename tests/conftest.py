"""Shared fixtures: the built-in models (loaded once) and tiny random HF models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def small():
    from tokenwise.models import load

    return load("tw-small")


@pytest.fixture(scope="session")
def large():
    from tokenwise.models import load

    return load("tw-large")


@pytest.fixture(scope="session")
def testbed():
    from tokenwise.testbed.worlds import Testbed

    return Testbed(0)


def save_tiny_llama(path: Path, vocab_size: int = 96, context: int = 64, seed: int = 0) -> Path:
    """A tiny random Llama with the built-in tokenizer, saved as safetensors in ``path``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tokenwise.models import builtin_path

    tok = AutoTokenizer.from_pretrained(builtin_path("tw-small"))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=max(vocab_size, len(tok)), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=context, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
