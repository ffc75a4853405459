"""`tokenwise tokenizer train|transplant` through click."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tokenwise.cli import main as cli_main
from tokenwise.cli.tokenizer import tokenizer_group
from tokenwise.models import load

#: the entry tokenwise.cli.main.COMMANDS gets for this group
ENTRY = ("tokenizer", "tokenizer_group",
         "Train a tokenizer (with supertokens); move a model onto a new tokenizer.")


@pytest.fixture
def tokenwise_cli(monkeypatch):
    """The real `tokenwise` command with this group registered (its error handling too)."""
    monkeypatch.setitem(cli_main.COMMANDS, "tokenizer", ENTRY)

    def run(*args):
        return CliRunner().invoke(cli_main.cli, ["tokenizer", *map(str, args)])

    return run


def test_train_then_transplant(tmp_path, testbed, tokenwise_cli):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n"
                              for d in testbed.training_documents()[:600]))
    tok_dir = tmp_path / "tok"
    trained = CliRunner().invoke(tokenizer_group, ["train", str(corpus), "--vocab-size", "700",
                                                   "--supertokens", "-o", str(tok_dir)])
    assert trained.exit_code == 0, trained.output
    assert "700 tokens with supertokens" in trained.output
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    out = tmp_path / "moved"
    moved = CliRunner().invoke(tokenizer_group, ["transplant", "tw-small", str(tok_dir),
                                                 "--init", "tokenadapt", "-o", str(out)])
    assert moved.exit_code == 0, moved.output
    assert "700 tokens (" in moved.output and "shared" in moved.output
    lm = load(out)
    assert lm.vocab_size == 700
    assert json.loads((out / "transplant.json").read_text())["init"] == "tokenadapt"
    # a second run into the same directory is refused unless asked for
    again = tokenwise_cli("transplant", "tw-small", tok_dir, "-o", out)
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_clean_errors(tmp_path, tokenwise_cli):
    missing = tokenwise_cli("train", tmp_path / "none.txt", "--vocab-size", 500, "-o",
                            tmp_path / "t")
    assert missing.exit_code != 0 and "does not exist" in missing.output
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    empty = tokenwise_cli("train", blank, "--vocab-size", 500, "-o", tmp_path / "t")
    assert empty.exit_code != 0 and "holds no text" in empty.output
    no_tok = tokenwise_cli("transplant", "tw-small", tmp_path / "nope", "-o", tmp_path / "m")
    assert no_tok.exit_code != 0 and "does not exist" in no_tok.output
    assert "Traceback" not in missing.output + empty.output + no_tok.output


def test_group_is_listed_under_its_entry(tokenwise_cli):
    shown = tokenwise_cli("--help")
    assert shown.exit_code == 0 and "train" in shown.output and "transplant" in shown.output
