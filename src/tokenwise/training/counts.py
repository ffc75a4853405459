"""Counts of the work the fused loss's filters leave: a count that adds device tensors
without waiting for the device until it is read, and the shared filter counter that the torch
loops and the Triton kernels both add to.

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

__all__ = ["FILTER_STATS", "DeviceCount", "FilterStats"]


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


class FilterStats:
    """How much gradient work the filter left: entries (token x vocabulary) of the gradient
    blocks that were formed and multiplied, out of all entries of the blocks visited.

    A debugging aid (tests and benchmarks read it to check that filtering really skips work);
    not thread-safe.

    Example:
        >>> stats = FilterStats()
        >>> stats.add(10, 4)
        >>> stats.kept, stats.total
        (4, 10)
    """

    def __init__(self) -> None:
        self.total = 0
        self._kept = DeviceCount()  # the Triton path counts on the device, read when asked

    def reset(self) -> None:
        """Forget every count."""
        self.total = 0
        self._kept.reset()

    def add(self, total: int, kept: int | Tensor) -> None:
        """Count ``total`` entries visited, ``kept`` of them formed (an int or a 0-d tensor).

        Args:
            total: entries visited.
            kept: entries formed and multiplied.
        """
        self.total += total
        self._kept.add(kept)

    @property
    def kept(self) -> int:
        """Entries formed and multiplied so far."""
        return self._kept.value


#: the one counter every path of the fused loss adds to
FILTER_STATS = FilterStats()
