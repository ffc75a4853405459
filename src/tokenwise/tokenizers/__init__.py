"""Tokenizer training (with multi-word supertokens) and transplantation onto a new tokenizer.

``train(corpus, vocab_size, supertokens=...)`` builds a byte-level BPE tokenizer;
``transplant(model, tokenizer, init=...)`` moves a model onto it (TokenAdapt's heuristic
initialisation of the new embeddings, or a baseline); ``bits_per_byte`` compares models that
read text with different tokenizers.

Example:
    >>> from tokenwise.tokenizers import train
    >>> tok = train(["the city of the code"] * 20, 300)
    >>> tok.decode(tok("the city")["input_ids"], skip_special_tokens=True)
    'the city'
"""

from tokenwise.tokenizers.evaluate import bits_per_byte, text_bits, tokens_per_byte
from tokenwise.tokenizers.saving import save_model_dir, save_tokenizer
from tokenwise.tokenizers.train import train
from tokenwise.tokenizers.transplant import INITS, OldEmbeddingEmbedder, Transplant, transplant

__all__ = [
    "INITS",
    "OldEmbeddingEmbedder",
    "Transplant",
    "bits_per_byte",
    "save_model_dir",
    "save_tokenizer",
    "text_bits",
    "tokens_per_byte",
    "train",
    "transplant",
]
