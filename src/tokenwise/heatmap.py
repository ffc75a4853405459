"""Self-contained HTML heatmaps of a :class:`~tokenwise.trace.TokenTrace`.

:func:`render_html` turns a trace into one HTML5 page: the text, each token a ``<span>`` whose
background encodes a per-token signal (entropy, surprisal or varentropy), a legend with the
numeric range, and a CSS-only tooltip per token with its full set of signals and top
alternatives. The page has no script and references nothing outside itself (no fonts, CDNs or
images), so it can be opened offline, mailed, or attached to a report. :func:`write_html`
writes it to disk.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.trace import TokenTrace

__all__ = ["COLOR_BY", "render_html", "write_html"]

#: The signals that can colour the tokens.
COLOR_BY: tuple[str, ...] = ("entropy", "surprisal", "varentropy")

#: Percentile of the coloured values that maps to full strength (robust against outliers).
_ROBUST_PERCENTILE = 98.0

#: ColorBrewer YlOrRd (9 classes): a sequential scale, monotone in lightness, pale to strong.
_STOPS: tuple[str, ...] = (
    "#ffffcc",
    "#ffeda0",
    "#fed976",
    "#feb24c",
    "#fd8d3c",
    "#fc4e2a",
    "#e31a1c",
    "#bd0026",
    "#800026",
)

_MAX_PIECE_CHARS = 80
_SURROGATES = re.compile("[\ud800-\udfff]")

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body {
  margin: 0; padding: 24px 32px 64px; background: #fff; color: #1f2328;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
}
header h1 { font-size: 18px; margin: 0 0 10px; font-weight: 600; overflow-wrap: anywhere; }
.stats { display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 0 0 14px; padding: 0; }
.stats div { display: flex; gap: 6px; }
.stats dt { color: #656d76; }
.stats dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
.legend { display: flex; align-items: center; flex-wrap: wrap; gap: 10px; margin: 0 0 18px;
  font-size: 13px; color: #424a53; }
.legend .bar { display: inline-block; width: 220px; height: 12px; border-radius: 3px;
  border: 1px solid rgba(0, 0, 0, .15); }
.legend .num { font-variant-numeric: tabular-nums; font-weight: 600; color: #1f2328; }
.legend .note { color: #656d76; }
.text {
  white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.9; font-size: 15px;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  padding: 16px; border: 1px solid #d0d7de; border-radius: 6px; background: #fff;
}
.tok {
  position: relative; border-radius: 2px; cursor: default;
  box-shadow: inset -1px 0 0 rgba(255, 255, 255, .75);
}
.tok:hover { outline: 2px solid #1f2328; outline-offset: 0; z-index: 5; }
.tok:hover::after {
  content: attr(data-tip); position: absolute; left: 0; top: calc(100% + 6px); z-index: 10;
  white-space: pre; width: max-content; max-width: 70vw; overflow: hidden;
  padding: 8px 11px; border-radius: 6px; background: #1f2328; color: #f6f8fa;
  font: 12px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  box-shadow: 0 6px 18px rgba(0, 0, 0, .28); pointer-events: none; text-align: left;
}
.tok.empty { padding: 0 .15em; }
.nl::before { content: "\\21B5"; opacity: .35; }
.none { color: #656d76; font-style: italic; }
"""


