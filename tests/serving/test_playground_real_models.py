"""The playground page with a real model's replies (SmolLM2's byte-level BPE, 49k vocabulary),
in headless Chromium: the page and its assets come from the package's static folder and the
server's answers are canned (as SmolLM2 gave them), so no model runs here."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from tests.serving.test_playground import ARGS, CHROMIUM, STATIC, needs_chromium

ORIGIN = "http://playground.test"
ASSETS = {"/": ("index.html", "text/html"),
          "/static/playground.js": ("playground.js", "text/javascript"),
          "/static/playground.css": ("playground.css", "text/css")}


def token(text: str, raw: bytes, logprob: float = -0.5, entropy: float = 1.0,
          alternatives: tuple[tuple[str, bytes], ...] = ()) -> dict:
    """One ``logprobs.content`` entry as the server writes it (``token`` is U+FFFD for bytes
    that are part of a character)."""
    return {"token": text, "logprob": logprob, "bytes": list(raw), "entropy": entropy,
            "top_logprobs": [{"token": t, "logprob": -1.0, "bytes": list(b)}
                             for t, b in alternatives]}


#: SmolLM2's greedy reply to "...then the emoji 🙂", cut at max_tokens: the emoji 📐 comes
#: as three tokens (f0 9f, 93, 90), none of them UTF-8 alone.
REPLY = [
    token(' "', b' "'),
    token("\ufffd", b"\xf0\x9f", entropy=3.655,
          alternatives=(("\ufffd", b"\xf0\x9f"), ("em", b"em"))),
    token("\ufffd", b"\x93"),
    token("\ufffd", b"\x90"),
    token('"', b'"'),
    token(" is", b" is"),
    token(" mathematical", b" mathematical"),
]
CONTENT = ' "📐" is mathematical'


def sse(reply: list[dict], content: str, finish: str) -> str:
    """A streamed chat completion: one chunk per token, then the finish and usage chunks."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
            "model": "smollm2-135m"}
    pieces = [content[:2], content[2:4], "", "", content[4:5], content[5:8], content[8:]]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}]}]
    for tok, piece in zip(reply, pieces, strict=True):
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                            "logprobs": {"content": [tok]},
                                            "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": finish}],
                   "tokenwise": {"model": "smollm2-135m", "mean_entropy": [2.6],
                                 "seeds": [None], "prompt": "<|im_start|>user\n..."}})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 46,
                                                    "completion_tokens": len(reply),
                                                    "total_tokens": 46 + len(reply)}})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playground test drives Chromium with playwright")
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM)
                                      else shutil.which("chromium"), args=ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """The playground with two served models and canned replies; the requests it sent."""
    sent: list[dict] = []

    def handle(route):
        path = route.request.url.removeprefix(ORIGIN).split("?")[0]
        if path in ASSETS:
            name, kind = ASSETS[path]
            return route.fulfill(status=200, content_type=kind,
                                 body=(STATIC / name).read_text(encoding="utf-8"))
        if path == "/tokenwise/options":
            return route.fulfill(status=200, content_type="application/json", body=json.dumps(
                {"models": ["smollm2-135m", "tw-small"], "samplers": [],
                 "compression": ["token_classifier"], "uncertainty": ["semantic_entropy"]}))
        if path == "/v1/chat/completions":
            sent.append(json.loads(route.request.post_data))
            return route.fulfill(status=200, content_type="text/event-stream",
                                 body=sse(REPLY, CONTENT, "length"))
        return route.fulfill(status=404, body="not here")

    context = browser.new_context(viewport={"width": 1200, "height": 820})
    tab = context.new_page()
    tab.route("**/*", handle)
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(ORIGIN + "/")
    tab.wait_for_function("document.querySelectorAll('#model option').length == 2")
    yield tab, sent
    context.close()
    assert errors == []


def options(tab, select: str) -> list[str]:
    return tab.eval_on_selector_all(f"{select} option", "os => os.map(o => o.value)")


@needs_chromium
def test_a_character_split_over_byte_tokens_shows_whole_and_the_reply_is_not_cut(page):
    tab, sent = page
    tab.select_option("#sampler", "greedy")
    tab.fill("#prompt", "Write the word café, then the emoji 🙂.")
    tab.click("#send")
    tab.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
    spans = tab.eval_on_selector_all(".msg.assistant .tok", "ss => ss.map(s => s.textContent)")
    # was: three U+FFFD spans, and the reply's last token trimmed to " mathematica"
    assert spans == [' "', "", "", "📐", '"', " is", " mathematical"]
    assert tab.inner_text(".msg.assistant .text") == CONTENT
    partial = tab.locator(".msg.assistant .tok.partial")
    assert partial.count() == 2
    partial.first.hover()
    tip = tab.inner_text("#tooltip")
    assert tip.startswith("bytes f0 9f (part of a character)")
    assert '"em"' in tip and "\ufffd" not in tip
    assert "cut at max tokens" in tab.inner_text(".msg.assistant .meta")
    assert sent[0]["max_tokens"] == 64 and sent[0]["logprobs"] is True


@needs_chromium
def test_ead_never_offers_the_chat_model_itself_and_the_example_fits_the_model(page):
    tab, sent = page
    # was: the EAD list held the chat model itself, which the server refuses with a 400
    assert tab.input_value("#model") == "smollm2-135m"
    assert options(tab, "#ead-large") == ["", "tw-small"]
    assert tab.get_attribute("#prompt", "placeholder").endswith("What is the capital of France?")
    tab.select_option("#ead-large", "tw-small")
    tab.select_option("#model", "tw-small")
    assert options(tab, "#ead-large") == ["", "smollm2-135m"]
    assert tab.input_value("#ead-large") == ""  # tw-small is the chat model now
    assert tab.get_attribute("#prompt", "placeholder").endswith("Where was Tavoun born?")
    tab.fill("#prompt", "hello")
    tab.click("#send")
    tab.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
    assert sent[-1]["model"] == "tw-small" and "tokenwise" not in sent[-1]


@needs_chromium
def test_with_one_model_served_ead_is_off_and_disabled(page):
    tab, _ = page
    tab.evaluate("servedModels = ['smollm2-135m']; modelChanged()")
    assert options(tab, "#ead-large") == [""]
    assert tab.is_disabled("#ead-large")
    assert "second model" in tab.get_attribute("#ead-large", "title")
