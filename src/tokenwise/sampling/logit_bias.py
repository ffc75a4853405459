"""Logit bias: add a fixed number to chosen tokens' logits (OpenAI's ``logit_bias``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler, check_float, check_int, check_logits

#: OpenAI's range for one token's bias; -100 in practice bans a token, +100 forces it.
BIAS_LIMIT = 100.0


def _pairs(bias: object) -> list[tuple[object, object]]:
    if isinstance(bias, Mapping):
        return list(bias.items())
    if isinstance(bias, (str, bytes)) or not isinstance(bias, Sequence):
        raise TokenwiseError(f"bias={bias!r}: allowed a mapping of token ids to numbers in "
                             f"[-{BIAS_LIMIT:g}, {BIAS_LIMIT:g}], or a sequence of "
                             "(id, number) pairs")
    pairs = []
    for item in bias:
        if not (isinstance(item, Sequence) and not isinstance(item, (str, bytes))
                and len(item) == 2):
            raise TokenwiseError(f"bias={bias!r}: allowed a mapping of token ids to numbers, "
                                 f"or a sequence of (id, number) pairs; got the item {item!r}")
        pairs.append((item[0], item[1]))
    return pairs


class LogitBias(Sampler):
    """Add a bias to the logits of the tokens named (OpenAI's and vLLM's ``logit_bias``).

    Each listed token's logit gets its bias added, every other token is untouched; nothing
    is dropped (a bias of ``-100`` makes a token practically impossible but leaves it
    finite, as OpenAI and vLLM do). The same bias applies to every row. Masked (``-inf``)
    tokens stay masked. Ids are checked against the vocabulary on each call.

    Args:
        bias: token id -> bias in [-100, 100]: a mapping, or a sequence of ``(id, bias)``
            pairs (each id at most once). Empty: no change.

    Example:
        >>> LogitBias({2: 5.0, 0: -100})(torch.tensor([[1.0, 2.0, 3.0]])).tolist()
        [[-99.0, 2.0, 8.0]]
    """

    name = "logit_bias"

    def __init__(self, bias: Mapping[int, float] | Sequence[tuple[int, float]]) -> None:
        checked: dict[int, float] = {}
        for key, value in _pairs(bias):
            token = check_int("logit_bias id", key, 0)
            if token in checked:
                raise TokenwiseError(f"bias names token id {token} twice; give each id once")
            checked[token] = check_float(f"bias[{token}]", value, -BIAS_LIMIT, BIAS_LIMIT,
                                         low_open=False)
        self.bias = dict(sorted(checked.items()))
        self._ids = torch.tensor(list(self.bias), dtype=torch.long)  # (N,)
        self._values = torch.tensor(list(self.bias.values()), dtype=torch.float32)  # (N,)

    def params(self) -> dict:
        """The settings."""
        return {"bias": dict(self.bias)}

    def __call__(self, logits: Tensor) -> Tensor:
        logits = check_logits(logits)
        if not self.bias:
            return logits.clone()
        vocab = logits.shape[-1]
        largest = int(self._ids[-1])
        if largest >= vocab:
            raise TokenwiseError(f"logit_bias id {largest} is not a token of this vocabulary "
                                 f"of {vocab} tokens: allowed ids 0 to {vocab - 1}")
        ids, values = self._ids.to(logits.device), self._values.to(logits.device)
        column = torch.zeros(vocab, dtype=torch.float32, device=logits.device)
        column[ids] = values  # (V,)
        # float32 whatever the input, so fp16/bf16 logits get their float32 copy's result
        return (logits.float() + column).to(logits.dtype)

