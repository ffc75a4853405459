"""The reader's training data, its training loop, and the shipped tw-reader's answers."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest
import torch

from tokenwise.testbed.needle import NeedleWorld
from tokenwise.testbed.reader import (
    READER_SPEC,
    cut_memo,
    reader_batch,
    reader_document,
    train_reader,
)

WORLD = NeedleWorld(0)


def test_cut_memo_reports_exactly_the_lines_whose_code_survived():
    rng = random.Random(1)
    for _ in range(200):
        codes = rng.sample(range(100, 1000), 6)  # distinct, so a code names its line
        pairs = [(k, str(c)) for k, c in zip(rng.sample(WORLD.keys, 6), codes, strict=True)]
        text, kept = cut_memo(pairs, rng)
        for i, (_, code) in enumerate(pairs):
            assert (i in kept) == bool(re.search(rf"(?<!\d){code}(?!\d)", text))
        assert text.endswith("\n")
        words = {w.rstrip(".") for w in text.split()} - {"", "Memo:"}
        allowed = {"The", "code", "of", "is"} | {k for k, _ in pairs} | {c for _, c in pairs}
        assert words <= allowed


def test_cut_memo_keeps_word_order_and_sometimes_the_header():
    rng = random.Random(2)
    headers = 0
    for _ in range(100):
        pairs = [("Brelix", "382"), ("Tavoun", "917")]
        text, _ = cut_memo(pairs, rng)
        headers += text.startswith("Memo:")
        for line in text.removeprefix("Memo:\n").split("\n"):
            order = ["The", "code", "of", "Brelix", "Tavoun", "is", "382", "917"]
            idx = [order.index(w.rstrip(".")) for w in line.split() if w.rstrip(".")]
            assert idx == sorted(idx)
    assert 20 < headers < 80


def test_reader_document_labels_only_answers_that_are_the_asked_lines_codes(small):
    tok = small.tokenizer
    rng = random.Random(3)
    for corrupt in (0.0, 1.0):
        for _ in range(40):
            ids, labels, digits = reader_document(WORLD, tok, rng, 7, corrupt, room=254)
            assert len(ids) == len(labels) <= 254 and digits
            text = tok.decode(ids)
            labelled = {i for i, lab in enumerate(labels) if lab != -100}
            for d in digits:
                assert len(d) == 3 and d == list(range(d[0], d[0] + 3))
                assert labelled >= set(d)
                code = tok.decode(ids[d[0] : d[0] + 3])
                key = re.findall(r"What is the code of (\w+)\?\nA:",
                                 tok.decode(ids[: d[0]]))[-1]
                memo = text.split("Q:")[0]
                # the answer is the code the memo gives that key, and it is in the memo
                assert code in memo
                if corrupt == 0.0:
                    assert f"The code of {key} is {code}." in memo
            # nothing but the answers (space, digits, newline) is learned
            assert all(re.fullmatch(r"[ \d\n]", tok.decode([ids[i]])) for i in labelled)


def test_reader_document_with_no_corruption_is_a_needle_memo(small):
    ids, _, digits = reader_document(WORLD, small.tokenizer, random.Random(4), 3, 0.0)
    text = small.tokenizer.decode(ids)
    assert text.startswith("Memo:\nThe code of ")
    assert text.count("Q: What is the code of ") == len(digits)


def test_reader_batch_rows_hold_whole_documents(small):
    spec = replace(READER_SPEC, batch_size=4)
    ids, labels, answers = reader_batch(WORLD, small.tokenizer, random.Random(5), spec, 3, 0.5)
    assert ids.shape == labels.shape == (4, spec.context)
    assert (ids[:, 0] == small.tokenizer.bos_token_id).all()
    assert answers.shape[1] == 5 and len(answers) > 4
    assert answers[:, 4].sum() >= 4  # each row's first document has a first question
    rows, cols = answers[:, :1], answers[:, 1:4]
    assert (labels[rows, cols] == ids[rows, cols]).all()
    digits = {small.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    assert set(ids[rows, cols].flatten().tolist()) <= digits


TINY = replace(READER_SPEC, batch_size=2, hidden_size=32, intermediate_size=64, heads=2)


def test_train_reader_is_seeded_and_moves_through_the_curriculum(small):
    spec = replace(TINY, steps=55, advance=0.0, deadlines=(0.0, 1.0, 1.0, 1.0, 1.0))
    runs = []
    for _ in range(2):
        model, facts = train_reader(small.tokenizer, WORLD, seed=7, spec=spec,
                                    progress=False, log=lambda s: None)
        runs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    # advance=0 moves on after the first 50-batch window
    assert facts["levels_reached"] == [0, 1] and facts["level_steps"] == {"0": 0, "1": 50}
    assert not model.training and facts["steps"] == 55


def test_deadlines_move_a_reader_that_does_not_earn_its_levels(small):
    spec = replace(TINY, steps=20, advance=1.0)  # whole codes of every first question: never
    _, facts = train_reader(small.tokenizer, WORLD, spec=spec, progress=False,
                            log=lambda s: None)
    # levels start at the latest at 0, 10%, 25%, 40% and 55% of the steps
    assert facts["level_steps"] == {"0": 0, "1": 2, "3": 5, "7": 8, "15": 11}
    assert all(loss == loss for loss in facts["loss_curve"])  # no NaN


@pytest.mark.parametrize("change, fragment", [
    ({"deadlines": (0.0,)}, "one per level"),
    ({"deadlines": (0.0, 0.5, 0.4, 0.6, 0.7)}, "never decreasing"),
    ({"levels": (0, 3, 1, 7, 15)}, "never decreasing"),
    ({"corrupt": 1.5}, "corrupt=1.5: allowed 0..1"),
    ({"steps": 0}, "steps=0: must be >= 1"),
])
def test_bad_reader_specs_are_refused(change, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        replace(READER_SPEC, **change)


def test_a_context_too_short_for_the_memos_is_an_error_not_a_nan_loss(small):
    spec = replace(TINY, steps=20, context=64, advance=1.0)  # 4-line memos need > 64 tokens
    with pytest.raises(ValueError, match="context=64 holds no document of 3 distractors"):
        train_reader(small.tokenizer, WORLD, spec=spec, progress=False, log=lambda s: None)


def test_train_builtin_writes_a_loadable_reader(tmp_path):
    from tokenwise.models import load
    from tokenwise.testbed import CorpusConfig, Testbed
    from tokenwise.testbed.facts import FactWorldConfig
    from tokenwise.testbed.train import train_builtin

    tiny = Testbed(0, FactWorldConfig(n_entities=30),
                   CorpusConfig(fact_repeats=1, markov_docs=300, arithmetic_docs=100,
                                needle_docs=100))
    facts = train_builtin(tmp_path, ["tw-reader"], steps=2, progress=False,
                          log=lambda s: None, testbed=tiny)
    assert facts["tw-reader"]["steps"] == 2
    lm = load(tmp_path / "tw-reader")
    assert lm.context_length == READER_SPEC.context
    with pytest.raises(ValueError, match="allowed"):
        train_builtin(tmp_path, ["tw-huge"], progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def reader():
    from tokenwise.models import load

    return load("tw-reader")


def _accuracy(reader, prompts, answers):
    from tokenwise.testbed.evaluate import greedy_complete

    outs = greedy_complete(reader, prompts, max_new_tokens=5, batch_size=40)
    return sum(o.strip() == a for o, a in zip(outs, answers, strict=True)) / len(answers)


def test_shipped_reader_answers_from_the_memo(reader):
    # Well above a reader that copies some memo code (1/(n+1)); BENCHMARKS.md has its
    # accuracy on the testbed's own needle items.
    rng = random.Random("test-reader")
    for n, floor in ((0, 0.95), (1, 0.7), (3, 0.33), (7, 0.17)):
        items = [WORLD.item(rng, n) for _ in range(200)]
        acc = _accuracy(reader, [it.prompt for it in items], [it.answer for it in items])
        assert acc >= floor, (n, acc)


def test_shipped_reader_answers_a_cut_memo_with_a_code_that_survived(reader):
    # Memos cut as cut_memo cuts them (the needle's code kept). What tw-reader does there
    # (BENCHMARKS.md): it answers with a surviving code, about as often the right one as a
    # random pick among them would be; its key matching needs whole lines.
    from tokenwise.testbed.evaluate import greedy_complete

    rng = random.Random("test-reader-cut")
    prompts, items, codes = [], [], []
    while len(prompts) < 200:
        it = WORLD.item(rng, 3)
        text, kept = cut_memo(it.pairs(), rng)
        if it.needle_index in kept:
            prompts.append(f"{text}Q: {it.question}\nA:")
            items.append(it)
            codes.append({it.pairs()[i][1] for i in kept})
    outs = [o.strip() for o in greedy_complete(reader, prompts, max_new_tokens=5)]
    surviving = sum(o in c for o, c in zip(outs, codes, strict=True)) / len(outs)
    right = sum(o == it.answer for o, it in zip(outs, items, strict=True)) / len(outs)
    chance = sum(1 / len(c) for c in codes) / len(codes)
    assert surviving >= 0.9 and right >= chance - 0.05
