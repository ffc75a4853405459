"""Injected faults stay inside their request: a sampler or a forward pass that raises for one
row fails that request alone with a 500 that names nothing internal, the requests batched
with it complete as they would alone, and the worker serves the next request; a client that
leaves mid-stream frees its row at the next step while the others go on."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from tests.serving.conftest import API_KEY
from tests.serving.test_batcher import SlowLM, wait_for

from tokenwise.models import LanguageModel
from tokenwise.sampling import registry
from tokenwise.sampling.base import Sampler
from tokenwise.serving.batcher import Batcher, Job
from tokenwise.serving.engine import FinishEvent, Row, TokenEvent, run_batch
from tokenwise.serving.sampler_spec import SamplerSpec

AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: "~" is one token of tw-small's vocabulary that none of the other prompts holds
MARKER_TEXT, MARKER_ID = "~", 96
CLEAN = ["markov: ka", "7+2=", "12+30="]
#: words that would say something of the server's insides
INTERNAL = ("Error", "Exception", "Traceback", "deliberate", ".py", "File ", "raise")


class PoisonSampler(Sampler):
    """Leaves the logits as they are, except that it raises on its third call when a row of
    its batch has the marker token in its prompt (the other rows are innocent)."""

    name = "poison_test"

    def __init__(self) -> None:
        self.poisoned, self.calls = False, 0

    def reset(self) -> None:
        self.poisoned, self.calls = False, 0

    def observe_prompt(self, prompt_ids) -> None:
        self.poisoned = any(MARKER_ID in ids for ids in prompt_ids)

    def drop_mask(self, logits32):
        return logits32 != logits32  # nothing dropped (all False)

    def __call__(self, logits):
        self.calls += 1
        if self.poisoned and self.calls == 3:
            raise RuntimeError("a deliberate sampler failure in /secret/path.py")
        return super().__call__(logits)


class FragileLM(LanguageModel):
    """tw-small whose forward pass raises on the third pass of any batch whose prompts hold
    the marker token (so the other rows have already streamed two tokens)."""

    def __init__(self, lm: LanguageModel) -> None:
        self.__dict__.update(lm.__dict__)
        self.name, self.inner, self.poisoned, self.passes = "tw-fragile", lm, False, 0

    def forward(self, ids, *args, **kwargs):
        if kwargs.get("cache") is None:  # a prompt pass starts a batch
            self.poisoned, self.passes = bool((ids == MARKER_ID).any()), 0
        self.passes += 1
        if self.poisoned and self.passes == 3:
            raise ValueError("a deliberate forward failure in /secret/model.py")
        return self.inner.forward(ids, *args, **kwargs)


@pytest.fixture(scope="module")
def fault_server(small):
    """A keyed server of tw-small and its fragile twin, batching within 100 ms."""
    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, api_key=API_KEY, batch_window_ms=100)
    models = {"tw-small": small, "tw-fragile": FragileLM(small)}
    with serve_in_thread(config, models=models) as url:
        yield url


def stats(url: str) -> dict:
    return httpx.get(url + "/tokenwise/stats", headers=AUTH).json()


def _clean_500(body: dict) -> None:
    error = body["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed"
    assert "server log" in error["message"]
    assert not any(word in error["message"] for word in INTERNAL), error["message"]


async def _post(http: httpx.AsyncClient, url: str, body: dict) -> httpx.Response:
    return await http.post(url + "/v1/completions", json=body, headers=AUTH)


async def _stream(http: httpx.AsyncClient, url: str, body: dict) -> list[dict]:
    """Every data event of a streamed completion, as JSON (the final [DONE] left out)."""
    out = []
    async with http.stream("POST", url + "/v1/completions", json={**body, "stream": True},
                           headers=AUTH) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def _text(events: list[dict]) -> str:
    return "".join(e["choices"][0]["text"] for e in events if e.get("choices"))


def _bodies(model: str, sampler: list | None = None) -> list[dict]:
    extra = {} if sampler is None else {"tokenwise": {"sampler": sampler}}
    prompts = [CLEAN[0], "markov: ka" + MARKER_TEXT, *CLEAN[1:]]
    return [{"model": model, "prompt": p, "max_tokens": 8, "seed": 40 + i, **extra}
            for i, p in enumerate(prompts)]


def _together(url: str, bodies: list[dict], stream: bool):
    async def main():
        async with httpx.AsyncClient(timeout=60) as http:
            call = _stream if stream else _post
            return await asyncio.gather(*[call(http, url, b) for b in bodies])

    return asyncio.run(main())


def _alone(url: str, body: dict) -> str:
    r = httpx.post(url + "/v1/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_sampler_that_raises_for_one_row_fails_only_its_request(fault_server, monkeypatch,
                                                                   stream):
    monkeypatch.setitem(registry.SAMPLERS, "poison_test",
                        "tests.serving.test_faults:PoisonSampler")
    bodies = _bodies("tw-small", [{"name": "poison_test"}])
    before = stats(fault_server)
    answers = _together(fault_server, bodies, stream)
    after = stats(fault_server)
    # they shared a batch, which failed; the poisoned row failed again alone
    assert after["failed_batches"] - before["failed_batches"] == 1
    assert after["failed_rows"] - before["failed_rows"] == 1
    for i, (body, answer) in enumerate(zip(bodies, answers, strict=True)):
        if i == 1:
            if stream:  # two tokens went out before the failure; then the error event
                assert "error" not in answer[0] and "error" in answer[-1]
                _clean_500(answer[-1])
            else:
                assert answer.status_code == 500
                _clean_500(answer.json())
            continue
        text = _text(answer) if stream else answer.json()["choices"][0]["text"]
        assert text == _alone(fault_server, body)  # as if the poisoned row was never there
    # the worker keeps serving: the answers alone above came after the failure


@pytest.mark.parametrize("stream", [False, True])
def test_a_forward_pass_that_raises_for_one_row_fails_only_its_request(fault_server, stream):
    bodies = _bodies("tw-fragile")
    before = stats(fault_server)
    answers = _together(fault_server, bodies, stream)
    after = stats(fault_server)
    assert after["failed_batches"] - before["failed_batches"] == 1
    assert after["failed_rows"] - before["failed_rows"] == 1
    for i, (body, answer) in enumerate(zip(bodies, answers, strict=True)):
        if i == 1:
            if stream:
                _clean_500(answer[-1])
            else:
                assert answer.status_code == 500
                _clean_500(answer.json())
            continue
        text = _text(answer) if stream else answer.json()["choices"][0]["text"]
        assert text == _alone(fault_server, {**body, "model": "tw-small"})
    # the same worker, the same fragile model: the next requests are served
    assert _alone(fault_server, bodies[0]) == _alone(fault_server,
                                                     {**bodies[0], "model": "tw-small"})


def test_an_unexpected_failure_outside_decoding_is_a_500_naming_nothing_internal(
        fault_server, monkeypatch):
    from tokenwise.serving import batcher as batcher_module

    def broken(*args, **kwargs):
        raise KeyError("/secret/path.py: deliberate")

    monkeypatch.setattr(batcher_module, "score_uncertainty", broken)
    body = {"model": "tw-small", "prompt": "7+2=", "max_tokens": 3,
            "tokenwise": {"uncertainty": {"method": "semantic_entropy", "n": 2}}}
    r = httpx.post(fault_server + "/v1/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "internal_error" and "server log" in error["message"]
    assert not any(w in error["message"] for w in (*INTERNAL, "KeyError", "secret"))
    events = _together(fault_server, [body], stream=True)[0]
    assert events[-1]["error"]["code"] == "internal_error"
    assert not any(w in json.dumps(events[-1]) for w in (*INTERNAL, "KeyError", "secret"))
    monkeypatch.undo()
    assert _alone(fault_server, {**body, "tokenwise": {}})  # still serving


# --- the batcher itself ------------------------------------------------------------------

SEEDED = SamplerSpec((("temperature", (("temperature", 1.0),)),))


def _run_jobs(lm: LanguageModel, make_jobs):
    """Start a batcher, submit the jobs ``make_jobs(loop)`` returns (at once: they share a
    batch), wait for every finish and the batch's counters; ``(events, stats)``."""

    async def main():
        batcher = Batcher({"tw-small": lm}, window_s=0.05)
        await batcher.start()
        loop = asyncio.get_running_loop()
        jobs, events, finished = make_jobs(loop)
        for job in jobs:
            batcher.submit(job)
        await asyncio.wait_for(asyncio.gather(*finished), 60)
        await _counted(batcher, 1)
        await batcher.stop()
        return events, batcher.stats

    return asyncio.run(main())


