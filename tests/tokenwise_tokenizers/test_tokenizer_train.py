"""tokenwise.tokenizers.train: byte-level BPE, supertokens across spaces, special tokens."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tokenwise.errors import TokenwiseError
from tokenwise.tokenizers import tokens_per_byte, train
from tokenwise.tokenizers.train import DEFAULT_SPECIAL_TOKENS

SENTENCES = [
    "The birth year of Dalvin Orsk is 1743.",
    "The birthplace of Dalvin Orsk is the city of Grevamai.",
    "Q: What pet does Baigi Nounou keep?\nA: a kitten",
    "The code of Zeipeth is 960.",
    "By profession, Drisound Zogaind is a chef.",
]


@pytest.fixture(scope="module")
def documents(testbed) -> list[str]:
    return testbed.training_documents()


@pytest.fixture(scope="module")
def corpus(documents) -> list[str]:
    return documents[:1000]


@pytest.fixture(scope="module")
def plain(corpus):
    return train(corpus, 700)


@pytest.fixture(scope="module")
def super_tok(corpus):
    return train(corpus, 700, supertokens=True)


def test_plain_round_trip_specials_and_digits(plain):
    assert len(plain) == 700
    assert [plain.pad_token_id, plain.bos_token_id, plain.eos_token_id] == [0, 1, 2]
    assert plain.convert_ids_to_tokens([0, 1, 2]) == list(DEFAULT_SPECIAL_TOKENS)
    for text in [*SENTENCES, "naïve café ☃  two  spaces\n\n", "12+345=357"]:
        ids = plain(text)["input_ids"]
        assert ids[0] == plain.bos_token_id
        assert plain.decode(ids, skip_special_tokens=True) == text
    pieces = plain.convert_ids_to_tokens(plain("12345", add_special_tokens=False)["input_ids"])
    assert pieces == ["1", "2", "3", "4", "5"]
    # stage one never joins words: no token has a space after its first character
    assert not any("Ġ" in t[1:] for t in plain.get_vocab())


def test_supertokens_cross_spaces_never_lines(super_tok, plain, documents):
    vocab = super_tok.get_vocab()
    multi = [t for t in vocab if "Ġ" in t[1:]]
    assert len(multi) > 20
    assert not any("Ċ" in t and len(t) > 1 for t in multi)
    ids = super_tok("The birth year of Dalvin Orsk is 1743.", add_special_tokens=False)
    assert any("Ġ" in t[1:] for t in super_tok.convert_ids_to_tokens(ids["input_ids"]))
    held = documents[-300:]
    for text in [*SENTENCES, *held[:50]]:
        assert super_tok.decode(super_tok(text)["input_ids"], skip_special_tokens=True) == text
    assert tokens_per_byte(super_tok, held) < 0.9 * tokens_per_byte(plain, held)


def test_supertoken_size_is_bounded(corpus):
    tok = train(corpus, 700, supertokens=True, max_supertoken_pieces=2)
    plain_core = train(corpus, 700 - round(700 * 0.25))
    # each supertoken joins at most two stage-one tokens, so it spans at most two words
    for t in tok.get_vocab():
        if t not in plain_core.get_vocab():
            assert t.count("Ġ") <= 2, t


def _gpt2_like_template(corpus: list[str]) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    from tokenizers import trainers

    core.train_from_iterator(corpus[:200], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  additional_special_tokens=["<|endoftext|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>"
                         "{% endfor %}")
    return tok


def test_template_carries_specials_start_rule_and_chat_template(corpus):
    template = _gpt2_like_template(corpus)
    assert template("a")["input_ids"] == template("a", add_special_tokens=False)["input_ids"]
    tok = train(corpus, 500, template=template)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>",
                                                    "<|im_end|>"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                             "<|im_end|>")
    # the template adds no BOS to a text, so neither does the new tokenizer
    assert tok("The code")["input_ids"] == tok("The code", add_special_tokens=False)["input_ids"]
    assert tok.chat_template == template.chat_template
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "<|im_start|>hi<|im_end|>"


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"vocab_size": 10}, "vocab_size=10"),
    ({"vocab_size": 400, "supertoken_share": 1.5}, "supertoken_share=1.5"),
    ({"vocab_size": 400, "min_frequency": 0}, "min_frequency=0"),
])
def test_bad_arguments_are_named(kwargs, named):
    with pytest.raises(TokenwiseError, match=named.replace(".", r"\.")):
        train(["some text here"] * 5, **kwargs)


def test_empty_or_non_text_corpus():
    with pytest.raises(TokenwiseError, match="empty"):
        train(["", "  "], 400)
    with pytest.raises(TokenwiseError, match="int"):
        train(["ok", 3], 400)  # type: ignore[list-item]
