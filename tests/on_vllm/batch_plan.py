"""Replay a batch-membership plan against a vLLM logits processor, as vLLM's InputBatch would.

Shared by the tests that check a per-request state survives vLLM removing a request (preempted,
or not scheduled this step) and adding it back later with the same SamplingParams object and
the same output list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def replay_plan(proc: Any, params: dict[str, Any], outs: dict[str, list[int]], plan: list[str],
                step: Callable[[list[tuple[int, str]], int], None]) -> None:
    """Drive ``proc`` through ``plan``, starting with every request of ``params`` in the batch.

    Args:
        proc: a vLLM v1 logits processor (``update_state``).
        params: SamplingParams per request name, in their first batch order.
        outs: each request's output-token list (the caller appends to it in ``step``).
        plan: "step" runs the batch (``step(live rows as (row, request), batch size)``);
            "out:r" removes request r; "in:r" adds it back in the first free row.
    """
    from vllm.v1.sample.logits_processor import BatchUpdate

    slots: list[str | None] = list(params)
    proc.update_state(BatchUpdate(len(slots), [], [(i, params[r], [1], outs[r])
                                                   for i, r in enumerate(params)], []))
    for action in plan:
        if action == "step":
            step([(i, r) for i, r in enumerate(slots) if r is not None], len(slots))
            continue
        kind, r = action.split(":")
        if kind == "out":
            i = slots.index(r)
            slots[i] = None
            proc.update_state(BatchUpdate(len(slots), [i], [], []))
        else:
            i = slots.index(None)
            slots[i] = r
            proc.update_state(BatchUpdate(len(slots), [], [(i, params[r], [1], outs[r])], []))
