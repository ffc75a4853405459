"""The built-in models' shared tokenizer: byte-level BPE trained on the testbed corpus.

Digits are split one per token (so additions are learnable digit by digit), and every
Markov symbol is checked to be a single token (so the Markov source's true next-token
distribution is a distribution over the model's own tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tokenwise.testbed.markov import SYMBOLS

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def train_tokenizer(documents: Sequence[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer on ``documents``.

    Training is deterministic for the same documents in the same order. The tokenizer adds
    ``<s>`` in front of every encoded text (as Llama's does).

    Args:
        documents: training texts.
        vocab_size: total vocabulary, special tokens included.

    Example:
        >>> from tokenwise.testbed.markov import SYMBOLS
        >>> line = "markov:" + "".join(" " + s for s in SYMBOLS) + "\\n"
        >>> tok = train_tokenizer([line] * 50 + ["12+3=15\\n"] * 10, 300)
        >>> tok.convert_ids_to_tokens(tok("12")["input_ids"])
        ['<s>', '1', '2']
    """
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    core.train_from_iterator(documents, trainer=trainer, length=len(documents))
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=1_000_000,
    )
    _check_single_tokens(tok)
    return tok


def _check_single_tokens(tok: PreTrainedTokenizerFast) -> None:
    for sym in SYMBOLS:
        ids = tok(" " + sym, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"Markov symbol {sym!r} is {len(ids)} tokens; train on more text")
    for digit in "0123456789":
        if len(tok(digit, add_special_tokens=False)["input_ids"]) != 1:
            raise RuntimeError(f"digit {digit!r} is not a single token")


def symbol_token_ids(tok: PreTrainedTokenizerFast) -> list[int]:
    """The token id of each Markov symbol (with its leading space), in SYMBOLS order."""
    return [tok(" " + s, add_special_tokens=False)["input_ids"][0] for s in SYMBOLS]
