"""tokenwise.vllm.tracking: following requests through vLLM's batch updates, without vLLM (the
folder is not named tests/vllm: with tests/ on sys.path it would pass for the vllm package).

Hand-built updates with the fields of ``vllm.v1.sample.logits_processor.BatchUpdate``
(removed, added, moved), replayed as vLLM's persistent batch would
(tests/on_vllm/batch_plan.py replays the same kind of plan against vLLM's own classes)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from tokenwise.vllm.tracking import follow_batch, is_swap, params_ref, same_history, unpark


class Move(enum.Enum):  # vLLM's MoveDirectionality
    UNIDIRECTIONAL = 0
    SWAP = 1


def update(removed=(), added=(), moved=()) -> SimpleNamespace:
    return SimpleNamespace(batch_size=0, removed=list(removed), added=list(added),
                           moved=list(moved))


class Params:  # a SamplingParams stand-in: weak-referenceable, compared by identity
    def __init__(self, asks: bool = True):
        self.extra_args = {"track": True} if asks else None


@dataclass
class State:
    output_ids: list[int]
    params: Any
    resumed: list[int] = field(default_factory=list)

    def resume(self, output_ids: list[int]) -> None:
        self.resumed.append(len(output_ids))
        self.output_ids = output_ids


class Tracker:
    """A minimal stateful processor over the helpers, as Mirostat and the recorder use them."""

    def __init__(self):
        self.rows: dict[int, State] = {}
        self.parked: dict[int, list[State]] = {}
        self.created = 0

    def join(self, params: Params | None, output_ids: list[int]) -> State | None:
        if params is None or not params.extra_args:
            return None
        found = unpark(self.parked, id(params), params, output_ids)
        if found is None:
            self.created += 1
            found = State(output_ids, params_ref(params))
        return found

    def leave(self, state: State) -> None:
        self.parked.setdefault(id(state.params()), []).append(state)

    def update_state(self, batch_update: Any) -> bool:
        return follow_batch(self.rows, batch_update, self.join, self.leave)


def replay(tracker: Tracker, params: dict[str, Params], outs: dict[str, list[int]],
           plan: list[str]) -> list[dict[int, str]]:
    """Drive ``tracker`` through ``plan`` ("out:r" removes r, "in:r" re-adds it in the first
    free slot, "step" appends a token to every live request and records who holds each row)."""
    slots: list[str | None] = list(params)
    tracker.update_state(update(added=[(i, params[r], [1], outs[r])
                                       for i, r in enumerate(params)]))
    seen = []
    for action in plan:
        if action == "step":
            for r in slots:
                if r is not None:
                    outs[r].append(7)
            seen.append({i: next(r for r, p in params.items()
                                 if p is s.params()) for i, s in tracker.rows.items()})
            continue
        kind, r = action.split(":")
        if kind == "out":
            i = slots.index(r)
            slots[i] = None
            tracker.update_state(update(removed=[i]))
        else:
            i = slots.index(None)
            slots[i] = r
            tracker.update_state(update(added=[(i, params[r], [1], outs[r])]))
    return seen


def test_a_removed_and_readded_request_continues_its_own_state():
    params = {"a": Params(), "b": Params(), "c": Params()}
    outs: dict[str, list[int]] = {r: [] for r in params}
    tracker = Tracker()
    seen = replay(tracker, params, outs,
                  ["step", "out:b", "step", "out:a", "in:b", "step", "in:a", "step"])
    assert seen[-1] == {0: "b", 1: "a", 2: "c"}  # b took row 0, a the freed row 1
    assert tracker.created == 3  # nobody started over
    states = {r: next(s for s in tracker.rows.values() if s.params() is p)
              for r, p in params.items()}
    assert states["a"].resumed == [2] and states["b"].resumed == [1]
    assert all(states[r].output_ids is outs[r] for r in params)
    assert tracker.parked == {}


def test_a_readded_request_without_tokens_starts_over():
    p = Params()
    tracker = Tracker()
    tracker.update_state(update(added=[(0, p, [1], [])]))
    tracker.update_state(update(removed=[0]))
    tracker.update_state(update(added=[(0, p, [1], [])]))
    assert tracker.created == 2 and len(tracker.parked[id(p)]) == 1


def test_the_params_object_not_its_value_identifies_a_request():
    first, twin = Params(), Params()  # equal settings, another request
    out = [5, 6]
    tracker = Tracker()
    tracker.update_state(update(added=[(0, first, [1], out)]))
    tracker.update_state(update(removed=[0]))
    tracker.update_state(update(added=[(0, twin, [1], [5, 6])]))
    assert tracker.created == 2 and tracker.rows[0].params() is twin
    tracker.update_state(update(added=[(1, first, [1], out)]))
    assert tracker.created == 2 and tracker.rows[1].params() is first


def test_a_rebuilt_output_list_resumes_when_its_history_agrees():
    # async scheduling hands over a new list, with -1 where a token is not known yet
    p = Params()
    tracker = Tracker()
    tracker.update_state(update(added=[(0, p, [1], [5, -1])]))
    tracker.update_state(update(removed=[0]))
    tracker.update_state(update(added=[(0, p, [1], [5, 9, 4])]))
    assert tracker.created == 1 and tracker.rows[0].output_ids == [5, 9, 4]
    tracker.update_state(update(removed=[0]))
    tracker.update_state(update(added=[(0, p, [1], [6, 9, 4])]))  # another history
    assert tracker.created == 2


def test_moves_swap_or_land_on_a_row_whose_request_left():
    a, b, c = Params(), Params(), Params()
    tracker = Tracker()
    tracker.update_state(update(added=[(0, a, [1], [1]), (1, b, [1], [1]), (2, c, [1], [1])]))
    tracker.update_state(update(moved=[(0, 2, Move.SWAP)]))
    assert [tracker.rows[i].params() for i in range(3)] == [c, b, a]
    # condense: row 2 moves onto row 1 without row 1 being listed as removed
    tracker.update_state(update(moved=[(2, 1, Move.UNIDIRECTIONAL)]))
    assert {i: s.params() for i, s in tracker.rows.items()} == {0: c, 1: a}
    assert [s.params() for s in tracker.parked[id(b)]] == [b]


def test_an_added_request_that_does_not_ask_takes_the_row_and_parks_the_old_state():
    a = Params()
    tracker = Tracker()
    tracker.update_state(update(added=[(0, a, [1], [3])]))
    tracker.update_state(update(added=[(0, Params(asks=False), [1], [])]))
    assert tracker.rows == {} and [s.params() for s in tracker.parked[id(a)]] == [a]


def test_no_update_changes_nothing():
    tracker = Tracker()
    assert tracker.update_state(None) is False and tracker.rows == {}


def test_helpers():
    assert is_swap(Move.SWAP) and not is_swap(Move.UNIDIRECTIONAL)
    assert same_history([1, -1, 3], [1, 2, 3, 4]) and not same_history([1, 2], [1, 3])
    p = Params()
    handle = params_ref(p)
    assert handle() is p
    del p
    assert handle() is None  # held weakly: a finished request's params can go
