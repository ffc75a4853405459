"""The router: read a question's features, pick a strategy from the table, answer with it.

Two policies:

- ``"difficulty"`` (DiffAdapt): one probe labels the question easy / normal / hard and a
  ``mapping`` names the strategy for each label (e.g. easy -> small greedy, normal -> large
  greedy, hard -> small greedy or abstain: where no strategy is likely to be right, the
  cheapest one is the honest choice).
- ``"value"``: one probe per strategy predicts ``P(right | question, strategy)``; the router
  picks ``argmax_s P_s - cost_weight x cost_s`` (costs relative to the dearest strategy), and
  abstains when even the best ``P_s`` is under ``abstain_below``.

Either way a sampled strategy (``n > 1``) can still abstain afterwards when its samples
scatter: ``abstain_above_entropy`` caps the entropy of their normalised answers.
A router saves to a directory (``router.json`` and one ``.safetensors`` per probe).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.models import LanguageModel
from tokenwise.routing.features import check_extras, check_layer, feature_flops, prompt_features
from tokenwise.routing.labels import LABELS
from tokenwise.routing.probe import DifficultyProbe
from tokenwise.routing.strategy import (
    Strategy,
    StrategyAnswer,
    answer_entropy,
    load_strategies,
    run_strategy,
)

Policy = Literal["difficulty", "value"]
RIGHT = "right"


@dataclass
class Decision:
    """Which strategy the router picked for one question, and why.

    Attributes:
        strategy: the chosen strategy's name.
        label: the difficulty label (``"difficulty"`` policy), else None.
        probabilities: the probe's output: label -> probability (``"difficulty"``) or
            strategy -> P(right) (``"value"``).
        reason: one line for logs.
    """

    strategy: str
    label: str | None
    probabilities: dict[str, float]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


@dataclass
class RoutedAnswer:
    """A routed answer: the decision, what the strategy answered, and the total FLOPs.

    Attributes:
        text: the answer (the abstain text when the router or the samples abstained).
        decision: the router's :class:`Decision`.
        answer: the chosen strategy's :class:`~tokenwise.routing.StrategyAnswer`.
        abstained: True when the answer is an abstention.
        flops: the probe's read of the question plus the strategy's generation.
    """

    text: str
    decision: Decision
    answer: StrategyAnswer
    abstained: bool
    flops: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"text": self.text, "strategy": self.decision.strategy,
                "abstained": self.abstained, "flops": self.flops,
                "decision": self.decision.as_dict(), "answer": self.answer.as_dict()}


@dataclass
class Router:
    """Map each question to a strategy of the table, from a probe on its hidden state.

    Args:
        strategies: the strategy table (:func:`~tokenwise.routing.load_strategies`).
        feature_model: the key of the model whose hidden state the probes read.
        layer: the hidden state read (0 = embeddings, -1 = last).
        extras: extra scalar features appended to the hidden state
            (:func:`~tokenwise.routing.prompt_features`), as the probes were trained.
        policy: ``"difficulty"`` or ``"value"`` (module docstring).
        probes: ``{"difficulty": probe}`` for the difficulty policy; strategy name ->
            probe with a ``"right"`` class for the value policy (strategies without a probe
            are never chosen, except as the abstain strategy).
        mapping: difficulty label -> strategy name (difficulty policy).
        costs: strategy name -> relative cost (value policy; e.g. mean FLOPs over training
            questions, divided by the largest).
        cost_weight: how much accuracy one unit of cost is worth (value policy; >= 0).
        abstain: name of an abstaining strategy in the table, used by ``abstain_below`` and
            ``abstain_above_entropy``.
        abstain_below: value policy: abstain when the best P(right) is under this.
        abstain_above_entropy: abstain when a sampled strategy's answers scatter more than
            this (nats).
        meta: free-form facts stored with the router (training data, scores).

    Example:
        >>> import numpy as np
        >>> table = load_strategies([{"name": "small", "model": "tw-small"},
        ...                          {"name": "large", "model": "tw-large"}])
        >>> probe = DifficultyProbe().fit(np.array([[0.0], [1.0]]), ["easy", "normal"])
        >>> r = Router(table, feature_model="tw-small", probes={"difficulty": probe},
        ...            mapping={"easy": "small", "normal": "large"})
        >>> r.decide(np.array([0.9])).strategy
        'large'
    """

    strategies: Sequence[Strategy]
    feature_model: str
    layer: int = -1
    extras: Sequence[str] = ()
    policy: Policy = "difficulty"
    probes: Mapping[str, DifficultyProbe] = field(default_factory=dict)
    mapping: Mapping[str, str] = field(default_factory=dict)
    costs: Mapping[str, float] = field(default_factory=dict)
    cost_weight: float = 0.0
    abstain: str | None = None
    abstain_below: float | None = None
    abstain_above_entropy: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.strategies = load_strategies(list(self.strategies))
        self.extras = check_extras(tuple(self.extras))
        self.by_name = {s.name: s for s in self.strategies}
        names = ", ".join(self.by_name)
        if self.policy not in ("difficulty", "value"):
            raise TokenwiseError(f"policy must be 'difficulty' or 'value', got {self.policy!r}")
        if not isinstance(self.feature_model, str) or not self.feature_model:
            raise TokenwiseError("feature_model must name the model the probes read")
        for name, probe in self.probes.items():
            if not isinstance(probe, DifficultyProbe) or not probe.fitted:
                raise TokenwiseError(f"probe {name!r} must be a fitted DifficultyProbe")
        if self.policy == "difficulty":
            probe = self.probes.get("difficulty")
            if probe is None:
                raise TokenwiseError("the difficulty policy needs probes={'difficulty': probe}")
            missing = [c for c in probe.classes if c not in self.mapping]
            if missing:
                raise TokenwiseError(f"mapping has no strategy for label(s) {missing}; the "
                                     f"probe's labels are {probe.classes}")
            for label, name in self.mapping.items():
                if name not in self.by_name:
                    raise TokenwiseError(f"mapping sends {label!r} to unknown strategy "
                                         f"{name!r}; the table has: {names}")
        else:
            if not self.probes:
                raise TokenwiseError("the value policy needs one probe per strategy")
            for name, probe in self.probes.items():
                if name not in self.by_name:
                    raise TokenwiseError(f"probe for unknown strategy {name!r}; the table "
                                         f"has: {names}")
                if self.by_name[name].abstain:
                    raise TokenwiseError(f"{name!r} abstains: it takes no probe (name it as "
                                         "abstain= with abstain_below= instead)")
                if RIGHT not in probe.classes:
                    raise TokenwiseError(f"the probe of {name!r} has no {RIGHT!r} class "
                                         f"(classes {probe.classes})")
            if not self.cost_weight >= 0:
                raise TokenwiseError(f"cost_weight must be >= 0, got {self.cost_weight!r}")
            if self.cost_weight > 0:
                lacking = [n for n in self.probes if n not in self.costs]
                if lacking:
                    raise TokenwiseError(f"cost_weight > 0 needs a cost for every probed "
                                         f"strategy; missing: {lacking}")
        if self.abstain is not None and (self.abstain not in self.by_name
                                         or not self.by_name[self.abstain].abstain):
            raise TokenwiseError(f"abstain must name an abstaining strategy of the table, "
                                 f"got {self.abstain!r}")
        for key in ("abstain_below", "abstain_above_entropy"):
            if getattr(self, key) is not None and self.abstain is None:
                raise TokenwiseError(f"{key} needs abstain=<an abstaining strategy's name>")
        if self.abstain_below is not None and not 0 <= self.abstain_below <= 1:
            raise TokenwiseError(f"abstain_below must lie in [0, 1], got {self.abstain_below!r}")
        if self.abstain_above_entropy is not None and not self.abstain_above_entropy >= 0:
            raise TokenwiseError(f"abstain_above_entropy must be >= 0 (nats), got "
                                 f"{self.abstain_above_entropy!r}")

    # -- deciding ------------------------------------------------------------------------

    def decide(self, features: np.ndarray) -> Decision:
        """The strategy for one question's ``(D,)`` feature row.

        Args:
            features: the feature model's hidden state for the question.
        """
        if self.policy == "difficulty":
            probe = self.probes["difficulty"]
            p = probe.predict_proba(np.atleast_2d(features))[0]
            probs = {c: float(v) for c, v in zip(probe.classes, p, strict=True)}
            label = pick_label(probs)
            return Decision(self.mapping[label], label, probs,
                            f"labelled {label} (p = {probs[label]:.2f})")
        probs = {name: float(probe.score(np.atleast_2d(features), RIGHT)[0])
                 for name, probe in self.probes.items()}
        if self.abstain_below is not None and max(probs.values()) < self.abstain_below:
            assert self.abstain is not None
            return Decision(self.abstain, None, probs,
                            f"best P(right) {max(probs.values()):.2f} < {self.abstain_below}")
        value = {n: p - self.cost_weight * float(self.costs.get(n, 0.0)) for n, p in probs.items()}
        best = pick_strategy(value, self.costs)
        return Decision(best, None, probs, f"P(right) {probs[best]:.2f}, value {value[best]:.2f}")

    def decide_many(self, features: np.ndarray) -> list[Decision]:
        """:meth:`decide` for each row of ``(N, D)`` features.

        Args:
            features: one row per question.
        """
        return [self.decide(row) for row in np.atleast_2d(features)]

    def route(self, models: Mapping[str, LanguageModel], prompt: str) -> Decision:
        """Read ``prompt`` with the feature model and decide.

        Args:
            models: name -> loaded model; must hold :attr:`feature_model`.
            prompt: the question.
        """
        return self.decide(prompt_features(self._feature(models), [prompt], layer=self.layer,
                                           extras=self.extras)[0])

    def answer(self, models: Mapping[str, LanguageModel], prompt: str, *,
               seed: int | None = 0, decision: Decision | None = None) -> RoutedAnswer:
        """Route ``prompt`` and answer it with the chosen strategy.

        Args:
            models: name -> loaded model; must hold the feature model and every model the
                chosen strategy needs.
            prompt: the question.
            seed: base seed of sampled strategies.
            decision: a decision made earlier (skips the probe; its FLOPs are then not
                counted here).
        """
        flops = 0.0
        if decision is None:
            feature_model = self._feature(models)
            decision = self.route(models, prompt)
            flops += feature_flops(feature_model, prompt)
        result = run_strategy(self.by_name[decision.strategy], models, prompt, seed=seed)
        flops += result.flops
        abstained = result.abstained
        text = result.text
        if (not abstained and self.abstain_above_entropy is not None and len(result.samples) > 1
                and answer_entropy(result.samples) > self.abstain_above_entropy):
            assert self.abstain is not None
            abstained, text = True, self.by_name[self.abstain].abstain_text
        return RoutedAnswer(text, decision, result, abstained, flops)

    def _feature(self, models: Mapping[str, LanguageModel]) -> LanguageModel:
        if self.feature_model not in models:
            raise TokenwiseError(f"the router reads {self.feature_model!r}, which is not "
                                 f"loaded (loaded: {', '.join(sorted(models)) or 'none'})")
        model = models[self.feature_model]
        check_layer(model, self.layer)
        return model

    def models_needed(self) -> list[str]:
        """Every model the router may run: the feature model and the strategies' models."""
        names = {self.feature_model} | {s.model for s in self.strategies if not s.abstain}
        return sorted(names)

    # -- saving --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``router.json`` and the probes into ``directory`` (created if needed).

        Args:
            directory: where to write.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for i, (name, probe) in enumerate(self.probes.items()):
            files[name] = f"probe_{i}.safetensors"
            probe.save(out / files[name])
        config = {"format": "tokenwise-router/1", "strategies": [s.as_dict() for s in
                                                                 self.strategies],
                  "feature_model": self.feature_model, "layer": self.layer,
                  "extras": list(self.extras),
                  "policy": self.policy, "probes": files, "mapping": dict(self.mapping),
                  "costs": dict(self.costs), "cost_weight": self.cost_weight,
                  "abstain": self.abstain, "abstain_below": self.abstain_below,
                  "abstain_above_entropy": self.abstain_above_entropy, "meta": self.meta}
        (out / "router.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Router:
        """Read a router written by :meth:`save`.

        Args:
            directory: the router's directory.
        """
        path = Path(directory)
        config_path = path / "router.json"
        if not config_path.is_file():
            raise TokenwiseError(f"{str(path)!r} holds no router.json (write one with "
                                 "`tokenwise route train`)")
        try:
            c = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TokenwiseError(f"{str(config_path)!r} is not valid JSON: {exc}") from None
        if c.get("format") != "tokenwise-router/1":
            raise TokenwiseError(f"{str(config_path)!r} is not a tokenwise router "
                                 f"(format {c.get('format')!r})")
        probes = {name: DifficultyProbe.load(path / file) for name, file in c["probes"].items()}
        return cls(load_strategies(c["strategies"]), feature_model=c["feature_model"],
                   layer=c["layer"], extras=c.get("extras", []), policy=c["policy"],
                   probes=probes, mapping=c["mapping"],
                   costs=c["costs"], cost_weight=c["cost_weight"], abstain=c["abstain"],
                   abstain_below=c["abstain_below"],
                   abstain_above_entropy=c["abstain_above_entropy"], meta=c.get("meta", {}))


def pick_label(probs: Mapping[str, float]) -> str:
    """The most probable label; a tie goes to the harder one (the safer route), then to the
    first in ``probs``.

    Args:
        probs: label -> probability.

    Example:
        >>> pick_label({"easy": 0.4, "normal": 0.4, "hard": 0.2})
        'normal'
    """
    names = list(probs)
    return max(names, key=lambda c: (probs[c], LABELS.index(c) if c in LABELS else -1,
                                     -names.index(c)))


def pick_strategy(values: Mapping[str, float], costs: Mapping[str, float]) -> str:
    """The strategy of highest value; a tie goes to the cheaper one, then to the first.

    Args:
        values: strategy -> value (``P(right) - cost_weight x cost``).
        costs: strategy -> relative cost (missing = 0).

    Example:
        >>> pick_strategy({"large": 0.5, "small": 0.5}, {"large": 1.0, "small": 0.1})
        'small'
    """
    names = list(values)
    return max(names, key=lambda n: (values[n], -float(costs.get(n, 0.0)), -names.index(n)))
