"""With the same classifier and ``percentile="chunk"``, our kept words equal llmlingua's.

llmlingua 0.2.2 counts tokens with tiktoken's GPT-3.5 encoding, which it downloads; here
(only inside this test) that counter is replaced by the built-in models' tokenizer, and we
count with the same tokenizer. The classifiers are a tiny random BERT with a WordPiece vocabulary
and a tiny random XLM-RoBERTa with a SentencePiece-style vocabulary, both trained on the
test texts and saved in directories whose names tell llmlingua which word rule to use.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from tests.compression.texts import CONFORMANCE_TEXTS

llmlingua = pytest.importorskip("llmlingua")

RATES = (0.33, 0.5, 0.7, 0.2)


class _Encoding:
    """Stands in for tiktoken's encoding: encode() with the built-in models' tokenizer."""

    def __init__(self, tokenizer, strip_marker: bool = False):
        self.tokenizer = tokenizer
        self.strip_marker = strip_marker

    def encode(self, text: str) -> list[int]:
        if self.strip_marker:
            # llmlingua weighs an XLM-R word with its "▁" marker still on (the marker's
            # bytes then count as text); both sides here count the word's own text.
            text = text.lstrip("▁")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def target():
    from tokenwise.compression import TokenCounter

    return TokenCounter.resolve(None)


def _reference(model_dir, target, strip_marker=False):
    from llmlingua import prompt_compressor

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prompt_compressor.tiktoken, "encoding_for_model",
                   lambda name: _Encoding(target.tokenizer, strip_marker))
        return prompt_compressor.PromptCompressor(
            model_name=str(model_dir), use_llmlingua2=True, device_map="cpu")


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, target):
    return _reference(tiny_bert_dir, target)


def _reference_labels(result: dict) -> tuple[list[str], list[int]]:
    items = result["fn_labeled_original_prompt"].split("\t\t|\t\t")
    pairs = [item.rsplit(" ", 1) for item in items]
    return [w for w, _ in pairs], [int(lab) for _, lab in pairs]


def _ours(tiny_compressor, target, context, **kwargs):
    return tiny_compressor.compress(context, percentile="chunk", protect=False,
                                    target_model=target, **kwargs)


@pytest.mark.parametrize("index", range(len(CONFORMANCE_TEXTS)))
def test_kept_words_equal_llmlingua(index, reference, tiny_compressor, target):
    text = CONFORMANCE_TEXTS[index]
    for rate in (RATES[index % len(RATES)], RATES[(index + 1) % len(RATES)]):
        ref_words, ref_labels = _reference_labels(
            reference.compress_prompt(text, rate=rate, return_word_label=True))
        ours = _ours(tiny_compressor, target, text, rate=rate)
        assert ours.words == ref_words
        assert ours.keep.astype(int).tolist() == ref_labels, f"rate={rate}"
        assert 0 < ours.keep.sum() < len(ours.words)


def test_the_texts_cover_chunking_and_scripts(tiny_compressor):
    # Several texts span more than one 512-token chunk, one of them with no full stop to
    # back off to; several are CJK.
    tok = tiny_compressor.tokenizer
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in CONFORMANCE_TEXTS]
    assert sum(n > 510 for n in lengths) >= 3
    assert sum(bool(re.search("[\u4e00-\u9fff]", t)) for t in CONFORMANCE_TEXTS) >= 5


@pytest.mark.parametrize("token_to_word", ["first"])
def test_first_token_merge_equals_llmlingua(token_to_word, reference, tiny_bert_dir, target):
    from tokenwise.compression.token_classifier import TokenClassifierCompressor

    comp = TokenClassifierCompressor(tiny_bert_dir, token_to_word=token_to_word)
    for text in CONFORMANCE_TEXTS[::3]:
        ref_words, ref_labels = _reference_labels(reference.compress_prompt(
            text, rate=0.4, return_word_label=True, token_to_word=token_to_word))
        ours = _ours(comp, target, text, rate=0.4)
        assert ours.words == ref_words
        assert ours.keep.astype(int).tolist() == ref_labels


def test_force_tokens_and_digits_equal_llmlingua(reference, tiny_compressor, target):
    # The reference forces single tokens and lets a word's other tokens dilute them; we force
    # whole words. They agree where every forced word is one token or all digits.
    mixed = re.compile(r"[^\W\d]\d|\d[^\W\d]")
    texts = [t for t in CONFORMANCE_TEXTS if not mixed.search(t)]
    assert len(texts) >= 10
    force = ["?", "council", "!"]
    for text in texts:
        ref_words, ref_labels = _reference_labels(reference.compress_prompt(
            text, rate=0.3, return_word_label=True, force_tokens=force,
            force_reserve_digit=True))
        ours = _ours(tiny_compressor, target, text, rate=0.3, force_tokens=force,
                     keep_digits=True)
        assert ours.words == ref_words
        assert ours.keep.astype(int).tolist() == ref_labels
        words = np.array(ours.words, dtype=object)
        must = np.isin(words, force) | np.array([any(c.isdigit() for c in w) for w in words])
        assert ours.keep[must].all()


def test_context_filter_equals_llmlingua(reference, tiny_bert_dir, target):
    # llmlingua scores a context by the mean of each word's *first*-token probability
    # whatever token_to_word says (its no-force list repeats the first token's value); we
    # average the word scores. With token_to_word="first" the two definitions coincide.
    from tokenwise.compression.token_classifier import TokenClassifierCompressor

    comp = TokenClassifierCompressor(tiny_bert_dir, token_to_word="first")
    contexts = CONFORMANCE_TEXTS[:12]
    for rate in (0.3, 0.6):
        res = reference.compress_prompt(contexts, rate=rate, use_context_level_filter=True,
                                        return_word_label=True, token_to_word="first")
        ref_words, ref_labels = _reference_labels(res)
        ours = _ours(comp, target, contexts, rate=rate, context_filter=True)
        assert 0 < sum(ours.kept_segments) < len(contexts)
        assert ours.words == ref_words
        assert ours.keep.astype(int).tolist() == ref_labels
        assert ours.contexts is not None
        assert len(res["compressed_prompt_list"]) == sum(ours.kept_segments)


def test_xlm_roberta_word_rule_equals_llmlingua(tiny_xlmr_dir, target):
    # SentencePiece pieces: a word starts at a "▁" piece or a punctuation piece. Han
    # characters are left out: there we start a word at each one (llmlingua would make a
    # whole unspaced Chinese sentence one word).
    from tests.compression.helpers import generated_texts

    from tokenwise.compression.token_classifier import TokenClassifierCompressor

    reference = _reference(tiny_xlmr_dir, target, strip_marker=True)
    comp = TokenClassifierCompressor(tiny_xlmr_dir)
    assert comp._broadcast_mask
    texts = [t for t in CONFORMANCE_TEXTS if not re.search("[\u3040-\u9fff]", t)]
    texts += generated_texts(4, seed=3, cjk=False)
    assert len(texts) >= 20
    for i, text in enumerate(texts):
        rate = RATES[i % len(RATES)]
        ref_words, ref_labels = _reference_labels(
            reference.compress_prompt(text, rate=rate, return_word_label=True))
        ours = _ours(comp, target, text, rate=rate)
        assert ours.words == ref_words
        assert ours.keep.astype(int).tolist() == ref_labels, f"text {i}, rate={rate}"
