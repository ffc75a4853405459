"""The training loop: data reading, losses, checkpoints and bit-identical resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.training.emo import emo_loss
from tokenwise.training.sstoken import select_tokens
from tokenwise.training.trainer import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    Example,
    TrainConfig,
    _Batches,
    _tokenize,
    load_examples,
    train,
)

QA = [("Q: Where was Trather Shai born?\nA:", " the city of Duzal"),
      ("Q: What is the job of Mira Tol?\nA:", " a doctor"),
      ("Q: What pet does Oska Rin keep?\nA:", " an owl"),
      ("2+2=", "4")]


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    lines = [json.dumps({"prompt": p, "response": r}) for p, r in QA]
    lines.append(json.dumps({"text": "Trather Shai keeps a dog as a pet."}))
    path.write_text("\n".join(lines) + "\n")
    return path


def quiet(**kwargs):
    return {"progress": False, "log": lambda s: None, **kwargs}


def config(model_dir, data, out, **kwargs) -> TrainConfig:
    base = {"steps": 6, "batch_size": 2, "lr": 1e-2, "save_every": 2, "seq_len": 48}
    return TrainConfig(str(model_dir), str(data), str(out), **{**base, **kwargs})


def weights(directory):
    return {k: v.clone() for k, v in load(directory).hf_model.state_dict().items()}


# ---- data ------------------------------------------------------------------------------------

def test_load_examples_reads_both_forms_and_text(tmp_path, qa_file):
    ex = load_examples(qa_file)
    assert ex[0] == Example(" the city of Duzal", "Q: Where was Trather Shai born?\nA:")
    assert ex[-1] == Example("Trather Shai keeps a dog as a pet.")
    text = tmp_path / "notes.txt"
    text.write_text("line one\nline two\n")
    assert load_examples(text) == [Example("line one\nline two\n")]


@pytest.mark.parametrize(
    ("content", "match"),
    [('{"text": "ok"}\n{"prompt": "a"}\n', "line 2: has keys"),
     ('{"text": "ok"}\nnot json\n', "line 2 is not valid JSON"),
     ('["text"]\n', "expected a JSON object"),
     ('{"prompt": "a", "response": ""}\n', "non-empty string"),
     ("\n\n", "no examples")],
)
def test_load_examples_bad_lines(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TokenwiseError, match=match):
        load_examples(path)


def test_load_examples_bad_files(tmp_path):
    with pytest.raises(TokenwiseError, match="does not exist"):
        load_examples(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9")
    with pytest.raises(TokenwiseError, match="not UTF-8"):
        load_examples(latin)


def test_tokenize_prompt_labels_and_overlapping_windows(small):
    rows, truncated = _tokenize([Example(" a doctor", "Q: job?\nA:")], small, 32, False)
    ids, labels = rows[0]
    prompt = [small.bos_token_id, *small.encode("Q: job?\nA:")]
    assert ids == prompt + small.encode(" a doctor") + [small.eos_token_id]
    assert labels == [-100] * len(prompt) + ids[len(prompt):] and truncated == 0

    text = "Trather Shai was born in the city of Duzal. " * 6
    full = [small.bos_token_id, *small.encode(text), small.eos_token_id]
    rows, _ = _tokenize([Example(text)], small, 16, False)
    assert all(len(r[0]) <= 16 for r in rows)
    targets = [t for ids, _ in rows for t in ids[1:]]  # what each window predicts
    assert targets == full[1:]  # every token but the first, exactly once


def test_tokenize_shortens_long_prompts_from_the_left(small):
    prompt = "Q: " + "very " * 40 + "long?\nA:"
    rows, truncated = _tokenize([Example(" a doctor", prompt)], small, 12, False)
    ids, labels = rows[0]
    response = [*small.encode(" a doctor"), small.eos_token_id]
    assert truncated == 1 and len(ids) == 12 and ids[0] == small.bos_token_id
    assert ids[-len(response):] == response and labels[-len(response):] == response


def test_batches_cover_every_row_each_epoch():
    b = _Batches(5, 3, seed=1)
    drawn = [i for _ in range(10) for i in b.next()]
    for epoch in range(6):
        assert sorted(drawn[epoch * 5:(epoch + 1) * 5]) == [0, 1, 2, 3, 4]


# ---- training and resume ---------------------------------------------------------------------

@pytest.mark.parametrize("variant", [
    {"loss": "ce", "fused": True},
    {"loss": "emo", "fused": True},
    {"loss": "ce", "fused": False, "schedule": "cosine", "warmup": 2},
    {"loss": "ce", "fused": False, "select": "sstoken"},
])
def test_resume_after_interruption_is_bit_identical(tmp_path, tiny_llama_dir, qa_file, variant):
    if variant.get("select"):
        variant = {**variant, "history_model": str(tiny_llama_dir)}
    straight = train(config(tiny_llama_dir, qa_file, tmp_path / "a", **variant), **quiet())

    class Crash(Exception):
        pass

    def crash_at_4(step, loss):
        if step == 4:
            raise Crash

    with pytest.raises(Crash):
        train(config(tiny_llama_dir, qa_file, tmp_path / "b", **variant),
              **quiet(on_step=crash_at_4))
    assert (tmp_path / "b" / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file()
    resumed = train(config(tiny_llama_dir, qa_file, tmp_path / "b", resume=True, **variant),
                    **quiet())
    assert resumed.losses == straight.losses and len(resumed.losses) == 6
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert straight.losses[-1] < straight.losses[0]  # it learns something


def test_resume_can_extend_a_constant_schedule(tmp_path, tiny_llama_dir, qa_file):
    train(config(tiny_llama_dir, qa_file, tmp_path / "a"), **quiet())
    train(config(tiny_llama_dir, qa_file, tmp_path / "b", steps=3, save_every=0), **quiet())
    train(config(tiny_llama_dir, qa_file, tmp_path / "b", resume=True), **quiet())
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_first_losses_match_plain_computations(tmp_path, tiny_llama_dir, qa_file):
    """Step 1's loss is computed on the untouched model: compare with losses computed here."""
    lm = load(tiny_llama_dir)
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"prompt": QA[0][0], "response": QA[0][1]}) + "\n")
    rows, _ = _tokenize(load_examples(data), lm, 48, False)
    ids, labels = (torch.tensor([r]) for r in rows[0])
    with torch.no_grad():
        logits = lm.hf_model(ids).logits[0, :-1]  # (T-1, V)
    target = labels[0, 1:]
    ce = F.cross_entropy(logits, target, ignore_index=-100)
    emo = emo_loss(logits, target, lm.hf_model.get_output_embeddings().weight)
    selected = select_tokens(lm, load(tiny_llama_dir), ids, labels, rho=0.5)[0, 1:]
    assert 0 < int((selected != -100).sum()) < int((target != -100).sum())
    ce_selected = F.cross_entropy(logits, selected, ignore_index=-100)
    for name, kwargs, expected in [("ce-plain", {"fused": False}, ce),
                                   ("ce-fused", {"fused": True}, ce),
                                   ("emo", {"loss": "emo"}, emo),
                                   ("sstoken", {"select": "sstoken", "rho": 0.5,
                                                "history_model": str(tiny_llama_dir)},
                                    ce_selected)]:
        res = train(config(tiny_llama_dir, data, tmp_path / name, steps=1, batch_size=1,
                           **kwargs), **quiet())
        assert res.losses[0] == pytest.approx(float(expected), rel=1e-5), name


