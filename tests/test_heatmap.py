"""Tests of `tokenwise.heatmap`: HTML heatmaps of hand-built traces (no model needed)."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.heatmap import render_html, write_html
from tokenwise.trace import TokenTrace


def make_trace(
    pieces: list[str],
    entropies: list[float],
    logprobs: list[float] | None = None,
    varentropies: list[float] | None = None,
    k: int = 2,
    model: str = "tw-test",
) -> TokenTrace:
    """A trace with one token per piece; top-k alternatives are the token itself and 'alt'."""
    n = len(pieces)
    logprobs = logprobs if logprobs is not None else [-0.5] * n
    varentropies = varentropies if varentropies is not None else [0.25] * n
    offsets, pos = [], 0
    for p in pieces:
        offsets.append((pos, pos + len(p)))
        pos += len(p)
    ids = torch.arange(10, 10 + n, dtype=torch.int64)
    if k:
        top_ids = torch.stack([ids, torch.full((n,), 999, dtype=torch.int64)], dim=1)[:, :k]
        rows = [[lp, math.log(0.1)] for lp in logprobs]
        top_lps = torch.tensor(rows, dtype=torch.float32).reshape(n, 2)[:, :k]
        top_pieces = [[p, "alt"][:k] for p in pieces]
    else:
        top_ids = torch.zeros((n, 0), dtype=torch.int64)
        top_lps = torch.zeros((n, 0), dtype=torch.float32)
        top_pieces = [[] for _ in pieces]
    return TokenTrace(
        text="".join(pieces),
        model=model,
        token_ids=ids,
        pieces=list(pieces),
        offsets=offsets,
        logprobs=torch.tensor(logprobs, dtype=torch.float32).reshape(n),
        entropies=torch.tensor(entropies, dtype=torch.float32).reshape(n),
        varentropies=torch.tensor(varentropies, dtype=torch.float32).reshape(n),
        top_ids=top_ids.reshape(n, k),
        top_logprobs=top_lps,
        top_pieces=top_pieces,
        context_lengths=torch.arange(1, n + 1, dtype=torch.int64),
        window=128,
        stride=64,
    )


class TokenSpans(HTMLParser):
    """Collects every ``<span class="tok">``: its attributes and its (unescaped) text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tokens: list[dict[str, str]] = []
        self._depth = 0  # span nesting depth inside the current token, 0 when outside
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = {k: v or "" for k, v in attrs}
        if tag != "span":
            return
        if self._depth:
            self._depth += 1
        elif "tok" in a.get("class", "").split():
            self.tokens.append({**a, "text": ""})
            self._depth = 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.tokens[-1]["text"] += data


def parse(page: str) -> TokenSpans:
    parser = TokenSpans()
    parser.feed(page)
    parser.close()
    return parser


def background(token: dict[str, str]) -> tuple[int, int, int]:
    m = re.search(r"background-color:\s*#([0-9a-f]{6})", token["style"])
    assert m is not None, token["style"]
    h = m.group(1)
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def luminance(rgb: tuple[int, int, int]) -> float:
    def lin(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2])


def legend(page: str) -> dict[str, str]:
    m = re.search(r'<div class="legend"([^>]*)>', page)
    assert m is not None
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))


def test_text_is_escaped_and_round_trips() -> None:
    pieces = ["<script>", "alert(1)", "</script>", " & ", '"q"', " 'x'"]
    trace = make_trace(pieces, [0.1] * 6, model='<b>m&"</b>')
    page = render_html(trace, title="<i>t</i>")
    low = page.lower()
    assert "<script" not in low and "</script" not in low
    assert "&lt;script&gt;" in page and "&lt;/script&gt;" in page
    assert " &amp; " in page and "&quot;q&quot;" in page
    assert "<b>" not in page and "&lt;b&gt;m&amp;&quot;&lt;/b&gt;" in page
    assert "<i>" not in page and "<title>&lt;i&gt;t&lt;/i&gt;</title>" in page
    parsed = parse(page)
    assert [t["text"] for t in parsed.tokens] == pieces
    assert "script" not in parsed.tags and "b" not in parsed.tags and "i" not in parsed.tags
    # The tooltip attribute holds the repr of the piece, unescaped back by the parser.
    assert parsed.tokens[0]["data-tip"].splitlines()[0] == "#0  '<script>'"
    assert parsed.tokens[4]["data-tip"].splitlines()[0] == "#4  '\"q\"'"


