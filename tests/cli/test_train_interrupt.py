"""A real SIGTERM to `tokenwise train` / `tokenwise compress train` mid-training: a checkpoint
is saved, the process exits cleanly (status 143, how to resume on stderr), a rerun resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from tokenwise.cli.train import train_command

pytestmark = pytest.mark.slow

STOPPED = re.compile(r"stopped by SIGTERM at step (\d+) of (\d+)")


def terminate_mid_training(args: list[str], bar: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``python -m ARGS``; once its progress bar ``bar`` shows a step done, send SIGTERM.

    Returns the exit status and stderr.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    err = bytearray()
    progressed = threading.Event()
    pattern = re.compile(re.escape(bar).encode() + rb":\s*\d+%\|[^|]*\|\s*[1-9]\d*/")

    def read() -> None:
        while chunk := proc.stderr.read1(4096):
            err.extend(chunk)
            if pattern.search(err):
                progressed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while not progressed.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
        assert progressed.is_set(), f"training never started: {err.decode(errors='replace')}"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return proc.returncode, err.decode(errors="replace")


def test_compress_train_sigterm_saves_and_resumes(tmp_path):
    out = tmp_path / "clf"
    args = ["tokenwise.cli.compress_train", "--out", str(out), "--labels", "needle",
            "--examples", "8", "--steps", "100000", "--hidden-size", "16", "--layers", "1",
            "--heads", "2", "--max-length", "64", "--batch-size", "2", "--save-every", "0",
            "--threads", "1"]
    code, err = terminate_mid_training(args, "train classifier")
    assert code == 128 + signal.SIGTERM, err
    first = STOPPED.search(err)
    assert first and int(first[2]) == 100000 and "--resume" in err and "Traceback" not in err
    assert (out / "checkpoint" / "state.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    code, err = terminate_mid_training([*args, "--resume"], "train classifier")
    assert code == 128 + signal.SIGTERM, err
    second = STOPPED.search(err)
    assert second and int(second[1]) > int(first[1])  # continued, not started over


def test_train_sigterm_saves_and_resumes(tmp_path, tiny_llama_dir):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "response": str(2 * a)}) + "\n"
                            for a in range(6)))
    out = tmp_path / "run"
    args = [str(tiny_llama_dir), str(data), "--out", str(out), "--batch-size", "2",
            "--seq-len", "16", "--save-every", "0", "--device", "cpu"]
    code, err = terminate_mid_training(["tokenwise", "train", *args, "--steps", "100000"],
                                       "train ce")
    assert code == 128 + signal.SIGTERM, err
    stopped = STOPPED.search(err)
    assert stopped and "--resume" in err and "Traceback" not in err
    assert (out / "checkpoint" / "state.safetensors").is_file()
    step = int(stopped[1])
    # A constant schedule may end sooner than first planned: finish two steps later.
    res = CliRunner().invoke(train_command, [*args, "--steps", str(step + 2), "--resume"])
    assert res.exit_code == 0, res.output
    assert f"resumed from step {step}" in res.output
    assert json.loads((out / "training.json").read_text())["steps"] == step + 2
