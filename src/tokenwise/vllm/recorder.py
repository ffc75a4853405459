"""The in-engine entropy route: a recording logits processor and a worker extension to read it.

:class:`EntropyRecorder` (registered with ``LLM(logits_processors=[EntropyRecorder, ...])``)
computes each step's entropy and varentropy from the logits tensor on the worker, through
:mod:`tokenwise.signals`, for requests tagged ``SamplingParams(extra_args={STATS_KEY: tag})``;
it never changes a logit. :class:`StatsWorkerExtension` (``worker_extension_cls=``
:data:`WORKER_EXTENSION`) lets :func:`tokenwise.vllm.generate_with_stats` collect the values
with one ``collective_rpc`` call: 16 bytes per token, whatever the vocabulary.

The recorder declares itself *not* argmax-invariant although it never changes a logit,
because vLLM skips argmax-invariant processors for greedy batches, which would leave greedy
requests without statistics. A request vLLM removes from its batch (preempted, or not
scheduled in a step) and later re-adds continues the track it left
(:mod:`tokenwise.vllm.tracking`).

Example:
    >>> _merge_replies([{"t": [([5], [0.1], [0.0])]}, {"t": [([5], [], [])]}])
    {'t': [([5], [0.1], [0.0])]}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.vllm.tracking import follow_batch, params_ref, unpark

__all__ = ["MAX_FINISHED_TAGS", "STALE_TAKES", "STATS_KEY", "WORKER_EXTENSION",
           "StatsWorkerExtension"]

log = logging.getLogger(__name__)

#: ``SamplingParams.extra_args`` key that switches :class:`EntropyRecorder` on for a request.
STATS_KEY = "tokenwise_stats"
#: ``worker_extension_cls`` that lets :func:`generate_with_stats` collect the recorder's values.
WORKER_EXTENSION = "tokenwise.vllm.recorder.StatsWorkerExtension"
#: :class:`EntropyRecorder` keeps the tracks of at most this many tags that nobody has
#: taken yet (the oldest tag goes first), and drops a tag once :data:`STALE_TAKES` later
#: ``take`` calls (one per ``generate_with_stats(route="engine")``) have passed it by.
MAX_FINISHED_TAGS = 65_536
STALE_TAKES = 16


def _match_track(tracks: list[tuple[list[int], list[float], list[float]]],
                 tokens: list[int]) -> tuple[list[float], list[float]]:
    if not tracks:
        raise TokenwiseError("the engine recorded no statistics for a generation; start it "
                             "with logits_processors=[EntropyRecorder, ...] and "
                             f"worker_extension_cls={WORKER_EXTENSION!r}")
    for i, (out_ids, ent, var) in enumerate(tracks):
        if out_ids[:len(tokens)] == tokens and len(ent) >= len(tokens):
            lost = [t for t in range(len(tokens)) if math.isnan(ent[t])]
            if lost:
                raise TokenwiseError(
                    f"the engine lost the statistics of steps {lost[:5]} of a generation of "
                    f"{len(tokens)} tokens: vLLM removed the request from its batch and "
                    "re-added it, and the recorder found no earlier track to continue; use "
                    "route='logprobs' for it")
            tracks.pop(i)
            return ent, var
    have = sorted(len(ent) for _, ent, _ in tracks)
    raise TokenwiseError(f"the engine's recorded statistics ({len(tracks)} track(s) of "
                         f"{have} steps) do not cover a generation of {len(tokens)} tokens")


def _collect_engine_stats(model: Any, tags: list[str]) -> dict[str, Any]:
    try:
        replies = model.llm.collective_rpc("tokenwise_take_stats", args=(tags,))
    except Exception as exc:  # vLLM raises its own types for an unknown worker method
        raise TokenwiseError(f"route='engine' needs an engine started with "
                             f"worker_extension_cls={WORKER_EXTENSION!r} and "
                             f"logits_processors=[EntropyRecorder, ...]: {exc}") from exc
    return _merge_replies(replies)


def _merge_replies(replies: Sequence[Any]) -> dict[str, list[tuple]]:
    """One ``tag -> tracks`` store from every worker's reply.

    Every rank follows the batch, so every rank has a track per request, but only ranks that
    compute logits fill it: with tensor parallelism every rank holds the same values, with
    pipeline parallelism only the last stage holds any (the others return tracks without
    values). Per tag, the reply whose tracks hold the most values is kept.
    """
    merged: dict[str, list[tuple]] = {}
    filled: dict[str, int] = {}
    for reply in replies:
        for tag, tracks in (reply or {}).items():
            count = sum(len(track[1]) for track in tracks)
            if tag not in merged or count > filled[tag]:
                merged[tag], filled[tag] = list(tracks), count
    return merged




class _Track:
    __slots__ = ("entropy", "finished_at", "output_ids", "params", "tag", "varentropy")

    def __init__(self, tag: str, output_ids: list[int], params: Any = None):
        self.tag = tag
        self.output_ids = output_ids  # vLLM's live list of the request's generated tokens
        self.params = params_ref(params)  # the request's SamplingParams, kept across re-adds
        self.entropy: list[float] = []
        self.varentropy: list[float] = []
        self.finished_at = 0  # the recorder's take count when the track left the batch

    def put(self, step: int, h: float, v: float) -> None:
        # indexed by step, not appended: a re-run step (preemption, a discarded partial
        # prefill) overwrites its earlier value
        if step < len(self.entropy):
            self.entropy[step], self.varentropy[step] = h, v
            del self.entropy[step + 1:], self.varentropy[step + 1:]
            return
        if step > len(self.entropy):
            # Steps this track never saw (a request re-added without its earlier track):
            # NaN marks them, so reading them fails instead of shifting every value.
            gap = [math.nan] * (step - len(self.entropy))
            self.entropy.extend(gap)
            self.varentropy.extend(gap)
        self.entropy.append(h)
        self.varentropy.append(v)

    def resume(self, output_ids: list[int]) -> None:
        """Continue after vLLM re-added the request with ``output_ids`` already generated."""
        n = len(output_ids)
        del self.entropy[n:], self.varentropy[n:]  # steps whose tokens vLLM dropped
        self.output_ids = output_ids

    def as_tuple(self) -> tuple[list[int], list[float], list[float]]:
        return list(self.output_ids), self.entropy, self.varentropy


def _make_recorder_class() -> type:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

    class EntropyRecorder(LogitsProcessor):
        """Records entropy and varentropy of each step's logits for requests that ask
        (``SamplingParams(extra_args={STATS_KEY: tag})``); never changes a logit.

        Read the values with :func:`generate_with_stats` (``route="engine"``), which needs the
        engine's ``worker_extension_cls`` to be :data:`WORKER_EXTENSION`.
        """

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            tag = (sampling_params.extra_args or {}).get(STATS_KEY)
            if tag is not None and not isinstance(tag, str):
                raise ValueError(f"extra_args[{STATS_KEY!r}]={tag!r}: allowed a string tag")

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
            self.rows: dict[int, _Track] = {}
            # tag -> tracks that left the batch (finished, or removed and maybe re-added
            # later), oldest tag first; bounded (see _finish and take)
            self.finished: dict[str, list[_Track]] = {}
            self.takes = 0  # how many times take() ran

        def _finish(self, track: _Track) -> None:
            track.finished_at = self.takes
            self.finished.setdefault(track.tag, []).append(track)
            while len(self.finished) > MAX_FINISHED_TAGS:
                del self.finished[next(iter(self.finished))]  # the oldest tag

        def _join(self, params: Any, output_ids: list[int]) -> _Track | None:
            tag = (params.extra_args or {}).get(STATS_KEY) if params is not None else None
            if tag is None:
                return None
            return (unpark(self.finished, tag, params, output_ids)
                    or _Track(tag, output_ids, params))

        def is_argmax_invariant(self) -> bool:
            # It changes nothing, but vLLM skips argmax-invariant processors on greedy
            # batches; declaring False keeps it running for greedy requests too.
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            follow_batch(self.rows, batch_update, self._join, self._finish)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            index = sorted(i for i in self.rows if i < logits.shape[0])
            if not index:
                return logits
            rows = logits[index]  # (R, V)
            try:
                # the chosen token is not known yet: ids are placeholders, only H and V are read
                stats = signals.token_stats(rows, torch.zeros(len(index), dtype=torch.long,
                                                              device=rows.device), top_k=0)
                h, v = stats.entropies, stats.varentropies  # (R,), (R,)
            except TokenwiseError as err:
                # NaN or +inf logits: record NaN (reading them fails) rather than stop the engine
                log.warning("EntropyRecorder: %s", err)
                h = v = torch.full((len(index),), math.nan)
            for i, hi, vi in zip(index, h.tolist(), v.tolist(), strict=True):
                track = self.rows[i]
                track.put(len(track.output_ids), hi, vi)
            return logits

        def take(self, tags: Sequence[str]) -> dict[str, list[tuple]]:
            # A finished request leaves the batch only at the next step's update, which may
            # never come when the engine goes idle: a caller that asks has seen its requests
            # finish, so their tracks still in `rows` are taken too.
            wanted = set(tags)
            for index in [i for i, t in self.rows.items() if t.tag in wanted]:
                self._finish(self.rows.pop(index))
            got = {tag: [t.as_tuple() for t in self.finished.pop(tag, [])] for tag in tags}
            # Tracks nobody asks for (an aborted call, requests sent through `vllm serve`)
            # go once STALE_TAKES later takes have passed them by.
            self.takes += 1
            stale = [tag for tag, tracks in self.finished.items()
                     if all(self.takes - t.finished_at > STALE_TAKES for t in tracks)]
            for tag in stale:
                del self.finished[tag]
            return got

    EntropyRecorder.__module__ = __name__
    EntropyRecorder.__qualname__ = "EntropyRecorder"
    return EntropyRecorder


class StatsWorkerExtension:
    """Methods vLLM adds to its workers (``worker_extension_cls``) to read the recorder."""

    def tokenwise_take_stats(self, tags: Sequence[str]) -> dict[str, list[tuple]]:
        """The finished statistics of the requests tagged ``tags`` (removed from the store)."""
        procs = self.model_runner.input_batch.logitsprocs.all  # type: ignore[attr-defined]
        for proc in procs:
            if type(proc).__name__ == "EntropyRecorder" and hasattr(proc, "take"):
                return proc.take(tags)
        return {}


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    # EntropyRecorder subclasses vLLM's LogitsProcessor, so it is built on first use (vLLM
    # and its worker processes look it up by this module's name).
    if name == "EntropyRecorder":
        if name not in _LAZY:
            _LAZY[name] = _make_recorder_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


