"""tokenwise's logits processors in vLLM's own OpenAI server (a subprocess, started once),
queried with the real ``openai`` client through ``extra_body={"vllm_xargs": {...}}``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai", reason="the server test uses the real openai client")

from tests.on_vllm.conftest import ENGINE_KWARGS  # noqa: E402

from tokenwise.vllm.processors import PROCESSORS  # noqa: E402

PROMPT = "The city of"
STARTUP_S = 600  # ~40 s alone; much more while other helpers load the machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_flags() -> list[str]:
    """ENGINE_KWARGS as vLLM command-line flags."""
    flags = []
    for key, value in ENGINE_KWARGS.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        else:
            flags += [flag, str(value)]
    return flags


@pytest.fixture(scope="module")
def server(builtin_small_path, tmp_path_factory):
    port = _free_port()
    names = [f"tokenwise.vllm.processors:{cls.__name__}" for cls in PROCESSORS]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
           builtin_small_path, "--served-model-name", "tw-small", "--host", "127.0.0.1",
           "--port", str(port), *_cli_flags(), "--logits-processors", *names]
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as sink:
        # Its own process group: the API server spawns the engine core and a worker.
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM's server exited ({proc.returncode}):\n"
                            + log.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("vLLM's server did not start:\n"
                                + log.read_text(errors="replace")[-3000:])
                time.sleep(1)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def _complete(client, seed: int, xargs: dict | None = None, temperature: float = 1.0) -> str:
    extra = {"vllm_xargs": xargs} if xargs is not None else None
    out = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=16,
                                    temperature=temperature, seed=seed, extra_body=extra)
    return out.choices[0].text


def test_server_runs_our_processor_from_vllm_xargs(server):
    # Top-H over the top 1 candidate keeps only the most likely token: seeded sampling
    # becomes greedy decoding. Without it the same seeds wander off the greedy text.
    greedy = _complete(server, 0, temperature=0.0)
    top1 = {"top_h": 0.5, "top_h_top_n": 1}
    assert [_complete(server, seed, top1) for seed in range(3)] == [greedy] * 3
    assert any(_complete(server, seed) != greedy for seed in range(3))
    # Mirostat and the regime run over HTTP too (their switch keys as JSON values).
    assert _complete(server, 1, {"mirostat_v2": 3.0, "mirostat_v2_eta": 0.2})
    assert _complete(server, 1, {"entropy_regime": True})


@pytest.mark.parametrize(("xargs", "key"), [
    ({"top_h": 2.0}, "top_h"),
    ({"top_h": 0.4, "top_h_rule": "nope"}, "top_h_rule"),
    ({"typical": 0.9, "typical_mas": 0.5}, "typical_mas"),
])
def test_server_answers_400_naming_the_bad_key(server, xargs, key):
    with pytest.raises(openai.BadRequestError) as info:
        _complete(server, 0, xargs)
    assert info.value.status_code == 400
    assert f"'{key}'" in str(info.value)
