"""`tokenwise testbed train|eval`: build the built-in models, and measure any model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tokenwise.cli.common import console, model_option


@click.group("testbed")
def testbed_group() -> None:
    """Synthetic worlds with known truth: train the built-in models, evaluate models."""


@testbed_group.command("train")
@click.option("--out", type=click.Path(file_okay=False), default="tokenwise-models",
              show_default=True,
              help="Parent directory for the models (the shipped ones live in "
                   "src/tokenwise/models/builtin).")
@click.option("--models", "names", default="tw-small,tw-large", show_default=True,
              help="Comma-separated built-in model names to train.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Testbed and training seed.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Override the number of optimizer steps (quick checks).")
def train_command(out: str, names: str, seed: int, steps: int | None) -> None:
    """Train the built-in models from scratch on the testbed corpus (seeded)."""
    from tokenwise.errors import TokenwiseError
    from tokenwise.testbed.train import TRAINABLE, train_builtin

    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in TRAINABLE]
    if not chosen or unknown:
        raise TokenwiseError(
            f"--models {names!r}: unknown {unknown or 'empty list'}; "
            f"allowed: {', '.join(TRAINABLE)}"
        )
    train_builtin(out, chosen, seed=seed, steps=steps, log=lambda s: click.echo(s, err=True))


@testbed_group.command("eval")
@model_option()
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Testbed seed (the built-in models were trained on seed 0).")
@click.option("--quick", is_flag=True, help="Small samples (seconds, wide intervals).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the full report as JSON to this file.")
def eval_command(model: str, seed: int, quick: bool, json_out: str | None) -> None:
    """Measure a model on the testbed: facts, additions, needles, Markov entropy."""
    from tokenwise.cli.common import check_output_path
    from tokenwise.models import load
    from tokenwise.testbed.evaluate import evaluate
    from tokenwise.testbed.worlds import Testbed

    check_output_path(json_out, "--json")
    lm = load(model)
    report = evaluate(lm, Testbed(seed), quick=quick)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)


def print_report(report: dict) -> None:
    """Print a testbed report as tables."""
    from rich.markup import escape
    from rich.table import Table

    out = console()
    out.print(f"[bold]{escape(report['model'])}[/bold]: {report['parameters']:,} parameters")
    for key, title, label in (("facts", "fact questions (greedy)", "bucket"),
                              ("arithmetic", "additions (greedy, exact)", "digits"),
                              ("needle", "needle contexts (greedy)", "distractors")):
        table = Table(title=title)
        for col in (label, "accuracy", "95% CI", "n", *(("chance",) if key == "facts" else ())):
            table.add_column(col)
        for name, r in report[key].items():
            extra = (f"{r['chance']:.3f}",) if key == "facts" else ()
            table.add_row(name, f"{r['accuracy']:.3f}",
                          f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}", str(r["n"]), *extra)
        out.print(table)
    m = report["markov"]
    out.print(
        f"Markov source ({m['positions']} positions, nats): true entropy {m['true_entropy_mean']}"
        f", measured {m['model_entropy_mean']}, mean |error| {m['mean_abs_error']}, "
        f"correlation {m['correlation']}; per symbol ({m['symbols']}): cross-entropy "
        f"{m['cross_entropy']}, true {m['true_entropy_per_symbol']}"
    )
