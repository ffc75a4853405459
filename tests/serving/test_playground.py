"""The playground page in headless Chromium: send a chat message, see tokens coloured by
entropy with details on hover, and the compressed prompt; a screenshot is kept. Without
Chromium, the page's sampler defaults are still sent to the server as the page sends them."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.serving.conftest import API_KEY

CHROMIUM = os.environ.get("TOKENWISE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
STATIC = Path(__file__).parents[2] / "src" / "tokenwise" / "serving" / "static"

needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
    reason=f"no Chromium at {CHROMIUM} (install Debian's `chromium` package or set "
           "TOKENWISE_CHROMIUM)")


class _SamplerOptions(HTMLParser):
    """The values of the page's ``#sampler`` options."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[str] = []
        self._inside = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select":
            self._inside = attrs.get("id") == "sampler"
        elif tag == "option" and self._inside:
            self.values.append(attrs["value"])

    def handle_endtag(self, tag):
        if tag == "select":
            self._inside = False


def page_sampler_params() -> dict:
    """``SAMPLER_PARAMS`` of playground.js (written as JSON there)."""
    script = (STATIC / "playground.js").read_text()
    found = re.search(r"const SAMPLER_PARAMS = (\{.*?\n\});", script, re.S)
    assert found, "playground.js no longer defines SAMPLER_PARAMS as a JSON object"
    return json.loads(found.group(1))


def test_every_samplers_default_parameter_is_accepted(client):
    # issue 15: the parameter box held 0.9 for every sampler, a 400 for top-k
    options = _SamplerOptions()
    options.feed((STATIC / "index.html").read_text())
    params = page_sampler_params()
    assert set(options.values) == {"greedy", "temperature", *params}
    for sampler, spec in params.items():
        assert spec.get("min", spec["value"]) <= spec["value"] <= spec.get("max", spec["value"])
        # as buildRequest() sends it: the parameter under the sampler's own field
        r = client.chat.completions.create(
            model="tw-small", messages=[{"role": "user", "content": "7+2="}], max_tokens=2,
            temperature=0.8, seed=1, extra_body={sampler: spec["value"]})
        steps = [s["name"] for s in r.model_extra["tokenwise"]["sampler"]]
        assert steps[0] == {"typical_p": "typical"}.get(sampler, sampler), steps


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playground test drives Chromium with playwright")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM)
                                     else shutil.which("chromium"), args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1200, "height": 820})
        tab = context.new_page()
        outside = []  # every request must stay on the server
        tab.on("request", lambda req: outside.append(req.url)
               if not req.url.startswith(server) else None)
        tab.goto(server + "/")
        tab.fill("#api-key", API_KEY)
        tab.dispatch_event("#api-key", "change")
        tab.wait_for_function("document.querySelectorAll('#model option').length >= 2")
        yield tab
        assert outside == []
        browser.close()


@needs_chromium
def test_chat_shows_tokens_coloured_by_entropy(page, tmp_path):
    page.select_option("#sampler", "greedy")
    page.fill("#max-tokens", "16")
    page.fill("#prompt", "Where was Tavoun born?")
    page.click("#send")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
    tokens = page.locator(".msg.assistant .tok")
    assert tokens.count() >= 2
    colours = {tokens.nth(i).evaluate("e => getComputedStyle(e).backgroundColor")
               for i in range(tokens.count())}
    entropies = [float(tokens.nth(i).get_attribute("data-entropy"))
                 for i in range(tokens.count())]
    assert len(colours) > 1 and max(entropies) > min(entropies)  # colour follows entropy
    text = page.locator(".msg.assistant .text").inner_text()
    assert text.strip().startswith("the city of")
    tokens.nth(tokens.count() - 1).hover()
    tip = page.locator("#tooltip")
    assert tip.is_visible() and "entropy" in tip.inner_text()
    assert re.search(r"p \d\.\d{3}", tip.inner_text())
    assert "mean entropy" in page.locator(".msg.assistant .meta").inner_text()
    path = tmp_path / "playground.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    keep = os.environ.get("TOKENWISE_PLAYGROUND_SCREENSHOT")
    if keep:  # the docs' screenshot (docs/playground.png) is taken with this set
        shutil.copy(path, keep)


@needs_chromium
def test_each_sampler_starts_from_a_default_the_server_accepts(page):
    page.click("#clear")
    for sampler, spec in page_sampler_params().items():
        page.select_option("#sampler", sampler)
        assert float(page.input_value("#sampler-param")) == spec["value"]
        page.fill("#max-tokens", "2")
        page.fill("#prompt", "7+2=")
        page.click("#send")
        page.wait_for_function("document.getElementById('status').textContent"
                               ".startsWith('Done')")
    for plain in ("temperature", "greedy"):  # no parameter: none is sent
        page.select_option("#sampler", plain)
        assert page.is_disabled("#sampler-param")
    page.fill("#max-tokens", "16")


@needs_chromium
def test_compression_shows_the_prompt_with_dropped_words(page, tmp_path):
    page.click("#clear")
    page.select_option("#compress-method", "token_classifier")
    page.fill("#compress-rate", "0.5")
    page.select_option("#unc-method", "predictive_entropy")
    page.fill("#unc-n", "3")
    page.fill("#prompt", "The council met on Monday to discuss the budget for the water "
                         "project, and members agreed the park plan needs a hearing.")
    page.click("#send")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
    assert page.locator("#compressed .kept").count() > 0
    assert page.locator("#compressed .dropped").count() > 0
    assert "token_classifier" in page.locator("#compressed .stats").inner_text()
    meta = page.locator(".msg.assistant .meta").inner_text()
    assert "uncertainty (predictive_entropy, n=3)" in meta
    page.screenshot(path=str(tmp_path / "playground-compressed.png"), full_page=True)