async def _counted(batcher: Batcher, batches: int) -> None:
    """Wait for the counters: they are updated just after a batch's last finish event."""
    for _ in range(1000):
        if batcher.stats.batches >= batches:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{batches} batch(es) never counted: {batcher.stats}")


def _rows(loop, prompts, max_tokens, on_token=None):
    events = [[] for _ in prompts]
    finished = [loop.create_future() for _ in prompts]

    def sink(i, event):
        events[i].append(event)
        if isinstance(event, FinishEvent):
            loop.call_soon_threadsafe(finished[i].set_result, event)
        elif on_token is not None:
            on_token(i, events[i])

    rows = [Row(prompt=p, max_tokens=max_tokens, seed=60 + i, prompt_tokens=12,
                sink=lambda ev, i=i: sink(i, ev)) for i, p in enumerate(prompts)]
    return rows, events, finished


def _tokens(events: list) -> list[int]:
    return [e.token.id for e in events if isinstance(e, TokenEvent)]


def test_a_job_cancelled_mid_decode_is_dropped_at_the_next_step(small):
    prompts = ["markov: ka", "7+2=", "markov: ko"]
    jobs: list[Job] = []

    def leave_after_two(i, events):  # on the worker thread, between two decode steps
        if i == 1 and len(_tokens(events)) == 2:
            jobs[1].cancelled.set()

    def make(loop):
        rows, events, finished = _rows(loop, prompts, 12, leave_after_two)
        jobs.extend(Job("tw-small", SEEDED, [r]) for r in rows)
        return jobs, events, finished

    events, stats = _run_jobs(small, make)
    # its row got nothing more than the step it was in: then its "cancelled" finish
    assert len(_tokens(events[1])) == 2 and events[1][-1].reason == "cancelled"
    assert stats.cancelled == 1 and stats.largest_batch == 3
    # the others went on to the end, as if it had never been there
    for i in (0, 2):
        alone: list = []
        run_batch(small, SEEDED, [Row(prompt=prompts[i], max_tokens=12, seed=60 + i,
                                      sink=alone.append)])
        assert _tokens(events[i]) == _tokens(alone) and len(_tokens(alone)) > 2
        assert events[i][-1] == alone[-1]


