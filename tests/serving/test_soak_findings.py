"""Server defects the soak (benchmarks/serve_soak.py) brought to light, one test each.

Each test fails on the code as the soak found it; it passes once the defect is fixed.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tokenwise.serving.batcher import Batcher


def test_a_call_whose_caller_left_before_it_began_is_not_run(small):
    """EAD, uncertainty and compression run as calls on the one worker thread. A call queued
    behind others whose client leaves (disconnect or timeout) must not run afterwards: it
    would hold the worker, and every batch behind it, for nobody."""
    async def scenario() -> tuple[list[str], int]:
        batcher = Batcher({"tw-small": small})
        await batcher.start()
        gate = threading.Event()
        ran: list[str] = []
        first = asyncio.ensure_future(batcher.call(lambda: gate.wait(5)))
        await asyncio.sleep(0.1)  # the worker now holds the first call
        left = asyncio.ensure_future(batcher.call(lambda: ran.append("left")))
        await asyncio.sleep(0.05)
        left.cancel()  # what the route does when the client goes away
        gate.set()
        await first
        await batcher.call(lambda: ran.append("after"))  # everything queued earlier is done
        await batcher.stop()
        return ran, batcher.stats.calls_skipped

    assert asyncio.run(scenario()) == (["after"], 1)  # counted for /metrics


# Found by the soak: 4 of 1,856 uncertainty requests (seeded, valid) were refused with a 400
# (or an error event in a stream): one sampled answer ended at its first token (EOS), and
# Answer.from_generation (src/tokenwise/uncertainty/samples.py) reads a generation with no
# tokens as one with no log-probabilities, so SampleSet refuses the mix. tw-small writes EOS
# first for "Q: 31+18=\nA:" with seed 81.
EMPTY_FIRST = {"prompt": "Q: 31+18=\nA:", "seed": 81}


def test_sampled_answers_may_include_an_empty_answer(small):
    from tokenwise.uncertainty import sample_answers

    samples = sample_answers(small, EMPTY_FIRST["prompt"], n=2, temperature=1.0,
                             max_new_tokens=3, seed=EMPTY_FIRST["seed"],
                             prompt_template="{question}", stop=["\n"])
    assert samples.texts[0] == ""  # the case itself: answer 0 is EOS at once
    assert samples.n == 2
    # the empty answer carries the probability of ending at once, from the model itself
    import torch

    ids = small.encode(EMPTY_FIRST["prompt"], add_bos=True)
    logp = small.forward(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    end = torch.logsumexp(logp[sorted(small.end_token_ids)], 0).item()
    (lp,) = samples.answers[0].token_logprobs
    assert lp == pytest.approx(end, abs=1e-5) and lp < 0
    assert len(samples.answers[0].token_entropies) == 1


@pytest.fixture(scope="module")
def small_server(small):
    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    with serve_in_thread(ServerConfig(port=0, api_key="k"), models={"tw-small": small}) as url:
        yield url


def test_a_valid_uncertainty_request_with_an_empty_sampled_answer_is_answered(small_server):
    import httpx

    body = {"model": "tw-small", "prompt": EMPTY_FIRST["prompt"], "max_tokens": 3,
            "seed": EMPTY_FIRST["seed"], "stop": "\n",
            "tokenwise": {"uncertainty": {"method": "predictive_entropy", "n": 2}}}
    r = httpx.post(small_server + "/v1/completions", json=body, timeout=60,
                   headers={"Authorization": "Bearer k"})
    assert r.status_code == 200, r.text
    unc = r.json()["tokenwise"]["uncertainty"]
    assert unc["answers"][0] == "" and len(unc["answers"]) == 2
