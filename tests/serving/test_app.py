"""The app's public routes: health, the playground page and its local assets."""

from __future__ import annotations

import re

import httpx
from tests.serving.conftest import API_KEY

from tokenwise.serving.app import STATIC_DIR


def test_playground_and_assets_are_public_and_local(server):
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["/static/playground.css", "/static/playground.js"]
    for asset in assets:
        assert httpx.get(server + asset).status_code == 200
    assert httpx.get(server + "/health").json() == {"status": "ok"}


def test_no_asset_reaches_outside_the_server():
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), f"{path.name} refers to another host"


def test_options_list_what_a_request_may_choose(server):
    r = httpx.get(server + "/tokenwise/options", headers={"Authorization": f"Bearer {API_KEY}"})
    opts = r.json()
    assert opts["models"] == ["tw-small", "tw-large"]
    assert "top_h" in [s["name"] for s in opts["samplers"]]
    assert "token_classifier" in opts["compression"]
    assert "semantic_entropy" in opts["uncertainty"] and "inv_entropy" not in opts["uncertainty"]
    assert "snapkv" in opts["kv"]["press"] and opts["kv"]["quantize"] == ["kivi", "saq"]
