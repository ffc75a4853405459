"""`tokenwise analyze`: each measurement from the command line, and its errors."""

from __future__ import annotations

import json

import numpy as np
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
