"""Semantic probabilistic control against the exact conditional, on the testbed's Markov source.

Claim checked (issue 24): ``SemanticControl`` satisfies a sequence-level constraint in >= 95%
of generations with a lower KL to the exact conditional distribution than rejection sampling
given the same compute; FUDGE-style token-level reweighting is shown beside it.

The language model is the Markov source itself (``MarkovSource(seed=0)``, 16 symbols): its
logits are ``log T[previous symbol]``, so the distribution conditioned on a constraint is
computable exactly by dynamic programming, ``h_n(s, c)`` = P(at least ``c`` more X in the
next ``n`` symbols | state ``s``), and the exact conditional next-symbol distribution is
``p*(v | s, n, c) ~ T[s, v] h_{n-1}(v, c - [v = X])``. A line starts in a state drawn from the
stationary distribution (the prompt) and has ``N`` generated symbols. Constraints:

- ``topic``: at least 3 of the 12 symbols are X (X = symbol 4, "pe"), P(A) ~ 0.5%;
- ``contains``: symbol X appears within the next N = 4 symbols (X = 2, "mi"), P(A) ~ 5%.

Methods (each generates ``--lines`` lines):

- ``plain``: the source itself.
- ``rejection``: draw whole lines until one satisfies the constraint, at most M tries
  (the last try is kept when none does); M = the token evaluations SemanticControl spent per
  line / N ("equal compute"). Its satisfaction is ``1 - (1 - a)^M`` and its KL to the exact
  conditional is exactly ``-log(1 - (1 - a)^M)`` (a = P(A) from the line's start state);
  both are also simulated.
- ``fudge``: FUDGE-style reweighting ``p(v) * P(A | prefix, v)`` by a token-level
  classifier: a logistic regression on (one-hot of v, one-hot of the X still needed,
  one-hot of the symbols left), fitted on prefixes of ``--train`` source lines labelled by
  whether the full line satisfies A. One model evaluation per symbol.
- ``semantic``: ``SemanticControl`` with ``TokenMeanEmbedder(eye(16))`` (the embedding of a
  line = its symbol shares) and a ``LogisticProbe`` fitted on the same ``--train`` labelled
  lines; rollouts from the source (``length=N``), ``top_k`` and ``horizon`` as listed.
  Cost per line: ``N + top_k * sum_t min(horizon, N - t - 1)`` token evaluations.

Measures: satisfaction (share of generated lines that satisfy A) and
``KL(P* || Q)`` in nats per line, from ``--paths`` lines drawn from the exact conditional P*
by the chain rule, ``E_{y~P*} sum_t KL(p*_t || q_t)``. SemanticControl's next-token
distribution is random (it depends on its rollout), so ``q_t`` is its mean over ``--replicas``
independent rollouts at the same prefix; a finite mean makes the estimate err upwards
(conservative). Run (a few minutes on one loaded core):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/semantic_control.py

``--part world`` (issue 24's second measurement): a topic constraint on a real trained model,
tw-small, writing fact-world text, where no exact conditional exists. Each line is
``--world-length`` tokens after a person's name from the world tw-small was trained on
(``FactWorld(0)``): "... keeps a kitten as a pet.\nQ: ...". Topics: ``animals`` (the line
names a pet, any surface form; ~27% of tw-small's lines) and ``medicine`` (it names the doctor
profession: doctor, physician, medic; ~2%). The verifier is a ``LogisticProbe`` on tw-small's
mean last hidden state (``HiddenStateEmbedder``, as ``tokenwise control train`` fits it) of
``--world-train`` of tw-small's own lines (other names), labelled by the topic's words. The
judge is held out: a bag-of-words logistic regression fitted on windows of freshly written
fact-world documents (the world's templates, not the model), never seen by any sampler;
its agreement with the word rule is reported too. Fluency: the perplexity of each generated
line under tw-small (the base model) given its prompt, as a geometric mean over lines
(median beside it); also the share of lines the steering verifier itself calls on topic.
Methods on the same ``--world-lines`` names: plain sampling
(temperature 1); the verifier on the prefix without rollouts (``SemanticControl`` with no
model, FUDGE-like but with a probe fitted on whole lines); ``SemanticControl`` at each
(``--world-k``, ``--world-h``, ``--world-s``); rejection sampling at equal token
evaluations (M = cost // N whole plain lines, the first the verifier accepts kept, else the
last). Run (~16 min on one loaded core)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/semantic_control.py --part world \
        --world-k 4,8,8 --world-h 4,8,8 --world-s 1,1,2
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tokenwise.sampling.semantic_control import LogisticProbe, SemanticControl, TokenMeanEmbedder
from tokenwise.testbed.markov import SYMBOLS, MarkovSource

K = len(SYMBOLS)


@dataclass(frozen=True)
class Constraint:
    """At least ``count`` of the ``length`` generated symbols are ``symbol``."""

    name: str
    symbol: int
    count: int
    length: int

    def satisfied(self, lines: torch.Tensor) -> torch.Tensor:
        """``(G,)`` bool for ``(G, N)`` generated lines."""
        return (lines == self.symbol).sum(-1) >= self.count


class Exact:
    """The dynamic programme: ``h[n, s, c]`` = P(at least c more X in n symbols | state s)."""

    def __init__(self, transition: torch.Tensor, con: Constraint) -> None:
        self.t, self.con = transition.double(), con
        n_max, m = con.length, con.count
        h = torch.zeros(n_max + 1, K, m + 1, dtype=torch.float64)
        h[0, :, 0] = 1.0
        is_x = torch.arange(K) == con.symbol
        for n in range(1, n_max + 1):
            for c in range(m + 1):
                nxt = torch.where(is_x, h[n - 1, :, max(c - 1, 0)], h[n - 1, :, c])  # (K,)
                h[n, :, c] = self.t @ nxt
        self.h = h

    def prob(self, state: torch.Tensor) -> torch.Tensor:
        """P(A) from each start state."""
        return self.h[self.con.length, state, self.con.count]

    def step(self, state: torch.Tensor, left: int, need: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` exact conditional next-symbol distribution with ``left`` symbols to go
        (this one included) and ``need`` X still needed."""
        is_x = (torch.arange(K) == self.con.symbol)[None, :]
        need_after = (need[:, None] - is_x.long()).clamp(min=0)  # (B, K)
        w = self.t[state] * self.h[left - 1][torch.arange(K)[None, :], need_after]
        return w / w.sum(-1, keepdim=True)


