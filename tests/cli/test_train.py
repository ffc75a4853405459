"""`tokenwise train` through click: a run, a resume, and clean errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tokenwise.cli.train import train_command
from tokenwise.models import load


def test_train_then_resume_from_the_command_line(tmp_path, tiny_llama_dir):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"{a}+{a}=", "response": str(2 * a)})
                              for a in range(6)) + "\n")
    out = tmp_path / "run"
    args = [str(tiny_llama_dir), str(data), "--out", str(out), "--loss", "emo",
            "--batch-size", "2", "--lr", "0.01", "--save-every", "1", "--seq-len", "16"]
    first = CliRunner().invoke(train_command, [*args, "--steps", "2"])
    assert first.exit_code == 0, first.output
    assert "2 steps" in first.output
    again = CliRunner().invoke(train_command, [*args, "--steps", "3"])
    assert again.exit_code != 0 and "--resume" in again.output
    resumed = CliRunner().invoke(train_command, [*args, "--steps", "3", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from step 2" in resumed.output
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 3 and len(record["losses"]) == 3
    assert load(out).vocab_size == load(tiny_llama_dir).vocab_size


def test_clean_errors(tmp_path, tiny_llama_dir):
    data = tmp_path / "d.txt"
    data.write_text("some text to learn from, long enough for a window or two")
    out = str(tmp_path / "o")
    no_history = CliRunner().invoke(train_command, [str(tiny_llama_dir), str(data), "--out", out,
                                                    "--select", "sstoken"])
    assert no_history.exit_code != 0 and "--history-model" in no_history.output
    assert "Traceback" not in no_history.output
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"question": "x"}\n')
    res = CliRunner().invoke(train_command, [str(tiny_llama_dir), str(bad_data), "--out", out])
    assert res.exit_code != 0 and "line 1" in res.output
    res = CliRunner().invoke(train_command, [str(tiny_llama_dir), str(data), "--out", out,
                                             "--rho", "1.5"])
    assert res.exit_code != 0 and "--rho" in res.output


def test_out_is_checked_before_training_and_never_written_over(tmp_path, tiny_llama_dir):
    data = tmp_path / "d.txt"
    data.write_text("some text to learn from, long enough for a window or two")
    (tmp_path / "somefile").write_text("x")
    args = [str(tiny_llama_dir), str(data), "--steps", "1", "--seq-len", "16"]
    res = CliRunner().invoke(train_command, [*args, "--out", str(tmp_path / "somefile" / "sub")])
    assert res.exit_code != 0 and "is a file, not a directory" in res.output
    assert "steps" not in res.output and "Traceback" not in res.output  # nothing trained
    # A token classifier's directory (what `tokenwise compress train` writes) is refused.
    clf = tmp_path / "clf"
    clf.mkdir()
    for name in ("config.json", "model.safetensors", "training.json"):
        (clf / name).write_text("{}")
    res = CliRunner().invoke(train_command, [*args, "--out", str(clf)])
    assert res.exit_code != 0 and "is not empty" in res.output and "--overwrite" in res.output
    assert sorted(p.name for p in clf.iterdir()) == ["config.json", "model.safetensors",
                                                    "training.json"]
    res = CliRunner().invoke(train_command, [*args, "--out", str(clf), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert load(clf).vocab_size == load(tiny_llama_dir).vocab_size
    assert json.loads((clf / "training.json").read_text())["steps"] == 1
