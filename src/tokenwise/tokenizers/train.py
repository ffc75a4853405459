"""Train a byte-level BPE tokenizer, optionally with multi-word supertokens.

Stage one is ordinary byte-level BPE (the ``tokenizers`` library): text is split into words
first, so no token crosses a space. With ``supertokens=True`` a second stage follows, as in
TokenAdapt's supertoken learning and SuperBPE: the corpus is split again, this time keeping
runs of words joined by single spaces together (``" of the city"``), every such run is
written as its stage-one tokens, and BPE learns further merges over those token sequences.
A merge may now join the end of one word to the start of the next, so frequent multi-word
units (``"The birth year of"``) become single tokens and text takes fewer tokens per byte.
Newlines, digits and punctuation still split, so a supertoken never spans a line.

The second stage runs in the same library: each stage-one token is written as one private-use
character, so the library's BPE trainer learns merges of whole tokens; the merges are then
written back as byte-level strings and appended after stage one's. At encoding time the
merges apply in that order inside each run, which reproduces stage one's tokens for every
word (no stage-one merge joins a letter to a following space) before any supertoken merge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tokenwise.errors import TokenwiseError

__all__ = ["DEFAULT_SPECIAL_TOKENS", "SUPERTOKEN_PATTERN", "WORD_PATTERN", "train"]

#: pad, BOS and EOS of a tokenizer trained without a template (the built-in models' names).
DEFAULT_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")

# GPT-2's split, with its letter alternative written out: contractions, words with their
# leading space, numbers, punctuation runs, whitespace.
_REST = r"| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
#: stage one (and every non-supertoken tokenizer): one word per piece.
WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+" + _REST
#: stage two: words joined by single spaces stay one piece (a supertoken's room).
SUPERTOKEN_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+(?: \p{L}+)*" + _REST

# Private-use code points that stand for stage-one tokens while stage two trains: the BMP
# block first, then plane 15 (enough for vocabularies up to about 72k tokens).
_PUA = [*range(0xE000, 0xF900), *range(0xF0000, 0xFFFFE)]


def _pre_tokenizer(pattern: str, individual_digits: bool) -> Any:
    steps = [pre_tokenizers.Digits(individual_digits=True)] if individual_digits else []
    steps += [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    return pre_tokenizers.Sequence(steps)


def _check_args(vocab_size: int, supertoken_share: float, min_frequency: int,
                max_supertoken_pieces: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise TokenwiseError(f"vocab_size={vocab_size!r}: allowed an integer >= 300 (the 256 "
                             "bytes, the special tokens and some merges)")
    if not isinstance(supertoken_share, (int, float)) or not 0 < supertoken_share < 1:
        raise TokenwiseError(f"supertoken_share={supertoken_share!r}: allowed a number "
                             "strictly between 0 and 1")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise TokenwiseError(f"min_frequency={min_frequency!r}: allowed an integer >= 1")
    if (isinstance(max_supertoken_pieces, bool) or not isinstance(max_supertoken_pieces, int)
            or max_supertoken_pieces < 2):
        raise TokenwiseError(f"max_supertoken_pieces={max_supertoken_pieces!r}: allowed an "
                             "integer >= 2")


def _special_tokens(template: PreTrainedTokenizerBase | None) -> tuple[list[str], dict[str, Any]]:
    """Special token strings in id order, and the role names (bos_token=...) to give them."""
    if template is None:
        pad, bos, eos = DEFAULT_SPECIAL_TOKENS
        return [pad, bos, eos], {"pad_token": pad, "bos_token": bos, "eos_token": eos}
    roles: dict[str, Any] = {}
    for role in ("pad_token", "bos_token", "eos_token", "unk_token"):
        value = getattr(template, role, None)
        if value is not None:
            roles[role] = str(value)
    specials: dict[int, str] = {}
    for tid, added in template.added_tokens_decoder.items():
        if added.special:
            specials[int(tid)] = str(added.content)
    for value in roles.values():
        if value not in specials.values():
            specials[len(template) + len(specials)] = value
    ordered = [specials[k] for k in sorted(specials)]
    extra = [t for t in ordered if t not in roles.values()]
    if extra:
        roles["additional_special_tokens"] = extra
    return ordered, roles


def _start_tokens(template: PreTrainedTokenizerBase | None, roles: dict[str, Any]) -> list[str]:
    """The tokens every encoded text starts with: the template's own rule, else the BOS."""
    if template is None:
        return [roles["bos_token"]]
    with_specials = list(template("a", add_special_tokens=True)["input_ids"])
    plain = list(template("a", add_special_tokens=False)["input_ids"])
    for at in range(len(with_specials) - len(plain) + 1):
        if with_specials[at:at + len(plain)] == plain:
            return template.convert_ids_to_tokens(with_specials[:at])
    return []


def _train_stage_one(corpus: Sequence[str], vocab_size: int, specials: list[str],
                     individual_digits: bool, min_frequency: int) -> Tokenizer:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = _pre_tokenizer(WORD_PATTERN, individual_digits)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    return core