def sample_lines(transition: torch.Tensor, start: torch.Tensor, n: int,
                 gen: torch.Generator) -> torch.Tensor:
    """``(G, n)`` lines from the source after each start state."""
    out, state = [], start
    for _ in range(n):
        state = torch.multinomial(transition[state], 1, generator=gen)[:, 0]
        out.append(state)
    return torch.stack(out, 1)


def stationary(transition: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_power(transition.double(), 200)[0].float()


# ----------------------------------------------------------------------------- FUDGE


def fudge_features(v: torch.Tensor, need: torch.Tensor, left: int, con: Constraint) -> torch.Tensor:
    """Features of a prefix ending in candidate ``v``: one-hots of v, X still needed after v,
    symbols left after v."""
    need_after = (need - (v == con.symbol).long()).clamp(min=0)
    return torch.cat([F.one_hot(v, K), F.one_hot(need_after, con.count + 1),
                      F.one_hot(torch.full_like(v, left - 1), con.length)], -1).float()


def fit_fudge(lines: torch.Tensor, con: Constraint) -> LogisticProbe:
    labels = con.satisfied(lines).float()
    feats, ys = [], []
    need = torch.full((lines.shape[0],), con.count)
    for t in range(con.length):
        v = lines[:, t]
        feats.append(fudge_features(v, need, con.length - t, con))
        ys.append(labels)
        need = (need - (v == con.symbol).long()).clamp(min=0)
    return LogisticProbe.fit(torch.cat(feats), torch.cat(ys), l2=1e-4)


def fudge_step(logits: torch.Tensor, clf: LogisticProbe, need: torch.Tensor, left: int,
               con: Constraint) -> torch.Tensor:
    rows = logits.shape[0]
    v = torch.arange(K).repeat(rows)
    feats = fudge_features(v, need.repeat_interleave(K), left, con)
    return logits + F.logsigmoid(clf(feats)).reshape(rows, K)


# ----------------------------------------------------------------------------- runs


def generate(method: str, logt: torch.Tensor, start: torch.Tensor, con: Constraint,
             gen: torch.Generator, sampler: SemanticControl | None = None,
             clf: LogisticProbe | None = None) -> torch.Tensor:
    """``(G, N)`` lines by ``method`` ("plain", "fudge" or "semantic")."""
    state, need, out = start, torch.full_like(start, con.count), []
    if sampler is not None:
        sampler.reset()
        sampler.observe_prompt(start[:, None].tolist())
    for t in range(con.length):
        logits = logt[state]  # (G, K)
        if method == "semantic":
            logits = sampler(logits)
        elif method == "fudge":
            logits = fudge_step(logits, clf, need, con.length - t, con)
        state = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
        if sampler is not None:
            sampler.observe(state)
        need = (need - (state == con.symbol).long()).clamp(min=0)
        out.append(state)
    return torch.stack(out, 1)


def kl_to_exact(method: str, logt: torch.Tensor, exact: Exact, paths: torch.Tensor,
                start: torch.Tensor, con: Constraint, replicas: int,
                sampler: SemanticControl | None = None,
                clf: LogisticProbe | None = None) -> tuple[float, float]:
    """Mean over P* paths of sum_t KL(p*_t || q_t) (q_t averaged over ``replicas``), and
    its standard error."""
    reps = replicas if method == "semantic" else 1
    rows = paths.shape[0]
    state, need = start, torch.full_like(start, con.count)
    if sampler is not None:
        sampler.reset()
        sampler.observe_prompt(start.repeat_interleave(reps)[:, None].tolist())
    total = torch.zeros(rows, dtype=torch.float64)
    for t in range(con.length):
        left = con.length - t
        p_star = exact.step(state, left, need)  # (P, K)
        logits = logt[state]
        if method == "semantic":
            out = sampler(logits.repeat_interleave(reps, 0))
            q = out.softmax(-1).double().reshape(rows, reps, K).mean(1)
        elif method == "fudge":
            q = fudge_step(logits, clf, need, left, con).softmax(-1).double()
        else:
            q = logits.softmax(-1).double()
        terms = torch.where(p_star > 0, p_star * (p_star.log() - q.clamp_min(1e-300).log()), 0.0)
        total += terms.sum(-1)
        nxt = paths[:, t]
        if sampler is not None:
            sampler.observe(nxt.repeat_interleave(reps))
        need = (need - (nxt == con.symbol).long()).clamp(min=0)
        state = nxt
    return float(total.mean()), float(total.std() / math.sqrt(rows))


def exact_paths(exact: Exact, start: torch.Tensor, con: Constraint,
                gen: torch.Generator) -> torch.Tensor:
    state, need, out = start, torch.full_like(start, con.count), []
    for t in range(con.length):
        p = exact.step(state, con.length - t, need).float()
        state = torch.multinomial(p, 1, generator=gen)[:, 0]
        need = (need - (state == con.symbol).long()).clamp(min=0)
        out.append(state)
    return torch.stack(out, 1)


def semantic_cost(con: Constraint, top_k: int, horizon: int) -> int:
    """Token evaluations per line: one per symbol plus the rollouts."""
    k = min(top_k, K)
    return con.length + k * sum(min(horizon, con.length - t - 1) for t in range(con.length))


# --------------------------------------------------------------------------- part "world"

#: topics of the fact world, each a set of words (every surface form of its values)
WORLD_TOPICS = {"animals": ("pet", None), "medicine": ("profession", "doctor")}


def topic_words(world: Any, topic: str) -> tuple[str, ...]:
    """The words that put a text on ``topic``: every surface form (article dropped) of the
    topic's values in the fact world ("animals": every pet; "medicine": doctor's forms).

    Example:
        >>> from tokenwise.testbed import FactWorld
        >>> topic_words(FactWorld(0), "medicine")
        ('doctor', 'medic', 'physician')
    """
    attribute, meaning = WORLD_TOPICS[topic]
    words = {re.sub(r"^(a|an) ", "", form)
             for value in world.attributes[attribute].values
             if meaning is None or value.meaning == meaning for form in value.forms}
    return tuple(sorted(words))


def on_topic(texts: list[str], words: tuple[str, ...]) -> torch.Tensor:
    """``(N,)`` bool: the text names one of ``words`` (the rule the judge is trained on)."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
    return torch.tensor([pattern.search(t.lower()) is not None for t in texts])


class BagOfWordsJudge:
    """The held-out judge: a logistic regression on word counts, fitted on windows of fact-
    world documents (written by the world's templates, not by the model), never seen by the
    sampler. It shares nothing with the verifier (which reads tw-small's hidden states of
    the model's own samples) but the definition of the topic.

    Args:
        texts: training texts.
        labels: ``(N,)`` 0/1.
    """

    def __init__(self, texts: list[str], labels: torch.Tensor) -> None:
        counts: dict[str, int] = {}
        for t in texts:
            for w in self.words(t):
                counts[w] = counts.get(w, 0) + 1
        self.vocab = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 3))}
        self.probe = LogisticProbe.fit(self.features(texts), labels.float(), l2=1e-4)

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    def features(self, texts: list[str]) -> torch.Tensor:
        x = torch.zeros(len(texts), len(self.vocab))
        for i, t in enumerate(texts):
            for w in self.words(t):
                if w in self.vocab:
                    x[i, self.vocab[w]] = 1.0
        return x

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """``(N,)`` bool: judged on topic."""
        return self.probe(self.features(texts)) > 0


def judge_texts(world: Any, words: tuple[str, ...], count: int,
                seed: int) -> tuple[list[str], torch.Tensor]:
    """Windows of 3-12 consecutive words of fresh fact-world documents, labelled by the rule;
    texts naming the topic are oversampled to a third (the judge sees enough of them)."""
    rng = random.Random(f"judge/{seed}")
    tokens = " \n ".join(line for doc in world.documents(rng)
                         for line in doc.split("\n")).split(" ")
    pos: list[str] = []
    neg: list[str] = []
    while len(pos) + len(neg) < count:
        start = rng.randrange(len(tokens) - 12)
        text = " ".join(tokens[start:start + rng.randint(3, 12)]).replace(" \n ", "\n")
        hit = bool(on_topic([text], words)[0])
        if hit and len(pos) < count // 3:
            pos.append(text)
        elif not hit and len(neg) < count - count // 3:
            neg.append(text)
    return pos + neg, torch.tensor([1] * len(pos) + [0] * len(neg))


def rollout_cost(length: int, top_k: int, horizon: int) -> int:
    """Token evaluations per line: one per token plus ``top_k`` rollouts of up to ``horizon``."""
    return length + top_k * sum(min(horizon, length - t - 1) for t in range(length))


def world_main(args: argparse.Namespace) -> None:
    """A topic constraint on tw-small's fact-world text (issue 24's second measurement)."""
    import tokenwise as tw
    from tokenwise.sampling.semantic_control import HiddenStateEmbedder
    from tokenwise.scoring import token_surprisal
    from tokenwise.testbed import FactWorld

    torch.manual_seed(args.seed)
    t_start = time.time()
    lm = tw.load(args.world_model)
    world = FactWorld(0)  # the world tw-small was trained on (Testbed(seed=0))
    n = args.world_length
    rng = random.Random(args.seed)
    entities = list(world.entities)
    rng.shuffle(entities)
    test_prompts = entities[:args.world_lines]
    train_prompts = [entities[args.world_lines + i % (len(entities) - args.world_lines)]
                     for i in range(args.world_train)]
    embedder = HiddenStateEmbedder(lm)

    def sample(prompts: list[str], sampler: Any, seed0: int) -> list[Any]:
        out = []
        for s in range(0, len(prompts), args.world_batch):
            chunk = prompts[s:s + args.world_batch]
            out += tw.generate(lm, chunk, sampler, max_new_tokens=n,
                               seed=[seed0 + s + i for i in range(len(chunk))])
        return out

    def ids_of(gens: list[Any]) -> list[list[int]]:
        return [[r.id for r in g.tokens] for g in gens]

    def embed(id_rows: list[list[int]]) -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for row in id_rows:  # rows may be shorter than n (an end token): one at a time
                rows.append(embedder(F.one_hot(torch.tensor([row]), lm.vocab_size).float()))
        return torch.cat(rows)

    def perplexity(prompts: list[str], id_rows: list[list[int]]) -> list[float]:
        return [float(np.exp(np.nanmean(token_surprisal(lm, row, lm.encode(p)))))
                for p, row in zip(prompts, id_rows, strict=True)]

    t0 = time.time()
    train_gens = sample(train_prompts, "temperature", 10**6)
    train_ids, train_texts = ids_of(train_gens), [g.text for g in train_gens]
    train_x = embed(train_ids)
    print(f"world: {args.world_model}, {n} tokens a line after a person's name; verifier "
          f"training lines {len(train_texts)} ({time.time() - t0:.0f} s)", flush=True)
    rows: list[dict] = []
    examples: dict[str, dict[str, list[str]]] = {}
    for topic in args.world_topics.split(","):
        t_topic = time.time()
        words = topic_words(world, topic)
        labels = on_topic(train_texts, words)
        probe = LogisticProbe.fit(train_x, labels.float(), l2=args.world_l2)
        probe_acc = float(((probe(train_x) > 0) == labels).float().mean())
        jtexts, jlabels = judge_texts(world, words, args.world_judge, args.seed)
        judge = BagOfWordsJudge(jtexts, jlabels)
        print(f"\n== topic {topic!r} ({', '.join(words)}): {int(labels.sum())}/{len(labels)} "
              f"of tw-small's lines on topic; probe accuracy on them {probe_acc:.3f}",
              flush=True)
        examples[topic] = {}

        def report(method: str, evals: float, prompts: list[str], texts: list[str],
                   id_rows: list[list[int]], seconds: float, topic: str = topic,
                   words: tuple[str, ...] = words, judge: Any = judge, probe: Any = probe,
                   **extra: Any) -> None:
            judged = judge(texts)
            rule = on_topic(texts, words)
            # what the steering verifier itself says: a gap to the judge is text that
            # fools the verifier (e.g. a misspelt "shysician" near "physician")
            verifier = probe(embed(id_rows)) > 0
            ppl = perplexity(prompts, id_rows)
            k, m = int(judged.sum()), len(texts)
            lo, hi = wilson(k, m)
            row = {"topic": topic, "method": method, "evals_per_line": evals,
                   "judged_on_topic": k / m, "judged_ci95": [lo, hi],
                   "rule_on_topic": float(rule.float().mean()),
                   "judge_agrees_with_rule": float((judged == rule).float().mean()),
                   "verifier_on_topic": float(verifier.float().mean()),
                   "perplexity_median": float(np.median(ppl)),
                   "perplexity_mean_log": float(np.exp(np.mean(np.log(ppl)))),
                   "distinct_texts": len(set(texts)) / m, "seconds": seconds, **extra}
            rows.append(row)
            examples[topic][method] = texts[:5]
            print(f"{method:40s} {evals:6.0f} evals  judged {k / m:.3f} [{lo:.3f}, {hi:.3f}]"
                  f"  rule {row['rule_on_topic']:.3f}  verifier "
                  f"{row['verifier_on_topic']:.3f}  ppl {row['perplexity_mean_log']:.2f}"
                  f" (median {row['perplexity_median']:.2f})  distinct "
                  f"{row['distinct_texts']:.2f}  {seconds:.0f} s", flush=True)

        t0 = time.time()
        plain = sample(test_prompts, "temperature", 0)
        report("plain sampling", n, test_prompts, [g.text for g in plain], ids_of(plain),
               time.time() - t0)
        t0 = time.time()
        prefix = SemanticControl(probe, embedder, None, top_k=args.world_k[0], seed=args.seed)
        gens = sample(test_prompts, prefix, 0)
        report(f"prefix verifier (no rollout) k={args.world_k[0]}", n, test_prompts,
               [g.text for g in gens], ids_of(gens), time.time() - t0)
        done_tries: set[int] = set()
        for top_k, horizon, strength in zip(args.world_k, args.world_h, args.world_s,
                                            strict=True):
            cost = rollout_cost(n, top_k, horizon)
            t0 = time.time()
            sampler = SemanticControl(probe, embedder, lm, strength=strength, top_k=top_k,
                                      horizon=horizon, length=n, seed=args.seed)
            gens = sample(test_prompts, sampler, 0)
            report(f"semantic k={top_k} h={horizon} s={strength:g}", cost, test_prompts,
                   [g.text for g in gens], ids_of(gens), time.time() - t0, top_k=top_k,
                   horizon=horizon, strength=strength)
            # rejection with the same token evaluations: whole lines from the model, the
            # first the verifier accepts (probe logit > 0) kept, else the last try
            tries = max(1, cost // n)
            if tries in done_tries:
                continue
            done_tries.add(tries)
            t0 = time.time()
            pool = [sample(test_prompts, "temperature", 10**7 * (1 + j)) for j in range(tries)]
            accept = [probe(embed(ids_of(p))) > 0 for p in pool]
            pick = []
            for i in range(len(test_prompts)):
                j = next((j for j in range(tries) if bool(accept[j][i])), tries - 1)
                pick.append(pool[j][i])
            report(f"  rejection, {tries} tries (verifier accepts)", tries * n, test_prompts,
                   [g.text for g in pick], ids_of(pick), time.time() - t0, tries=tries,
                   verifier_accepted=float(torch.stack(accept).any(0).float().mean()))
        print(f"({time.time() - t_topic:.0f} s)", flush=True)
    print(f"\nwall {time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows, "examples": examples}, fh, indent=1)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n."""
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=2000, help="generated lines per method")
    ap.add_argument("--paths", type=int, default=300, help="P* lines for the KL")
    ap.add_argument("--replicas", type=int, default=16, help="rollouts averaged for q_t")
    ap.add_argument("--train", type=int, default=50_000, help="labelled training lines")
    ap.add_argument("--probe-l2", type=float, default=1e-8,
                    help="L2 penalty of the probe (small: the attribute is a sharp threshold)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the rows here too")
    ap.add_argument("--part", choices=("markov", "world"), default="markov",
                    help="markov: exact conditional on the Markov source; world: a topic "
                    "constraint on tw-small's fact-world text, judged by a held-out classifier")
    ap.add_argument("--world-model", default="tw-small")
    ap.add_argument("--world-topics", default="animals,medicine",
                    help=f"comma-separated, from {', '.join(WORLD_TOPICS)}")
    ap.add_argument("--world-lines", type=int, default=100, help="test prompts per method")
    ap.add_argument("--world-length", type=int, default=12, help="tokens a line")
    ap.add_argument("--world-train", type=int, default=2000,
                    help="tw-small lines the verifier is fitted on")
    ap.add_argument("--world-judge", type=int, default=6000,
                    help="fact-world texts the held-out judge is fitted on")
    ap.add_argument("--world-l2", type=float, default=1e-3, help="L2 of the verifier")
    ap.add_argument("--world-k", type=lambda s: [int(x) for x in s.split(",")],
                    default=[4, 8], help="top_k of each SemanticControl setting")
    ap.add_argument("--world-h", type=lambda s: [int(x) for x in s.split(",")],
                    default=[4, 8], help="horizon of each setting (as many as --world-k)")
    ap.add_argument("--world-s", type=lambda s: [float(x) for x in s.split(",")],
                    default=[1.0, 1.0], help="strength of each setting (as many as --world-k)")
    ap.add_argument("--world-batch", type=int, default=50, help="prompts a generate call")
    args = ap.parse_args()
    if args.part == "world":
        bad = [t for t in args.world_topics.split(",") if t not in WORLD_TOPICS]
        if bad:
            ap.error(f"--world-topics {bad[0]!r}: allowed {', '.join(WORLD_TOPICS)}")
        if not len(args.world_k) == len(args.world_h) == len(args.world_s):
            ap.error(f"--world-k {args.world_k}, --world-h {args.world_h} and --world-s "
                     f"{args.world_s}: allowed lists of equal length")
        world_main(args)
        return
    torch.manual_seed(args.seed)
    src = MarkovSource(seed=0)
    transition = torch.tensor(src.transition, dtype=torch.float32)
    logt = transition.log()
    pi = stationary(transition)

    def model(ids: torch.Tensor) -> torch.Tensor:
        return logt[ids[:, -1]]  # (N, K): the source's next-symbol logits

    constraints = [Constraint("topic", 4, 3, 12), Constraint("contains", 2, 1, 4)]
    # (top_k, horizon, strength, spread)
    settings = [(16, 16, 1.0, True), (8, 16, 1.0, True), (8, 4, 1.0, True), (4, 2, 1.0, True),
                (16, 16, 1.0, False), (16, 16, 2.0, True)]
    rows: list[dict] = []
    for con in constraints:
        t0 = time.time()
        gen = torch.Generator().manual_seed(args.seed)
        exact = Exact(transition, con)
        train_start = torch.multinomial(pi, args.train, replacement=True, generator=gen)
        train = sample_lines(transition, train_start, con.length, gen)
        labels = con.satisfied(train)
        embedder = TokenMeanEmbedder(torch.eye(K))
        probe = LogisticProbe.fit(embedder(F.one_hot(train, K).float()), labels.float(),
                                  l2=args.probe_l2)
        probe_acc = float((probe(embedder(F.one_hot(train, K).float())) > 0).eq(labels)
                          .float().mean())
        clf = fit_fudge(train, con)
        start = torch.multinomial(pi, args.lines, replacement=True, generator=gen)
        pstart = torch.multinomial(pi, args.paths, replacement=True, generator=gen)
        paths = exact_paths(exact, pstart, con, gen)
        a = exact.prob(start)  # (G,) P(A) per start state
        a_paths = exact.prob(pstart)
        print(f"\n== {con.name}: >= {con.count} x '{SYMBOLS[con.symbol]}' in {con.length} "
              f"symbols; P(A) mean {float(a.mean()):.4f}; train positives {int(labels.sum())}"
              f"/{args.train}; probe accuracy on its training lines {probe_acc:.4f}")
        header = (f"{'method':38s} {'evals/line':>10s} {'satisfied (95% CI)':>20s} "
                  f"{'KL(P*||Q) nats':>16s}")
        print(header)

        def report(method: str, evals: float, sat: float, kl: tuple[float, float],
                   con: Constraint = con, p_a: float = float(a.mean()), **extra) -> None:
            half = 1.96 * math.sqrt(max(sat * (1 - sat), 1e-12) / args.lines)
            ci = f"{sat:.3f} [{max(sat - half, 0):.3f}, {min(sat + half, 1):.3f}]"
            err = f"{kl[0]:.3f} +- {kl[1]:.3f}" if kl[1] else f"{kl[0]:.3f} (exact)"
            print(f"{method:38s} {evals:10.0f} {ci:>20s} {err:>16s}")
            rows.append({"constraint": con.name, "method": method, "evals_per_line": evals,
                         "satisfied": sat, "kl_exact_to_q": kl[0], "kl_stderr": kl[1],
                         "p_a": p_a, **extra})

        lines = generate("plain", logt, start, con, gen)
        report("plain (the source)", con.length, float(con.satisfied(lines).float().mean()),
               (float((-a_paths.log()).mean()), 0.0))
        lines = generate("fudge", logt, start, con, gen, clf=clf)
        report("fudge (token-level classifier)", con.length,
               float(con.satisfied(lines).float().mean()),
               kl_to_exact("fudge", logt, exact, paths, pstart, con, 1, clf=clf))
        for top_k, horizon, strength, spread in settings:
            sampler = SemanticControl(probe, embedder, model, strength=strength, top_k=top_k,
                                      horizon=horizon, length=con.length, spread=spread,
                                      seed=args.seed)
            cost = semantic_cost(con, top_k, horizon)
            lines = generate("semantic", logt, start, con, gen, sampler=sampler)
            sat = float(con.satisfied(lines).float().mean())
            kl = kl_to_exact("semantic", logt, exact, paths, pstart, con, args.replicas,
                             sampler=sampler)
            label = f"semantic k={top_k} h={horizon} s={strength:g}" + ("" if spread else
                                                                         " plug-in")
            report(label, cost, sat, kl, top_k=top_k, horizon=horizon, strength=strength,
                   spread=spread)
            tries = max(1, cost // con.length)
            # rejection with the same token evaluations: exact figures, and a simulation
            sat_exact = float((1 - (1 - a) ** tries).mean())
            kl_exact = float((-(1 - (1 - a_paths) ** tries).log()).mean())
            ok = torch.zeros(args.lines, dtype=torch.bool)
            for _ in range(tries):
                ok |= con.satisfied(sample_lines(transition, start, con.length, gen))
                if bool(ok.all()):
                    break
            report(f"  rejection, {tries} tries (same evals)", tries * con.length,
                   float(ok.float().mean()), (kl_exact, 0.0), satisfied_exact=sat_exact)
        print(f"({time.time() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
    assert all(math.isfinite(r["kl_exact_to_q"]) for r in rows)


if __name__ == "__main__":
    main()
