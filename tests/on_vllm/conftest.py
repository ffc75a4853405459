"""Fixtures for the tests that run inside a real vLLM engine (``make test-vllm``).

vLLM pins its own torch and transformers, so these tests run in their own venv
(``.venv-vllm``); in the main suite vLLM is absent and every test here skips with that
reason. ``TOKENWISE_REQUIRE_VLLM=1`` (set by ``make test-vllm``) turns the skip into a
failure, so CI cannot pass by silently skipping them.

One engine is started per test session (start-up costs ~30 s on two CPU cores) and shared
by every test that takes the ``llm`` fixture; it has all tokenwise logits processors
registered (the entropy recorder first, so it sees the raw logits), the worker extension
that hands the recorder's statistics back, and full-vocabulary logprobs allowed.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
REQUIRED = os.environ.get("TOKENWISE_REQUIRE_VLLM") == "1"

# What start-up needs on a CPU node: a small memory fraction (the default 0.92 fails),
# a bounded context, eager mode (no graph capture on CPU).
ENGINE_KWARGS = dict(gpu_memory_utilization=0.3, max_model_len=256, enforce_eager=True,
                     dtype="float32", seed=0, max_logprobs=-1)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    mine = [item for item in items if str(item.fspath).startswith(here)]
    for item in mine:
        item.add_marker(pytest.mark.vllm)
    if HAVE_VLLM:
        return
    if REQUIRED:
        raise pytest.UsageError("TOKENWISE_REQUIRE_VLLM=1 but vllm is not importable here")
    skip = pytest.mark.skip(reason="vLLM is not installed in this environment "
                                   "(make test-vllm runs these in .venv-vllm)")
    for item in mine:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def builtin_small_path() -> str:
    from tokenwise.models import builtin_path

    return str(builtin_path("tw-small"))


@pytest.fixture(scope="session")
def llm(builtin_small_path):
    """A vLLM ``LLM`` on tw-small with every tokenwise logits processor registered."""
    from vllm import LLM

    from tokenwise.vllm import WORKER_EXTENSION, EntropyRecorder
    from tokenwise.vllm.processors import PROCESSORS

    engine = LLM(model=builtin_small_path, logits_processors=[EntropyRecorder, *PROCESSORS],
                 worker_extension_cls=WORKER_EXTENSION, **ENGINE_KWARGS)
    yield engine
    del engine
