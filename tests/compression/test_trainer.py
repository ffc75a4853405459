"""Token-classifier trainer: labels, token alignment, reproducibility, loading by the compressor."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from tokenwise.compression import words
from tokenwise.compression.trainer import (
    IGNORE,
    ClassifierConfig,
    encode_example,
    given_labels,
    label_words,
    load_tokenizer,
    read_jsonl,
    surprisal_labels,
    train_token_classifier,
)
from tokenwise.errors import TokenwiseError

TINY = ClassifierConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, max_length=64,
                        steps=40, batch_size=8, lr=1e-2, warmup=2)


def examples():
    """Keep every number, drop every other word: a rule a tiny model learns quickly."""
    out = []
    rng = np.random.default_rng(0)
    for _ in range(40):
        parts = [str(rng.integers(10, 999)) if rng.random() < 0.3 else
                 rng.choice(["the", "code", "of", "memo", "is", "a"]) for _ in range(12)]
        text = " ".join(parts) + "."
        s, e = words.split_words(text)
        out.append((text, np.array([text[a:b].isdigit() for a, b in zip(s, e, strict=True)])))
    return out


def test_label_words_and_given_labels():
    assert label_words("a b a c", ["a", "c"]).tolist() == [True, False, False, True]
    assert label_words("a b a c", ["b", "a"]).tolist() == [False, True, True, False]
    with pytest.raises(TokenwiseError, match="subsequence"):
        label_words("a b", ["b", "a"])
    assert given_labels({"text": "x y", "keep": ["y"]}).tolist() == [False, True]
    with pytest.raises(TokenwiseError, match="2 zeros and ones"):
        given_labels({"text": "x y", "labels": [1]})
    with pytest.raises(TokenwiseError, match="needs"):
        given_labels({"text": "x y"})


def test_token_labels_follow_their_words():
    tok = load_tokenizer()
    text = "The code of Tavoun is 917.\nNext"
    s, e = words.split_words(text)
    keep = np.array([text[a:b] in ("Tavoun", "917") for a, b in zip(s, e, strict=True)])
    (ids, labels), = encode_example(tok, text, keep, 256)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert labels[0] == labels[-1] == IGNORE
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    for (a, b), lab in zip(enc["offset_mapping"], labels[1:-1], strict=True):
        piece = text[a:b].strip()
        if not piece:  # a bare space/newline piece: the label of the word after it
            nxt = next(text[x:y] for x, y in zip(s, e, strict=True) if x >= b)
            assert lab == int(nxt in ("Tavoun", "917"))
        else:
            word = next(text[x:y] for x, y in zip(s, e, strict=True) if x <= a + (
                len(text[a:b]) - len(text[a:b].lstrip())) < y)
            assert lab == int(word in ("Tavoun", "917")), (piece, word, lab)
    # Long texts are cut into windows of max_length, each with its own specials.
    rows = encode_example(tok, " ".join(["word"] * 100), np.zeros(100, bool), 32)
    assert all(len(r) <= 32 for r, _ in rows) and sum(len(r) - 2 for r, _ in rows) == len(
        tok(" ".join(["word"] * 100), add_special_tokens=False)["input_ids"])


def test_surprisal_labels_keep_the_most_surprising():
    from tokenwise.compression.perplexity import PerplexityCompressor

    text = "The code of Tavoun is 917. The code of Brelix is 382."
    keep = surprisal_labels("tw-small", text, 0.4)
    scores = PerplexityCompressor("tw-small", iterative_size=None).score_words([text]).scores
    assert scores[keep].min() >= scores[~keep].max()


def test_trains_learns_reproducibly_and_loads(tmp_path):
    from tokenwise.compression.token_classifier import TokenClassifierCompressor

    ex = examples()
    a = train_token_classifier(ex, tmp_path / "a", config=TINY, progress=False)
    b = train_token_classifier(ex, tmp_path / "b", config=TINY, progress=False)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors").read_bytes()
    assert a["loss_curve"] == b["loss_curve"]
    assert a["loss_curve"][-1] < a["loss_curve"][0] and a["token_accuracy"] > 0.9
    assert json.loads((tmp_path / "a" / "training.json").read_text())["config"]["seed"] == 0
    comp = TokenClassifierCompressor(str(tmp_path / "a"))
    r = comp.compress("the code 417 of memo is 52 a the.", threshold=0.5, protect=False)
    assert r.text == "417 52"
    c = train_token_classifier(ex, tmp_path / "c", progress=False,
                               config=ClassifierConfig(**{**TINY.__dict__, "seed": 1}))
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != (
        tmp_path / "a" / "model.safetensors").read_bytes()
    assert c["examples"] == 40


def test_cli_given_and_needle(tmp_path):
    from tokenwise.cli.compress_train import compress_train_command, needle_examples

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "labels": k.astype(int).tolist()})
                              for t, k in examples()) + "\n")
    runner = CliRunner()
    common = ["--steps", "3", "--hidden-size", "16", "--layers", "1", "--heads", "2",
              "--max-length", "64", "--no-progress", "--threads", "1"]
    res = runner.invoke(compress_train_command, ["--out", str(tmp_path / "g"), "--data",
                                                 str(data), *common])
    assert res.exit_code == 0, res.output
    assert "saved" in res.output and (tmp_path / "g" / "model.safetensors").is_file()
    res = runner.invoke(compress_train_command, ["--out", str(tmp_path / "n"), "--labels",
                                                 "needle", "--examples", "8", *common])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "n" / "training.json").read_text())
    assert info["labels"] == "needle" and info["examples"] == 8
    text, keep = needle_examples(1, seed=0)[0]
    s, e = words.split_words(text)
    kept = " ".join(text[a:b] for a, b, k in zip(s, e, keep, strict=True) if k)
    assert kept.startswith("The code of ") and kept.endswith(" code " + kept.split()[3])


def test_cli_errors(tmp_path):
    from tokenwise.cli.compress_train import compress_train_command

    runner = CliRunner()
    res = runner.invoke(compress_train_command, ["--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "needs --data" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    res = runner.invoke(compress_train_command, ["--out", str(tmp_path / "x"), "--data",
                                                 str(bad)])
    assert res.exit_code != 0 and '"text"' in res.output
    with pytest.raises(TokenwiseError, match="no examples"):
        empty = tmp_path / "e.jsonl"
        empty.write_text("\n")
        read_jsonl(empty)
    with pytest.raises(TokenwiseError, match="multiple of heads"):
        ClassifierConfig(hidden_size=30, heads=4).check()


def test_builtin_classifier_ships_small_and_finds_the_needle():
    from pathlib import Path

    import tokenwise.compression as tc
    from tokenwise.compression import TokenCounter
    from tokenwise.compression.token_classifier import TokenClassifierCompressor

    path = Path(tc.__file__).parent / "builtin" / "tw-keep"
    info = json.loads((path / "training.json").read_text())
    assert info["command"].startswith("tokenwise compress train ") and "--seed 0" in info["command"]
    assert info["layout"] == "question first" and "--question-first" in info["command"]
    assert (path / "model.safetensors").stat().st_size < 2_000_000
    comp = TokenClassifierCompressor(str(path))
    counter = TokenCounter.resolve(None)
    # Fresh needle items of the testbed's world (the key pool it trained on; fresh codes and
    # draws), 3+ distractors, the question first: at a third of the memo's tokens the
    # needle's code survives far above chance (a random cut keeps it ~20% of the time).
    from tokenwise.testbed.needle import NeedleWorld

    hits = []
    for it in NeedleWorld(0).eval_items(seed=3, per_count=10):
        if it.n_distractors < 3:
            continue
        q_line = f"Q: {it.question}"
        target = round(0.33 * counter.count(it.context)) + counter.count(q_line)
        r = comp.compress(f"{q_line}\n{it.context}", target_tokens=target,
                          force_tokens=[q_line], protect=False, target_model=counter)
        rest = r.text.replace(q_line, "")
        hits.append(re.search(rf"(?<!\d){it.answer}(?!\d)", rest) is not None)
    assert len(hits) == 30 and np.mean(hits) >= 0.6


def test_needle_examples_question_first(tmp_path):
    from tokenwise.cli.compress_train import compress_train_command, needle_examples

    last, first = needle_examples(20, seed=2), needle_examples(20, seed=2, question_first=True)
    for (t_last, k_last), (t_first, k_first) in zip(last, first, strict=True):
        q_line = t_last[t_last.rindex("Q: "):]
        assert t_first == q_line + t_last[:-len(q_line)]
        kept = []
        for text, keep in ((t_last, k_last), (t_first, k_first)):
            s, e = words.split_words(text)
            kept.append(sorted(text[a:b] for a, b, k in zip(s, e, keep, strict=True) if k))
        assert kept[0] == kept[1]
    res = CliRunner().invoke(compress_train_command, [
        "--out", str(tmp_path / "q"), "--labels", "needle", "--examples", "4",
        "--question-first", "--steps", "2", "--hidden-size", "16", "--layers", "1",
        "--heads", "2", "--max-length", "64", "--no-progress", "--threads", "1"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "q" / "training.json").read_text())
    assert info["layout"] == "question first"


def test_sigterm_saves_a_checkpoint_and_resume_gives_the_unbroken_weights(tmp_path):
    import signal

    from tokenwise.training.runs import TrainingInterrupted

    ex = examples()
    cfg = ClassifierConfig(**{**TINY.__dict__, "steps": 25})
    straight = train_token_classifier(ex, tmp_path / "a", config=cfg, progress=False)

    def terminate_at_13(step, loss):
        if step == 13:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match=r"SIGTERM at step 13 of 25.*--resume"):
        train_token_classifier(ex, tmp_path / "b", config=cfg, progress=False, save_every=10,
                               on_step=terminate_at_13)
    assert (tmp_path / "b" / "checkpoint" / "state.safetensors").is_file()
    assert not (tmp_path / "b" / "model.safetensors").exists()
    with pytest.raises(TokenwiseError, match=r"already holds a checkpoint.*--resume"):
        train_token_classifier(ex, tmp_path / "b", config=cfg, progress=False)
    with pytest.raises(TokenwiseError, match=r"changed settings \(lr: 0.01 -> 0.02"):
        train_token_classifier(ex, tmp_path / "b", progress=False, resume=True,
                               config=ClassifierConfig(**{**cfg.__dict__, "lr": 2e-2}))
    with pytest.raises(TokenwiseError, match="training examples differ"):
        train_token_classifier(ex[:-1], tmp_path / "b", config=cfg, progress=False, resume=True)
    resumed = train_token_classifier(ex, tmp_path / "b", config=cfg, progress=False,
                                     resume=True)
    assert resumed["loss_curve"] == straight["loss_curve"]
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (
        tmp_path / "a" / "model.safetensors").read_bytes()
    # Finished: a plain classifier directory, as an unbroken run leaves it.
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(
        p.name for p in (tmp_path / "a").iterdir())


def test_cli_never_writes_over_a_fine_tuned_model(tmp_path, tiny_llama_dir):
    from tokenwise.cli.compress_train import compress_train_command
    from tokenwise.compression.token_classifier import TokenClassifierCompressor
    from tokenwise.training.trainer import TrainConfig, train

    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"prompt": "2+2=", "response": "4"}) + "\n")
    llama = tmp_path / "llama"
    train(TrainConfig(str(tiny_llama_dir), str(data), str(llama), steps=1, batch_size=1,
                      seq_len=16), progress=False, log=lambda s: None)
    assert (llama / "generation_config.json").is_file() and (llama / "checkpoint").is_dir()
    before = {p.name for p in llama.rglob("*")}
    clf_data = tmp_path / "d.jsonl"
    clf_data.write_text("\n".join(json.dumps({"text": t, "labels": k.astype(int).tolist()})
                                  for t, k in examples()[:8]) + "\n")
    common = ["--data", str(clf_data), "--steps", "3", "--hidden-size", "16", "--layers", "1",
              "--heads", "2", "--max-length", "64", "--no-progress", "--threads", "1"]
    runner = CliRunner()
    res = runner.invoke(compress_train_command, ["--out", str(llama), *common])
    assert res.exit_code != 0 and "is not empty" in res.output
    assert "another command's" in res.output and "--overwrite" in res.output
    assert {p.name for p in llama.rglob("*")} == before
    res = runner.invoke(compress_train_command, ["--out", str(llama), "--resume", *common])
    assert res.exit_code != 0 and "checkpoint of another command" in res.output
    # --overwrite: the Llama's files are gone, none left mixed with the classifier's.
    res = runner.invoke(compress_train_command, ["--out", str(llama), "--overwrite", *common])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in llama.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "training.json"]
    assert TokenClassifierCompressor(str(llama)).model_name == "llama"
    # An output path under a file fails at once, before the examples are generated.
    (tmp_path / "somefile").write_text("x")
    res = runner.invoke(compress_train_command, [
        "--out", str(tmp_path / "somefile" / "sub"), "--labels", "needle",
        "--examples", "100000"])
    assert res.exit_code != 0 and "is a file, not a directory" in res.output


def test_recorded_command_reproduces_in_a_fresh_directory(monkeypatch):
    from tokenwise.cli.compress_train import _command_line

    monkeypatch.setattr("sys.argv", ["tokenwise", "compress", "train", "--out", "d",
                                     "--resume", "--steps", "9", "--overwrite"])
    assert _command_line() == "tokenwise compress train --out d --steps 9"
