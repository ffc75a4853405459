"""Tiny local token-classification models (random weights, tokenizers trained here)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

_WORD_LIST = (

    "the of and to in is was for on that with as by at from it an be this are or have not "
    "meeting budget council project report members agreed proposal city water road school "
    "park plan vote motion item public hearing staff recommend approve approved discussion "
    "quarter revenue increase decrease percent million thousand year month week Monday "
    "Tuesday July March Zürich café naïve résumé über Straße coördinate"
)
WORDS = _WORD_LIST.split(" ")
CJK = list("北京是中国的首都东京は日本の首都です会议预算城市公园水路学校")


def generated_texts(n: int, seed: int = 0, long_every: int = 4, cjk: bool = True) -> list[str]:
    """Varied synthetic texts: prose, numbers, punctuation, CJK runs, line breaks."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sentences = []
        n_sent = rng.randint(40, 70) if i % long_every == long_every - 1 else rng.randint(2, 9)
        for _ in range(n_sent):
            toks = []
            for _ in range(rng.randint(3, 16)):
                r = rng.random()
                if r < 0.08:
                    toks.append(str(rng.randint(0, 5000)))
                elif r < 0.13 and cjk:
                    toks.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 5))))
                elif r < 0.17:
                    toks.append(rng.choice(["(see", "e.g.", "—", "&", "#4", "x2", "3.5%"]))
                else:
                    toks.append(rng.choice(WORDS))
            end = rng.choice([".", ".", ".", "?", "!", ";", "", "\n"])
            sentences.append(" ".join(toks).capitalize() + end)
        out.append(rng.choice([" ", " ", "\n", "\n\n"]).join(sentences))
    return out


def train_wordpiece(corpus: list[str], vocab_size: int = 600):
    """A cased BERT WordPiece tokenizer trained on ``corpus`` (a BertTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast

    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False)
    core.train_from_iterator(corpus, trainer)
    return BertTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                             do_lower_case=False, model_max_length=512)


def save_tiny_bert(path: Path, corpus: list[str], seed: int = 0, hidden: int = 16,
                   layers: int = 1, vocab_size: int = 600) -> Path:
    """A random BertForTokenClassification (2 labels) with its tokenizer, in ``path``.

    The directory name should contain ``bert-base-multilingual-cased`` for llmlingua,
    which picks its word rule by model name.
    """
    from transformers import BertConfig, BertForTokenClassification

    tok = train_wordpiece(corpus, vocab_size)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=512, num_labels=2, pad_token_id=tok.pad_token_id)
    model = BertForTokenClassification(config)
    # Spread the keep logits so that word probabilities are far apart (no near-ties).
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_xlmr(path: Path, corpus: list[str], seed: int = 0, hidden: int = 16,
                   vocab_size: int = 700) -> Path:
    """A random XLMRobertaForTokenClassification with a SentencePiece-style Unigram vocabulary.

    The directory name should contain ``xlm-roberta-large`` for llmlingua's word rule.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForTokenClassification,
        XLMRobertaTokenizerFast,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    core = Tokenizer(models.Unigram())
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    core.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False))
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", core.token_to_id("<s>")), ("</s>", core.token_to_id("</s>"))])
    tok = XLMRobertaTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                  pad_token="<pad>", mask_token="<mask>", model_max_length=512)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=2 * hidden,
                              max_position_embeddings=514, num_labels=2,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id)
    model = XLMRobertaForTokenClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_in_threads(calls):
    """Run each function in its own thread at once; their results in order (errors raised)."""
    import threading

    results, errors = [None] * len(calls), []

    def run(i):
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # handed back to the caller, in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
