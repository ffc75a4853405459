"""The testbed worlds: determinism, ground truth, and the built-in models measured on them."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import numpy as np
import pytest
import torch

from tokenwise.testbed import arithmetic
from tokenwise.testbed.facts import FactWorld, FactWorldConfig, normalise_answer
from tokenwise.testbed.markov import SYMBOLS, MarkovSource, entropy_nats
from tokenwise.testbed.needle import NeedleWorld
from tokenwise.testbed.tokenizer import symbol_token_ids, train_tokenizer
from tokenwise.testbed.train import pack
from tokenwise.testbed.worlds import CorpusConfig, Testbed


def test_fact_world_is_deterministic_and_seed_dependent():
    a, b, c = FactWorld(3), FactWorld(3), FactWorld(4)
    assert a.facts == b.facts and a.entities == b.entities
    assert a.entities != c.entities
    rng_a, rng_b = random.Random(1), random.Random(1)
    assert a.training_lines(rng_a) == b.training_lines(rng_b)


def test_fact_frequencies_are_zipf_skewed_with_every_bucket():
    world = FactWorld(0)
    sizes = world.bucket_sizes()
    assert all(sizes[b] > 50 for b in ("frequent", "medium", "rare", "unseen"))
    counts = sorted((f.mentions for f in world.facts if f.mentions), reverse=True)
    assert counts[0] == world.config.max_mentions and counts[-1] == 1
    # Zipf: the top 20% of seen facts carry most mentions.
    top = sum(counts[: len(counts) // 5])
    assert top > 0.6 * sum(counts)


def test_training_text_mentions_each_fact_exactly_its_count():
    world = FactWorld(1, FactWorldConfig(n_entities=30))
    lines = world.training_lines(random.Random(0))
    assert len(lines) == sum(f.mentions for f in world.facts)
    per_entity = Counter()
    for line in lines:
        for e in world.entities:
            if e in line:
                per_entity[e] += 1
    for e in world.entities:
        assert per_entity[e] == sum(f.mentions for f in world.facts if f.entity == e)


def test_unseen_facts_values_never_follow_their_entity():
    world = FactWorld(0, FactWorldConfig(n_entities=40))
    lines = world.training_lines(random.Random(0))
    for fact in world.facts:
        if fact.bucket == "unseen":
            attr = world.attributes[fact.attribute]
            for line in lines:
                if fact.entity in line:
                    assert not any(q.format(e=fact.entity) in line for q in attr.questions)


def test_answers_have_several_surface_forms_with_one_meaning():
    world = FactWorld(0)
    assert world.meaning_of("profession", "A physician.") == "doctor"
    assert world.meaning_of("profession", "an attorney") == "lawyer"
    city = world.attributes["birthplace"].values[0]
    assert len({world.meaning_of("birthplace", f) for f in city.forms}) == 1
    assert world.meaning_of("birth_year", "the year 1742") == "1742"
    assert world.meaning_of("pet", "a dragon") is None
    assert normalise_answer("  In 1742!") == "1742"
    item = world.questions(("frequent",))[0]
    assert all(world.is_correct(item, form) for form in item.answers)
    assert world.chance_accuracy("birth_year") == pytest.approx(0.01)


def test_markov_true_distributions_are_the_chain():
    src = MarkovSource(seed=2, length=30)
    np.testing.assert_allclose(src.transition.sum(1), 1.0)
    seq = src.sample(np.random.default_rng(0))
    np.testing.assert_allclose(seq.true_probs[0], src.initial)
    for i in range(1, src.length):
        np.testing.assert_allclose(seq.true_probs[i], src.transition[seq.symbols[i - 1]])
    assert seq.text.split()[1:] == [SYMBOLS[s] for s in seq.symbols]
    # Row entropies span near-deterministic to near-uniform.
    h = src.row_entropies()
    assert h.min() < 0.6 and h.max() > 0.8 * np.log(len(SYMBOLS))


def test_markov_entropy_against_exact_computation():
    assert entropy_nats(np.array([1.0, 0.0, 0.0])) == 0.0
    np.testing.assert_allclose(entropy_nats(np.full(16, 1 / 16)), np.log(16))
    p = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(entropy_nats(p), -(p * np.log(p)).sum())


def test_markov_samples_follow_the_transition_matrix():
    src = MarkovSource(seed=5, length=400)
    rng = np.random.default_rng(1)
    counts = np.zeros((len(SYMBOLS), len(SYMBOLS)))
    for _ in range(25):
        s = src.sample(rng).symbols
        for a, b in itertools.pairwise(s):
            counts[a, b] += 1
    busy = counts.sum(1) > 500
    empirical = counts[busy] / counts[busy].sum(1, keepdims=True)
    assert np.abs(empirical - src.transition[busy]).max() < 0.08


def test_arithmetic_items_are_correct_and_graded():
    rng = random.Random(0)
    for level in arithmetic.LEVELS:
        item = arithmetic.make_item(rng, level)
        a, b = item.prompt[:-1].split("+")
        assert len(a) == len(b) == level or level == 1
        assert int(a) + int(b) == int(item.answer)
    with pytest.raises(ValueError, match="level=7"):
        arithmetic.make_item(rng, 7)


def test_needle_answer_comes_only_from_the_needle():
    world = NeedleWorld(0)
    item = world.item(random.Random(4), n_distractors=7)
    lines = item.context.strip().split("\n")[1:]
    assert len(lines) == 8 and lines[item.needle_index] == item.needle
    key = item.question.removeprefix("What is the code of ").removesuffix("?")
    assert [line for line in lines if key in line] == [item.needle]
    assert item.prompt.endswith("A:") and item.answer in item.needle


def test_corpus_is_deterministic():
    cfg = CorpusConfig(fact_repeats=1, markov_docs=20, arithmetic_docs=20, needle_docs=20)
    small = FactWorldConfig(n_entities=20)
    a = Testbed(0, small, cfg).training_documents()
    assert a == Testbed(0, small, cfg).training_documents()
    assert a != Testbed(1, small, cfg).training_documents()


def test_tokenizer_makes_symbols_and_digits_single_tokens():
    cfg = CorpusConfig(fact_repeats=1, markov_docs=300, arithmetic_docs=100, needle_docs=50)
    docs = Testbed(0, FactWorldConfig(n_entities=30), cfg).training_documents()
    tok = train_tokenizer(docs, vocab_size=400)
    assert tok.get_vocab() == train_tokenizer(docs, vocab_size=400).get_vocab()
    assert len(set(symbol_token_ids(tok))) == len(SYMBOLS)
    assert tok("907", add_special_tokens=False)["input_ids"] == [
        tok.convert_tokens_to_ids(d) for d in "907"]


def test_builtin_tokenizer_keeps_the_markov_contract(small):
    ids = small.encode("markov: ka lo fe")
    assert ids[-3:] == [small.encode(" " + s)[0] for s in ("ka", "lo", "fe")]


def test_pack_keeps_documents_whole():
    docs = [[1, 5, 5, 2], [1, 6, 2], [1, 7, 7, 7, 2], [1] + [9] * 10 + [2]]
    ids, labels = pack(docs, context=8, pad_id=0)
    assert ids.tolist()[0] == [1, 5, 5, 2, 1, 6, 2, 0]
    assert ids.tolist()[1] == [1, 7, 7, 7, 2, 0, 0, 0]
    assert ids.tolist()[2] == [1] + [9] * 7
    assert (labels[ids == 0] == -100).all()


def test_training_is_reproducible_from_the_seed(tmp_path):
    from tokenwise.models import load
    from tokenwise.testbed.train import train_builtin

    tiny = Testbed(0, FactWorldConfig(n_entities=30),
                   CorpusConfig(fact_repeats=1, markov_docs=300, arithmetic_docs=100,
                                needle_docs=100))
    runs = []
    for name in ("a", "b"):
        facts = train_builtin(tmp_path / name, ["tw-small"], steps=3, progress=False,
                              log=lambda s: None, testbed=tiny)
        runs.append((tmp_path / name / "tw-small" / "model.safetensors").read_bytes())
        assert facts["tw-small"]["spec"]["steps"] == 3
    assert runs[0] == runs[1]
    assert not torch.are_deterministic_algorithms_enabled()  # global state restored
    lm = load(tmp_path / "a" / "tw-small")
    assert lm.encode("ka")  # the saved tokenizer loads with the model
