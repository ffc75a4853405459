"""NLI equivalence on tiny random HF classifiers saved locally, and the decision rules."""

from __future__ import annotations

import itertools

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import NLIEquivalence, cluster
from tokenwise.uncertainty.embedding import minilm_path

LABELS = {0: "CONTRADICTION", 1: "Neutral", 2: "entailment"}

QUESTION = "What is the job of Ana?"
ANSWERS = ["a doctor", "a physician", "a lawyer", "in 1742", "the city of Velmora", "an owl"]


def save_classifier(path, kind="bert", id2label=None, seed=0):
    """A tiny random NLI-shaped classifier with MiniLM's (BERT) tokenizer, saved to ``path``."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
    )

    tok = AutoTokenizer.from_pretrained(minilm_path())
    id2label = LABELS if id2label is None else id2label
    common = dict(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=128,
                  num_labels=len(id2label), id2label=id2label, initializer_range=0.2,
                  label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(seed)
    if kind == "bert":
        model = BertForSequenceClassification(BertConfig(**common))
    else:
        model = DebertaV2ForSequenceClassification(DebertaV2Config(**common, type_vocab_size=0))
    model.eval()
    with torch.no_grad():  # standardise each logit on typical pairs so every class gets
        # predicted, and spread them so argmax is never decided by float noise
        pairs = list(itertools.permutations(ANSWERS, 2))
        enc = tok([f"{QUESTION} {a}" for a, _ in pairs], [f"{QUESTION} {b}" for _, b in pairs],
                  padding=True, return_tensors="pt")
        logits = model(**enc).logits  # (P, C)
        mean, std = logits.mean(0), logits.std(0)
        model.classifier.weight.mul_(100.0 / std[:, None])
        model.classifier.bias.sub_(mean).mul_(100.0 / std)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["bert", "deberta"])
def nli_dir(request, tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp(f"nli-{request.param}"), request.param)


def naive_label(model, tok, premise, hypothesis, **truncation):
    with torch.no_grad():
        logits = model(**tok(premise, hypothesis, return_tensors="pt", **truncation)).logits[0]
    return LABELS[int(logits.argmax())].lower()


def naive_rule(ab: str, ba: str, strict: bool) -> bool:
    if strict:
        return ab == ba == "entailment"
    return "contradiction" not in (ab, ba) and (ab, ba) != ("neutral", "neutral")



@pytest.mark.parametrize("strict", [True, False])
def test_matches_naive_pairwise_rule(nli_dir, strict):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(nli_dir).eval()
    tok = AutoTokenizer.from_pretrained(nli_dir)
    eq = NLIEquivalence(nli_dir, strict=strict, batch_size=4)
    q = QUESTION
    pairs = list(itertools.combinations(ANSWERS, 2))
    got = eq.many(q, pairs)
    verdicts = set()
    for (a, b), g in zip(pairs, got, strict=True):
        ab = naive_label(model, tok, f"{q} {a}", f"{q} {b}")
        ba = naive_label(model, tok, f"{q} {b}", f"{q} {a}")
        verdicts.update((ab, ba))
        if strict:
            want = ab == ba == "entailment"
        else:
            want = "contradiction" not in (ab, ba) and (ab, ba) != ("neutral", "neutral")
        assert g == want, (a, b, ab, ba)
    assert len(verdicts) >= 2  # the random model is not constant: the check has teeth


def test_batching_and_cache(nli_dir):
    one = NLIEquivalence(nli_dir, batch_size=1)
    many = NLIEquivalence(nli_dir, batch_size=64)
    prem = [f"Q? {a}" for a in ANSWERS]
    hyp = list(reversed(prem))
    assert one.predict(prem, hyp) == many.predict(prem, hyp)
    calls = many.model_calls
    many.predict(prem, hyp)
    many.many("Q?", [(ANSWERS[0], ANSWERS[5])])  # both directions already cached
    assert many.model_calls == calls
    many.clear_cache()
    many.predict(prem[:1], hyp[:1])
    assert many.model_calls == calls + 1


def test_question_prepended_or_not(nli_dir):
    eq = NLIEquivalence(nli_dir)
    eq.many("Where?", [("x", "y")])
    assert ("Where? x", "Where? y") in eq._cache and ("Where? y", "Where? x") in eq._cache
    bare = NLIEquivalence(nli_dir, condition_on_question=False)
    bare.many("Where?", [("x", "y")])
    assert ("x", "y") in bare._cache


def test_long_answers_are_truncated(nli_dir):
    """Pairs longer than the model's 128 positions (the tokenizer allows 512) are cut, longest
    first, to 128 tokens: the verdicts are the model's on exactly those tokens."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(nli_dir).eval()
    tok = AutoTokenizer.from_pretrained(nli_dir)
    cut = {"truncation": "longest_first", "max_length": 128}
    longs = ["word " * 3000] + [f"{answer} " * 300 for answer in ANSWERS]
    verdicts = set()
    for strict in (True, False):
        eq = NLIEquivalence(nli_dir, strict=strict)
        assert eq.max_length == 128
        for long, short in itertools.product(longs, ANSWERS[:2]):
            p, h = f"Q? {long}", f"Q? {short}"
            ab, ba = naive_label(model, tok, p, h, **cut), naive_label(model, tok, h, p, **cut)
            assert eq.predict([p, h], [h, p]) == [ab, ba]
            assert eq("Q?", long, short) is naive_rule(ab, ba, strict)
            verdicts.update((ab, ba))
    assert len(verdicts) >= 2  # the verdicts vary: an answer that ignored the text would not


