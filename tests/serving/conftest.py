"""A live server on loopback (tw-small and tw-large, an API key, a tiny token classifier
for compression), shared by the serving tests, and clients for it."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra (fastapi, uvicorn)")
openai = pytest.importorskip("openai", reason="the API tests use the real openai client")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

API_KEY = "test-key-not-secret"
MAX_TOKENS_LIMIT = 64


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory):
    from tests.compression.helpers import generated_texts, save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("serve-clf") / "tiny-bert",
                          generated_texts(20, seed=2))


@pytest.fixture(scope="session")
def server(small, large, classifier_dir):
    """``(base_url, app)`` of a server running in a background thread."""
    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, api_key=API_KEY, max_tokens_limit=MAX_TOKENS_LIMIT,
                          max_request_bytes=20_000, batch_window_ms=20,
                          compress_models={"token_classifier": str(classifier_dir)})
    with serve_in_thread(config, models={"tw-small": small, "tw-large": large}) as url:
        yield url


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def aclient(server):
    return openai.AsyncOpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0,
                              timeout=60)
