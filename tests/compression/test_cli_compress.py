"""`tokenwise compress`, invoked through click's test runner."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from tests.compression.helpers import generated_texts

from tokenwise.cli.compress import compress_command, compress_group
from tokenwise.cli.main import _Group
from tokenwise.compression import compress

TEXT = generated_texts(1, seed=21, long_every=1)[0]


@pytest.fixture(scope="module", params=["command", "group"])
def cli(request):
    group = _Group(name="tokenwise")  # the real group's error handling
    group.add_command(compress_command if request.param == "command" else compress_group)
    return group


def _run(cli, args, stdin=None):
    return CliRunner().invoke(cli, ["compress", *args], input=stdin)


def test_text_out_and_summary(cli, tmp_path, tiny_bert_dir):
    path = tmp_path / "prompt.txt"
    path.write_text(TEXT, encoding="utf-8")
    res = _run(cli, [str(path), "--rate", "0.4", "--model", str(tiny_bert_dir)])
    assert res.exit_code == 0, res.output
    expected = compress(TEXT, rate=0.4, model=tiny_bert_dir)
    assert res.stdout == expected.text + "\n"
    assert f"{expected.tokens_before} -> {expected.tokens_after} tokens" in res.stderr
    piped = _run(cli, ["-", "--rate", "0.4", "--model", str(tiny_bert_dir)], stdin=TEXT)
    assert piped.stdout == res.stdout


def test_json_and_options(cli, tmp_path, tiny_bert_dir):
    path = tmp_path / "prompt.txt"
    path.write_text(TEXT, encoding="utf-8")
    res = _run(cli, [str(path), "--target-tokens", "600", "--model", str(tiny_bert_dir),
                     "--json", "--percentile", "global", "--keep-digits", "--force", "council",
                     "--question", "What about the budget?", "--batch-size", "2",
                     "--force-question-words"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert 594 <= out["tokens_after"] <= 600
    kept = {w["word"] for w in out["words"] if w["keep"]}
    assert all(w["keep"] for w in out["words"]
               if w["word"] in ("council", "budget") or any(c.isdigit() for c in w["word"]))
    assert kept


def test_show_prints_the_whole_input(cli, tmp_path, tiny_bert_dir):
    path = tmp_path / "prompt.txt"
    path.write_text("The council met. Item 4 was approved by 7 votes.", encoding="utf-8")
    res = _run(cli, [str(path), "--rate", "0.5", "--model", str(tiny_bert_dir), "--show"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "The council met. Item 4 was approved by 7 votes."


def test_messages(cli, tmp_path, tiny_bert_dir):
    msgs = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": TEXT}]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(msgs), encoding="utf-8")
    res = _run(cli, [str(path), "--messages", "--rate", "0.3", "--model", str(tiny_bert_dir)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out[0] == msgs[0] and out[1]["role"] == "user"
    assert len(out[1]["content"]) < len(TEXT)
    show = _run(cli, [str(path), "--messages", "--rate", "0.3", "--model", str(tiny_bert_dir),
                      "--show"])
    assert "[user]" in show.stdout


@pytest.mark.parametrize("args, message", [
    (["--rate", "0.5", "--model", "nope"], "token classifier 'nope' not found"),
    (["--rate", "0.5", "--target-tokens", "9", "--model", "x"], "exactly one of"),
    (["--rate", "2", "--model", "x"], "rate=2.0 is outside"),
    (["--target-tokens", "0", "--model", "x"], "target_tokens=0"),
    (["--rate", "0.5", "--method", "zip"], "Invalid value for '--method'"),
])
def test_errors(cli, tmp_path, args, message):
    path = tmp_path / "prompt.txt"
    path.write_text(TEXT, encoding="utf-8")
    res = _run(cli, [str(path), *args])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output


def test_input_errors(cli, tmp_path, tiny_bert_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    res = _run(cli, [str(empty), "--rate", "0.5", "--model", str(tiny_bert_dir)])
    assert res.exit_code != 0 and "empty" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("[{", encoding="utf-8")
    res = _run(cli, [str(bad), "--messages", "--rate", "0.5", "--model", str(tiny_bert_dir)])
    assert res.exit_code != 0 and "is not JSON" in res.output
    res = _run(cli, [str(tmp_path / "nope.txt"), "--rate", "0.5", "--model", "x"])
    assert res.exit_code != 0 and "does not exist" in res.output
    assert isinstance(compress_command, click.Command)


def test_group_routes_train_and_files(tmp_path, tiny_bert_dir):
    group = _Group(name="tokenwise")
    group.add_command(compress_group)
    runner = CliRunner()
    assert "Usage: tokenwise compress train" in runner.invoke(
        group, ["compress", "train", "--help"]).output
    helped = runner.invoke(group, ["compress", "--help"])
    assert helped.exit_code == 0 and "--target-tokens" in helped.output and "train" in helped.output
    # Options may come before the file.
    path = tmp_path / "p.txt"
    path.write_text(TEXT, encoding="utf-8")
    res = runner.invoke(group, ["compress", "--rate", "0.4", "--model", str(tiny_bert_dir),
                                str(path)])
    assert res.exit_code == 0, res.output
    assert res.stdout == compress(TEXT, rate=0.4, model=tiny_bert_dir).text + "\n"


def test_default_model_is_the_builtin_classifier(cli, tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text(TEXT, encoding="utf-8")
    res = _run(cli, [str(path), "--rate", "0.4"])
    assert res.exit_code == 0, res.output
    expected = compress(TEXT, rate=0.4)
    assert expected.method == "token_classifier"
    assert res.stdout == expected.text + "\n"
    named = _run(cli, [str(path), "--rate", "0.4", "--model", "tw-keep"])
    assert named.stdout == res.stdout


def test_group_trains_a_classifier_the_compressor_loads(tmp_path):
    group = _Group(name="tokenwise")
    group.add_command(compress_group)
    out = tmp_path / "clf"
    res = CliRunner().invoke(group, [
        "compress", "train", "--out", str(out), "--labels", "needle", "--examples", "6",
        "--steps", "2", "--batch-size", "2", "--hidden-size", "8", "--layers", "1",
        "--heads", "1", "--max-length", "64", "--threads", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and "saved" in res.output
    path = tmp_path / "p.txt"
    path.write_text(TEXT, encoding="utf-8")
    res = CliRunner().invoke(group, ["compress", str(path), "--rate", "0.4", "--model", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout == compress(TEXT, rate=0.4, model=out).text + "\n"


def test_demo_lines_prints_kept_and_dropped_words_and_survival():
    import io

    from rich.console import Console

    from tokenwise.cli.compress import DEMO_FACTS, DEMO_KEY, demo_lines
    from tokenwise.compression import TokenCounter

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="standard", width=200)
    rows = demo_lines(console, rate=0.33)
    out = buf.getvalue()
    assert [r["method"] for r in rows] == ["token_classifier", "perplexity"]
    counter = TokenCounter.resolve(None)
    memo = "Memo:\n" + "\n".join(f"The code of {k} is {v}." for k, v in DEMO_FACTS)
    q_line = f"Q: What is the code of {DEMO_KEY}?"
    target = round(0.33 * counter.count(memo)) + counter.count(q_line)
    answer = dict(DEMO_FACTS)[DEMO_KEY]
    for r in rows:
        assert r["tokens_before"] == counter.count(f"{q_line}\n{memo}")
        assert abs(r["tokens_after"] - target) <= max(1, 0.01 * target)
    verdicts = [line for line in out.splitlines() if f"answer {answer}" in line]
    assert len(verdicts) == 2
    for r, line in zip(rows, verdicts, strict=True):
        assert ("survived" in line) == r["survived"] and ("dropped" in line) != r["survived"]
    assert "\x1b[2m" in out and "\x1b[1;97m" in out  # dim (dropped) and bright (kept)


def test_demo_lines_with_a_reader_print_its_answers_from_whole_and_kept_memos():
    import io

    from rich.console import Console

    from tokenwise.cli.compress import DEMO_FACTS, DEMO_KEY, demo_lines
    from tokenwise.models import load
    from tokenwise.testbed.evaluate import greedy_complete

    reader = load("tw-reader")
    buf = io.StringIO()
    rows = demo_lines(Console(file=buf, width=200), methods=("token_classifier",),
                      reader=reader)
    out = buf.getvalue()
    memo = "Memo:\n" + "\n".join(f"The code of {k} is {v}." for k, v in DEMO_FACTS)
    whole = greedy_complete(reader, [f"{memo}\nQ: What is the code of {DEMO_KEY}?\nA:"],
                            max_new_tokens=5)[0].strip()
    assert f"tw-reader reads the whole memo and answers {whole!r}" in out
    said = rows[0]["reader_answer"]
    verdict = "right" if said == str(dict(DEMO_FACTS)[DEMO_KEY]) else "wrong"
    assert said.isdigit() and f"answers from what was kept: {said!r} {verdict}" in out
