"""Fixtures of the GGUF and real-model tests: a private cache and a tiny GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.models.helpers import write_tiny_gguf


@pytest.fixture
def tw_cache(tmp_path, monkeypatch) -> Path:
    """A private, empty tokenwise cache for the test."""
    root = tmp_path / "tw-cache"
    monkeypatch.setenv("TOKENWISE_CACHE", str(root))
    return root


@pytest.fixture
def tiny_gguf(tmp_path) -> tuple[Path, torch.nn.Module]:
    """A tiny Llama GGUF (no BOS added, like SmolLM2) and the HF model with its weights."""
    path = tmp_path / "ggufs" / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)
