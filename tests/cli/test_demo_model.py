"""`tokenwise demo --model NAME|PATH`: the tour of one model; its errors and what it skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.conftest import save_tiny_llama

import tokenwise.models.real as real
from tokenwise.cli.demo_model import SKIPPED, Asker
from tokenwise.cli.main import cli
from tokenwise.models import fetched, load

SKIP_LINES = ("entropy-adaptive decoding (EAD): needs a small and a large model that share a "
              "tokenizer",
              "fact questions seen often, rarely and never in training: they need the "
              "testbed's fact world")


def run_demo(*args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["demo", *args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """A private, empty tokenwise cache, and no way to download."""
    monkeypatch.setenv("TOKENWISE_CACHE", str(tmp_path / "tw-cache"))
    monkeypatch.setattr(real, "_pip_download", lambda *a: pytest.fail("the demo downloaded"))
    return tmp_path / "tw-cache"


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_a_real_model_not_fetched_names_the_fetch_command_and_downloads_nothing(
        name, empty_cache, tmp_path):
    out = tmp_path / "demo-out"
    message = one_line_error(run_demo("--model", name, "--out", str(out)))
    assert f"real model {name!r} is not fetched yet" in message
    assert f"run `tokenwise models fetch {name}`" in message
    assert fetched(name) is None
    assert not out.exists()  # nothing was written either
    assert not empty_cache.exists() or not any(empty_cache.rglob("*.gguf"))


def test_an_unknown_model_is_a_one_line_error_naming_the_known_ones(empty_cache, tmp_path):
    message = one_line_error(run_demo("--model", "no-such-model", "--out", str(tmp_path)))
    assert "unknown model 'no-such-model'" in message
    assert "tw-small" in message and "smollm2-135m" in message


def test_out_that_is_a_file_fails_before_the_model_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    monkeypatch.setattr("tokenwise.models.load", lambda *a, **k: pytest.fail("model loaded"))
    message = one_line_error(run_demo("--model", "tw-small", "--out", str(blocker / "demo")))
    assert f"--out {str(blocker / 'demo')!r}" in message and "is a file, not a folder" in message


def test_help_documents_the_model_option():
    result = run_demo("--help")
    assert result.exit_code == 0
    assert "--model NAME|PATH" in result.output and "smollm2-135m" in result.output


def test_asker_uses_the_chat_template_when_the_tokenizer_has_one(tmp_path):
    lm = load(save_tiny_llama(tmp_path / "tiny-chat", context=128))
    plain = Asker.of(lm)
    assert not plain.chat and "no chat template" in plain.how
    assert plain.prompt("What is 2+3?") == "Q: What is 2+3?\nA:"
    lm.tokenizer.chat_template = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n"
                                  "{% endfor %}[assistant]")
    chat = Asker.of(lm)
    assert chat.chat and "own chat template" in chat.how
    prompt = chat.prompt("What is 2+3?")
    assert prompt == "[user] What is 2+3?\n[assistant]"
    assert prompt.ids == tuple(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_tour_of_one_model_runs_each_part_and_says_what_it_skips(tmp_path):
    model = save_tiny_llama(tmp_path / "tiny", context=128)
    out = tmp_path / "demo-out"
    result = run_demo("--model", str(model), "--out", str(out))
    assert result.exit_code == 0, result.output
    text = result.output
    for section in ("1. per-token entropy and surprisal", "2. decoding: greedy, Top-H, min-p",
                    "3. uncertainty", "4. prompt compression", "skipped on a single model"):
        assert section in text, text
    assert "chat template: no" in text and "has no chat template (a base model)" in text
    assert "most surprising tokens" in text and "most uncertain positions" in text
    for label in ("greedy:", "top-h 0.4:", "min-p 0.1, T 1.5:"):
        assert label in text
    assert "'What is the capital of France?' ->" in text and "of 5 samples name Paris" in text
    assert "extractive (MiniLM" in text and "perplexity (tiny's surprisal)" in text
    # the whole memo (about 230 tokens on this tokenizer) does not fit a 128-token context
    assert "tiny reads the whole memo and answers: not asked: the prompt does not fit tiny's " \
        "context of 128 tokens" in text
    assert text.count("tiny answers from what was kept:") == 2
    for line in SKIP_LINES:
        assert line in " ".join(text.split()), text
    assert len(SKIPPED) == 3
    assert "4-bit quantisation" not in text  # said of the real models only
    assert (out / "heatmap.html").is_file()
    assert "in the plain Q/A form" in text and "skipped 3 parts" in text


# --- the real model (runs once it is fetched: `tokenwise models fetch smollm2-135m`) ---


@pytest.mark.real
def test_demo_tours_smollm2_through_its_chat_template(tmp_path):
    if fetched("smollm2-135m") is None:
        pytest.skip("smollm2-135m is not fetched; run `tokenwise models fetch smollm2-135m`")
    out = tmp_path / "demo-out"
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tokenwise", "demo", "--model", "smollm2-135m",
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "loaded smollm2-135m: 134,515,008 parameters, vocabulary 49,152" in text
    assert "chat template: yes" in text and "4-bit quantisation" in text
    assert "Questions go through smollm2-135m's own chat template" in text
    # greedy answers through the template: SmolLM2-Instruct knows this one
    assert "'What is the capital of France?' -> 'The capital of France is Paris.' (correct" \
        in text
    assert "greedy: The old lighthouse keeper climbed the stairs and " in text
    assert text.count("smollm2-135m answers from what was kept:") == 2
    flat = " ".join(text.split())
    for line in SKIP_LINES:
        assert line in flat
    assert "through its chat template" in flat and "skipped 3 parts" in flat
    assert (out / "heatmap.html").is_file()
