"""SIGTERM drains a real `tokenwise serve` process: the request in flight finishes, new
completion requests (and /health) get 503 on the still-open port, one still running when
the grace period ends gets a final 503 event, and the process exits with status 0."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("uvicorn")

#: seconds each forward pass of the served tw-small is slowed by
DELAY_S = 0.1
GRACE_S = 8.0

#: `tokenwise serve` as the console script runs it, with tw-small's forward pass slowed
#: (the only change), so that requests stay in flight for a known while.
LAUNCHER = f"""
import sys, time
import tokenwise.serving.app as app_module

real = app_module.load_models

def slow_models(specs, device="cpu"):
    models = real(specs, device)
    for lm in models.values():
        def forward(*args, _inner=lm.forward, **kwargs):
            time.sleep({DELAY_S})
            return _inner(*args, **kwargs)
        lm.forward = forward
    return models

app_module.load_models = slow_models
from tokenwise.cli.main import main
sys.argv = ["tokenwise", "serve", *sys.argv[1:]]
main()
"""


@contextlib.contextmanager
def serving(tmp_path: Path, *args: str):
    """``(process, base URL, log path)`` of a `tokenwise serve` on a free port."""
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "TOKENWISE_API_KEY"}
    env["HF_HUB_OFFLINE"] = "1"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "--model", "tw-small",
                                 "--port", "0", "--no-metrics", *args],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        end = time.monotonic() + 120
        while True:
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", log.read_text())
            if found:
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, log.read_text()
            time.sleep(0.1)
        yield proc, found.group(1), log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _events(lines) -> list[dict]:
    return [json.loads(line[6:]) for line in lines
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_sigterm_finishes_what_is_in_flight_refuses_new_work_and_exits_0(tmp_path):
    with serving(tmp_path, "--drain-timeout", str(GRACE_S)) as (proc, url, log), \
            httpx.Client(timeout=60) as http:
        short = {"model": "tw-small", "prompt": "markov: ka", "max_tokens": 3, "seed": 7,
                 "stream": True}
        long = {**short, "max_tokens": 200}  # ~143 tokens, 14 s or more: past the grace
        with http.stream("POST", url + "/v1/completions", json=short) as first:
            first_lines = first.iter_lines()
            assert next(first_lines).startswith("data: ")  # decoding now
            second = http.send(http.build_request("POST", url + "/v1/completions", json=long),
                               stream=True)  # held: waits for the engine, then decodes
            assert first.status_code == 200 and second.status_code == 200
            proc.send_signal(signal.SIGTERM)
            end = time.monotonic() + 10
            while httpx.get(url + "/health").status_code != 503:  # the drain has begun
                assert time.monotonic() < end, log.read_text()
                time.sleep(0.05)
            assert httpx.get(url + "/health").json() == {"status": "draining"}
            # a new request, on a new connection, while the two are in flight
            refused = httpx.post(url + "/v1/completions", json={**short, "stream": False})
            assert refused.status_code == 503
            assert refused.headers["connection"] == "close"
            error = refused.json()["error"]
            assert error["type"] == "server_error"
            assert error["code"] == "server_shutting_down"
            # the request in flight finishes whole
            done = _events(first_lines)
            assert done[-1]["choices"][0]["finish_reason"] in ("stop", "length")
            assert not any("error" in e for e in done)
            # the one still running when the grace period ends gets a final 503 event
            cut = _events(second.iter_lines())
            second.close()
            assert cut[-1]["error"]["code"] == "server_shutting_down"
            assert len(cut) > 1  # it had begun: tokens went out before the cut
        assert proc.wait(timeout=30) == 0, log.read_text()
    text = log.read_text()
    assert "SIGTERM: draining" in text and "ended with 503" in text