def test_a_worker_failure_outside_the_batch_runner_fails_its_jobs_and_serving_goes_on(small):
    calls = []

    async def main():
        batcher = Batcher({"tw-small": small}, window_s=0.0)
        real = batcher._decode

        def decode(jobs):
            calls.append(len(jobs))
            if len(calls) == 1:
                raise RuntimeError("a deliberate failure of the worker's bookkeeping")
            return real(jobs)

        batcher._decode = decode
        await batcher.start()
        loop = asyncio.get_running_loop()
        got = []
        for _ in range(2):  # one after the other: the second comes after the failure
            rows, events, finished = _rows(loop, ["7+2="], 3)
            batcher.submit(Job("tw-small", SEEDED, rows))
            await asyncio.wait_for(finished[0], 30)
            got.append(events[0])
        await _counted(batcher, 1)
        await batcher.stop()
        return got, batcher.stats

    (failed, served), stats = asyncio.run(main())
    assert failed == [FinishEvent("error", "", "", 0)]  # ended, not left hanging
    assert served[-1].reason in ("stop", "length") and _tokens(served)
    assert stats.failed_batches == 1 and stats.batches == 1


@pytest.fixture(scope="module")
def slow_server(small):
    """A keyless server of a slowed tw-small that batches what arrives within 300 ms."""
    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, batch_window_ms=300)
    with serve_in_thread(config, models={"tw-slow": SlowLM(small, 0.05)}) as url:
        yield url


def test_a_client_leaving_mid_stream_frees_its_row_while_its_batch_goes_on(slow_server,
                                                                            small):
    import tokenwise as tw
    from tokenwise.sampling import Temperature

    stay = {"model": "tw-slow", "prompt": "7+2=", "max_tokens": 12, "seed": 8,
            "stream": True}
    leave = {**stay, "prompt": "markov: ka", "max_tokens": 200, "seed": 7}

    async def main():
        async with httpx.AsyncClient(timeout=60) as http:
            async def leaver():
                async with http.stream("POST", slow_server + "/v1/completions",
                                       json=leave) as response:
                    got = 0
                    async for line in response.aiter_lines():
                        got += line.startswith("data: ")
                        if got == 2:
                            return  # the client leaves: the connection closes

            async def stayer():
                return await _stream(http, slow_server, stay)

            return (await asyncio.gather(leaver(), stayer()))[1]

    before = stats(slow_server)
    events = asyncio.run(main())
    ref = tw.generate(small, stay["prompt"], Temperature(1.0), seed=8, max_new_tokens=12)
    assert _text(events) == ref.text and "error" not in events[-1]
    # counted once the batch is over (just after the stayer's last event)
    assert wait_for(lambda: stats(slow_server)["cancelled"] - before["cancelled"] == 1)
    after = stats(slow_server)
    assert after["largest_batch"] == 2  # they shared a batch
    # the leaver's row stopped long before its 143 tokens
    assert after["tokens"] - before["tokens"] < 12 + 40