def test_every_token_is_its_own_span_in_order() -> None:
    pieces = ["Hello", ",", " world", "\n", "\tnext", " line\n\n", "end", ""]
    trace = make_trace(pieces, [0.5] * len(pieces))
    parsed = parse(render_html(trace))
    assert [t["text"] for t in parsed.tokens] == pieces
    assert "".join(t["text"] for t in parsed.tokens) == trace.text
    assert [t["data-tip"].split("  ")[0] for t in parsed.tokens] == [
        f"#{i}" for i in range(len(pieces))
    ]
    assert parsed.tokens[-1]["class"] == "tok empty"
    page = render_html(trace)
    assert "white-space: pre-wrap" in page
    # Each newline is a real newline in the text (a line break under pre-wrap), with a marker.
    assert page.count('<span class="nl" aria-hidden="true"></span>\n') == 3


def test_tooltip_values() -> None:
    trace = make_trace([" the", "cat"], [1.5, 0.25], logprobs=[math.log(0.25), -2.0], k=2)
    tok = parse(render_html(trace)).tokens[0]
    lines = tok["data-tip"].splitlines()
    assert lines[0] == "#0  '␣the'"
    assert re.fullmatch(r"entropy\s+1\.500 nats", lines[1])
    assert re.fullmatch(r"surprisal\s+1\.386 nats", lines[2])
    assert re.fullmatch(r"logprob\s+-1\.386 nats", lines[3])
    assert re.fullmatch(r"probability\s+25\.0%", lines[4])
    assert re.fullmatch(r"varentropy\s+0\.250 nats²", lines[5])
    assert re.fullmatch(r"context\s+1 token", lines[6])
    assert re.search(r"context\s+2 tokens", parse(render_html(trace)).tokens[1]["data-tip"])
    assert lines[7] == "top 2:"
    assert re.fullmatch(r"\s+25\.0%  '␣the'  ◀ actual", lines[8])
    assert re.fullmatch(r"\s+10\.0%  'alt'", lines[9])


def test_high_entropy_token_is_stronger() -> None:
    entropies = [0.05, 0.4, 3.0, 1.0]
    trace = make_trace(["a", "b", "c", "d"], entropies)
    toks = parse(render_html(trace)).tokens
    lum = [luminance(background(t)) for t in toks]
    levels = [float(t["data-level"]) for t in toks]
    assert lum[2] < lum[3] < lum[1] < lum[0]
    assert levels[2] == pytest.approx(1.0) and levels[0] < 0.05
    assert levels[0] < levels[1] < levels[3] < levels[2]


def test_outlier_does_not_wash_out_the_scale() -> None:
    entropies = [0.1 * (i % 10) for i in range(99)] + [1000.0]
    trace = make_trace(["x"] * 100, entropies)
    page = render_html(trace)
    vmax = float(legend(page)["data-vmax"])
    assert 0.85 <= vmax <= 0.95  # the 98th percentile, not the outlier
    levels = [float(t["data-level"]) for t in parse(page).tokens]
    assert levels[-1] == 1.0
    assert levels[9] == pytest.approx(0.9 / vmax, abs=1e-3) and levels[9] > 0.9


@pytest.mark.parametrize("color_by", ["surprisal", "varentropy"])
def test_other_signals_drive_the_colour(color_by: str) -> None:
    trace = make_trace(["a", "b"], [2.0, 0.1], logprobs=[-0.01, -4.0], varentropies=[0.01, 3.0])
    page = render_html(trace, color_by=color_by)
    toks = parse(page).tokens
    assert luminance(background(toks[1])) < luminance(background(toks[0]))
    assert legend(page)["data-color-by"] == color_by
    assert f"<dt>colour</dt><dd>{color_by} (" in page


