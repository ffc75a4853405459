"""`tokenwise control train`: a probe fitted on labelled texts that SemanticControl loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import tokenwise as tw
from tokenwise.cli.main import cli
from tokenwise.sampling.semantic_control import (
    HiddenStateEmbedder,
    LogisticProbe,
    SemanticControl,
)
from tokenwise.testbed.markov import SYMBOLS, MarkovSource


def markov_lines(path, count=240, length=8):
    """Testbed symbol runs (as SemanticControl judges a generation: the text after the
    prompt, " ka lo ..."), labelled 1 when they contain the symbol "pe"."""
    src = MarkovSource(seed=0, length=length)
    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        for _ in range(count):
            text = "".join(" " + SYMBOLS[s] for s in src.sample(rng).symbols)
            fh.write(json.dumps({"text": text, "label": " pe" in text}) + "\n")
    return path


@pytest.mark.parametrize("embedding", ["hidden", "tokens"])
def test_train_fits_a_probe_that_separates_the_labels(tmp_path, embedding):
    data = markov_lines(tmp_path / "lines.jsonl")
    out = tmp_path / "probe.json"
    result = CliRunner().invoke(cli, ["control", "train", str(data), "--out", str(out),
                                      "--model", "tw-small", "--embedding", embedding,
                                      "--l2", "1e-4"])
    assert result.exit_code == 0, result.output
    probe = LogisticProbe.load(out)
    assert probe.info["embedding"] == embedding and probe.info["texts"] == 240
    assert probe.info["holdout_accuracy"] >= 0.8
    assert f"saved {out}" in result.output


def test_the_trained_probe_steers_generation(tmp_path, small):
    data = markov_lines(tmp_path / "lines.jsonl", count=300)
    out = tmp_path / "probe.json"
    result = CliRunner().invoke(cli, ["control", "train", str(data), "--out", str(out),
                                      "--l2", "1e-4"])
    assert result.exit_code == 0, result.output
    sampler = SemanticControl(LogisticProbe.load(out), HiddenStateEmbedder(small), small,
                              top_k=4, horizon=3, length=8)
    prompts = ["markov: ka lo"] * 24
    seeds = list(range(24))
    plain = tw.generate(small, prompts, "temperature", max_new_tokens=8, seed=seeds)
    steered = tw.generate(small, prompts, sampler, max_new_tokens=8, seed=seeds)
    hits = [sum(" pe" in g.text for g in gens) for gens in (plain, steered)]
    assert hits[1] >= hits[0] + 6, hits  # seen: 6 of 24 without control, 17 with it


@pytest.mark.parametrize("line, match", [
    ('{"text": "a"}', "label=None: allowed 0, 1, true or false"),
    ('{"text": "a", "label": 2}', "label=2"),
    ('{"label": 1}', 'string "text"'),
    ("not json", "not JSON"),
    ('{"text": "a", "label": 1}', "texts of both labels"),
])
def test_bad_data_is_refused_naming_the_line(tmp_path, line, match):
    data = tmp_path / "bad.jsonl"
    data.write_text(line + "\n")
    result = CliRunner().invoke(cli, ["control", "train", str(data), "--out",
                                      str(tmp_path / "p.json")])
    assert result.exit_code != 0 and match in result.output, result.output
