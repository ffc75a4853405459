"""``POST /tokenize`` and ``POST /detokenize`` (vLLM's shapes) on a live server: the ids are
those the completion routes feed the model, bad ids are 400s, and the API key is required."""

from __future__ import annotations

import httpx
import pytest
from tests.serving.conftest import API_KEY

from tokenwise.serving.schemas import DetokenizeRequest, TokenizeRequest
from tokenwise.serving.tokenization import detokenize, tokenize

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "Where was Tavoun born?"}]


def post(server: str, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(server + path, json=body, headers=AUTH if headers is None else headers,
                      timeout=30)


def test_tokenize_a_prompt_gives_the_ids_a_completion_counts(server, client, small):
    r = post(server, "/tokenize", {"model": "tw-small", "prompt": "markov: ka"})
    assert r.status_code == 200
    body = r.json()
    ids = small.encode("markov: ka", add_bos=True)
    assert body == {"count": len(ids), "max_model_len": small.context_length, "tokens": ids,
                    "token_strs": None}
    used = client.completions.create(model="tw-small", prompt="markov: ka", max_tokens=1)
    assert used.usage.prompt_tokens == body["count"]
    bare = post(server, "/tokenize", {"model": "tw-small", "prompt": "markov: ka",
                                      "add_special_tokens": False,
                                      "return_token_strs": True}).json()
    assert bare["tokens"] == small.encode("markov: ka")
    assert bare["token_strs"] == small.tokenizer.convert_ids_to_tokens(bare["tokens"])


def test_tokenize_messages_gives_the_ids_a_chat_completion_counts(server, client):
    body = post(server, "/tokenize", {"model": "tw-large", "messages": MESSAGES}).json()
    used = client.chat.completions.create(model="tw-large", messages=MESSAGES, max_tokens=1)
    assert body["count"] == used.usage.prompt_tokens == len(body["tokens"])


def test_detokenize_round_trips_and_refuses_ids_outside_the_vocabulary(server, small):
    ids = post(server, "/tokenize", {"model": "tw-small", "prompt": "7+2=9"}).json()["tokens"]
    r = post(server, "/detokenize", {"model": "tw-small", "tokens": ids})
    assert r.status_code == 200 and r.json() == {"prompt": small.decode(ids)}
    assert r.json()["prompt"].endswith("7+2=9")
    for bad in (1024, -1):
        r = post(server, "/detokenize", {"model": "tw-small", "tokens": [5, bad]})
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["param"] == "tokens"
        assert f"tokens[1]={bad} is not a token id of model 'tw-small': allowed 0 to 1023" \
            in error["message"]


@pytest.mark.parametrize("path, body, status, param, fragment", [
    ("/tokenize", {"model": "tw-small"}, 400, "messages", "give either prompt or messages"),
    ("/tokenize", {"model": "tw-small", "prompt": "x", "messages": MESSAGES}, 400, "prompt",
     "give either prompt or messages"),
    ("/tokenize", {"prompt": "x"}, 400, "model", "model is required"),
    ("/tokenize", {"model": "gpt-9", "prompt": "x"}, 404, "model", "'gpt-9' does not exist"),
    ("/tokenize", {"model": "tw-small", "text": "x"}, 400, "text", "Unrecognized"),
    ("/detokenize", {"model": "tw-small", "tokens": ["5"]}, 400, "tokens.0", "valid integer"),
])
def test_bad_requests_are_openai_shaped_errors(server, path, body, status, param, fragment):
    r = post(server, path, body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_the_api_key_is_required(server):
    for path, body in (("/tokenize", {"model": "tw-small", "prompt": "x"}),
                       ("/detokenize", {"model": "tw-small", "tokens": [5]})):
        r = post(server, path, body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert post(server, path, body, headers={}).status_code == 401


def test_one_served_model_needs_no_model_field(small):
    models = {"tw-small": small}
    assert tokenize(models, TokenizeRequest(prompt="7+2="))["tokens"] == \
        small.encode("7+2=", add_bos=True)
    assert detokenize(models, DetokenizeRequest(tokens=small.encode("7+2=")))["prompt"] == "7+2="


def test_messages_through_a_chat_template_give_the_planned_prompt_ids(tmp_path):
    from tests.models.helpers import load_tiny_chat_model

    from tokenwise.serving.config import ServerConfig
    from tokenwise.serving.planning import plan_request
    from tokenwise.serving.schemas import ChatCompletionRequest

    lm = load_tiny_chat_model(tmp_path)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 7+2? <|im_end|>"}]
    body = tokenize({"chat": lm}, TokenizeRequest.model_validate({"messages": messages}))
    plan = plan_request(ChatCompletionRequest(model="chat", messages=messages, max_tokens=1),
                        ServerConfig(), {"chat": lm})
    assert plan.info["chat_format"] == "template"
    assert body["tokens"] == lm.encode(plan.prompts[0], add_bos=True)
    assert body["count"] == plan.prompt_tokens[0]
    assert detokenize({"chat": lm}, DetokenizeRequest(tokens=body["tokens"]))["prompt"] == \
        lm.decode(body["tokens"])
