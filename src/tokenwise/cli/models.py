"""`tokenwise models`: list the built-in models, language models and token classifier."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tokenwise.cli.common import console

#: What each built-in model is for (shown by `tokenwise models`).
ROLES = {
    "tw-large": "language model (the default --model)",
    "tw-small": "language model (small, fast)",
    "tw-reader": "reader of needle questions (rates compression)",
    "tw-keep": "token classifier of `tokenwise compress`",
}


def _row(name: str, path: Path, kind: str) -> dict:
    config = json.loads((path / "config.json").read_text())
    info_path = path / "training.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    default_role = "language model" if kind == "causal_lm" else "token classifier"
    return {
        "name": name,
        "kind": kind,
        "role": ROLES.get(name, default_role),
        "parameters": info.get("parameters"),
        "architecture": config.get("architectures", ["?"])[0],
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "context": config.get("max_position_embeddings"),
        "vocab_size": config.get("vocab_size"),
        "train_seconds": info.get("train_seconds"),
        "path": str(path),
    }


def builtin_rows() -> list[dict]:
    """One dict per built-in model: the causal LMs, then the compression classifiers.

    Each row has name, kind (``"causal_lm"`` or ``"token_classifier"``), role, parameters,
    architecture, layers, hidden size, context, vocabulary size, training time and path.

    Example:
        >>> [r["name"] for r in builtin_rows() if r["kind"] == "token_classifier"]
        ['tw-keep']
    """
    from tokenwise.compression.token_classifier import BUILTIN_CLASSIFIERS
    from tokenwise.models import builtin_names, builtin_path

    rows = [_row(name, builtin_path(name), "causal_lm") for name in builtin_names()]
    rows += [_row(name, path, "token_classifier")
             for name, path in sorted(BUILTIN_CLASSIFIERS.items())
             if (path / "config.json").is_file()]
    return rows


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_command(as_json: bool) -> None:
    """List the built-in models: language models (usable wherever a --model asks for one)
    and the token classifier of `tokenwise compress`."""
    rows = builtin_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="built-in models (also: any local Hugging Face directory)")
    for col in ("name", "role", "parameters", "architecture", "layers", "width", "context",
                "vocab"):
        table.add_column(col)
    for r in rows:
        params = f"{r['parameters']:,}" if r["parameters"] else "?"
        table.add_row(r["name"], escape(r["role"]), params, r["architecture"], str(r["layers"]),
                      str(r["hidden_size"]), str(r["context"]), str(r["vocab_size"]))
    console().print(table)
