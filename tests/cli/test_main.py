"""The top-level `tokenwise` group: sub-commands load lazily, help and version stay light."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from tokenwise.cli.main import COMMANDS, cli


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import sys; from tokenwise.cli.main import main; sys.argv = ['tokenwise', *"
            f"{argv!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('|'.join(sorted(sys.modules)), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return set(done.stderr.strip().splitlines()[-1].split("|"))


def test_help_and_version_import_no_torch_nor_any_sub_command() -> None:
    for argv in (["--help"], ["--version"]):
        loaded = _modules_after(argv)
        assert "torch" not in loaded, argv
        assert "transformers" not in loaded, argv
        assert not {f"tokenwise.cli.{m}" for m, _, _ in COMMANDS.values()} & loaded, argv


def test_help_lists_every_command_with_its_line() -> None:
    out = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    for name, (_, _, line) in COMMANDS.items():
        assert f"{name}" in out and line in out


def test_every_entry_is_a_command_of_that_name() -> None:
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command)
        assert command.name == name
    assert cli.get_command(ctx, "nope") is None


def test_unknown_command_is_a_usage_error_naming_it() -> None:
    result = CliRunner().invoke(cli, ["scroe"])
    assert result.exit_code == 2
    assert "scroe" in result.output


def test_a_sub_command_runs_through_the_lazy_group() -> None:
    result = CliRunner().invoke(cli, ["samplers"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "top_h" in result.output
