"""A transformers cache that applies a press: it evicts tokens and really shrinks.

:class:`CompressedCache` is a ``DynamicCache`` whose layers hold fewer tokens than were read:
after each prompt chunk (and, with ``every``, during decoding) every layer keeps its budget
of tokens per KV head, gathered into new smaller tensors. The attention of the current pass
still sees everything it just read; only what is stored is reduced, so the peak is bounded by
``budget + chunk`` tokens, never the whole prompt.

Each kept token remembers its true position, and new tokens are placed by the position ids
the caller passes (``model.generate`` derives them from the attention mask; the tokenwise
decode loop passes them), so RoPE continues from the true position after eviction, not from
the shrunken length.

Queries for the presses that read attention are recomputed from each attention layer's input
with the model's own query projection and RoPE (a forward pre-hook that runs only for this
cache's forward passes), so SDPA models need no eager attention and no ``(T, T)`` matrix.

Hybrid models (Gemma-3: sliding-window and full-attention layers) are supported: a
sliding-window layer is never pressed. It keeps exactly what the model's own
``DynamicSlidingWindowLayer`` keeps, the last ``sliding_window - 1`` tokens (a query at
position ``p`` sees keys at ``p - sliding_window + 1 .. p``), so its memory is bounded by the
model; the press's budget applies to the full-attention layers only. Each layer reports
``is_sliding`` and its mask sizes the way transformers' masking code asks, so both kinds of
mask come out exactly as with the model's own cache.
"""

from __future__ import annotations

import inspect
import numbers
import sys
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from tokenwise.errors import TokenwiseError
from tokenwise.kv.base import (
    FULL,
    SLIDING,
    Press,
    ScoreInputs,
    gather_tokens,
    keep_indices,
    layer_kinds,
    tokens_for,
)
from tokenwise.kv.quantized import QuantizedKVCache, QuantSpec


def hf_model_of(model: Any) -> Any:
    """The Hugging Face model behind a tokenwise ``LanguageModel`` (or the model itself)."""
    return getattr(model, "hf_model", model)


def attention_modules(model: Any) -> list[Any]:
    """The model's self-attention modules in layer order (those with ``q_proj`` and
    ``layer_idx``); raises naming the model if there are none."""
    mods = [m for m in hf_model_of(model).modules()
            if hasattr(m, "q_proj") and hasattr(m, "layer_idx")]
    if not mods:
        raise TokenwiseError(
            f"{type(hf_model_of(model)).__name__} has no attention modules with q_proj and "
            "layer_idx; kv presses support Llama-style attention (Llama, SmolLM2, Qwen, Mistral, "
            "Gemma)")
    return sorted(mods, key=lambda m: m.layer_idx)


def _window_queries(module: Any, hidden: torch.Tensor, cos_sin: tuple[torch.Tensor, ...],
                    n: int | None) -> torch.Tensor:
    """``(B, H_q, n, D)`` queries (RoPE applied) of the last ``n`` rows of ``hidden``."""
    if n is not None:
        hidden = hidden[:, -n:]
        cos_sin = tuple(t[..., -hidden.shape[1]:, :] for t in cos_sin)
    b, t, _ = hidden.shape
    q = module.q_proj(hidden).view(b, t, -1, module.head_dim).transpose(1, 2)
    if hasattr(module, "q_norm"):
        q = module.q_norm(q)
    rope = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
    if rope is None:
        raise TokenwiseError(f"{type(module).__name__}: no apply_rotary_pos_emb in its modeling "
                             "module; presses that read attention cannot rebuild its queries")
    cos, sin = cos_sin
    return rope(q, q, cos, sin)[0]


