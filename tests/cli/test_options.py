"""Option combinations of `generate` and `score` that would be ignored or are contradictory:
each a one-line error naming the option, before any model is loaded (click's CliRunner)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tokenwise.cli.main import cli
from tokenwise.models import BUILTIN_DIR


def error_of(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: "), result.output
    return lines[-1]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--switch-up", "2"], ["--switch-up only applies", "--small MODEL"]),
    (["--switch-down", "0.5"], ["--switch-down only applies", "--small"]),
    (["--switch-judge", "small", "--switch-window", "1"],
     ["--switch-window and --switch-judge only apply", "drop them"]),
    (["--switch-up", "1.25"], ["--switch-up"]),  # the default's value, but given
])
def test_ead_options_without_small_are_refused(args, fragments) -> None:
    message = error_of("generate", "5+3=", *args)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("model", ["tw-large", str(BUILTIN_DIR / "tw-large"),
                                   str(BUILTIN_DIR / "tw-large") + "/"])
def test_small_equal_to_model_is_refused(model) -> None:
    message = error_of("generate", "5+3=", "--model", model, "--small", "tw-large")
    assert "--small 'tw-large' is the same model as --model" in message


@pytest.mark.parametrize(("args", "fragments"), [
    (["--switch-down", "5", "--switch-up", "1"],
     ["--switch-down 5", "from 0 to --switch-up (1)"]),
    (["--switch-down", "-0.5"], ["--switch-down -0.5", "--switch-up (1.25)"]),
    (["--switch-up", "0"], ["--switch-up 0", "> 0"]),
    (["--switch-up", "nan"], ["--switch-up nan"]),
    (["--switch-up", "inf"], ["--switch-up inf"]),
])
def test_ead_thresholds_name_their_options(args, fragments) -> None:
    message = error_of("generate", "5+3=", "-m", "tw-large", "--small", "tw-small", *args)
    for fragment in fragments:
        assert fragment in message, message


def test_score_options_the_outputs_would_ignore_are_refused(tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("The meeting is on Tuesday.\n")
    message = error_of("score", str(text), "--color-by", "surprisal")
    assert "--color-by" in message and "--html" in message
    message = error_of("score", str(text), "--json", "--bits")
    assert "--bits" in message and "nats" in message
    message = error_of("score", str(text), "--window", "1")
    assert "--window=1" in message
    result = CliRunner().invoke(cli, ["score", str(text), "--top-k", "-1"])
    assert result.exit_code == 2 and "'--top-k'" in result.output


def test_empty_prompt_and_stop_name_the_argument() -> None:
    assert "PROMPT '  '" in error_of("generate", "  ", "-m", "tw-small")
    assert "--stop ''" in error_of("generate", "hi", "-m", "tw-small", "--stop", "")
