"""`tokenwise generate --seed` past what torch takes: a one-line error, no traceback."""

from __future__ import annotations

from click.testing import CliRunner

from tokenwise.cli.main import cli


def test_a_seed_past_2_to_the_64_is_a_one_line_error():
    result = CliRunner().invoke(cli, ["generate", "5+3=", "--model", "tw-small",
                                      "--sampler", "top_p", "--seed", str(10**23)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: seed={10**23}: allowed an integer from 0 to 2**64 - 1")

def test_the_largest_seed_generates():
    result = CliRunner().invoke(cli, ["generate", "5+3=", "--model", "tw-small", "--sampler",
                                      "top_p", "--seed", str(2**64 - 1), "--max-new-tokens", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert '"seed": 18446744073709551615' in result.output