class CompressedLayer(DynamicLayer):
    """One layer's keys and values plus each kept token's true position.

    Attributes:
        positions: ``(B, H_kv, S)`` true positions of the kept tokens.
        state: what an accumulating press (H2O) scored last, per kept token.
        seen: one past the largest true position read.
        since: tokens decoded since the last compression.
        queries: the rolling buffer of recent queries the press reads.
        query_positions: their true positions.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.positions: torch.Tensor | None = None
        self.state: torch.Tensor | None = None
        self.seen = 0
        self.since = 0
        self.queries: torch.Tensor | None = None
        self.query_positions: torch.Tensor | None = None

    def nbytes(self) -> int:
        """Bytes of the stored keys, values and positions."""
        total = 0
        for t in (self.keys, self.values, self.positions, self.state):
            if t is not None:
                total += t.numel() * t.element_size()
        return total

    def cut(self, start: int, end: int) -> None:
        """Keep entries ``start:end`` (per KV head) of the keys, values, positions and press
        state, copied into new tensors so the rest is freed."""
        assert self.keys is not None and self.values is not None and self.positions is not None
        self.keys = self.keys[:, :, start:end].clone()
        self.values = self.values[:, :, start:end].clone()
        self.positions = self.positions[..., start:end].clone()
        if self.state is not None:
            self.state = self.state[..., start:end].clone()


class SlidingLayer(CompressedLayer):
    """A sliding-window layer: never pressed, it keeps the last ``sliding_window - 1`` tokens
    (what transformers' ``DynamicSlidingWindowLayer`` keeps), or more while a question probe
    is pending (so :meth:`CompressedCache.drop_last` can restore the window before it).

    The kept tokens are always the newest ones, contiguous, so the mask's key offset is
    ``seen - held`` and its query offset ``seen`` (true positions, as the model's own sliding
    cache reports them).

    Args:
        sliding_window: the model's ``sliding_window`` (a query sees itself and the
            ``sliding_window - 1`` tokens before it).
    """

    is_sliding = True

    def __init__(self, sliding_window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sliding_window = int(sliding_window)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)``: the held tokens and the pass's, the first held one's
        true position."""
        held = self.get_seq_length()
        return held + query_length, max(self.seen - held, 0)

    def get_max_length(self) -> int:
        return self.sliding_window


