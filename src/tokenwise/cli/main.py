"""Entry point of the `tokenwise` command: the group and its error handling."""

from __future__ import annotations

import click

from tokenwise import __version__
from tokenwise.errors import TokenwiseError


class _Group(click.Group):
    """A click group that turns tokenwise's user errors into clean one-line messages."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except TokenwiseError as exc:
            raise click.ClickException(str(exc)) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise click.ClickException(f"{exc.strerror}: {exc.filename}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokenwise")
def cli() -> None:
    """Read the per-token distribution of a language model and act on it."""


def _register() -> None:
    from tokenwise.cli import (
        compress,
        demo,
        generate,
        models,
        samplers,
        score,
        serve,
        testbed,
        train,
        uncertainty,
    )

    cli.add_command(score.score_command)
    cli.add_command(models.models_command)
    cli.add_command(samplers.samplers_command)
    cli.add_command(generate.generate_command)
    cli.add_command(testbed.testbed_group)
    cli.add_command(uncertainty.uncertainty_group)
    cli.add_command(compress.compress_group)
    cli.add_command(train.train_command)
    cli.add_command(serve.serve_command)
    cli.add_command(demo.demo_command)


_register()


def main() -> None:
    """Run the `tokenwise` command (console-script entry point)."""
    cli(prog_name="tokenwise")


if __name__ == "__main__":
    main()