def render_html(
    trace: TokenTrace,
    color_by: str = "entropy",
    title: str | None = None,
    base: float | None = None,
) -> str:
    """Render a trace as a self-contained HTML5 heatmap page.

    Each token becomes a ``<span class="tok">`` whose background colour encodes ``color_by``
    on a pale-to-strong sequential scale. The scale runs from 0 to a robust maximum (the 98th
    percentile of the values), so one outlier does not wash out the rest; larger values are
    shown at full strength. Hovering a token shows its piece, entropy, surprisal, logprob,
    probability, varentropy, context length and top alternatives. All text from the trace is
    HTML-escaped; the page has no script and no external reference of any kind.

    Args:
        trace: the scored text.
        color_by: the signal that colours the tokens: ``"entropy"``, ``"surprisal"`` or
            ``"varentropy"``.
        title: the page title; defaults to one naming the model.
        base: logarithm base for the displayed values: ``None`` (or ``math.e``) for nats,
            ``2`` for bits (nats divided by ``ln 2``; varentropy by ``(ln 2)**2``), ``10``
            for hartleys. Probabilities and perplexity do not depend on it.

    Returns:
        The page as a string.

    Raises:
        TokenwiseError: for an unknown ``color_by``, an invalid ``base``, or a trace whose
            fields disagree in length.

    Example:
        >>> import tokenwise as tw
        >>> from tokenwise.heatmap import render_html
        >>> page = render_html(tw.score("tw-small", "x < y"), color_by="surprisal", base=2)
        >>> page.startswith("<!DOCTYPE html>") and "&lt;" in page
        True
    """
    if not isinstance(color_by, str) or color_by not in COLOR_BY:
        allowed = ", ".join(repr(c) for c in COLOR_BY)
        raise TokenwiseError(f"color_by must be one of {allowed}; got {color_by!r}")
    scale, unit = _units(base)
    _check_trace(trace)

    n = len(trace)
    logprobs = _floats(trace.logprobs)
    entropies = [v / scale for v in _floats(trace.entropies)]
    surprisals = [-v / scale for v in logprobs]
    varentropies = [v / scale**2 for v in _floats(trace.varentropies)]
    contexts = [int(c) for c in trace.context_lengths.reshape(-1).tolist()]
    token_ids = [int(t) for t in trace.token_ids.reshape(-1).tolist()]
    top_ids = trace.top_ids.tolist()
    top_lps = trace.top_logprobs.detach().to(torch.float64).cpu().tolist()

    signal = {"entropy": entropies, "surprisal": surprisals, "varentropy": varentropies}[color_by]
    signal_unit = f"{unit}²" if color_by == "varentropy" else unit
    finite = [v for v in signal if math.isfinite(v)]
    true_max = max(finite) if finite else 0.0
    vmax = _percentile(finite, _ROBUST_PERCENTILE)
    if vmax <= 0:  # e.g. almost every value is 0: fall back to the largest one
        vmax = max(true_max, 0.0)

    spans = []
    for i in range(n):
        alternatives = [
            (math.exp(lp), piece, tid == token_ids[i])
            for tid, piece, lp in zip(top_ids[i], trace.top_pieces[i], top_lps[i], strict=True)
        ]
        tip = _tooltip(
            index=i,
            piece=trace.pieces[i],
            entropy=entropies[i],
            surprisal=surprisals[i],
            logprob=logprobs[i] / scale,
            prob=math.exp(logprobs[i]),
            varentropy=varentropies[i],
            context=contexts[i],
            unit=unit,
            alternatives=alternatives,
        )
        spans.append(_token_span(trace.pieces[i], _level(signal[i], vmax), tip))

    page_title = title if title is not None else f"tokenwise · {trace.model}"
    mean_entropy = trace.mean_entropy / scale
    stats = [
        ("model", trace.model),
        ("tokens", f"{n:,}"),
        ("mean entropy", f"{_num(mean_entropy)} {unit}"),
        ("perplexity", _fmt_perplexity(trace)),
        ("window / stride", f"{trace.window} / {trace.stride}"),
        ("colour", f"{color_by} ({signal_unit})"),
    ]
    stats_html = "".join(f"<div><dt>{_esc(k)}</dt><dd>{_esc(v)}</dd></div>" for k, v in stats)
    gradient = ", ".join(f"{c} {100 * j / (len(_STOPS) - 1):.1f}%" for j, c in enumerate(_STOPS))
    legend = (
        f'<div class="legend" data-color-by="{_esc(color_by)}" data-unit="{_esc(signal_unit)}"'
        f' data-vmin="0" data-vmax="{vmax:.6g}">'
        f"<span>{_esc(color_by)}</span>"
        f'<span class="num">0 {_esc(signal_unit)}</span>'
        f'<span class="bar" style="background: linear-gradient(to right, {gradient})"></span>'
        f'<span class="num">≥ {_num(vmax)} {_esc(signal_unit)}</span>'
        f'<span class="note">scale max = {_ROBUST_PERCENTILE:g}th percentile;'
        f" observed max {_num(true_max)} {_esc(signal_unit)}</span>"
        "</div>"
    )
    body = "".join(spans) if spans else '<span class="none">(no tokens)</span>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="tokenwise">\n'
        f"<title>{_esc(page_title)}</title>\n"
        f"<style>{_CSS}</style>\n"
        "</head>\n<body>\n"
        f'<header>\n<h1>{_esc(page_title)}</h1>\n<dl class="stats">{stats_html}</dl>\n'
        f"{legend}\n</header>\n"
        f'<main class="text">{body}</main>\n'
        "</body>\n</html>\n"
    )