class CompressedCache(DynamicCache):
    """A ``DynamicCache`` that evicts with a press; usable from ``model.generate``.

    Args:
        model: the model (a Hugging Face causal LM or a tokenwise ``LanguageModel``) whose
            attention layers feed the press its queries.
        press: the press (see :data:`tokenwise.kv.PRESSES`), holding the budget.
        prompt_tokens: the prompt's length, for a ratio budget when the prompt is read in
            chunks (default: the first pass's length).

    On a hybrid model (sliding-window and full-attention layers, Gemma-3) only the
    full-attention layers are pressed; the sliding-window layers keep the model's own window
    (the last ``sliding_window - 1`` tokens). A per-layer budget has one entry per
    full-attention layer, in layer order (sliding-window layers take none).

    Attributes:
        report: what each compression did (layer, tokens before/after) and any no-op note.
        peak_tokens: the most tokens a layer held during a pass (kept + just read, before
            eviction).
        peak_by_kind: the same per layer kind (``"full_attention"``, ``"sliding_attention"``).
        kinds: each layer's kind.
        peak_bytes: the most bytes held during a pass: the other layers' stored tensors plus
            one layer's kept + just-read tensors before eviction.
        prefill_passes: forward passes :func:`prefill` ran to read the prompt (question probes
            included).
        prefill_tokens: tokens those passes read (each probe's question included).

    Pass a fresh cache to ``model.generate(..., cache=cache)`` (``past_key_values=`` before
    transformers 5.2x); batches must be unpadded (one prompt, or prompts of one length), since
    the kept tokens differ per row.

    Example:
        >>> from tokenwise.models import load
        >>> from tokenwise.kv import SnapKV
        >>> lm = load("tw-reader")
        >>> ids = torch.tensor([lm.encode("Memo:\\nThe code of Avo is 123.\\n", add_bos=True)])
        >>> cache = CompressedCache(lm, SnapKV(8, window=4))
        >>> _ = lm.forward(ids, cache=cache, use_cache=True)
        >>> cache.get_seq_length(), cache.layers[0].seen == ids.shape[1]
        (8, True)
        >>> cache.close()
    """

    def __init__(self, model: Any, press: Press, *, prompt_tokens: int | None = None) -> None:
        if not isinstance(press, Press):
            raise TokenwiseError(f"press={press!r}: allowed a tokenwise.kv press (e.g. "
                                 "tokenwise.kv.SnapKV(0.25))")
        hf = hf_model_of(model)
        config = hf.config.get_text_config(decoder=True)
        self.kinds = layer_kinds(config)
        self.n_layers = int(config.num_hidden_layers)
        full = [i for i, kind in enumerate(self.kinds) if kind == FULL]
        #: each full-attention layer's index into a per-layer budget
        self._rank = {layer: r for r, layer in enumerate(full)}
        self.n_full = len(full)
        self._first = {kind: self.kinds.index(kind) for kind in set(self.kinds)}
        if isinstance(press.budget, tuple):
            if len(press.budget) != self.n_full:
                raise TokenwiseError(
                    f"budget has {len(press.budget)} entries for a model of {self.n_full} "
                    f"full-attention layers ({self.n_layers} layers in all): give one budget, "
                    "or one per full-attention layer (sliding-window layers are not pressed)")
            impl = getattr(hf.config, "_attn_implementation", None)
            if impl != "sdpa":
                raise TokenwiseError(
                    f"budget={list(press.budget)!r} (one per layer) needs attn_implementation="
                    f"'sdpa' (the model uses {impl!r}): layers of different lengths share one "
                    "mask otherwise")
            if press.chunk_size is not None:
                raise TokenwiseError(
                    f"budget={list(press.budget)!r} (one per layer) with chunk_size="
                    f"{press.chunk_size}: chunked prefill needs one budget for every layer")
        super().__init__()
        self.layer_class_to_replicate = None
        window = getattr(config, "sliding_window", None)
        self.layers = [SlidingLayer(window) if kind == SLIDING else CompressedLayer()
                       for kind in self.kinds]
        self.press = press
        self.prompt_tokens = prompt_tokens
        self.report: list[dict[str, Any]] = []
        self.peak_tokens = 0
        self.peak_by_kind = dict.fromkeys(self.kinds, 0)
        self.peak_bytes = 0
        self.prefill_passes = 0
        self.prefill_tokens = 0
        self._modules = attention_modules(hf)
        self._scaling = [float(getattr(m, "scaling", m.head_dim ** -0.5)) for m in self._modules]
        #: each layer's positions for the coming update, and one past the largest of them
        self._pending: dict[int, tuple[torch.Tensor, int]] = {}
        #: the current pass's ``position_ids`` and one past their largest, read to the host
        #: once per pass (on a GPU each read waits for the device: once per layer would
        #: stall every layer of every decoding step)
        self._pass_end: tuple[torch.Tensor, int] | None = None
        self._first_module = self._modules[0].layer_idx
        self._chunk_old: dict[str, int] = {}
        #: store every token of the coming passes (the question after agnostic compression)
        self.hold = False
        #: the coming pass ends with this many probe tokens (a question-aware chunk): they
        #: vote and are kept whole, the budget applies to the tokens before them, and the
        #: caller removes them afterwards with :meth:`drop_last`
        self.probe = 0
        me = weakref.ref(self)
        handles = [m.register_forward_pre_hook(_make_hook(me, m.layer_idx), with_kwargs=True)
                   for m in self._modules]
        self._finalizer = weakref.finalize(self, _remove_all, handles)

    def close(self) -> None:
        """Remove the cache's hooks from the model (also done when the cache is collected)."""
        self._finalizer()

    def budget_tokens(self, layer_idx: int, prompt_tokens: int) -> int | None:
        """Tokens the press keeps in layer ``layer_idx`` for a prompt of ``prompt_tokens``
        tokens, None for a sliding-window layer (never pressed).

        Args:
            layer_idx: the layer index.
            prompt_tokens: the prompt's length (for a ratio budget).

        Example:
            >>> from tokenwise.models import load
            >>> from tokenwise.kv import StreamingLLM
            >>> CompressedCache(load("tw-reader"), StreamingLLM(0.5)).budget_tokens(0, 10)
            5
        """
        if self.kinds[layer_idx] != FULL:
            return None
        return tokens_for(self.press.budget, prompt_tokens, self._rank[layer_idx],
                          self.n_full)

    def get_seq_length(self, layer_idx: int | None = None) -> int:
        """Tokens layer ``layer_idx`` holds; by default the first full-attention layer's (the
        pressed ones; layer 0 on a model with no full-attention layer)."""
        if layer_idx is None:
            layer_idx = self._first.get(FULL, 0)
        return super().get_seq_length(layer_idx)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        """The mask's query offset: the held tokens for a full-attention layer (its kept
        tokens come first, all visible), the true position for a sliding-window layer."""
        if layer_idx < len(self.layers) and isinstance(self.layers[layer_idx], SlidingLayer):
            return self.layers[layer_idx].seen
        return self.get_seq_length(layer_idx)

    def held_by_kind(self) -> dict[str, int]:
        """The most tokens a layer of each kind holds now.

        Example:
            >>> from tokenwise.models import load
            >>> from tokenwise.kv import StreamingLLM
            >>> CompressedCache(load("tw-reader"), StreamingLLM(4)).held_by_kind()
            {'full_attention': 0}
        """
        out = dict.fromkeys(self.kinds, 0)
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            out[kind] = max(out[kind], layer.get_seq_length())
        return out

    def bytes_by_kind(self) -> dict[str, int]:
        """Bytes the layers of each kind hold now (keys, values, positions, press state)."""
        out = dict.fromkeys(self.kinds, 0)
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            out[kind] += layer.nbytes()
        return out

    # what the pre-hook captured for a layer: true positions and the press's queries
    def _capture(self, module: Any, layer_idx: int, kwargs: dict[str, Any],
                 args: tuple[Any, ...]) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pos = kwargs.get("position_ids")
        t = hidden.shape[1]
        layer = self.layers[layer_idx]
        if layer_idx == self._first_module:  # a new pass: its position ids are new
            self._pass_end = None
        if pos is None:
            positions = torch.arange(layer.seen, layer.seen + t, device=hidden.device)
            end = layer.seen + t
        else:
            positions = pos[0]
            if self._pass_end is None or self._pass_end[0] is not pos:
                self._pass_end = (pos, int(positions.max()) + 1)
            end = self._pass_end[1]
        self._pending[layer_idx] = (positions.to(torch.long), end)
        n = self.press.queries_needed()
        if n == 0 or isinstance(layer, SlidingLayer):  # sliding layers are never pressed
            return
        cos_sin = kwargs.get("position_embeddings")
        if cos_sin is None:
            raise TokenwiseError(
                f"press {self.press.name!r} reads queries, but {type(module).__name__} was "
                "called without position_embeddings; use a press that reads none (streaming, "
                "key_norm, random, oracle)")
        q = _window_queries(module, hidden, cos_sin, n)
        qpos = positions[-q.shape[2]:]
        if layer.queries is not None:
            q = torch.cat([layer.queries, q], 2)
            qpos = torch.cat([layer.query_positions, qpos])
        if n is not None:
            q, qpos = q[:, :, -n:], qpos[-n:]
        layer.queries, layer.query_positions = q, qpos

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the pass's keys and values, store the press's selection, and return all of
        them for this pass's attention."""
        layer = self.layers[layer_idx]
        b, h, t, _ = key_states.shape
        old = layer.get_seq_length()
        kind = self.kinds[layer_idx]
        first = self._first[kind]
        if layer_idx == first:
            self._chunk_old[kind] = old
        elif t > 1 and kind in self._chunk_old and old != self._chunk_old[kind]:
            raise TokenwiseError(
                f"layer {layer_idx} holds {old} tokens and layer {first} (the first {kind} "
                f"layer) {self._chunk_old[kind]}: a {t}-token pass after a per-layer budget "
                "has no single mask; read further tokens one at a time")
        pending = self._pending.pop(layer_idx, None)
        if pending is None:
            new_pos = torch.arange(layer.seen, layer.seen + t, device=key_states.device)
            end = layer.seen + t
        else:
            new_pos, end = pending
        new_pos = new_pos.view(1, 1, t).expand(b, h, t)
        if not layer.is_initialized:
            layer.lazy_initialization(key_states, value_states)
            keys, values, positions = key_states, value_states, new_pos
        else:
            keys = torch.cat([layer.keys, key_states], dim=-2)
            values = torch.cat([layer.values, value_states], dim=-2)
            positions = torch.cat([layer.positions, new_pos], dim=-1)
        layer.seen = max(layer.seen, end)
        if self.prompt_tokens is None:
            self.prompt_tokens = t
        s = keys.shape[-2]
        others = self.nbytes() - layer.nbytes()
        self.peak_tokens = max(self.peak_tokens, s)
        self.peak_by_kind[kind] = max(self.peak_by_kind[kind], s)
        self.peak_bytes = max(self.peak_bytes, others + _nbytes(keys, values, positions))
        if self.probe and not 0 < self.probe <= t:
            raise TokenwiseError(f"probe={self.probe}: allowed 1 to the pass's {t} tokens")
        if isinstance(layer, SlidingLayer):
            # the model's own window; a pending probe's tokens are kept on top of it, so
            # drop_last restores exactly the window held before the probe
            layer.keys, layer.values, layer.positions = keys, values, positions
            keep = layer.sliding_window - 1 + self.probe
            if s > keep:
                layer.cut(s - keep, s)
            return keys, values
        k = self.budget_tokens(layer_idx, self.prompt_tokens)
        assert k is not None
        if self.hold:
            due = False
        elif self.probe:
            due = s - self.probe > k
        elif layer.seen <= self.prompt_tokens:  # still reading the prompt
            due = s > k
            if not due and layer_idx == first and layer.seen == self.prompt_tokens:
                self._note_noop(k, s)
        else:
            layer.since += t
            due = self.press.every is not None and layer.since >= self.press.every and s > k
        if due:
            self._compress(layer, layer_idx, keys, values, positions, k, t)
        else:
            layer.keys, layer.values, layer.positions = keys, values, positions
            if layer.state is not None:
                pad = torch.zeros(b, h, t, dtype=layer.state.dtype, device=layer.state.device)
                layer.state = torch.cat([layer.state, pad], -1)
        return keys, values

    def _compress(self, layer: CompressedLayer, layer_idx: int, keys: torch.Tensor,
                  values: torch.Tensor, positions: torch.Tensor, k: int, t: int) -> None:
        state = None
        if self.press.accumulates and layer.state is not None:
            pad = torch.zeros(*layer.state.shape[:2], keys.shape[-2] - layer.state.shape[-1],
                              dtype=layer.state.dtype, device=layer.state.device)
            state = torch.cat([layer.state, pad], -1)
        inputs = ScoreInputs(keys=keys, values=values, positions=positions,
                             queries=layer.queries, query_positions=layer.query_positions,
                             scaling=self._scaling[layer_idx], layer=layer_idx, state=state,
                             prompt_end=layer.seen)
        scores = self.press.score(inputs)
        n = self.probe
        if n:  # the budget is of the tokens before the probe; the probe is kept whole
            s = keys.shape[-2]
            tail = torch.arange(s - n, s, device=keys.device).expand(*scores.shape[:2], n)
            idx = torch.cat([keep_indices(scores[..., :s - n], k), tail], -1)
        else:
            idx = keep_indices(scores, k)
        layer.keys = gather_tokens(keys, idx)
        layer.values = gather_tokens(values, idx)
        layer.positions = gather_tokens(positions, idx)
        if self.press.accumulates:
            layer.state = gather_tokens(scores.float(), idx)
        if self.press.queries_needed() is None:
            layer.queries = layer.query_positions = None
        layer.since = 0
        entry = {"layer": layer_idx, "before": int(keys.shape[-2]), "after": k,
                 "new_tokens": t, "seen": layer.seen}
        if n:
            entry["probe"] = n
        self.report.append(entry)

    def _note_noop(self, k: int, s: int) -> None:
        note = (f"budget of {k} tokens >= the {s} tokens read: nothing evicted "
                f"(press {self.press.name!r})")
        if not any(r.get("noop") == note for r in self.report):
            self.report.append({"noop": note})
            warnings.warn(note, stacklevel=4)

    def nbytes(self) -> int:
        """Bytes the cache holds now (keys, values, positions, press state).

        Example:
            >>> from tokenwise.models import load
            >>> from tokenwise.kv import StreamingLLM
            >>> CompressedCache(load("tw-reader"), StreamingLLM(4)).nbytes()
            0
        """
        return sum(layer.nbytes() for layer in self.layers)

    def kept_positions(self, layer_idx: int) -> torch.Tensor:
        """``(B, H_kv, S)`` the true positions a layer keeps (for recall measurements)."""
        pos = self.layers[layer_idx].positions
        if pos is None:
            raise TokenwiseError(f"layer {layer_idx} holds nothing yet")
        return pos

    def drop_last(self, n: int) -> None:
        """Remove the last ``n`` entries of every layer: the ``n`` newest tokens read, as if
        they had never been read (a question probe's tokens after a question-aware chunk).

        Every layer's keys, values, positions and press state lose their last ``n`` tokens
        per KV head (into new, smaller tensors: the memory is freed); ``seen`` goes back to
        the first removed position, so the next tokens continue there with no gap; the
        captured queries at those positions go too, and ``since`` (tokens decoded since the
        last compression) shrinks by ``n``. A sliding-window layer is put back to the window
        it held before those tokens (the last ``sliding_window - 1`` tokens before them),
        which it can only do if it kept them: a pass read with ``cache.probe = n`` keeps
        them (as :func:`prefill` does for a question probe); otherwise an error says so.
        Peak counters and the report are left as they are (they record what was held).

        The last ``n`` entries must be the same positions in every row and KV head and hold
        the newest token read (a pass kept whole, as a probe is); otherwise nothing changes
        and an error says which layer differs.

        Args:
            n: entries to remove per layer and head, from 0 (nothing) up to what every
                layer holds.

        Example:
            >>> import warnings
            >>> from tokenwise.models import load
            >>> from tokenwise.kv import StreamingLLM
            >>> lm = load("tw-reader")
            >>> ids = lm.encode("Memo:\\nThe code of Avo is 123.\\nQ: What is", add_bos=True)
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     cache, _ = prefill(lm, ids, StreamingLLM(1.0))
            >>> cache.drop_last(3)
            >>> cache.get_seq_length() == len(ids) - 3, cache.layers[0].seen == len(ids) - 3
            (True, True)
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise TokenwiseError(f"n={n!r}: allowed a whole number >= 0")
        n = int(n)
        if n == 0:
            return
        firsts = []
        for i, layer in enumerate(self.layers):
            s = layer.get_seq_length()
            if layer.positions is None or s < n:
                raise TokenwiseError(f"n={n}: layer {i} holds {s} tokens; allowed at most "
                                     "what every layer holds")
            gone = layer.positions[..., s - n:]  # (B, H, n)
            if not bool((gone == gone[:1, :1]).all()):
                raise TokenwiseError(
                    f"n={n}: the last {n} entries of layer {i} are different positions in "
                    "different heads (evicted per head); drop_last removes a pass kept whole")
            if int(gone.max()) + 1 != layer.seen:
                raise TokenwiseError(
                    f"n={n}: layer {i} no longer holds its newest token read (position "
                    f"{layer.seen - 1}); drop_last removes the newest tokens read")
            first = int(gone.min())
            if isinstance(layer, SlidingLayer) and s - n < min(first, layer.sliding_window - 1):
                raise TokenwiseError(
                    f"n={n}: layer {i} is a sliding-window layer holding {s} tokens; it needs "
                    f"{min(first, layer.sliding_window - 1)} before the removed ones to "
                    f"restore its window (read the pass with cache.probe = {n})")
            firsts.append(first)
        for layer, first in zip(self.layers, firsts, strict=True):
            end = layer.get_seq_length() - n
            start = 0
            if isinstance(layer, SlidingLayer):
                start = max(0, end - (layer.sliding_window - 1))
            layer.cut(start, end)
            if layer.queries is not None and layer.query_positions is not None:
                old = layer.query_positions < first
                if bool(old.any()):
                    layer.queries = layer.queries[:, :, old].clone()
                    layer.query_positions = layer.query_positions[old].clone()
                else:
                    layer.queries = layer.query_positions = None
            layer.seen = first
            layer.since = max(0, layer.since - n)

    def compressed_copy(self, press: Press, upto: int | None = None) -> CompressedCache:
        """A new cache holding what ``press`` keeps of this one's tokens, as if it had read
        the same prompt in one pass (this cache is left as it is).

        This cache must hold everything read (a budget of 1.0) and have captured enough
        queries (its press's window at least the new one's, or every query). It lets a
        benchmark read a long prompt once and try many presses and budgets on it.

        Args:
            press: the press to apply; a ratio budget is of the tokens read so far.
            upto: compress as if only positions below ``upto`` had been read (the context
                of a cache that also holds the question: a question-agnostic compression).

        Example:
            >>> import warnings
            >>> from tokenwise.models import load
            >>> from tokenwise.kv import SnapKV
            >>> lm = load("tw-reader")
            >>> ids = lm.encode("Memo:\\nThe code of Avo is 123.\\nQ: What is", add_bos=True)
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     source, _ = prefill(lm, ids, SnapKV(1.0, window=16))
            >>> source.compressed_copy(SnapKV(6, window=8)).get_seq_length()
            6
        """
        out = CompressedCache.__new__(CompressedCache)  # no hooks: it reads nothing itself
        out.__dict__.update({k: v for k, v in self.__dict__.items()
                             if k not in ("layers", "press", "report", "_finalizer",
                                          "_pending", "_pass_end")})
        out.press, out.report, out._pending, out._pass_end = press, [], {}, None
        out._finalizer = weakref.finalize(out, _remove_all, [])
        out.layers = []
        out.peak_by_kind = dict.fromkeys(self.peak_by_kind, 0)
        need = press.queries_needed()
        for i, layer in enumerate(self.layers):
            if layer.keys is None:
                raise TokenwiseError("compressed_copy of a cache that has read nothing")
            if isinstance(layer, SlidingLayer):
                out.layers.append(_window_copy(layer, upto, i))
                continue
            if layer.get_seq_length() < layer.seen:
                raise TokenwiseError("compressed_copy needs a source cache that evicted "
                                     "nothing (budget 1.0)")
            keys, values, positions = layer.keys, layer.values, layer.positions
            q, qpos, seen = layer.queries, layer.query_positions, layer.seen
            if upto is not None:
                keys, values = keys[:, :, :upto], values[:, :, :upto]
                positions, seen = positions[:, :, :upto], min(seen, upto)
                if q is not None and qpos is not None:
                    q, qpos = q[:, :, qpos < upto], qpos[qpos < upto]
            new = CompressedLayer()
            new.lazy_initialization(keys, values)
            new.seen = seen
            if need != 0:
                have = 0 if q is None else q.shape[2]
                if (need is None and have < seen) or (need is not None and have < need):
                    raise TokenwiseError(
                        f"press {press.name!r} reads {need or 'every'} queries; the source "
                        f"cache captured {have}")
                if need is not None:
                    q, qpos = q[:, :, -need:], qpos[-need:]
            new.queries, new.query_positions = q, qpos
            out.layers.append(new)
            k = out.budget_tokens(i, seen)
            assert k is not None
            if keys.shape[-2] > k:
                out._compress(new, i, keys, values, positions, k, keys.shape[-2])
            else:
                new.keys, new.values, new.positions = keys, values, positions
        out.prompt_tokens = out.layers[out._first.get(FULL, 0)].seen
        out.peak_tokens = max(lay.get_seq_length() for lay in out.layers)
        out.peak_by_kind = out.held_by_kind()
        out.peak_bytes = out.nbytes()
        return out

    def crop(self, max_length: int) -> None:
        raise TokenwiseError("a CompressedCache cannot be cropped (evicted tokens are gone); "
                             "assisted decoding and contrastive search need a full cache")


def _window_copy(layer: SlidingLayer, upto: int | None, i: int) -> SlidingLayer:
    """A copy of a sliding-window layer as if only positions below ``upto`` had been read."""
    keys, values, positions, seen = layer.keys, layer.values, layer.positions, layer.seen
    if upto is not None and upto < seen:
        n = int((positions[0, 0] < upto).sum())
        if n < min(upto, layer.sliding_window - 1):
            raise TokenwiseError(
                f"upto={upto}: sliding-window layer {i} holds positions from "
                f"{int(positions.min())} on, and its window before {upto} is gone")
        start = max(0, n - (layer.sliding_window - 1))
        keys, values = keys[:, :, start:n], values[:, :, start:n]
        positions, seen = positions[..., start:n], upto
    new = SlidingLayer(layer.sliding_window)
    new.lazy_initialization(keys, values)
    new.keys, new.values, new.positions, new.seen = keys, values, positions, seen
    return new


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _make_hook(ref: weakref.ref, layer_idx: int) -> Callable:
    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache = ref()
        if cache is None:
            return
        passed = kwargs.get("cache", kwargs.get("past_key_values"))
        if passed is cache:
            cache._capture(module, layer_idx, kwargs, args)

    return hook


def _remove_all(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()


@torch.inference_mode()
def prefill(model: Any, ids: torch.Tensor | list[int], press: Press | QuantSpec, *,
            question: torch.Tensor | list[int] | None = None
            ) -> tuple[CompressedCache | QuantizedKVCache, torch.Tensor]:
    """Read a prompt into a :class:`CompressedCache`, in chunks when ``press.chunk_size`` is
    set, and return the cache and the logits of the last token.

    With ``question`` (or a press's ``question_tokens``, which takes that many trailing
    tokens of ``ids`` as the question), ``ids`` is the context:

    * a question-aware press (``question_aware=True``, the default) read in one pass reads
      context and question before compressing (the budget is of both);
    * a question-aware press with ``chunk_size`` reads the context chunk by chunk, and each
      chunk that brings the cache over the budget is read together with the question as a
      probe right after it (positions continuing from the chunk): the press scores the kept
      tokens and the chunk with the question's queries, keeps its budget of them, and the
      probe's question entries are then removed (:meth:`CompressedCache.drop_last`). Once the
      context is read, the question is read for real, after the last chunk, and kept whole.
      The budget is of the context; the cache ends with ``budget + len(question)`` tokens and
      a layer never holds more than ``budget + chunk_size + len(question)``. Presses that
      read no queries (StreamingLLM, key-norm, random, oracle) score the same without the
      question, so they skip the probe;
    * a question-agnostic one (``question_aware=False``) compresses the context alone and
      then reads the question into the cache uncompressed.

    Args:
        model: a tokenwise ``LanguageModel`` or a Hugging Face causal LM.
        ids: the prompt's (or the context's) token ids, ``(T,)`` or ``(1, T)``.
        press: the press, or a quantised cache's settings (:func:`~tokenwise.kv.KIVI`).
        question: the question's ids, read after the context (not with a press that sets
            ``question_tokens``).

    Returns:
        ``(cache, logits)`` with ``logits`` ``(1, V)`` for the next token.

    Example:
        >>> from tokenwise.models import load
        >>> from tokenwise.kv import SnapKV, StreamingLLM
        >>> lm = load("tw-reader")
        >>> ids = lm.encode("Memo:\\nThe code of Avo is 123.\\nQ: What is", add_bos=True)
        >>> cache, logits = prefill(lm, ids, StreamingLLM(6, sinks=1, chunk_size=4))
        >>> cache.get_seq_length(), cache.peak_tokens <= 6 + 4
        (6, True)
        >>> press = SnapKV(6, window=2, chunk_size=4, question_tokens=3)
        >>> cache, logits = prefill(lm, ids, press)
        >>> cache.get_seq_length(), cache.peak_tokens <= 6 + 4 + 3
        (9, True)
    """
    hf = hf_model_of(model)
    device = next(hf.parameters()).device
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(1, -1)
    q_ids = None if question is None else \
        torch.as_tensor(question, dtype=torch.long, device=device).reshape(1, -1)
    n_split = getattr(press, "question_tokens", None)
    if n_split is not None:
        if q_ids is not None:
            raise TokenwiseError(
                f"question= given and press question_tokens={n_split}: give the question one "
                "way, as question= (the context apart) or as the prompt's last "
                "question_tokens tokens")
        if n_split >= ids.shape[1]:
            raise TokenwiseError(
                f"question_tokens={n_split} for a prompt of {ids.shape[1]} tokens: allowed "
                "fewer than the prompt's tokens (a context must come before the question)")
        ids, q_ids = ids[:, :-n_split], ids[:, -n_split:]
    if q_ids is not None and q_ids.shape[1] == 0:
        q_ids = None
    agnostic = q_ids is not None and getattr(press, "question_aware", True) is False
    if (q_ids is not None and not agnostic and isinstance(press, Press)
            and press.chunk_size is not None and ids.shape[1] > 0):
        return _prefill_question_chunked(hf, ids, q_ids, press)
    first = ids if agnostic or q_ids is None else torch.cat([ids, q_ids], 1)
    total = first.shape[1]
    if total == 0:
        raise TokenwiseError("an empty prompt: nothing to read into the cache")
    cache: CompressedCache | QuantizedKVCache
    if isinstance(press, QuantSpec):
        cache = QuantizedKVCache(press, hf)
    else:
        cache = CompressedCache(hf, press, prompt_tokens=total)
    step = press.chunk_size or total
    logits = None
    for start in range(0, total, step):
        chunk = first[:, start:start + step]
        logits = _read(hf, chunk, cache, start)
    if agnostic and q_ids is not None and isinstance(cache, CompressedCache):
        # the question is read after compression and kept whole: one pass, no eviction
        logits = _read_whole(hf, q_ids, cache, total)
    assert logits is not None
    return cache, logits


def _prefill_question_chunked(hf: Any, ids: torch.Tensor, q_ids: torch.Tensor,
                              press: Press) -> tuple[CompressedCache, torch.Tensor]:
    """The context chunk by chunk, each compression scored by a probe of the question read
    right after the chunk (then removed); the question read for real at the end."""
    n_ctx, n_q = ids.shape[1], q_ids.shape[1]
    cache = CompressedCache(hf, press, prompt_tokens=n_ctx)
    # chunked prefill has one budget for every layer (a per-layer list is refused above);
    # sliding-window layers are never pressed, their window is restored after each probe
    k = tokens_for(press.budget, n_ctx, 0, 1)
    probes = press.queries_needed() != 0
    step = press.chunk_size or n_ctx
    for start in range(0, n_ctx, step):
        chunk = ids[:, start:start + step]
        if probes and cache.get_seq_length() + chunk.shape[1] > k:
            # the chunk and the question after it in one pass: the chunk's tokens see only
            # what precedes them (causal), exactly as if read alone, and the question's
            # queries vote on the kept tokens and the chunk
            cache.probe = n_q
            try:
                _read(hf, torch.cat([chunk, q_ids], 1), cache, start)
            finally:
                cache.probe = 0
            cache.drop_last(n_q)
        else:
            _read(hf, chunk, cache, start)
    # the question for real, after the whole context, kept whole
    return cache, _read_whole(hf, q_ids, cache, n_ctx)


def _read(hf: Any, ids: torch.Tensor, cache: Any, start: int) -> torch.Tensor:
    """One prefill pass of ``ids`` at positions from ``start``, counted on the cache."""
    pos = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
    logits = _forward(hf, ids, cache, pos)
    cache.prefill_passes += 1
    cache.prefill_tokens += ids.shape[1]
    return logits


def _read_whole(hf: Any, ids: torch.Tensor, cache: CompressedCache,
                start: int) -> torch.Tensor:
    """A prefill pass kept whole, nothing evicted (the question after the context)."""
    cache.hold = True
    try:
        return _read(hf, ids, cache, start)
    finally:
        cache.hold = False


def cache_keyword(hf: Any) -> str:
    """The name the model's forward takes its cache by (transformers renamed
    ``past_key_values`` to ``cache`` in 5.2x)."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def _forward(hf: Any, ids: torch.Tensor, cache: Any, positions: torch.Tensor) -> torch.Tensor:
    out = hf(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1,
             **{cache_keyword(hf): cache})
    return out.logits[:, -1]
