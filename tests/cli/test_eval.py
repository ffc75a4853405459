"""`tokenwise eval` (compare, prune, quantize) through click's CliRunner, on tw-small."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import tokenwise as tw
from tokenwise.cli.eval import eval_group, read_items
from tokenwise.errors import TokenwiseError
from tokenwise.evaluate import RECORD_NAME


def run(*args: str):
    return CliRunner().invoke(eval_group, list(args), catch_exceptions=True)


@pytest.mark.slow
def test_quantize_then_compare_with_json_and_png(tmp_path):
    out = tmp_path / "q4"
    r = run("quantize", "tw-small", "--bits", "4", "--group-size", "32", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "4.625 bits per quantised weight" in r.output and "not smaller" in r.output
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["bits"] == 4 and record["group_size"] == 32
    assert tw.load(str(out)).num_parameters() == tw.load("tw-small").num_parameters()
    js, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    r = run("compare", "tw-small", str(out), "--tasks", "arithmetic", "--arithmetic", "2",
            "--docs", "1", "--json", str(js), "--png", str(png))
    assert r.exit_code == 0, r.output
    assert "arithmetic/1" in r.output and "KL(base||cand)" in r.output
    data = json.loads(js.read_text())
    assert list(data["buckets"]) == ["arithmetic/1", "arithmetic/2", "arithmetic/3"]
    assert data["text"]["tokens"] > 0 and len(data["answers"]) == 6
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_prune_wanda_two_four_and_own_items(tmp_path):
    cal = tmp_path / "cal.txt"
    cal.write_text("12+30=42\n7+5=12\n\nQ: Where was Ada born?\nA: Velmora\n")
    out = tmp_path / "w24"
    r = run("prune", "tw-small", "--method", "wanda", "--pattern", "2:4",
            "--calibration", str(cal), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "sparsity 0.5 (2:4)" in r.output
    assert json.loads((out / RECORD_NAME).read_text())["calibration_texts"] == 2
    items = tmp_path / "items.jsonl"
    items.write_text('{"prompt": "7+2=", "answer": "9", "bucket": "mine"}\n')
    r = run("compare", "tw-small", str(out), "--items", str(items), "--text", str(cal))
    assert r.exit_code == 0, r.output
    assert "mine" in r.output and "on custom" in r.output


@pytest.mark.parametrize("args, needle", [
    (("quantize", "tw-small", "--bits", "5"), "bits=5: allowed 2, 3, 4, 8"),
    (("quantize", "tw-small", "--group-size", "7"), "group_size=7 does not divide"),
    (("quantize", "tw-small", "--group-size", "big"), "--group-size 'big'"),
    (("quantize", "tw-small", "--backend", "quanto", "--bits", "3"), "bits=3"),
    (("prune", "tw-small", "--sparsity", "1.5"), "sparsity=1.5"),
    (("prune", "tw-small", "--pattern", "2x4"), "pattern='2x4'"),
    (("prune", "tw-small", "--method", "wanda", "--sparsity", "0.5"), "needs --calibration"),
])
def test_bad_options_give_clear_errors(tmp_path, args, needle):
    r = run(*args, "-o", str(tmp_path / "out"))
    assert isinstance(r.exception, TokenwiseError)
    assert needle in str(r.exception)
    assert not (tmp_path / "out" / RECORD_NAME).exists()


def test_output_directory_must_be_new_or_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = run("quantize", "tw-small", "-o", str(tmp_path))
    assert isinstance(r.exception, TokenwiseError) and "not an empty directory" in str(r.exception)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_read_items_reports_the_bad_line(tmp_path):
    f = tmp_path / "items.jsonl"
    f.write_text('{"prompt": "a", "answers": ["b"], "bucket": "x"}\n{"prompt": "a"}\n')
    with pytest.raises(TokenwiseError, match="line 2: missing answers, bucket"):
        read_items(str(f))
    f.write_text('{"prompt": "a", "answers": ["b"], "bucket": "x", "match": "fuzzy"}\n')
    with pytest.raises(TokenwiseError, match="line 1: match='fuzzy'"):
        read_items(str(f))
