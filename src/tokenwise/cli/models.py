"""`tokenwise models`: list the built-in models."""

from __future__ import annotations

import json

import click


def builtin_rows() -> list[dict]:
    """One dict per built-in model: name, parameters, context, layers, width, training."""
    from tokenwise.models import builtin_names, builtin_path

    rows = []
    for name in builtin_names():
        path = builtin_path(name)
        config = json.loads((path / "config.json").read_text())
        info_path = path / "training.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        rows.append({
            "name": name,
            "parameters": info.get("parameters"),
            "architecture": config.get("architectures", ["?"])[0],
            "layers": config.get("num_hidden_layers"),
            "hidden_size": config.get("hidden_size"),
            "context": config.get("max_position_embeddings"),
            "vocab_size": config.get("vocab_size"),
            "train_seconds": info.get("train_seconds"),
            "path": str(path),
        })
    return rows


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_command(as_json: bool) -> None:
    """List the built-in models (usable anywhere a --model is asked for)."""
    rows = builtin_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="built-in models (also: any local Hugging Face directory)")
    for col in ("name", "parameters", "architecture", "layers", "width", "context", "vocab"):
        table.add_column(col)
    for r in rows:
        params = f"{r['parameters']:,}" if r["parameters"] else "?"
        table.add_row(r["name"], params, r["architecture"], str(r["layers"]),
                      str(r["hidden_size"]), str(r["context"]), str(r["vocab_size"]))
    Console().print(table)
