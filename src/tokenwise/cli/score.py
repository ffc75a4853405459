"""`tokenwise score`: per-token log-probability, entropy and alternatives of a text."""

from __future__ import annotations

import itertools
import math

import click

from tokenwise.cli.common import check_output_path, console, model_option, read_text, show_piece
from tokenwise.errors import TokenwiseError
from tokenwise.scoring import check_text, check_window_args


@click.command("score")
@click.argument("source", metavar="FILE|-")
@model_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, writable=True),
              help="Also write a self-contained HTML heatmap to this file.")
@click.option("--color-by", type=click.Choice(["entropy", "surprisal", "varentropy"]),
              default="entropy", show_default=True, help="Signal that colours the heatmap.")
@click.option("--window", type=int, default=None,
              help="Tokens per forward pass (2..context length; default: context length).")
@click.option("--stride", type=int, default=None,
              help="New tokens scored per window (1..window-1; default: window // 2).")
@click.option("--top-k", type=click.IntRange(min=0), default=3, show_default=True,
              help="Alternatives shown per token.")
@click.option("--bits", is_flag=True,
              help="Show entropy and surprisal in bits (table, HTML; JSON is always in nats).")
@click.option("--attention-entropy", is_flag=True,
              help="Report attention entropy per layer, head and position instead of token "
                   "scores (mean per position in the table; everything with --json).")
@click.option("--extend", "extend_to", type=click.IntRange(min=2), default=None, metavar="N",
              help="With --attention-entropy: also extend the model's context to N tokens "
                   "and report before and after.")
@click.option("--extend-method", type=click.Choice(["entropy_abf", "pi", "ntk", "yarn"]),
              default="entropy_abf", show_default=True, help="Method for --extend.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, writable=True),
              help="With --attention-entropy: write a PNG of mean attention entropy vs "
                   "position (before and after --extend). Needs matplotlib.")
@click.option("--hwe-window", type=click.IntRange(min=1), default=None, metavar="N",
              help="Also report each token's window entropy (mean entropy of it and the next "
                   "N-1 tokens, ARES's forward window) and an hwe flag: true where that is "
                   "above --hwe-percentile of the text's window entropies.")
@click.option("--hwe-percentile", type=click.FloatRange(0, 100, min_open=True, max_open=True),
              default=80.0, show_default=True, metavar="P",
              help="With --hwe-window: the percentile a window entropy must exceed "
                   "(80: about the top 20%).")
@click.pass_context
def score_command(ctx: click.Context, source: str, model: str, as_json: bool,
                  html_out: str | None, color_by: str, window: int | None, stride: int | None,
                  top_k: int, bits: bool, attention_entropy: bool, extend_to: int | None,
                  extend_method: str, plot_out: str | None, hwe_window: int | None,
                  hwe_percentile: float) -> None:
    """Score every token of FILE (or standard input with -) under a model.

    Prints a table (or JSON with --json) of each token's log-probability, surprisal,
    entropy, varentropy and top alternatives; texts longer than the model's context are
    scored with a sliding window. JSON values are in nats. A progress bar over the windows
    goes to standard error in every mode.

    With --hwe-window N, each token also gets its window entropy (the mean entropy of the
    token and the next N-1, fewer at the end) and an hwe flag, true for high-window-entropy
    tokens (ARES): window entropy above the --hwe-percentile (default 80) of the text's
    window entropies. In JSON they are the rows' "window_entropy" (nats) and "hwe" fields,
    and an "hwe" object records the settings.

    With --attention-entropy, the entropy of every attention row over the whole text in one
    pass (e.g. `tokenwise score long.txt --model tw-reader --attention-entropy --extend 1024
    --plot ent.png`): past the trained length it drifts up unless the extension keeps it.
    """
    from click.core import ParameterSource

    from tokenwise.models import declared_context_length, load
    from tokenwise.scoring import score

    if hwe_window is None and ctx.get_parameter_source("hwe_percentile") != ParameterSource.DEFAULT:
        raise TokenwiseError("--hwe-percentile goes with --hwe-window N; add it or drop "
                             "--hwe-percentile")
    if attention_entropy or extend_to is not None or plot_out is not None:
        if hwe_window is not None:
            raise TokenwiseError("--hwe-window flags scored tokens; --attention-entropy reports "
                                 "attention rows instead: drop one of them")
        _attention_entropy_mode(ctx, source, model, as_json, html_out, window, stride, bits,
                                attention_entropy, extend_to, extend_method, plot_out)
        return

    check_output_path(html_out, "--html")
    _check_combination(ctx, as_json, html_out, bits)
    text = read_text(source)
    check_text(text)
    # Fail before loading weights: the window limit is in config.json.
    check_window_args(window, stride, declared_context_length(model), prefix="--")
    lm = load(model)
    trace = score(lm, text, window=window, stride=stride, top_k=top_k, progress=True)
    if html_out:
        from tokenwise.heatmap import write_html

        path = write_html(trace, html_out, color_by=color_by, base=2 if bits else None)
        click.echo(f"wrote {path}", err=True)
    hwe = None
    if hwe_window is not None:
        hwe = (trace.window_entropies(hwe_window).tolist(),
               trace.high_window_entropy(hwe_window, percentile=hwe_percentile).tolist())
    if as_json:
        if hwe is None:
            click.echo(trace.to_json())
            return
        import json

        doc = trace.to_dict()
        for row, value, flag in zip(doc["tokens"], *hwe, strict=True):
            row["window_entropy"], row["hwe"] = value, flag
        tokens = doc.pop("tokens")  # keep the rows last, as to_json does
        doc["hwe"] = {"window": hwe_window, "percentile": hwe_percentile,
                      "direction": "leading", "marked": sum(hwe[1])}
        doc["tokens"] = tokens
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    _print_table(trace, bits, hwe)


