"""Semantic probabilistic control: reweight the next token by a verifier's estimate that the
finished text will have an attribute.

:class:`SemanticControl` is the sampler; :class:`LogisticProbe` is a verifier (a logistic
probe on sentence embeddings, fitted from labelled embeddings); :class:`TokenMeanEmbedder`
and :class:`HiddenStateEmbedder` are embedders of *token distributions* (a one-hot row per
position is a text; a softer row is a distribution over texts), which is what lets the
expected embedding be computed in one call.

Example:
    >>> import torch
    >>> table = torch.eye(3)                          # a "sentence embedding": token shares
    >>> probe = LogisticProbe(torch.tensor([0.0, 0.0, 8.0]), -2.0)   # likes token 2
    >>> control = SemanticControl(probe, TokenMeanEmbedder(table), top_k=3)
    >>> logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> control(logits).softmax(-1).argmax(-1).tolist()               # token 2 now leads
    [2]
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler, check_float, check_int, check_logits

#: an embedder: ``(N, L, V)`` token distributions -> ``(N, D)`` sentence embeddings
EmbedderFn = Callable[[Tensor], Tensor]
#: a verifier: ``(N, D)`` embeddings -> ``(N,)`` logits of the attribute (differentiable)
VerifierFn = Callable[[Tensor], Tensor]


def _check_callable(name: str, value: object, allowed: str) -> Any:
    if not callable(value):
        raise TokenwiseError(f"{name}={value!r}: allowed {allowed}")
    return value


class LogisticProbe:
    """A logistic verifier on sentence embeddings: ``f(e) = e . weight + bias`` (a logit).

    Linear in ``e``, so the first-order step :class:`SemanticControl` takes around the
    sample is exact for it (only the expectation of the sigmoid is approximated).

    Args:
        weight: ``(D,)`` weights.
        bias: the intercept.

    Example:
        >>> probe = LogisticProbe(torch.tensor([1.0, -1.0]), 0.5)
        >>> probe(torch.tensor([[2.0, 0.0]])).tolist()
        [2.5]
    """

    def __init__(self, weight: Tensor | Sequence[float], bias: float = 0.0) -> None:
        weight = torch.as_tensor(weight, dtype=torch.float32)
        if weight.dim() != 1 or weight.numel() < 1:
            raise TokenwiseError(f"weight has shape {tuple(weight.shape)}: allowed a 1-D "
                                 "tensor of D >= 1 numbers")
        if not bool(weight.isfinite().all()):
            raise TokenwiseError("weight has NaN or infinite entries: allowed finite numbers")
        self.weight = weight
        #: how the probe was made (set by :meth:`load` from :meth:`save`'s ``info``)
        self.info: dict[str, Any] = {}
        self.bias = check_float("bias", bias, -math.inf, math.inf, low_open=True,
                                high_open=True)

    def __call__(self, embeddings: Tensor) -> Tensor:
        """``(N,)`` attribute logits of ``(N, D)`` embeddings."""
        if embeddings.dim() != 2 or embeddings.shape[-1] != self.weight.numel():
            raise TokenwiseError(f"embeddings have shape {tuple(embeddings.shape)}: this probe "
                                 f"takes (N, {self.weight.numel()})")
        w = self.weight.to(embeddings.device, embeddings.dtype)
        return embeddings @ w + self.bias

    def probability(self, embeddings: Tensor) -> Tensor:
        """``(N,)`` probability of the attribute."""
        return torch.sigmoid(self(embeddings))

    @classmethod
    def fit(cls, embeddings: Tensor, labels: Tensor | Sequence[int], l2: float = 1e-2,
            steps: int = 50) -> LogisticProbe:
        """Fit by Newton's method (IRLS) in float64 with an L2 penalty on the weights.

        Args:
            embeddings: ``(N, D)`` embeddings of labelled texts (e.g. ``embedder(one_hot)``).
            labels: ``(N,)`` 0/1, 1 where the text has the attribute.
            l2: L2 penalty (> 0 keeps separable data finite).
            steps: Newton steps at most (stops when the step is below 1e-8).

        Example:
            >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
            >>> probe = LogisticProbe.fit(x, [0, 0, 1, 1])
            >>> probe.probability(torch.tensor([[0.0], [3.0]])).round().tolist()
            [0.0, 1.0]
        """
        x = torch.as_tensor(embeddings).double()
        y = torch.as_tensor(labels).double().reshape(-1)
        if x.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 1:
            raise TokenwiseError(f"embeddings {tuple(x.shape)} and labels {tuple(y.shape)}: "
                                 "allowed (N, D) and (N,) with N >= 1")
        if not bool(((y == 0) | (y == 1)).all()):
            raise TokenwiseError("labels must be 0 or 1")
        l2 = check_float("l2", l2, 0.0, math.inf, high_open=True)
        steps = check_int("steps", steps, 1)
        n, d = x.shape
        xb = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)  # (N, D+1)
        theta = torch.zeros(d + 1, dtype=x.dtype)
        penalty = torch.full((d + 1,), l2 * n, dtype=x.dtype)
        penalty[-1] = 1e-9 * n  # the intercept is barely penalised
        for _ in range(steps):
            p = torch.sigmoid(xb @ theta)
            grad = xb.T @ (p - y) + penalty * theta
            hess = (xb * (p * (1 - p))[:, None]).T @ xb + torch.diag(penalty)
            delta = torch.linalg.solve(hess, grad)
            theta = theta - delta
            if float(delta.abs().max()) < 1e-8:
                break
        return cls(theta[:-1].float(), float(theta[-1]))

    def save(self, path: str | Path, **info: Any) -> None:
        """Write the probe as JSON (weights, bias and ``info``: how it was made).

        Args:
            path: the file to write.
            info: JSON-serialisable facts kept beside the weights (model, embedding, ...).

        Example:
            >>> import tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "probe.json")
            >>> LogisticProbe([1.0, 2.0], 0.5).save(path, embedding="tokens")
            >>> LogisticProbe.load(path)(torch.tensor([[1.0, 1.0]])).tolist()
            [3.5]
        """
        data = {"format": "tokenwise.logistic_probe/1", "weight": self.weight.tolist(),
                "bias": self.bias, "info": info}
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LogisticProbe:
        """Read a probe written by :meth:`save` (its ``info`` in ``probe.info``).

        Args:
            path: the JSON file.

        Example:
            >>> LogisticProbe.load("no/such/probe.json")
            Traceback (most recent call last):
            ...
            tokenwise.errors.TokenwiseError: probe file 'no/such/probe.json' does not exist
        """
        file = Path(path)
        if not file.is_file():
            raise TokenwiseError(f"probe file {str(path)!r} does not exist")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            probe = cls(data["weight"], data["bias"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenwiseError(f"{str(path)!r} is not a probe written by LogisticProbe.save "
                                 f"({exc})") from None
        probe.info = dict(data.get("info") or {})
        return probe

    def __repr__(self) -> str:
        return f"LogisticProbe(D={self.weight.numel()}, bias={self.bias:.3g})"


class TokenMeanEmbedder:
    """Sentence embedding = the mean over positions of a ``(V, D)`` table's rows.

    On one-hot rows this is the embedding of the text; on distributions it is *exactly* the
    expected embedding (the map is linear), so :class:`SemanticControl`'s expected embedding
    has no approximation with it. The table may be a model's input embedding matrix
    (``lm.hf_model.get_input_embeddings().weight``) or ``torch.eye(V)`` (token shares).

    Args:
        table: ``(V, D)`` float table.

    Example:
        >>> emb = TokenMeanEmbedder(torch.eye(2))
        >>> emb(torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])).tolist()
        [[0.75, 0.25]]
    """

    def __init__(self, table: Tensor) -> None:
        if not isinstance(table, Tensor) or table.dim() != 2 or not table.is_floating_point():
            raise TokenwiseError(f"table={table!r}: allowed a floating (V, D) tensor")
        self.table = table.detach()

    def __call__(self, dists: Tensor) -> Tensor:
        """``(N, D)`` embeddings of ``(N, L, V)`` token distributions."""
        if dists.dim() != 3 or dists.shape[-1] != self.table.shape[0]:
            raise TokenwiseError(f"token distributions of shape {tuple(dists.shape)}: this "
                                 f"embedder takes (N, L, {self.table.shape[0]})")
        table = self.table.to(dists.device, torch.float32)
        return (dists.float() @ table).mean(1)  # (N, D)

    def __repr__(self) -> str:
        return f"TokenMeanEmbedder(V={self.table.shape[0]}, D={self.table.shape[1]})"


class HiddenStateEmbedder:
    """Sentence embedding = the mean of a transformers causal LM's last hidden states.

    A distribution row enters as the expected input embedding ``p @ W_in``, so on one-hot
    rows this is the model's own embedding of the text, and on distributions it is the
    mean-field approximation ``e(E[x])`` of ``E[e(x)]`` (first order around the mean). Costs
    one forward pass of the model per call.

    Args:
        model: a transformers model with ``get_input_embeddings()`` that accepts
            ``inputs_embeds``, or a :class:`~tokenwise.models.LanguageModel` (its
            ``hf_model`` is used).
        layer: which hidden state (-1: the last).

    Example:
        >>> import tokenwise as tw
        >>> lm = tw.load("tw-small")
        >>> emb = HiddenStateEmbedder(lm)
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> emb(F.one_hot(ids, lm.vocab_size).float()).shape == (1, lm.config.hidden_size)
        True
    """

    def __init__(self, model: Any, layer: int = -1) -> None:
        model = getattr(model, "hf_model", model)
        if not hasattr(model, "get_input_embeddings"):
            raise TokenwiseError(f"model={type(model).__name__}: allowed a transformers model "
                                 "with get_input_embeddings() (e.g. lm.hf_model)")
        self.model = model
        self.layer = check_int("layer", layer, -10**6)

    def __call__(self, dists: Tensor) -> Tensor:
        """``(N, D)`` embeddings of ``(N, L, V)`` token distributions."""
        table = self.model.get_input_embeddings().weight  # (V, H)
        if dists.dim() != 3 or dists.shape[-1] != table.shape[0]:
            raise TokenwiseError(f"token distributions of shape {tuple(dists.shape)}: this "
                                 f"embedder takes (N, L, {table.shape[0]})")
        inputs = dists.to(table.device, table.dtype) @ table  # (N, L, H)
        out = self.model(inputs_embeds=inputs, output_hidden_states=True)
        return out.hidden_states[self.layer].float().mean(1)  # (N, H)

    def __repr__(self) -> str:
        return f"HiddenStateEmbedder({type(self.model).__name__}, layer={self.layer})"


def _next_logits(model: Any, ids: Tensor) -> Tensor:
    """``(N, V)`` next-token logits of ``model`` after ``(N, L)`` ids."""
    out = getattr(model, "hf_model", model)(ids)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, Tensor) or logits.dim() not in (2, 3):
        raise TokenwiseError("model(ids) must return (N, V) or (N, L, V) logits (or an "
                             f"object with .logits); got {type(logits).__name__}")
    return logits[:, -1] if logits.dim() == 3 else logits


class SemanticControl(Sampler):
    """Semantic probabilistic control (Ahmed, Belem, Smyth & Singh, 2025, "Semantic
    Probabilistic Control of Language Models", arXiv 2505.01954): steer generation towards a
    sequence-level attribute judged by a differentiable verifier on a sentence embedding.

    For each of the ``top_k`` most likely next tokens ``v``, the sampler estimates
    ``P(attribute | text so far, v)`` and adds ``strength * log`` of it to ``v``'s logit
    (``strength=1`` is Bayes' rule: ``p(v) P(a | v)``, the exact conditional if the
    estimate were exact). The estimate, per candidate:

    1. roll out one sample continuation ``y*`` of ``horizon`` tokens after ``v`` from
       ``model`` (ancestral sampling at temperature 1);
    2. the *local distribution* around it: the generated tokens and ``v`` fixed, each later
       position ``i`` independent with the model's conditional ``p(. | text, v, y*_<i)``
       that ``y*_i`` was drawn from (texts that differ from the sample token by token);
    3. its expected sentence embedding ``e_bar_v``, to first order around the sample:
       ``e_bar_v - e = J (p - x)``, with ``x`` the sample's one-hot rows, ``p`` the local
       distribution's rows and ``J`` the embedder's Jacobian at the sample (exact for an
       embedder linear in the token distributions, :class:`TokenMeanEmbedder`);
    4. the verifier's first-order estimate at the sample's embedding ``e = embedder(y*)``:
       ``P(a | text, v) ~ sigmoid(f(e) + grad f(e) . (e_bar_v - e))``. All of ``f(e)``,
       ``grad f(e) . J`` come from one embedder-and-verifier pass and its gradient with
       respect to the token distributions.
    5. with ``spread=True`` (the default), the sigmoid of the expected logit is replaced by
       the expected sigmoid: the first-order logit is a sum of independent per-position
       terms under the local distribution, so its variance ``s2`` is exact and cheap, and
       ``E[sigmoid(f)] ~ sigmoid(mean / sqrt(1 + pi s2 / 8))`` (MacKay's probit
       approximation). ``spread=False`` is the paper's plug-in ``sigmoid(E[f])``.

    Approximations, stated: (a) with ``spread=False``, ``E[sigmoid(f)] ~ sigmoid(E[f])``,
    over-confident when the verifier is steep (on the testbed's Markov source, the first
    step of "at least 3 of 12 symbols are X": the exact conditional favours X 14x, the
    plug-in estimate ~350x, ``spread=True`` ~10x);
    (b) the verifier and the embedder are linearised at the sample (exact for
    :class:`LogisticProbe` on :class:`TokenMeanEmbedder`); (c) the local distribution
    ignores how the positions of a continuation depend on each other beyond the one sample,
    so one rollout is a noisy estimate, redrawn at every step; (d) the text the verifier
    judges is the generated text (after the prompt) plus ``v`` plus the rollout: with
    ``length`` set it is exactly the finished text, else ``horizon`` tokens stand for the
    rest. Differences from the paper (read from its abstract and the issue, not its code):
    the paper draws one sample and substitutes each candidate into it; here each candidate
    gets its own rollout (the same number of token evaluations, ``top_k * horizon`` per
    step, but the continuation really follows ``v``); and step 5.

    Tokens outside the top k get no rollout of their own and are not dropped: token ``u``
    is priced by putting it in place of each candidate ``c`` (``c``'s rollout kept as the
    future), which the gradient at ``c``'s position prices to first order for every token
    at once (the paper's substitution), and these estimates are mixed over the candidates by
    their probability. Nothing is ever dropped, so a rare token that the attribute needs
    keeps its chance (on the testbed's "3 of 12" constraint with ``top_k=8`` of 16 tokens,
    giving the tail the candidates' mean estimate instead satisfied 48%, this 85%, with
    the same probe). Without ``model`` (or with
    ``horizon=0``) there is no rollout: the verifier judges the generated text plus ``v``
    (a prefix classifier, FUDGE-like).

    Cost per step: ``top_k * horizon`` model calls on the full sequence (no KV cache: each
    call re-reads the text; cheap for the testbed's Markov source, about ``top_k * horizon``
    forward passes per token for a transformer), plus one embedder-and-verifier pass and its
    gradient on ``B * top_k`` rows of ``(L, V)`` distributions (memory: a few
    ``B * top_k * L * V`` float32 tensors, e.g. ~0.5 GB each for top_k 8, 64 tokens and a
    262k vocabulary; lower ``top_k``/``horizon`` or set ``length``). The rollouts of a batch
    are drawn from one generator (seeded by ``seed`` and the generation count): a row's
    estimate depends on its batch position, the one exception to "each row is decided
    alone"; without a model it holds.
    The sampler reads the history through ``observe_prompt``/``observe`` (``tw.generate``
    and :meth:`as_hf` call them).

    Args:
        verifier: ``(N, D) -> (N,)`` attribute logits, differentiable (e.g.
            :class:`LogisticProbe`). To steer *away* from an attribute, negate it.
        embedder: ``(N, L, V)`` token distributions -> ``(N, D)`` (e.g.
            :class:`TokenMeanEmbedder`, :class:`HiddenStateEmbedder`).
        model: ``model(ids (N, L)) -> logits`` ``(N, V)``, ``(N, L, V)`` or an object with
            ``.logits`` (a transformers model), or a ``LanguageModel``, for the rollouts;
            None: no rollout.
        strength: multiplies the log estimate (>= 0; 1 = Bayes' rule, 0 = no change).
        top_k: candidates scored per step (>= 1).
        horizon: rollout tokens after the candidate (>= 0).
        length: the finished text's length in generated tokens (e.g. ``max_new_tokens``):
            the rollout stops there; None: always ``horizon`` tokens.
        spread: estimate ``E[sigmoid(f)]`` with the variance of ``f`` (True), or the
            paper's ``sigmoid(E[f])`` (False).
        seed: seed of the rollouts.

    Example:
        >>> probe = LogisticProbe(torch.tensor([0.0, 6.0]), -3.0)   # wants token 1 in the text
        >>> chain = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
        >>> model = lambda ids: chain[ids]                           # a Markov "model"
        >>> control = SemanticControl(probe, TokenMeanEmbedder(torch.eye(2)), model,
        ...                           top_k=2, horizon=3)
        >>> control.observe_prompt([[0]])
        >>> before = chain[[0]]
        >>> bool(control(before).softmax(-1)[0, 1] > before.softmax(-1)[0, 1])
        True
    """

    name = "semantic_control"

    def __init__(self, verifier: VerifierFn, embedder: EmbedderFn, model: Any = None,
                 strength: float = 1.0, top_k: int = 8, horizon: int = 16,
                 length: int | None = None, spread: bool = True, seed: int = 0) -> None:
        self.verifier = _check_callable("verifier", verifier,
                                        "a callable (N, D) embeddings -> (N,) logits")
        self.embedder = _check_callable("embedder", embedder,
                                        "a callable (N, L, V) token distributions -> (N, D)")
        self.model = None if model is None else _check_callable(
            "model", getattr(model, "hf_model", model),
            "None, a LanguageModel or a callable ids (N, L) -> logits")
        self.strength = check_float("strength", strength, 0.0, math.inf, low_open=False,
                                    high_open=True)
        self.top_k = check_int("top_k", top_k, 1)
        self.horizon = check_int("horizon", horizon, 0)
        self.length = None if length is None else check_int("length", length, 1)
        if not isinstance(spread, bool):
            raise TokenwiseError(f"spread={spread!r}: allowed True or False")
        self.spread = spread
        self.seed = check_int("seed", seed, 0)
        self._generations = 0
        self._prompts: list[list[int]] | None = None
        self._generated: list[list[int]] | None = None
        self._generator: torch.Generator | None = None

    def params(self) -> dict:
        """The settings."""
        return {"verifier": self.verifier, "embedder": self.embedder, "model": self.model,
                "strength": self.strength, "top_k": self.top_k, "horizon": self.horizon,
                "length": self.length, "spread": self.spread, "seed": self.seed}

    # ------------------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget the history (start of a generation); the next rollouts get a new seed."""
        self._generations += 1
        self._prompts, self._generated, self._generator = None, None, None

    def observe_prompt(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Keep each row's prompt (the model's rollouts start from it)."""
        self._prompts = [[int(t) for t in row] for row in prompt_ids]
        self._generated = [[] for _ in self._prompts]

    def observe(self, chosen: Tensor) -> None:
        """Append each row's chosen token to its generated text."""
        ids = torch.as_tensor(chosen).reshape(-1).tolist()
        if self._generated is None:
            self._prompts = [[] for _ in ids]
            self._generated = [[] for _ in ids]
        if len(ids) != len(self._generated):
            raise TokenwiseError(f"{len(ids)} chosen tokens for a batch of "
                                 f"{len(self._generated)} rows")
        for row, token in zip(self._generated, ids, strict=True):
            row.append(int(token))

    def _history(self, batch: int) -> tuple[list[list[int]], list[list[int]]]:
        if self._generated is None or self._prompts is None:
            return [[] for _ in range(batch)], [[] for _ in range(batch)]
        if len(self._generated) != batch:
            raise TokenwiseError(f"logits for {batch} rows, but the sampler was told the "
                                 f"history of {len(self._generated)}: call reset() between "
                                 "generations")
        return self._prompts, self._generated

    def _rng(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            key = hashlib.sha256(f"{self.seed}:{self._generations}".encode()).digest()
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(int.from_bytes(key[:8], "little") >> 1)
        return self._generator

    # ------------------------------------------------------------------------------ rule

    def __call__(self, logits: Tensor) -> Tensor:
        logits = check_logits(logits)
        logits32 = logits.float()
        out = logits32.clone()
        live = ~torch.isneginf(logits32).all(-1)  # (B,) rows with something to choose
        if self.strength > 0 and bool(live.any()):
            prompts, generated = self._history(logits.shape[0])
            rows = live.nonzero()[:, 0].tolist()
            bonus = self.log_estimates(logits32[live], [prompts[r] for r in rows],
                                       [generated[r] for r in rows])  # (b, V)
            out[live] = logits32[live] + self.strength * bonus
        return out.to(logits.dtype)

    def log_estimates(self, logits32: Tensor, prompts: Sequence[Sequence[int]],
                      generated: Sequence[Sequence[int]]) -> Tensor:
        """``(B, V)`` log of the estimated ``P(attribute | text, v)`` for every token ``v``.

        Args:
            logits32: ``(B, V)`` float32 next-token logits (each row with a finite entry).
            prompts: each row's prompt ids.
            generated: each row's generated ids so far (all rows the same length).

        Example:
            >>> probe = LogisticProbe(torch.tensor([0.0, 4.0]), -2.0)
            >>> sc = SemanticControl(probe, TokenMeanEmbedder(torch.eye(2)), top_k=2)
            >>> sc.log_estimates(torch.zeros(1, 2), [[]], [[]]).exp().round(decimals=2)
            tensor([[0.1200, 0.8800]])
        """
        vocab = logits32.shape[-1]
        k = min(self.top_k, vocab)
        logp = logits32.log_softmax(-1)  # (B, V)
        cand_logp, cand = logp.topk(k, dim=-1)  # (B, k)
        valid = cand_logp.isfinite()  # fewer than k finite tokens: the rest are not scored
        mean, var, swap = self._first_order(cand, prompts, generated, vocab)
        # the candidates: their own rollouts
        log_est = F.logsigmoid(self._squash(mean, var)).masked_fill(~valid, 0.0)  # (B, k)
        # the tail: token u in place of candidate c, c's rollout kept as the future (the
        # substitution the gradient prices to first order), mixed over the candidates by
        # their probability
        tail = F.logsigmoid(self._squash(mean[..., None] + swap, var[..., None]))  # (B, k, V)
        weight = cand_logp.masked_fill(~valid, -math.inf).log_softmax(-1)  # (B, k)
        bonus = (tail + weight[..., None]).logsumexp(1)  # (B, V)
        values = torch.where(valid, log_est, bonus.gather(-1, cand))
        return bonus.scatter(-1, cand, values)

    def _squash(self, mean: Tensor, var: Tensor) -> Tensor:
        """The logit whose sigmoid estimates ``E[sigmoid(f)]`` (step 5), clamped finite."""
        out = mean / torch.sqrt(1.0 + math.pi * var / 8.0) if self.spread else mean
        return torch.nan_to_num(out, nan=0.0, posinf=80.0, neginf=-80.0).clamp(-80.0, 80.0)

    def _first_order(self, cand: Tensor, prompts: Sequence[Sequence[int]],
                     generated: Sequence[Sequence[int]],
                     vocab: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per candidate, the first-order verifier logit's mean and variance under its local
        distribution, ``(B, k)`` each, and ``(B, k, V)``: how that mean moves when token u
        replaces the candidate (its rollout kept)."""
        batch, k = cand.shape
        device = cand.device
        lengths = {len(g) for g in generated}
        if len(lengths) > 1:
            raise TokenwiseError(f"rows have generated different numbers of tokens "
                                 f"({sorted(lengths)}): allowed one count for the batch")
        done = lengths.pop() if lengths else 0
        steps = self.horizon if self.model is not None else 0
        if self.length is not None:
            steps = max(0, min(steps, self.length - done - 1))
        gen = torch.tensor(generated, dtype=torch.long, device=device).reshape(batch, done)
        text = torch.cat([gen.repeat_interleave(k, 0), cand.reshape(-1, 1)], 1)  # (B*k, g+1)
        fixed = F.one_hot(text, vocab).float()  # (B*k, g+1, V)
        if steps:
            dists, sample = self._rollout(text, prompts, k, steps, vocab)  # (B*k, s, V), (B*k, s)
            local = torch.cat([fixed, dists], 1)
            drawn = torch.cat([fixed, F.one_hot(sample, vocab).float()], 1)
        else:
            local = drawn = fixed
        # one pass through embedder and verifier at the sample, differentiated with respect
        # to the token distributions: s[n, i, v] = d f / d x[n, i, v] (the engine decodes
        # under inference_mode; the gradient needs autograd)
        with torch.inference_mode(False), torch.enable_grad():
            x = drawn.clone().requires_grad_(True)
            f = self.verifier(self.embedder(x)).reshape(-1)  # (B*k,)
            (score,) = torch.autograd.grad(f.sum(), x)  # (B*k, L, V)
        score = score.detach().float()
        f = f.detach().float()
        # f(e) + grad f(e) . (e_bar - e), with e_bar - e = J (local - drawn) to first order
        mean = f + (score * (local - drawn)).sum((1, 2))  # (B*k,)
        # the variance of that linear f under the local distribution (its positions are
        # independent there): the spread that step 5 accounts for
        first = (local * score).sum(-1)  # (B*k, L)
        var = ((local * score.square()).sum(-1) - first.square()).clamp(min=0).sum(-1)
        at = score[:, done]  # (B*k, V) the candidate's position
        swap = at - at.gather(-1, cand.reshape(-1, 1))
        return mean.reshape(batch, k), var.reshape(batch, k), swap.reshape(batch, k, vocab)

    def _rollout(self, text: Tensor, prompts: Sequence[Sequence[int]], k: int, steps: int,
                 vocab: int) -> tuple[Tensor, Tensor]:
        """One sampled continuation per (row, candidate) and the conditionals it was drawn
        from: ``(B*k, steps, V)`` and ``(B*k, steps)``."""
        device = text.device
        prompt_rows = [list(prompts[i // k]) for i in range(text.shape[0])]
        dists = torch.empty(text.shape[0], steps, vocab, device=device)
        sample = torch.empty(text.shape[0], steps, dtype=torch.long, device=device)
        rng = self._rng(device)
        # rows whose prompts have equal length run together (no padding, no attention mask)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompt_rows):
            groups.setdefault(len(p), []).append(i)
        for idx in groups.values():
            index = torch.tensor(idx, device=device)
            ids = torch.cat([torch.tensor([prompt_rows[i] for i in idx], dtype=torch.long,
                                          device=device).reshape(len(idx), -1),
                             text[index]], 1)
            for step in range(steps):
                logits = _next_logits(self.model, ids).float()
                if logits.shape != (len(idx), vocab):
                    raise TokenwiseError(f"model gave logits of shape {tuple(logits.shape)} "
                                         f"for {len(idx)} rows: allowed ({len(idx)}, {vocab}), "
                                         "the sampler's vocabulary")
                probs = logits.softmax(-1)
                if not bool(probs.isfinite().all()):
                    raise TokenwiseError("model gave NaN logits during the rollout")
                token = torch.multinomial(probs, 1, generator=rng)  # (n, 1)
                dists[index, step], sample[index, step] = probs, token[:, 0]
                ids = torch.cat([ids, token], 1)
        return dists, sample
