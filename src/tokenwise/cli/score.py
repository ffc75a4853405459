"""`tokenwise score`: per-token log-probability, entropy and alternatives of a text."""

from __future__ import annotations

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
@click.pass_context
def score_command(ctx: click.Context, source: str, model: str, as_json: bool,
                  html_out: str | None, color_by: str, window: int | None, stride: int | None,
                  top_k: int, bits: bool) -> None:
    """Score every token of FILE (or standard input with -) under a model.

    Prints a table (or JSON with --json) of each token's log-probability, surprisal,
    entropy, varentropy and top alternatives; texts longer than the model's context are
    scored with a sliding window. JSON values are in nats. A progress bar over the windows
    goes to standard error in every mode.
    """
    from tokenwise.models import declared_context_length, load
    from tokenwise.scoring import score

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
    if as_json:
        click.echo(trace.to_json())
        return
    _print_table(trace, bits)


def _check_combination(ctx: click.Context, as_json: bool, html_out: str | None,
                       bits: bool) -> None:
    """Refuse options that the chosen outputs would ignore."""
    from click.core import ParameterSource

    if html_out is None and ctx.get_parameter_source("color_by") != ParameterSource.DEFAULT:
        raise TokenwiseError("--color-by colours the --html heatmap; add --html FILE or drop it")
    if bits and as_json and html_out is None:
        raise TokenwiseError("--bits applies to the table and --html; --json values are always "
                             "in nats (divide by ln 2 for bits), so drop --bits")


def _print_table(trace, bits: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    unit = "bits" if bits else "nats"
    scale = 1 / math.log(2) if bits else 1.0
    table = Table(title=escape(f"{trace.model}: {len(trace)} tokens"), show_lines=False)
    for col in ("#", "token", f"logprob ({unit})", f"surprisal ({unit})", f"entropy ({unit})",
                f"varentropy ({unit}²)", "ctx", "top alternatives (p)"):
        table.add_column(col, justify="right" if col not in ("token", "top alternatives")
                         else "left")
    for row in trace.rows():
        alts = "  ".join(f"{show_piece(a['piece'])} {math.exp(a['logprob']):.2f}"
                         for a in row["top"])
        table.add_row(
            str(row["index"]), escape(show_piece(row["piece"])), f"{row['logprob'] * scale:.3f}",
            f"{row['surprisal'] * scale:.3f}", f"{row['entropy'] * scale:.3f}",
            f"{row['varentropy'] * scale * scale:.3f}", str(row["context"]), escape(alts),
        )
    out = console()
    out.print(table)
    out.print(
        f"mean entropy {trace.mean_entropy * scale:.3f} {unit}, perplexity "
        f"{trace.perplexity:.2f}, window {trace.window}, stride {trace.stride}"
    )
