"""The completion endpoints through the real openai client against a live server: answers
checked against naive decoding loops and the library's own functions called directly."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from tests.serving.conftest import API_KEY, MAX_TOKENS_LIMIT

import tokenwise as tw
from tokenwise.sampling import Chain, MinP, Temperature, TopH, TopK, TopP

openai = pytest.importorskip("openai")

QUESTION = "Where was Tavoun born?"
QA_PROMPT = f"Q: {QUESTION}\nA:"


def naive_greedy(lm, prompt: str, steps: int, top: int = 3) -> list[dict]:
    """Greedy decoding by full forward passes (no cache), float64 statistics."""
    ids = lm.encode(prompt, add_bos=True)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = lm.hf_model(torch.tensor([ids])).logits[0, -1].double()
            logp = logits.log_softmax(-1)
            tok = int(logp.argmax())
            if tok == lm.eos_token_id:
                break
            values, alts = logp.topk(top)
            out.append({"id": tok, "text": lm.decode([tok]), "logprob": float(logp[tok]),
                        "entropy": float(-(logp.exp() * logp).sum()),
                        "top": {lm.decode([a]): float(v)
                                for v, a in zip(values.tolist(), alts.tolist(), strict=True)}})
            ids.append(tok)
    return out


def test_models_lists_the_served_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["tw-small", "tw-large"]
    assert client.models.retrieve("tw-large").id == "tw-large"


def test_completion_logprobs_and_entropies_match_a_naive_loop(client, small):
    r = client.completions.create(model="tw-small", prompt="markov: ka", max_tokens=6,
                                  temperature=0, logprobs=3)
    ref = naive_greedy(small, "markov: ka", 6)
    lp = r.choices[0].logprobs
    assert lp.tokens == [t["text"] for t in ref]
    assert r.choices[0].text == "".join(t["text"] for t in ref)
    assert lp.token_logprobs == pytest.approx([t["logprob"] for t in ref], abs=1e-4)
    assert lp.model_extra["token_entropies"] == pytest.approx([t["entropy"] for t in ref],
                                                              abs=1e-4)
    for got, want in zip(lp.top_logprobs, ref, strict=True):
        assert got.keys() == want["top"].keys()
        assert list(got.values()) == pytest.approx(list(want["top"].values()), abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(small.encode("markov: ka", add_bos=True))


def test_chat_uses_the_qa_fallback_and_reports_entropy_per_token(client, small):
    r = client.chat.completions.create(
        model="tw-small", messages=[{"role": "user", "content": QUESTION}], max_tokens=16,
        temperature=0, logprobs=True, top_logprobs=2)
    ref = tw.generate(small, QA_PROMPT, max_new_tokens=16, stop="\n")
    choice = r.choices[0]
    assert choice.message.content == ref.text and choice.finish_reason == "stop"
    info = r.model_extra["tokenwise"]
    assert info["prompt"] == QA_PROMPT and info["chat_format"] == "qa-fallback"
    assert info["stop"] == ["\n"] and info["sampler"] == [] and info["seeds"] == [None]
    content = choice.logprobs.content
    # every generated token is reported, the stop-completing newline included
    assert [c.token for c in content] == [t.text for t in ref.tokens]
    assert [c.model_extra["entropy"] for c in content] == pytest.approx(
        [t.entropy for t in ref.tokens], abs=1e-5)
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.logprob - 1e-6
               for c in content)
    assert bytes(content[0].bytes).decode() == content[0].token
    assert info["mean_entropy"][0] == pytest.approx(ref.mean_entropy, abs=1e-5)
    assert r.usage.completion_tokens == len(content)


def test_stream_gives_the_same_answer_then_usage_then_done(client):
    kwargs = dict(model="tw-small", messages=[{"role": "user", "content": QUESTION}],
                  max_tokens=16, temperature=0, logprobs=True)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in whole.choices[0].logprobs.content]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert finals[0].model_extra["tokenwise"]["prompt"] == QA_PROMPT
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_never_shows_the_stop_string(client):
    chunks = list(client.completions.create(model="tw-small", prompt="7+2=", max_tokens=12,
                                            temperature=0, stream=True, stop=["+"]))
    text = "".join(c.choices[0].text for c in chunks)
    full = tw.generate("tw-small", "7+2=", max_new_tokens=12).text
    assert "+" in full and text == full[:full.index("+")]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_top_level_min_p_and_top_h_sample_like_the_library(client, small):
    r = client.completions.create(model="tw-small", prompt=QA_PROMPT, max_tokens=10, seed=11,
                                  temperature=0.8, n=2,
                                  extra_body={"min_p": 0.1, "top_h": 0.4})
    info = r.model_extra["tokenwise"]
    assert [s["name"] for s in info["sampler"]] == ["min_p", "top_h", "temperature"]
    assert info["seeds"] == [11, 12]
    for j, choice in enumerate(r.choices):
        chain = Chain([MinP(0.1), TopH(0.4), Temperature(0.8)])
        ref = tw.generate(small, QA_PROMPT, chain, max_new_tokens=10, seed=11 + j)
        assert choice.text == ref.text and choice.index == j


def test_tokenwise_sampler_chain_is_applied_in_order(client, small):
    chain = [{"name": "top_k", "top_k": 5}, {"name": "temperature", "temperature": 0.7}]
    r = client.completions.create(model="tw-small", prompt="markov: ka", max_tokens=8, seed=3,
                                  extra_body={"tokenwise": {"sampler": chain}})
    ref = tw.generate(small, "markov: ka", Chain([TopK(5), Temperature(0.7)]),
                      max_new_tokens=8, seed=3)
    assert r.choices[0].text == ref.text
    applied = r.model_extra["tokenwise"]["sampler"]
    assert applied == [{"name": "top_k", "top_k": 5, "min_tokens_to_keep": 1},
                       {"name": "temperature", "temperature": 0.7}]


def test_unknown_fields_are_400_naming_them(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tw-small", messages=[{"role": "user",
                                                                     "content": "x"}],
                                       extra_body={"frobnicate": 1})
    assert err.value.status_code == 400
    assert err.value.body["param"] == "frobnicate"
    assert "frobnicate" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="x",
                                  extra_body={"tokenwise": {"ead": {"large": "tw-large",
                                                                    "upp": 1}}})
    assert "tokenwise.ead.upp" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # a real OpenAI field we cannot honour
        client.chat.completions.create(model="tw-small", messages=[{"role": "user",
                                                                     "content": "x"}],
                                       tools=[{"type": "function",
                                               "function": {"name": "f", "parameters": {}}}])
    assert err.value.body["param"] == "tools"


@pytest.mark.parametrize("body, fragment", [
    ({"tokenwise": {"sampler": [{"name": "top_h", "alpha": 2.0}]}}, "alpha=2.0"),
    ({"tokenwise": {"sampler": [{"name": "top_k", "k": 3}]}}, "allowed: top_k"),
    ({"tokenwise": {"sampler": [{"name": "nucleus"}]}}, "unknown sampler 'nucleus'"),
    ({"top_k": "5"}, "top_k"),
    ({"top_p": 0.0}, "top_p=0.0"),
    ({"top_k": 5, "tokenwise": {"sampler": []}}, "either tokenwise.sampler"),
])
def test_bad_sampler_settings_are_400(client, body, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="x", max_tokens=2, extra_body=body)
    assert fragment in err.value.body["message"]


def test_limits_and_unknown_model(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="x", max_tokens=MAX_TOKENS_LIMIT + 1)
    assert err.value.body["param"] == "max_tokens"
    assert str(MAX_TOKENS_LIMIT) in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="ka " * 240, max_tokens=40)
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4o", prompt="x")
    assert "tw-small" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tw-small", messages=[{"role": "user",
                                                                     "content": "x"}],
                                       top_logprobs=2)


def test_bad_api_key_is_401(server):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401
    assert err.value.body["code"] == "invalid_api_key"


def test_ead_through_the_api_matches_generate_ead(client, small, large):
    from tokenwise.generation.ead import generate_ead

    r = client.completions.create(model="tw-small", prompt="47+38=", max_tokens=6,
                                  temperature=0, stop=["\n"], logprobs=0,
                                  extra_body={"tokenwise": {"ead": {"large": "tw-large",
                                                                    "up": 0.8}}})
    ref = generate_ead(small, large, "47+38=", up=0.8, max_new_tokens=6, stop="\n")
    info = r.model_extra["tokenwise"]
    assert r.choices[0].text == ref.text
    assert info["large_share"] == pytest.approx(ref.large_share)
    assert info["ead"]["choices"][0]["switches"] == ref.switches
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(
        [t.logprob for t in ref.tokens], abs=1e-5)


def test_uncertainty_score_is_predictive_entropy_of_the_samples(client, small):
    from tokenwise.uncertainty import sample_answers

    r = client.completions.create(
        model="tw-small", prompt=QA_PROMPT, max_tokens=8, seed=7, stop=["\n"],
        extra_body={"tokenwise": {"uncertainty": {"method": "predictive_entropy", "n": 3}}})
    unc = r.model_extra["tokenwise"]["uncertainty"]
    ref = sample_answers(small, QA_PROMPT, n=3, temperature=1.0, max_new_tokens=8, seed=7,
                         prompt_template="{question}", stop=["\n"])
    assert unc["answers"] == list(ref.texts)
    by_hand = -sum(sum(a.token_logprobs) for a in ref.answers) / 3
    assert unc["score"] == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="x", extra_body={
            "tokenwise": {"uncertainty": {"method": "inv_entropy"}}})
    assert "paraphrased" in err.value.body["message"]


def test_compression_is_applied_to_the_prompt(client, small, classifier_dir):
    from tokenwise.compression import compress

    context = ("The council met on Monday to discuss the budget for the water project. "
               "Members agreed that the park plan needs a public hearing in July.")
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": context}]
    r = client.chat.completions.create(
        model="tw-small", messages=messages, max_tokens=4, temperature=0,
        extra_body={"tokenwise": {"compress": {"method": "token_classifier", "rate": 0.5}}})
    info = r.model_extra["tokenwise"]
    ref = compress(messages, "token_classifier", rate=0.5, model=str(classifier_dir),
                   target_model=small)
    stats = info["compression"]
    assert stats["text"] == ref.text
    assert stats["tokens_after"] == ref.tokens_after < stats["tokens_before"]
    user_after = ref.messages[1]["content"]
    assert info["prompt"] == f"Answer briefly.\nQ: {user_after}\nA:"
    kept = [text for _, text, keep in stats["pieces"] if keep]
    assert kept == ref.kept_words
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="x", extra_body={
            "tokenwise": {"compress": {"method": "zip", "rate": 0.5}}})
    assert "token_classifier" in err.value.body["message"]


def test_probabilities_in_top_logprobs_sum_below_one(client):
    r = client.chat.completions.create(
        model="tw-large", messages=[{"role": "user", "content": "7+5="}], max_tokens=3,
        temperature=0, logprobs=True, top_logprobs=20)
    for tok in r.choices[0].logprobs.content:
        mass = sum(math.exp(a.logprob) for a in tok.top_logprobs)
        assert mass <= 1 + 1e-5
        assert len(tok.top_logprobs) == 20


def test_ead_judge_small_through_the_api_matches_generate_ead(client, small, large):
    from tokenwise.generation.ead import generate_ead

    options = {"large": "tw-large", "up": 1.0, "window": 1, "judge": "small"}
    r = client.completions.create(model="tw-small", prompt="47+38=", max_tokens=6,
                                  temperature=0, stop=["\n"], logprobs=0,
                                  extra_body={"tokenwise": {"ead": options}})
    ref = generate_ead(small, large, "47+38=", up=1.0, window=1, judge="small",
                       max_new_tokens=6, stop="\n")
    active = generate_ead(small, large, "47+38=", up=1.0, window=1, max_new_tokens=6,
                          stop="\n")
    assert ref.large_share != active.large_share  # the option must reach generate_ead
    info = r.model_extra["tokenwise"]
    assert r.choices[0].text == ref.text
    assert info["large_share"] == pytest.approx(ref.large_share)
    assert info["ead"]["choices"][0]["switches"] == ref.switches


def test_ead_answers_carry_top_logprobs_of_the_model_that_wrote_each_token(client, small,
                                                                         large):
    # a 400 before issue 16: EAD records did not keep the alternatives
    from tokenwise.generation.ead import generate_ead

    ead = {"large": "tw-large", "up": 1.5, "down": 1.5}
    ref = generate_ead(small, large, "markov: ka ro", up=1.5, down=1.5, max_new_tokens=8,
                       top_logprobs=3)
    assert {t.model for t in ref.tokens} == {"tw-small", "tw-large"}
    r = client.completions.create(model="tw-small", prompt="markov: ka ro", max_tokens=8,
                                  temperature=0, logprobs=3, extra_body={"tokenwise": {"ead": ead}})
    lp = r.choices[0].logprobs
    assert lp.tokens == [t.text for t in ref.tokens]
    for got, rec in zip(lp.top_logprobs, ref.tokens, strict=True):
        assert list(got) == [small.decode([i]) for i in rec.top_ids]
        assert list(got.values()) == pytest.approx(rec.top_logprobs, abs=1e-5)
    for stream in (False, True):
        chat = client.chat.completions.create(
            model="tw-small", messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
            temperature=0, logprobs=True, top_logprobs=2, stream=stream,
            extra_body={"tokenwise": {"ead": {"large": "tw-large", "up": 0.5}}})
        content = [c for chunk in chat for c in (chunk.choices[0].logprobs.content
                                                 if chunk.choices and chunk.choices[0].logprobs
                                                 else [])] if stream else \
            chat.choices[0].logprobs.content
        assert content and all(len(c.top_logprobs) == 2 for c in content)
        assert all(c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)


def test_ead_unknown_judge_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="1+1=", max_tokens=2,
                                  extra_body={"tokenwise": {"ead": {"large": "tw-large",
                                                                    "judge": "both"}}})
    assert "judge" in str(err.value.body)


def test_a_seed_past_what_torch_takes_is_a_400_naming_seed(client, server):
    for kwargs in ({"seed": 2**64}, {"seed": 2**64, "stream": True}):
        with pytest.raises(openai.BadRequestError) as err:  # a stream too: 400, no events
            client.completions.create(model="tw-small", prompt="7+2=", max_tokens=2,
                                      top_p=0.9, **kwargs)
        assert err.value.body["param"] == "seed"
        assert "2**64 - 1" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # choice i uses seed + i
        client.completions.create(model="tw-small", prompt="7+2=", max_tokens=2, n=2,
                                  seed=2**64 - 1)
    assert f"allowed 0 to {2**64 - 2}" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # uncertainty's reference uses seed + n
        client.completions.create(model="tw-small", prompt="7+2=", max_tokens=2,
                                  seed=2**64 - 3, extra_body={"tokenwise": {"uncertainty": {
                                      "method": "predictive_entropy", "n": 3}}})
    assert f"allowed 0 to {2**64 - 4}" in err.value.body["message"]
    ok = client.completions.create(model="tw-small", prompt="7+2=", max_tokens=2, n=2,
                                   seed=2**64 - 2)
    assert ok.model_extra["tokenwise"]["seeds"] == [2**64 - 2, 2**64 - 1]


def test_one_bad_seed_among_concurrent_requests_fails_alone(server):
    async def send():
        client = openai.AsyncOpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)
        calls = [client.completions.create(model="tw-small", prompt="7+2=", max_tokens=3,
                                           top_p=0.9, seed=2**64 if i == 4 else i)
                 for i in range(9)]
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    out = asyncio.run(send())
    assert isinstance(out[4], openai.BadRequestError)
    good = [r for i, r in enumerate(out) if i != 4]
    assert all(isinstance(r, openai.types.Completion) for r in good), good
    assert [r.choices[0].text for r in good] == [
        tw.generate("tw-small", "7+2=", TopP(0.9), seed=i, max_new_tokens=3).text
        for i in range(9) if i != 4]


def test_prompts_times_n_is_capped_by_max_choices(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt=["7+2="] * 1000, n=8, max_tokens=1)
    body = err.value.body
    assert body["param"] == "prompt" and body["code"] == "too_many_choices"
    assert "1000 prompts x n=8 = 8000 choices" in body["message"]
    assert "at most 64" in body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tw-small", prompt=["7+2="] * 65, max_tokens=1)
    r = client.completions.create(model="tw-small", prompt=["7+2="] * 8, n=8, max_tokens=1,
                                  temperature=0)
    assert len(r.choices) == 64


def test_the_context_error_says_whether_max_tokens_was_the_default(client):
    messages = [{"role": "user", "content": "ka " * 220}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tw-small", messages=messages)
    message = err.value.body["message"]
    assert "the default max_tokens (64" in message and "max_tokens=64" not in message
    assert "set max_tokens to" in message and err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tw-small", messages=messages, max_tokens=60)
    message = err.value.body["message"]
    assert "max_tokens=60 would pass it" in message and "lower max_tokens to" in message
    fits = int(message.split("max_tokens to ")[1].split()[0])
    r = client.chat.completions.create(model="tw-small", messages=messages, max_tokens=fits,
                                       temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="ka " * 300, max_tokens=2)
    assert err.value.body["param"] == "prompt"
    assert err.value.body["message"].endswith("Shorten the prompt.")


def test_an_empty_prompt_list_is_a_400_saying_so(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt=[], max_tokens=2)
    assert err.value.body["param"] == "prompt"
    assert "empty" in err.value.body["message"]
    assert "valid string" not in err.value.body["message"]
