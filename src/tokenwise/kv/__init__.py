"""KV-cache compression that frees memory: presses that evict tokens, and quantised caches.

Presses (:data:`PRESSES`) score the cached tokens of every layer and KV head; the cache keeps
each head's budget of best tokens in smaller tensors. Quantised caches (:class:`KIVI`,
:class:`SAQ`) store packed low-bit keys and values with true byte counts. Either goes to
``tokenwise.generate(..., kv=...)`` or, as a transformers ``Cache``, to ``model.generate``.

Example:
    >>> import tokenwise as tw
    >>> from tokenwise.kv import SnapKV
    >>> g = tw.generate("tw-reader", "Memo:\\nThe code of Avo is 123.\\nQ: What is the code of "
    ...                 "Avo?\\nA:", kv=SnapKV(0.5, window=8), max_new_tokens=2)
    >>> g.prompt_tokens > 0
    True
"""

from tokenwise.kv.base import Press, ScoreInputs, check_budget, tokens_for
from tokenwise.kv.cache import CompressedCache, prefill
from tokenwise.kv.critic import Critic
from tokenwise.kv.expected_attention import ExpectedAttention
from tokenwise.kv.h2o import H2O
from tokenwise.kv.key_norm import KeyNorm
from tokenwise.kv.oracle import Oracle
from tokenwise.kv.quantized import KIVI, SAQ, QuantizedKVCache, QuantSpec
from tokenwise.kv.random import RandomPress
from tokenwise.kv.registry import PRESSES, get, press_class
from tokenwise.kv.snapkv import SnapKV
from tokenwise.kv.streaming import StreamingLLM

__all__ = [
           "H2O",
           "KIVI",
           "PRESSES",
           "SAQ",
           "CompressedCache",
           "Critic",
           "ExpectedAttention",
           "KeyNorm",
           "Oracle",
           "Press",
           "QuantSpec",
           "QuantizedKVCache",
           "RandomPress",
           "ScoreInputs",
           "SnapKV",
           "StreamingLLM",
           "check_budget",
           "get",
           "prefill",
           "press_class",
           "tokens_for",
]
