"""Following one request through vLLM's persistent batch (no vLLM import needed).

vLLM (v1) tells each logits processor how its batch changed with a ``BatchUpdate``:
``removed`` row indices, ``added`` ``(index, SamplingParams, prompt_ids, output_ids)`` and
``moved`` ``(a, b, direction)``, applied in that order. vLLM removes a request when it
preempts it and also when it merely does not schedule it in a step, and later re-adds it
with the same ``SamplingParams`` object and the tokens generated so far (the same list, or
under async scheduling a rebuilt one). A processor that keeps per-request state (Mirostat's
``mu``, the entropy recorder's track) parks the state of a request that left and continues
it on re-add. :func:`follow_batch` does the row bookkeeping (shaped like vLLM's own
``process_dict_updates``) and :func:`unpark` the re-add match, for both.

Example:
    >>> from types import SimpleNamespace as NS
    >>> rows, left = {}, []
    >>> update = NS(removed=[], added=[(0, "params", [1], [])], moved=[])
    >>> follow_batch(rows, update, lambda params, out: params.upper(), left.append)
    True
    >>> rows
    {0: 'PARAMS'}
    >>> follow_batch(rows, NS(removed=[0], added=[], moved=[]), str, left.append), rows, left
    (True, {}, ['PARAMS'])
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypeVar

__all__ = ["Parkable", "follow_batch", "is_swap", "params_ref", "same_history", "unpark"]

T = TypeVar("T")


class Parkable(Protocol):
    """A request's state that can wait outside the batch and continue on re-add."""

    #: vLLM's list of the request's generated tokens (appended to in place)
    output_ids: list[int]

    def params(self) -> Any:
        """The request's ``SamplingParams`` while it lives (``None`` once it is gone)."""

    def resume(self, output_ids: list[int]) -> None:
        """Continue with ``output_ids``, the tokens generated so far."""


P = TypeVar("P", bound=Parkable)


def params_ref(params: Any) -> Callable[[], Any]:
    """A handle that gives ``params`` back while it lives (weak when possible).

    Example:
        >>> params_ref(None)() is None
        True
    """
    if params is None:
        return lambda: None
    try:
        return weakref.ref(params)
    except TypeError:  # not weak-referenceable: hold it (the caller bounds how many)
        return lambda: params


def same_history(old: list[int], new: list[int]) -> bool:
    """Whether two output-token lists of one request agree where both are known (vLLM's
    async scheduling leaves ``-1`` placeholders).

    Example:
        >>> same_history([5, -1], [5, 7, 9]), same_history([5, 6], [5, 7])
        (True, False)
    """
    return all(a == b or a < 0 or b < 0 for a, b in zip(old, new, strict=False))


def is_swap(direction: Any) -> bool:
    """Whether a ``moved`` entry swaps its two rows (``MoveDirectionality.SWAP``) rather than
    moving one onto the other."""
    return getattr(direction, "name", str(direction).rsplit(".", 1)[-1]) == "SWAP"


def follow_batch(rows: dict[int, T], batch_update: Any,
                 new_state: Callable[[Any, list[int]], T | None],
                 leave: Callable[[T], None]) -> bool:
    """Apply one ``BatchUpdate`` to ``rows`` (batch index -> request state).

    In vLLM's order: removed, added, moved. Every state that leaves the batch goes to
    ``leave`` (to be parked or finished): a removed row, a row an added request takes over,
    and the row a one-way move lands on (vLLM's condense moves a request onto a slot it freed
    without listing that slot as removed).

    Args:
        rows: the states, updated in place.
        batch_update: a ``BatchUpdate`` or anything with ``removed``, ``added`` and ``moved``
            (``None`` or empty: nothing changed).
        new_state: ``(SamplingParams, output_ids) -> state`` for an added request, or
            ``None`` when the request did not ask for this processor.
        leave: called with each state that leaves the batch.

    Returns:
        Whether anything was given (a processor rebuilds its groups then).
    """
    if not batch_update:
        return False
    for index in batch_update.removed:
        if (gone := rows.pop(index, None)) is not None:
            leave(gone)
    for index, params, _prompt_ids, output_ids in batch_update.added:
        if (old := rows.pop(index, None)) is not None:
            leave(old)  # a request that did not ask took this slot
        if (state := new_state(params, output_ids)) is not None:
            rows[index] = state
    for a, b, direction in batch_update.moved:
        row_a, row_b = rows.pop(a, None), rows.pop(b, None)
        if row_a is not None:
            rows[b] = row_a
        if row_b is not None:
            if is_swap(direction):
                rows[a] = row_b
            else:
                leave(row_b)
    return True


def unpark(parked: dict[Hashable, list[P]], key: Hashable, params: Any,
           output_ids: list[int]) -> P | None:
    """Take the parked state a re-added request left, resumed with ``output_ids``.

    A state matches when it belongs to the same ``SamplingParams`` object (vLLM re-adds a
    request with the one it came with) and holds the same output list, or, under async
    scheduling (a rebuilt list), a history that ``output_ids`` continues. A request re-added
    with no tokens has nothing to continue.

    Args:
        parked: key -> states that left the batch, oldest first (the found one is removed,
            and its key once empty).
        key: where this request's states are parked (e.g. ``id(params)`` or a tag).
        params: the re-added request's ``SamplingParams``.
        output_ids: its tokens generated so far.

    Returns:
        The resumed state, or ``None``.
    """
    if not output_ids or params is None:
        return None
    states = parked.get(key, [])
    same = [s for s in states if s.params() is params]
    found = next((s for s in same if s.output_ids is output_ids), None)
    if found is None:
        found = next((s for s in same if len(s.output_ids) <= len(output_ids)
                      and same_history(s.output_ids, output_ids)), None)
    if found is None:
        return None
    states.remove(found)
    if not states:
        del parked[key]
    found.resume(output_ids)
    return found
