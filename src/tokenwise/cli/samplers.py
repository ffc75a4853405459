"""`tokenwise samplers`: list the samplers and their parameters."""

from __future__ import annotations

import json

import click

from tokenwise.cli.common import console


@click.command("samplers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def samplers_command(as_json: bool) -> None:
    """List the samplers (usable by name in Python: tokenwise.sampling.get(NAME, ...))."""
    from tokenwise.sampling import describe

    rows = describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="samplers: logits (B, V) -> logits (B, V), dropped tokens -inf")
    for col in ("name", "parameters (defaults)", "what it does"):
        table.add_column(col)
    for row in rows:
        params = ", ".join(f"{k}={v!r}" if v is not None else k for k, v in row["params"].items())
        table.add_row(row["name"], escape(params), escape(row["summary"]))
    console().print(table)
