"""A count that adds device tensors without waiting for the device until it is read.

Example:
    >>> import torch
    >>> count = DeviceCount()
    >>> count.add(3)
    >>> count.add(torch.tensor(4))
    >>> count.value
    7
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DeviceCount"]


class DeviceCount:
    """An integer sum of ints and 0-d tensors; tensors are read (a GPU sync) only on ``value``.

    Not thread-safe: a debugging and benchmarking aid.
    """

    def __init__(self) -> None:
        self._value = 0
        # one running sum per device, however many adds (tensors on two GPUs cannot be added)
        self._pending: dict[torch.device, Tensor] = {}

    def add(self, n: int | Tensor) -> None:
        """Add an int now, or a 0-d tensor into a running sum on its device.

        Args:
            n: the amount.
        """
        if isinstance(n, Tensor):
            n = n.to(torch.int64)
            held = self._pending.get(n.device)
            self._pending[n.device] = n if held is None else held + n
        else:
            self._value += n

    def reset(self) -> None:
        """Back to zero, dropping what was not read."""
        self._value = 0
        self._pending.clear()

    @property
    def value(self) -> int:
        """The sum so far."""
        for t in self._pending.values():
            self._value += int(t.item())
        self._pending.clear()
        return self._value
