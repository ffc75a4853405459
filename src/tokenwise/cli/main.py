"""Entry point of the `tokenwise` command: the group, its lazily loaded sub-commands and its
error handling.

Sub-command modules import torch and transformers (seconds), so ``tokenwise --help`` and
``--version`` must not import them: each sub-command is imported only when it runs or when its
own help is asked for, and the group's help lists them from :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib

import click

from tokenwise import __version__
from tokenwise.errors import TokenwiseError

#: name -> (module under tokenwise.cli, attribute, one-line help shown by `tokenwise --help`).
#: tests/cli/test_main.py checks that every entry names a command of that name.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "analyze": ("analyze", "analyze_group",
                "Theory as measurements: directed information, hidden-state surplus, "
                "embedding IB."),
    "compress": ("compress", "compress_group",
                 "Compress a prompt to a token budget, or train a keep/drop classifier."),
    "control": ("control", "control_group",
                "Semantic control: fit the verifier that SemanticControl steers with."),
    "demo": ("demo", "demo_command",
             "A tour on the built-in models (or one model, --model): score, decode, "
             "uncertainty, compression."),
    "eval": ("eval", "eval_group",
             "Compressed models beyond perplexity: prune, quantize, compare with the original."),
    "generate": ("generate", "generate_command",
                 "Generate a continuation of PROMPT, with each token's entropy."),
    "models": ("models", "models_command",
               "List the built-in and real models; fetch a real one."),
    "route": ("route", "route_group",
              "Adaptive compute: train a difficulty router over a strategy table, evaluate "
              "it, use it."),
    "samplers": ("samplers", "samplers_command", "List the samplers and their parameters."),
    "score": ("score", "score_command",
              "Score every token of FILE: logprob, entropy, perplexity."),
    "serve": ("serve", "serve_command", "Serve models over an OpenAI-compatible HTTP API."),
    "testbed": ("testbed", "testbed_group",
                "Synthetic worlds with known truth; train and evaluate the built-in models."),
    "tokenizer": ("tokenizer", "tokenizer_group",
                  "Train a tokenizer (with supertokens); move a model onto a new tokenizer."),
    "train": ("train", "train_command",
              "Fine-tune a model on a text or JSONL file with memory-light losses."),
    "uncertainty": ("uncertainty", "uncertainty_group",
                    "How sure is a model of its answer; evaluate uncertainty scores."),
}


class _Group(click.Group):
    """A click group that turns tokenwise's user errors into clean one-line messages."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except TokenwiseError as exc:
            raise click.ClickException(str(exc)) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise click.ClickException(f"{exc.strerror}: {exc.filename}") from None


class _LazyGroup(_Group):
    """The top-level group: sub-commands from :data:`COMMANDS`, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"tokenwise.cli.{module}"), attr)
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the table, so that listing the commands imports none of them.
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokenwise")
def cli() -> None:
    """Read the per-token distribution of a language model and act on it."""


def main() -> None:
    """Run the `tokenwise` command (console-script entry point).

    Example:
        >>> import subprocess, sys
        >>> out = subprocess.run([sys.executable, "-m", "tokenwise", "--version"],
        ...                      capture_output=True, text=True).stdout
        >>> out.startswith("tokenwise, version")
        True
    """
    cli(prog_name="tokenwise")


if __name__ == "__main__":
    main()