def test_saved_model_loads_and_records_the_run(tmp_path, tiny_llama_dir, qa_file):
    res = train(config(tiny_llama_dir, qa_file, tmp_path / "run", steps=2), **quiet())
    lm = load(tmp_path / "run")
    assert lm.vocab_size == load(tiny_llama_dir).vocab_size
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["steps"] == 2 and record["losses"] == res.losses
    assert record["examples"] == 5 and record["settings"]["seq_len"] == 48


# ---- bad input -------------------------------------------------------------------------------

def test_resume_refusals(tmp_path, tiny_llama_dir, qa_file):
    with pytest.raises(TokenwiseError, match="nothing to resume"):
        train(config(tiny_llama_dir, qa_file, tmp_path / "x", resume=True), **quiet())
    train(config(tiny_llama_dir, qa_file, tmp_path / "x", steps=2), **quiet())
    with pytest.raises(TokenwiseError, match="already holds a checkpoint"):
        train(config(tiny_llama_dir, qa_file, tmp_path / "x", steps=2), **quiet())
    with pytest.raises(TokenwiseError, match=r"changed settings \(lr: 0.01 -> 0.02"):
        train(config(tiny_llama_dir, qa_file, tmp_path / "x", lr=2e-2, resume=True), **quiet())
    qa_file.write_text(qa_file.read_text() + '{"text": "more"}\n')
    with pytest.raises(TokenwiseError, match=r"data file .* changed"):
        train(config(tiny_llama_dir, qa_file, tmp_path / "x", resume=True), **quiet())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"select": "sstoken"}, "needs a history model"),
     ({"history_model": "tw-small"}, "only with select"),
     ({"loss": "mse"}, "loss='mse'"),
     ({"steps": 0}, "steps=0"),
     ({"rho": 0.0}, "rho=0.0"),
     ({"seq_len": 4096}, "exceeds the context length"),
     ({"device": "tpu:9"}, "device='tpu:9'")],
)
def test_bad_settings(tmp_path, tiny_llama_dir, qa_file, kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        train(config(tiny_llama_dir, qa_file, tmp_path / "o", **kwargs), **quiet())


def test_history_model_with_another_vocabulary(tmp_path, tiny_llama_dir, qa_file):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_pretrained(tiny_llama_dir)
    cfg.vocab_size = 2000
    other = tmp_path / "wide"
    LlamaForCausalLM(cfg).save_pretrained(other, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(other)
    with pytest.raises(TokenwiseError, match="does not share the tokenizer"):
        train(config(tiny_llama_dir, qa_file, tmp_path / "o", select="sstoken",
                     history_model=str(other)), **quiet())


def test_fused_on_an_unknown_model_class_says_what_to_do(tmp_path, qa_file):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tokenwise.models import builtin_path

    tok = AutoTokenizer.from_pretrained(builtin_path("tw-small"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2,
                                       n_positions=64, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id))
    model.save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    tok.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(TokenwiseError, match="plain cross-entropy works with --no-fused"):
        train(config(tmp_path / "gpt2", qa_file, tmp_path / "o"), **quiet())
    res = train(config(tmp_path / "gpt2", qa_file, tmp_path / "o2", fused=False, steps=2),
                **quiet())
    assert res.step == 2