def _supertoken_merges(core: Tokenizer, corpus: Sequence[str], n_new: int,
                       individual_digits: bool, min_frequency: int,
                       max_pieces: int) -> list[tuple[str, str]]:
    """Stage two: BPE merges over stage-one token sequences of multi-word runs."""
    state = json.loads(core.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    if len(vocab) > len(_PUA):
        raise TokenwiseError(f"stage one has {len(vocab)} tokens; supertokens support up to "
                             f"{len(_PUA)}")
    to_char = {tid: chr(_PUA[tid]) for tid in vocab.values()}
    from_char = {c: tok for tok, tid in vocab.items() for c in [to_char[tid]]}
    # Stage one's model, reading the pieces of the supertoken split.
    reader = Tokenizer.from_str(core.to_str())
    reader.pre_tokenizer = _pre_tokenizer(SUPERTOKEN_PATTERN, individual_digits)
    reader.post_processor = None
    runs: list[str] = []
    for enc in reader.encode_batch(list(corpus), add_special_tokens=False):
        current: list[str] = []
        last_word = None
        for tid, word in zip(enc.ids, enc.word_ids, strict=True):
            if word != last_word and current:
                runs.append("".join(current))
                current = []
            current.append(to_char[tid])
            last_word = word
        if current:
            runs.append("".join(current))
    alphabet = {c for run in runs for c in run}
    second = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + n_new, min_frequency=min_frequency, show_progress=False,
        max_token_length=max_pieces, initial_alphabet=sorted(alphabet),
    )
    second.train_from_iterator(runs, trainer=trainer, length=len(runs))
    merges = json.loads(second.to_str())["model"]["merges"]
    out = []
    for merge in merges:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        out.append(("".join(from_char[c] for c in left), "".join(from_char[c] for c in right)))
    return out


def train(
    corpus: Iterable[str],
    vocab_size: int,
    supertokens: bool = False,
    *,
    supertoken_share: float = 0.25,
    max_supertoken_pieces: int = 6,
    template: PreTrainedTokenizerBase | None = None,
    individual_digits: bool = True,
    min_frequency: int = 2,
    model_max_length: int = 1_000_000,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus``, with optional multi-word supertokens.

    Deterministic for the same corpus in the same order.

    Args:
        corpus: training texts (documents or lines).
        vocab_size: total vocabulary, special tokens included (a target: a small corpus may
            give fewer merges).
        supertokens: add a second BPE stage whose merges may cross single spaces, so
            frequent multi-word units become tokens (see the module's text).
        supertoken_share: the part of ``vocab_size`` left to the second stage.
        max_supertoken_pieces: a supertoken is made of at most this many stage-one tokens.
        template: carry this tokenizer's special tokens (pad, BOS, EOS, UNK and every other
            special token, e.g. chat-turn markers, at the lowest ids in the template's order),
            its rule for what starts a text (a BOS or nothing) and its chat template. Without
            it: ``<pad>``, ``<s>``, ``</s>`` at ids 0, 1, 2 and ``<s>`` before every text.
        individual_digits: one token per digit (arithmetic learns digit by digit).
        min_frequency: a merge needs a pair seen at least this often.
        model_max_length: the tokenizer's ``model_max_length``.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``; save it with ``save_pretrained``.

    Example:
        >>> text = ["the code of the city is 12"] * 50 + ["the city of the code"] * 50
        >>> tok = train(text, 300, supertokens=True, supertoken_share=0.1)
        >>> tok.convert_ids_to_tokens(tok("the city of")["input_ids"])
        ['<s>', 'theĠcity', 'Ġof']
    """
    _check_args(vocab_size, supertoken_share, min_frequency, max_supertoken_pieces)
    docs = [corpus] if isinstance(corpus, str) else list(corpus)
    bad = next((d for d in docs if not isinstance(d, str)), None)
    if bad is not None:
        raise TokenwiseError(f"corpus holds a {type(bad).__name__}; allowed: strings")
    if not any(d.strip() for d in docs):
        raise TokenwiseError("corpus is empty: give at least one non-blank text")
    specials, roles = _special_tokens(template)
    stage_one = vocab_size - round(vocab_size * supertoken_share) if supertokens else vocab_size
    core = _train_stage_one(docs, stage_one, specials, individual_digits, min_frequency)
    if supertokens:
        merges = _supertoken_merges(core, docs, vocab_size - core.get_vocab_size(),
                                    individual_digits, min_frequency, max_supertoken_pieces)
        state = json.loads(core.to_str())
        vocab = state["model"]["vocab"]
        for left, right in merges:
            vocab.setdefault(left + right, len(vocab))
        state["model"]["merges"] = [*state["model"]["merges"], *map(list, merges)]
        core = Tokenizer.from_str(json.dumps(state))
        core.pre_tokenizer = _pre_tokenizer(SUPERTOKEN_PATTERN, individual_digits)
    start = _start_tokens(template, roles)
    steps = [processors.ByteLevel(trim_offsets=False)]
    if start:
        single = " ".join([*start, "$A"])
        pair = " ".join([*start, "$A", *start, "$B"])
        steps.append(processors.TemplateProcessing(
            single=single, pair=pair,
            special_tokens=[(t, core.token_to_id(t)) for t in dict.fromkeys(start)],
        ))
    core.post_processor = processors.Sequence(steps)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=model_max_length,
                                  **roles)
    if template is not None and getattr(template, "chat_template", None):
        tok.chat_template = template.chat_template
    return tok