def write_html(
    trace: TokenTrace,
    path: str | os.PathLike[str],
    *,
    color_by: str = "entropy",
    title: str | None = None,
    base: float | None = None,
) -> Path:
    """Write :func:`render_html` of ``trace`` to ``path`` as UTF-8.

    Missing parent directories are created; an existing file is overwritten.

    Args:
        trace: the scored text.
        path: where to write the page (``.html``).
        color_by: see :func:`render_html`.
        title: see :func:`render_html`.
        base: see :func:`render_html`.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        TokenwiseError: for the errors of :func:`render_html`, or when ``path`` is a
            directory.

    Example:
        >>> import tokenwise as tw
        >>> from tokenwise.heatmap import write_html
        >>> write_html(tw.score("tw-small", "hello"), "out/hello.html").name
        'hello.html'
    """
    out = Path(path)
    if out.is_dir():
        raise TokenwiseError(f"path must be a file, not a directory; got {str(out)!r}")
    page = render_html(trace, color_by=color_by, title=title, base=base)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(page.encode("utf-8"))
    return out


def _units(base: float | None) -> tuple[float, str]:
    """The divisor that turns nats into ``base`` units, and the units' name."""
    if base is None:
        return 1.0, "nats"
    if (
        isinstance(base, bool)
        or not isinstance(base, (int, float))
        or not math.isfinite(base)
        or base <= 0
        or base == 1
    ):
        raise TokenwiseError(
            f"base must be a finite number > 0 other than 1 (2 for bits, e or None for nats); "
            f"got {base!r}"
        )
    if base == 2:
        return math.log(2.0), "bits"
    if math.isclose(base, math.e):
        return 1.0, "nats"
    if base == 10:
        return math.log(10.0), "hartleys"
    return math.log(float(base)), f"base-{float(base):g} units"


def _check_trace(trace: TokenTrace) -> None:
    """Raise when the trace's per-token fields do not all have one row per token."""
    n = len(trace)
    rows = {
        "pieces": len(trace.pieces),
        "logprobs": int(trace.logprobs.shape[0]),
        "entropies": int(trace.entropies.shape[0]),
        "varentropies": int(trace.varentropies.shape[0]),
        "context_lengths": int(trace.context_lengths.shape[0]),
        "top_ids": int(trace.top_ids.shape[0]),
        "top_logprobs": int(trace.top_logprobs.shape[0]),
        "top_pieces": len(trace.top_pieces),
    }
    for name, rows_n in rows.items():
        if rows_n != n:
            raise TokenwiseError(f"trace.{name} has {rows_n} rows; expected one per token ({n})")
    if trace.top_logprobs.dim() != 2 or tuple(trace.top_ids.shape) != tuple(
        trace.top_logprobs.shape
    ):
        raise TokenwiseError(
            f"trace.top_ids {tuple(trace.top_ids.shape)} and trace.top_logprobs "
            f"{tuple(trace.top_logprobs.shape)} must both have shape (T, k)"
        )
    k = int(trace.top_logprobs.shape[1])
    for i, alts in enumerate(trace.top_pieces):
        if len(alts) != k:
            raise TokenwiseError(f"trace.top_pieces[{i}] has {len(alts)} pieces; expected k={k}")


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().reshape(-1).to(torch.float64).cpu().tolist()]