def _check_combination(ctx: click.Context, as_json: bool, html_out: str | None,
                       bits: bool) -> None:
    """Refuse options that the chosen outputs would ignore."""
    from click.core import ParameterSource

    if html_out is None and ctx.get_parameter_source("color_by") != ParameterSource.DEFAULT:
        raise TokenwiseError("--color-by colours the --html heatmap; add --html FILE or drop it")
    if bits and as_json and html_out is None:
        raise TokenwiseError("--bits applies to the table and --html; --json values are always "
                             "in nats (divide by ln 2 for bits), so drop --bits")


def _print_table(trace, bits: bool,
                 hwe: tuple[list[float], list[bool]] | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    unit = "bits" if bits else "nats"
    scale = 1 / math.log(2) if bits else 1.0
    table = Table(title=escape(f"{trace.model}: {len(trace)} tokens"), show_lines=False)
    columns = ["#", "token", f"logprob ({unit})", f"surprisal ({unit})", f"entropy ({unit})",
               f"varentropy ({unit}²)", "ctx", "top alternatives (p)"]
    if hwe is not None:
        columns[-1:-1] = [f"window entropy ({unit})", "hwe"]
    for col in columns:
        table.add_column(col, justify="right" if col not in ("token", "top alternatives")
                         else "left")
    for i, row in enumerate(trace.rows()):
        alts = "  ".join(f"{show_piece(a['piece'])} {math.exp(a['logprob']):.2f}"
                         for a in row["top"])
        extra = [] if hwe is None else [f"{hwe[0][i] * scale:.3f}", "yes" if hwe[1][i] else ""]
        table.add_row(
            str(row["index"]), escape(show_piece(row["piece"])), f"{row['logprob'] * scale:.3f}",
            f"{row['surprisal'] * scale:.3f}", f"{row['entropy'] * scale:.3f}",
            f"{row['varentropy'] * scale * scale:.3f}", str(row["context"]), *extra,
            escape(alts),
        )
    out = console()
    out.print(table)
    out.print(
        f"mean entropy {trace.mean_entropy * scale:.3f} {unit}, perplexity "
        f"{trace.perplexity:.2f}, window {trace.window}, stride {trace.stride}"
    )


def _attention_entropy_mode(ctx: click.Context, source: str, model: str, as_json: bool,
                            html_out: str | None, window: int | None, stride: int | None,
                            bits: bool, wanted: bool, extend_to: int | None,
                            extend_method: str, plot_out: str | None) -> None:
    """``--attention-entropy``: mean attention entropy by position, before/after --extend."""
    import json

    from click.core import ParameterSource

    from tokenwise.context import attention_entropies, extend
    from tokenwise.models import load

    if not wanted:
        raise TokenwiseError("--extend and --plot go with --attention-entropy; add it")
    if html_out or window is not None or stride is not None:
        raise TokenwiseError("--attention-entropy reads the whole text in one pass: drop "
                             "--html, --window and --stride")
    if ctx.get_parameter_source("extend_method") != ParameterSource.DEFAULT and extend_to is None:
        raise TokenwiseError("--extend-method needs --extend N")
    check_output_path(plot_out, "--plot")
    text = read_text(source)
    check_text(text)
    lm = load(model)
    ids = list(lm.start_ids) + lm.encode(text)
    limit = extend_to if extend_to is not None else lm.context_length
    if len(ids) > limit:
        raise TokenwiseError(f"the text is {len(ids)} tokens; --attention-entropy reads at most "
                             f"{limit} (the {'--extend length' if extend_to else 'context'}"
                             "); shorten the text or raise --extend")
    base = 2 if bits else None
    runs = {"before": attention_entropies(lm, ids, base=base)}  # (L, H, T)
    if extend_to is not None:
        extend(lm, extend_to, method=extend_method)
        runs["after"] = attention_entropies(lm, ids, base=base)
    unit = "bits" if bits else "nats"
    if as_json:
        click.echo(json.dumps({
            "model": lm.name, "tokens": len(ids), "unit": unit, "extend": extend_to,
            "method": extend_method if extend_to else None,
            **{k: {"mean_by_position": v.mean(dim=(0, 1)).tolist(),
                   "by_layer_head_position": v.tolist()} for k, v in runs.items()},
        }))
    else:
        _print_attention_table(lm.name, runs, unit)
    if plot_out:
        _plot_attention(runs, plot_out, lm.name, unit, extend_to, extend_method)
        click.echo(f"wrote {plot_out}", err=True)


def _print_attention_table(name: str, runs: dict, unit: str) -> None:
    from rich.table import Table

    length = next(iter(runs.values())).shape[-1]
    edges = sorted({0, *(length * k // 8 for k in range(1, 8)), length})
    table = Table(title=f"{name}: mean attention entropy ({unit}) by position")
    table.add_column("positions", justify="right")
    for key in runs:
        table.add_column(key, justify="right")
    for lo, hi in itertools.pairwise(edges):
        if hi > lo:
            table.add_row(f"{lo}-{hi - 1}",
                          *(f"{v[:, :, lo:hi].mean().item():.3f}" for v in runs.values()))
    console().print(table)


def _plot_attention(runs: dict, path: str, name: str, unit: str, extend_to: int | None,
                    method: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise TokenwiseError("--plot needs matplotlib: pip install 'tokenwise[plot]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, value in runs.items():
        label = key if key == "before" else f"after {method} to {extend_to}"
        ax.plot(value.mean(dim=(0, 1)).numpy(), label=label, linewidth=1)
    ax.set_xlabel("query position")
    ax.set_ylabel(f"mean attention entropy ({unit})")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
