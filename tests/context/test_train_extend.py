"""`tokenwise train --extend-context N`: the 100-sample recipe, saved extension, resume."""

from __future__ import annotations

import json
import random

from click.testing import CliRunner

from tokenwise.cli.train import train_command
from tokenwise.context import load as load_extended
from tokenwise.testbed.needle import NeedleWorld


def _long_memos(path, count):
    world, rng = NeedleWorld(0), random.Random(0)
    lines = [json.dumps({"text": world.item(rng, 40).prompt + " 123\n"}) for _ in range(count)]
    path.write_text("\n".join(lines) + "\n")


def test_extend_context_trains_saves_and_resumes(tmp_path):
    data = tmp_path / "long.jsonl"
    _long_memos(data, 6)
    out = tmp_path / "run"
    args = ["tw-reader", str(data), "--out", str(out), "--extend-context", "512",
            "--batch-size", "2", "--samples", "4", "--save-every", "1"]
    first = CliRunner().invoke(train_command, [*args, "--steps", "1"])
    assert first.exit_code == 0, first.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_position_embeddings"] == 512
    assert saved["tokenwise_context"]["method"] == "entropy_abf"
    record = json.loads((out / "training.json").read_text())
    assert record["examples"] == 4 and record["settings"]["seq_len"] == 512
    changed = CliRunner().invoke(train_command, [*args, "--steps", "2", "--resume",
                                                 "--extend-method", "pi"])
    assert changed.exit_code != 0 and "extend_method" in changed.output
    # naming the default method is the same setting, not a change
    resumed = CliRunner().invoke(train_command, [*args, "--steps", "2", "--resume",
                                                 "--extend-method", "entropy_abf"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from step 1" in resumed.output
    lm = load_extended(str(out))
    assert lm.context_length == 512
    assert lm.config._attn_implementation == "tokenwise_entropy_abf"


def test_extend_defaults_are_the_papers_recipe(tmp_path, monkeypatch):
    seen = {}

    def fake_train(cfg, log):
        seen.update(steps=cfg.steps, batch=cfg.batch_size, samples=cfg.samples,
                    method=cfg.extend_method)
        raise SystemExit(0)

    monkeypatch.setattr("tokenwise.training.trainer.train", fake_train)
    data = tmp_path / "d.txt"
    data.write_text("text")
    CliRunner().invoke(train_command, ["tw-reader", str(data), "--out", str(tmp_path / "o"),
                                       "--extend-context", "1024"])
    assert seen == {"steps": 6, "batch": 16, "samples": 100, "method": None}


def test_extend_method_without_length_is_refused(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("text")
    res = CliRunner().invoke(train_command, ["tw-reader", str(data), "--out",
                                             str(tmp_path / "o"), "--extend-method", "pi"])
    assert res.exit_code != 0 and "--extend-context" in res.output
    assert "Traceback" not in res.output