def _percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` with linear interpolation (0.0 when empty)."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _level(value: float, vmax: float) -> float:
    """``value`` on the colour scale in ``[0, 1]``; NaN maps to 0, +inf to 1."""
    if math.isnan(value) or value <= 0:
        return 0.0
    if vmax <= 0:
        return 1.0
    return min(value / vmax, 1.0)


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _ramp(t: float) -> tuple[int, int, int]:
    """The colour at ``t`` in ``[0, 1]`` on the sequential scale."""
    t = min(max(t, 0.0), 1.0)
    pos = t * (len(_STOPS) - 1)
    i = min(int(pos), len(_STOPS) - 2)
    f = pos - i
    a, b = _hex_to_rgb(_STOPS[i]), _hex_to_rgb(_STOPS[i + 1])
    return (
        round(a[0] + (b[0] - a[0]) * f),
        round(a[1] + (b[1] - a[1]) * f),
        round(a[2] + (b[2] - a[2]) * f),
    )


def _luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour."""

    def lin(c: int) -> float:
        s = c / 255.0
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = rgb
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def _token_span(piece: str, level: float, tip: str) -> str:
    rgb = _ramp(level)
    bg = "#{:02x}{:02x}{:02x}".format(*rgb)
    lum = _luminance(rgb)
    # Whichever of near-black and white text contrasts more with the background.
    fg = "#ffffff" if (1.05 / (lum + 0.05)) > ((lum + 0.05) / 0.0677) else "#1f2328"
    classes = "tok empty" if piece == "" else "tok"
    text = '<span class="nl" aria-hidden="true"></span>\n'.join(
        _esc(part) for part in piece.split("\n")
    )
    return (
        f'<span class="{classes}" style="background-color: {bg}; color: {fg}"'
        f' data-level="{level:.4f}" data-tip="{_esc(tip)}">{text}</span>'
    )


def _tooltip(
    *,
    index: int,
    piece: str,
    entropy: float,
    surprisal: float,
    logprob: float,
    prob: float,
    varentropy: float,
    context: int,
    unit: str,
    alternatives: list[tuple[float, str, bool]],
) -> str:
    lines = [
        f"#{index}  {_show_piece(piece)}",
        f"entropy      {_num(entropy):>9} {unit}",
        f"surprisal    {_num(surprisal):>9} {unit}",
        f"logprob      {_num(logprob):>9} {unit}",
        f"probability  {_fmt_prob(prob):>9}",
        f"varentropy   {_num(varentropy):>9} {unit}²",
        f"context      {context:>9} token{'' if context == 1 else 's'}",
    ]
    if alternatives:
        lines.append(f"top {len(alternatives)}:")
        for p, alt, is_actual in alternatives:
            mark = "  ◀ actual" if is_actual else ""
            lines.append(f"  {_fmt_prob(p):>9}  {_show_piece(alt)}{mark}")
    else:
        lines.append("top alternatives: none recorded (k=0)")
    return "\n".join(lines)


def _show_piece(piece: str) -> str:
    """``repr`` of a piece with spaces shown as ``␣`` (newlines, tabs already escaped)."""
    shown = repr(piece).replace(" ", "␣")
    if len(shown) > _MAX_PIECE_CHARS:
        shown = shown[: _MAX_PIECE_CHARS - 1] + "…"
    return shown


def _num(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v != 0 and abs(v) < 0.001:
        return f"{v:.2e}"
    return f"{v:.3f}"


def _fmt_prob(p: float) -> str:
    if math.isnan(p):
        return "nan"
    if p == 0:
        return "0"
    if p >= 0.001:
        return f"{100 * p:.1f}%"
    return f"{p:.2e}"


def _fmt_perplexity(trace: TokenTrace) -> str:
    try:
        ppl = trace.perplexity
    except OverflowError:
        return "∞"
    if math.isnan(ppl) or math.isinf(ppl):
        return _num(ppl)
    return f"{ppl:,.2f}" if ppl < 1e6 else f"{ppl:.3e}"


def _esc(s: str) -> str:
    """HTML-escape text or an attribute value (quotes too); lone surrogates become U+FFFD."""
    return html.escape(_SURROGATES.sub("\ufffd", s), quote=True)
