"""Output directories and signals of both trainers: refusals, --overwrite, save on SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.training.runs import (
    StopSignals,
    TrainingInterrupted,
    check_output_dir,
    checkpoint_format,
)
from tokenwise.training.trainer import CHECKPOINT_DIR, CHECKPOINT_FILE, TrainConfig, train

QA = [("2+2=", "4"), ("3+3=", "6"), ("Q: pet of Oska?\nA:", " an owl")]
TRAIN = {"checkpoint": f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}", "fmt": "tokenwise-train-1",
         "command": "tokenwise train"}


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in QA))
    return path


def quiet(**kwargs):
    return {"progress": False, "log": lambda s: None, **kwargs}


def config(model_dir, data, out, **kwargs) -> TrainConfig:
    base = {"steps": 6, "batch_size": 2, "lr": 1e-2, "save_every": 0, "seq_len": 32}
    return TrainConfig(str(model_dir), str(data), str(out), **{**base, **kwargs})


def weights(directory):
    return {k: v.clone() for k, v in load(directory).hf_model.state_dict().items()}


def test_output_checks_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenwiseError, match=r"cannot create --out '.*file/sub'.*is a file"):
        check_output_dir(tmp_path / "file" / "sub", **TRAIN)
    with pytest.raises(TokenwiseError, match="is a file; give a directory"):
        check_output_dir(tmp_path / "file", **TRAIN)
    with pytest.raises(TokenwiseError, match="give one of them"):
        check_output_dir(tmp_path / "new", resume=True, overwrite=True, **TRAIN)
    with pytest.raises(TokenwiseError, match="nothing to resume"):
        check_output_dir(tmp_path / "new", resume=True, **TRAIN)
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", **TRAIN).clear is False


def test_overwrite_never_empties_home_cwd_or_root(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "a")
    for where in (tmp_path / "a", tmp_path, "."):
        with pytest.raises(TokenwiseError, match="would delete everything"):
            check_output_dir(where, overwrite=True, **TRAIN)
    assert (tmp_path / "a" / "keep.txt").is_file()


def test_train_refuses_a_directory_it_did_not_write(tmp_path, tiny_llama_dir, qa_file):
    # A classifier (or any model) directory: writing there replaced its config and weights.
    other = tmp_path / "clf"
    shutil.copytree(tiny_llama_dir, other)
    # A stale shard index would point loading at weights that are not there any more.
    (other / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    with pytest.raises(TokenwiseError, match=r"is not empty \(config\.json.*--overwrite"):
        train(config(tiny_llama_dir, qa_file, other), **quiet())
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    # --overwrite: nothing of the old directory is left mixed in.
    (other / "checkpoint").mkdir()
    (other / "checkpoint" / "old.bin").write_bytes(b"x")
    train(config(tiny_llama_dir, qa_file, other, steps=2, overwrite=True), **quiet())
    assert not (other / "model.safetensors.index.json").exists()
    assert not (other / "checkpoint" / "old.bin").exists()
    assert checkpoint_format(other / CHECKPOINT_DIR / CHECKPOINT_FILE) == "tokenwise-train-1"
    # Its own finished run: --resume continues it, --overwrite starts over.
    with pytest.raises(TokenwiseError, match=r"already holds a checkpoint.*--resume.*--overwrite"):
        train(config(tiny_llama_dir, qa_file, other, steps=2), **quiet())
    assert train(config(tiny_llama_dir, qa_file, other, steps=2, overwrite=True),
                 **quiet()).step == 2


def test_train_checks_out_before_loading_anything(tmp_path, qa_file):
    (tmp_path / "somefile").write_text("x")
    # A model that does not exist: the --out error comes first, so nothing was loaded.
    with pytest.raises(TokenwiseError, match=r"somefile' is a file, not a directory"):
        train(config("no/such/model", qa_file, tmp_path / "somefile" / "sub"), **quiet())


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_identical(tmp_path, tiny_llama_dir,
                                                                qa_file):
    straight = train(config(tiny_llama_dir, qa_file, tmp_path / "a"), **quiet())

    def terminate_at_3(step, loss):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)

    logged = []
    with pytest.raises(TrainingInterrupted) as info:
        train(config(tiny_llama_dir, qa_file, tmp_path / "b"),
              **quiet(on_step=terminate_at_3, log=logged.append))
    assert info.value.step == 3 and info.value.exit_code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 3 of 6" in str(info.value) and "--resume" in str(
        info.value)
    assert logged[-1] == str(info.value)
    assert (tmp_path / "b" / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file()  # save_every=0
    assert not (tmp_path / "b" / "config.json").exists()  # no half-trained model
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back
    resumed = train(config(tiny_llama_dir, qa_file, tmp_path / "b", resume=True), **quiet())
    assert resumed.losses == straight.losses
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stop_signals_notes_the_first_and_gives_the_second_back():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT and stop.name == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is before  # a second Ctrl-C acts at once
    assert signal.getsignal(signal.SIGINT) is before
