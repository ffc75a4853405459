"""`tokenwise analyze`: each measurement from the command line, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tokenwise.analysis import directed_information
from tokenwise.cli.main import cli

MEMO = "Memo:\nThe code of Brelix is 382.\n"
QUESTION = "Q: What is the code of Brelix?\nA:"


def test_directed_info_prints_the_same_numbers_as_the_function(tmp_path):
    memo = tmp_path / "memo.txt"
    memo.write_text(MEMO)
    png = tmp_path / "di.png"
    result = CliRunner().invoke(cli, ["analyze", "directed-info", "-m", "tw-reader",
                                      "--context", f"@{memo}", "--prompt", QUESTION,
                                      "--answer", " 382", "--json", "--png", str(png)])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    [ref] = directed_information("tw-reader", " 382", MEMO, QUESTION)
    np.testing.assert_allclose([t["di"] for t in got["tokens"]], ref.per_token, atol=1e-6)
    assert got["total_nats"] > 3.0 and png.read_bytes()[:4] == b"\x89PNG"


def test_surplus_and_embeddings_run_and_bad_k_is_a_one_line_error(tmp_path):
    texts = tmp_path / "lines.txt"
    texts.write_text("\n".join(["markov: ka lo mi nu pe ro si tu va we xo yi zu"] * 6))
    result = CliRunner().invoke(cli, ["analyze", "surplus", "-m", "tw-small", str(texts),
                                      "--folds", "3", "--l2", "1.0", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["tokens"] == 6 * 13 and row["ci95"][0] <= row["surplus_nats"] <= row["ci95"][1]
    result = CliRunner().invoke(cli, ["analyze", "embeddings", "-m", "tw-small", "--k", "2,4",
                                      "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [r["clustering"] for r in rows] == ["k-means k=2", "k-means k=4", "categories (4)"]
    result = CliRunner().invoke(cli, ["analyze", "embeddings", "-m", "tw-small", "--k", "2,x"])
    assert result.exit_code == 1 and "--k '2,x': allowed comma-separated integers" in \
        result.output


def test_spectral_prints_the_functions_overlaps_and_bad_k_is_a_one_line_error(tmp_path):
    from tokenwise.analysis.spectral import head_rows, markov_contexts, spectral_alignment
    from tokenwise.models import load
    from tokenwise.testbed import MarkovSource
    from tokenwise.testbed.markov import SYMBOLS

    result = CliRunner().invoke(cli, ["analyze", "spectral", "-m", "tw-small", "--k", "1,3",
                                      "--random", "5", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    lm = load("tw-small")
    probs, w = markov_contexts(MarkovSource(0))
    ref = spectral_alignment(head_rows(lm, [lm.encode(" " + s)[0] for s in SYMBOLS]), probs, w,
                             (1, 3))
    np.testing.assert_allclose([r["overlap"] for r in got["rows"]], ref.overlap, atol=1e-9)
    texts = tmp_path / "t.txt"
    texts.write_text("markov: ka lo mi nu pe\nmarkov: ro si tu\n")
    result = CliRunner().invoke(cli, ["analyze", "spectral", "-m", "tw-small", "--text",
                                      str(texts), "--tokens", "6", "--k", "2", "--random", "3"])
    assert result.exit_code == 0, result.output
    assert "beats random" in result.output
    result = CliRunner().invoke(cli, ["analyze", "spectral", "-m", "tw-small", "--k", "99"])
    assert result.exit_code == 1 and "ks=[99]: allowed 1..15" in result.output


def test_semantic_info_by_hand_and_bad_attribute_is_a_one_line_error():
    import math

    result = CliRunner().invoke(cli, ["analyze", "semantic-info", "--attribute", "pet",
                                      "--truth", "a hound", "--answer", "a dog", "--answer",
                                      "a cat", "--answer", "a banana", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    # 10 pets, uniform prior: a true answer tells log 10, a false one -inf (crisp)
    assert rows[0]["meaning"] == "dog" and rows[0]["semantic_information"] == \
        pytest.approx(math.log(10))
    assert rows[1]["semantic_information"] == -math.inf and rows[2]["meaning"] is None
    result = CliRunner().invoke(cli, ["analyze", "semantic-info", "-m", "tw-small",
                                      "--attribute", "pet", "--truth", "dog", "--answer",
                                      "a cat", "--floor", "0.1", "--question",
                                      "Q: What animal does Tograith Tiklo own?\\nA:"])
    assert result.exit_code == 0, result.output
    assert f"{math.log(0.1 / 0.19):.3f}" in result.output  # T = (1 + 9 * 0.1) / 10
    result = CliRunner().invoke(cli, ["analyze", "semantic-info", "--attribute", "color",
                                      "--truth", "red", "--answer", "red"])
    assert result.exit_code == 1 and "--attribute 'color': allowed" in result.output