def test_clusters_with_nli_are_order_free(nli_dir):
    eq = NLIEquivalence(nli_dir, strict=False)
    base = cluster(ANSWERS, eq, "Q?")
    rev = cluster(ANSWERS[::-1], eq, "Q?")
    assert base.n_clusters == rev.n_clusters
    u = len(set(ANSWERS))
    assert base.comparisons <= u * (u - 1) // 2  # never every ordered pair


@pytest.mark.parametrize("ab, ba, strict, lenient", [
    ("entailment", "entailment", True, True),
    ("entailment", "neutral", False, True),
    ("neutral", "entailment", False, True),
    ("neutral", "neutral", False, False),
    ("contradiction", "entailment", False, False),
    ("entailment", "contradiction", False, False),
])
def test_decision_rules(nli_dir, monkeypatch, ab, ba, strict, lenient):
    for is_strict, want in ((True, strict), (False, lenient)):
        eq = NLIEquivalence(nli_dir, strict=is_strict)
        monkeypatch.setattr(eq, "predict", lambda p, h: [ab, ba])
        assert eq("Q?", "a", "b") is want


def test_label_checks(tmp_path):
    two = save_classifier(tmp_path / "two", id2label={0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(TokenwiseError, match="needs entailment"):
        NLIEquivalence(two)
    ent_only = save_classifier(tmp_path / "ent", id2label={0: "not_entailment",
                                                          1: "Entailment"})
    NLIEquivalence(ent_only, strict=True)  # strict needs only the entailment class
    with pytest.raises(TokenwiseError, match="contradiction, entailment, neutral"):
        NLIEquivalence(ent_only, strict=False)
    with pytest.raises(TokenwiseError, match="not a local directory"):
        NLIEquivalence(tmp_path / "missing")


def test_loaded_model_needs_tokenizer(nli_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(nli_dir)
    with pytest.raises(TokenwiseError, match="tokenizer"):
        NLIEquivalence(model)
    pairs = list(itertools.combinations(ANSWERS, 2))
    for strict in (True, False):
        loaded = NLIEquivalence(model, AutoTokenizer.from_pretrained(nli_dir), strict=strict)
        from_dir = NLIEquivalence(nli_dir, strict=strict)
        got = loaded.many(QUESTION, pairs)
        assert got == from_dir.many(QUESTION, pairs)
        assert len(set(got)) == 2 or not strict  # both answers occur: the check has teeth
        assert loaded("Q?", "a", "b") is from_dir("Q?", "a", "b")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(nli_dir):
    pairs = list(itertools.combinations(ANSWERS, 2))
    gpu = NLIEquivalence(nli_dir, device="cuda", strict=False)
    assert gpu.many(QUESTION, pairs) == NLIEquivalence(nli_dir, strict=False).many(QUESTION,
                                                                                  pairs)


def test_a_bad_device_is_one_line_naming_it(nli_dir):
    with pytest.raises(TokenwiseError, match="device='tpu'"):
        NLIEquivalence(nli_dir, device="tpu")