def test_bits_vs_nats_legend() -> None:
    trace = make_trace(["a", "b", "c"], [0.2, 0.7, math.log(2) * 3], logprobs=[-1.0] * 3)
    nats, bits = render_html(trace), render_html(trace, base=2)
    ln, lb = legend(nats), legend(bits)
    assert ln["data-unit"] == "nats" and lb["data-unit"] == "bits"
    assert float(lb["data-vmax"]) == pytest.approx(float(ln["data-vmax"]) / math.log(2), 1e-4)
    assert re.search(r"≥ [\d.]+ bits", bits) and "nats" not in bits
    assert re.search(r"≥ [\d.]+ nats", nats) and "bits" not in nats
    tip = parse(bits).tokens[2]["data-tip"]
    assert re.search(r"entropy\s+3\.000 bits", tip)
    assert re.search(r"surprisal\s+1\.443 bits", tip)
    assert re.search(r"probability\s+36\.8%", tip)  # probabilities do not depend on the base
    var_v = re.search(r"varentropy\s+([\d.]+) bits²", tip)
    assert var_v is not None
    assert float(var_v.group(1)) == pytest.approx(0.25 / math.log(2) ** 2, abs=1e-3)
    # Colours are identical: only the displayed numbers change.
    assert [t["style"] for t in parse(bits).tokens] == [t["style"] for t in parse(nats).tokens]


@pytest.mark.parametrize("bad", ["Entropy", "logprob", "", None])
def test_invalid_color_by_raises(bad: object) -> None:
    trace = make_trace(["a"], [0.1])
    with pytest.raises(TokenwiseError) as err:
        render_html(trace, color_by=bad)  # type: ignore[arg-type]
    msg = str(err.value)
    assert repr(bad) in msg and "'entropy'" in msg and "'varentropy'" in msg


@pytest.mark.parametrize("bad", [0, 1, -2.0, float("nan")])
def test_invalid_base_raises(bad: float) -> None:
    with pytest.raises(TokenwiseError, match="base must be"):
        render_html(make_trace(["a"], [0.1]), base=bad)


def test_page_is_self_contained() -> None:
    trace = make_trace(["Plain", " text", " <img>"], [0.1, 1.0, 2.0])
    page = render_html(trace)
    assert page.startswith("<!DOCTYPE html>\n<html")
    assert page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page
    low = page.lower()
    for ref in ("http://", "https://", "src=", "href=", "<link", "@import", "url(", "<script"):
        assert ref not in low, ref
    assert "<img" not in low and "&lt;img&gt;" in page
    # Header: model, token count, mean entropy, perplexity, window/stride, signal.
    assert "<dt>model</dt><dd>tw-test</dd>" in page
    assert "<dt>tokens</dt><dd>3</dd>" in page
    assert "<dt>mean entropy</dt><dd>1.033 nats</dd>" in page
    assert f"<dt>perplexity</dt><dd>{math.exp(0.5):.2f}</dd>" in page
    assert "<dt>window / stride</dt><dd>128 / 64</dd>" in page
    assert "<dt>colour</dt><dd>entropy (nats)</dd>" in page


def test_empty_top_k() -> None:
    trace = make_trace(["a", " b"], [0.3, 0.6], k=0)
    assert tuple(trace.top_logprobs.shape) == (2, 0)
    toks = parse(render_html(trace)).tokens
    assert [t["text"] for t in toks] == ["a", " b"]
    for tok in toks:
        lines = tok["data-tip"].splitlines()
        assert lines[-1] == "top alternatives: none recorded (k=0)"
        assert not any(line.startswith("top ") and line.endswith(":") for line in lines)


def test_empty_trace() -> None:
    page = render_html(make_trace([], []))
    assert parse(page).tokens == []
    assert "<dt>tokens</dt><dd>0</dd>" in page and "(no tokens)" in page
    assert legend(page)["data-vmax"] == "0"


def test_mismatched_trace_raises() -> None:
    trace = make_trace(["a", "b"], [0.1, 0.2])
    trace.pieces = ["a"]
    with pytest.raises(TokenwiseError, match=r"trace\.pieces has 1 rows; expected one per token"):
        render_html(trace)


def test_write_html_round_trips(tmp_path: Path) -> None:
    trace = make_trace(["naïve", " ✓", " <&>", "\n"], [0.1, 0.2, 0.3, 0.4])
    target = tmp_path / "deep" / "er" / "page.html"
    out = write_html(trace, str(target), color_by="surprisal", base=2, title="T")
    assert out == target and out.is_file()
    written = out.read_bytes().decode("utf-8")
    assert written == render_html(trace, color_by="surprisal", base=2, title="T")
    assert [t["text"] for t in parse(written).tokens] == trace.pieces
    assert legend(written)["data-unit"] == "bits"
    with pytest.raises(TokenwiseError, match="directory"):
        write_html(trace, tmp_path)
