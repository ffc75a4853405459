"""`tokenwise score --attention-entropy`: before/after an extension, JSON, plot, errors."""

from __future__ import annotations

import json
import random

from click.testing import CliRunner

from tokenwise.cli.score import score_command
from tokenwise.errors import TokenwiseError
from tokenwise.testbed.needle import NeedleWorld


def _memo(tmp_path, distractors):
    path = tmp_path / "memo.txt"
    path.write_text(NeedleWorld(0).item(random.Random(1), distractors).prompt)
    return path


def test_json_before_and_after_extension_and_plot(tmp_path):
    memo = _memo(tmp_path, 25)  # ~330 tokens: past tw-reader's 256
    png = tmp_path / "ent.png"
    res = CliRunner().invoke(score_command, [str(memo), "--model", "tw-reader",
                                             "--attention-entropy", "--extend", "512", "--json",
                                             "--plot", str(png)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    tokens = data["tokens"]
    assert 256 < tokens <= 512
    for key in ("before", "after"):
        grid = data[key]["by_layer_head_position"]
        assert (len(grid), len(grid[0]), len(grid[0][0])) == (2, 8, tokens)
        assert data[key]["mean_by_position"][0] == 0.0  # the first query sees one key
    assert data["after"]["mean_by_position"] != data["before"]["mean_by_position"]
    assert data["extend"] == 512 and data["method"] == "entropy_abf"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_table_output_and_errors(tmp_path):
    memo = _memo(tmp_path, 3)
    table = CliRunner().invoke(score_command, [str(memo), "--model", "tw-reader",
                                               "--attention-entropy"])
    assert table.exit_code == 0, table.output
    assert "positions" in table.output and "before" in table.output and "60-68" in table.output
    alone = CliRunner().invoke(score_command, [str(memo), "--model", "tw-reader",
                                               "--extend", "512"])
    # TokenwiseError: the main group prints it as one line
    assert isinstance(alone.exception, TokenwiseError)
    assert "--attention-entropy" in str(alone.exception)
    long = CliRunner().invoke(score_command, [str(_memo(tmp_path, 25)), "--model", "tw-reader",
                                              "--attention-entropy"])
    assert isinstance(long.exception, TokenwiseError)
    assert "raise --extend" in str(long.exception)
