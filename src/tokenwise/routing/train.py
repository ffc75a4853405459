"""Training a router: answer the training questions every way, label them, fit the probes,
choose the policy's settings by cross-validation.

:func:`collect` runs every strategy of the table on every training question (recording
right/wrong and FLOPs), samples ``k`` answers from the feature model for DiffAdapt's labels,
and reads each question's features. :func:`fit_router` fits the probes on that and picks the
cheapest setting (difficulty mapping, or value-policy cost weight) whose cross-validated
accuracy keeps ``target`` of the reference strategy's: the probes that make those choices
never saw the questions they are judged on.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.models import LanguageModel
from tokenwise.progress import progress_bar
from tokenwise.routing.features import feature_flops, prompt_features
from tokenwise.routing.labels import difficulty_labels
from tokenwise.routing.probe import DifficultyProbe, Kind
from tokenwise.routing.router import RIGHT, Policy, Router, pick_label, pick_strategy
from tokenwise.routing.strategy import Strategy, answer_entropy, run_strategy
from tokenwise.uncertainty.equivalence import normalise_text

#: How the feature model samples its ``k`` answers for the difficulty labels.
LABEL_SAMPLER = ({"name": "temperature", "temperature": 1.0},)


@dataclass(frozen=True)
class RouteItem:
    """A training or evaluation question.

    Args:
        prompt: the question as the models see it.
        answers: accepted answers (compared after :func:`normalise_text`).
        group: a free label for reports (e.g. the testbed pool).
        grade: optional ``grade(text) -> bool`` used instead of ``answers``.
    """

    prompt: str
    answers: tuple[str, ...] = ()
    group: str = ""
    grade: Callable[[str], bool] | None = field(default=None, compare=False)

    def is_right(self, text: str) -> bool:
        """Whether ``text`` answers the question.

        Args:
            text: an answer.
        """
        if self.grade is not None:
            return bool(self.grade(text))
        return normalise_text(text) in {normalise_text(a) for a in self.answers}


def read_items(path: str | os.PathLike[str]) -> list[RouteItem]:
    """Questions from a JSONL file: one ``{"prompt": ..., "answers": [...], "group": ...}``
    per line (``"answer"`` for a single accepted answer).

    Args:
        path: the file.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenwiseError(f"items file {str(path)!r} does not exist")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TokenwiseError(f"{path}:{n}: not JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) \
                or not row["prompt"]:
            raise TokenwiseError(f"{path}:{n}: each line needs a non-empty \"prompt\" string")
        answers = row.get("answers", [row["answer"]] if "answer" in row else None)
        if not isinstance(answers, list) or not answers \
                or not all(isinstance(a, str) for a in answers):
            raise TokenwiseError(f"{path}:{n}: needs \"answers\" (a non-empty list of "
                                 "strings) or \"answer\" (a string)")
        items.append(RouteItem(row["prompt"], tuple(answers), str(row.get("group", ""))))
    if not items:
        raise TokenwiseError(f"items file {str(path)!r} holds no questions")
    return items


@dataclass
class RoutingData:
    """Everything measured on a set of questions, enough to fit and to simulate routers.

    Attributes:
        prompts, groups: per question.
        features: ``(N, D)`` the feature model's hidden states.
        feature_flops: ``(N,)`` FLOPs of reading each question for its features.
        right: strategy -> ``(N,)`` bool, whether it answered right.
        flops: strategy -> ``(N,)`` FLOPs it spent.
        sample_accuracy: ``(N,)`` fraction of the feature model's ``k`` samples that were right.
        sample_entropy: ``(N,)`` entropy (nats) of those samples' normalised answers.
        token_entropy: ``(N,)`` mean entropy (nats) of the feature model's next-token
            distribution over those samples' tokens.
        meta: how it was collected.
        sample_flops: ``(N,)`` FLOPs the ``k`` labelling samples cost (for routers that
            sample before deciding, e.g. by semantic entropy); None if not recorded.
    """

    prompts: list[str]
    groups: list[str]
    features: np.ndarray
    feature_flops: np.ndarray
    right: dict[str, np.ndarray]
    flops: dict[str, np.ndarray]
    sample_accuracy: np.ndarray
    sample_entropy: np.ndarray
    token_entropy: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    sample_flops: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: Sequence[int] | np.ndarray) -> RoutingData:
        """The questions at ``index``.

        Args:
            index: positions to keep.
        """
        idx = np.asarray(index, dtype=int)
        return RoutingData([self.prompts[i] for i in idx], [self.groups[i] for i in idx],
                           self.features[idx], self.feature_flops[idx],
                           {k: v[idx] for k, v in self.right.items()},
                           {k: v[idx] for k, v in self.flops.items()},
                           self.sample_accuracy[idx], self.sample_entropy[idx],
                           self.token_entropy[idx], dict(self.meta),
                           None if self.sample_flops is None else self.sample_flops[idx])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to one ``.npz`` file.

        Args:
            path: the file.
        """
        path = Path(path)
        if path.suffix != ".npz":  # np.savez would add it; say which file was written
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"features": self.features, "feature_flops": self.feature_flops,
                  "sample_accuracy": self.sample_accuracy, "sample_entropy": self.sample_entropy,
                  "token_entropy": self.token_entropy}
        if self.sample_flops is not None:
            arrays["sample_flops"] = self.sample_flops
        for k, v in self.right.items():
            arrays[f"right/{k}"] = v
            arrays[f"flops/{k}"] = self.flops[k]
        header = {"prompts": self.prompts, "groups": self.groups, "meta": self.meta}
        np.savez(path, header=np.array(json.dumps(header)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RoutingData:
        """Read a file written by :meth:`save`.

        Args:
            path: the ``.npz`` file.
        """
        with np.load(path) as z:
            h = json.loads(str(z["header"]))
            right = {k[6:]: z[k] for k in z.files if k.startswith("right/")}
            flops = {k[6:]: z[k] for k in z.files if k.startswith("flops/")}
            return cls(h["prompts"], h["groups"], z["features"], z["feature_flops"], right,
                       flops, z["sample_accuracy"], z["sample_entropy"], z["token_entropy"],
                       h["meta"], z["sample_flops"] if "sample_flops" in z.files else None)

    def labels(self, **kwargs: Any) -> list[str]:
        """DiffAdapt labels of every question (:func:`~tokenwise.routing.difficulty_labels`).

        Args:
            kwargs: the labelling thresholds.
        """
        return difficulty_labels(self.sample_accuracy, self.sample_entropy, **kwargs)


def collect(items: Sequence[RouteItem], models: Mapping[str, LanguageModel],
            strategies: Sequence[Strategy], *, feature_model: str, layer: int = -1,
            extras: Sequence[str] = (), k: int = 10,
            label_max_new_tokens: int = 16, seed: int = 0,
            progress: bool = True) -> RoutingData:
    """Run every strategy on every question, sample ``k`` labelling answers, read features.

    Args:
        items: the questions.
        models: name -> loaded model (the feature model and every strategy's model).
        strategies: the table; abstaining strategies are recorded as never right, 0 FLOPs.
        feature_model: the model whose hidden states the probes read and whose ``k``
            samples (temperature 1) label difficulty.
        layer: the hidden state read.
        extras: scalar features appended to the hidden state
            (:func:`~tokenwise.routing.prompt_features`; ``()`` for the hidden state alone).
        k: labelling samples per question (>= 1).
        label_max_new_tokens: most tokens per labelling sample.
        seed: seeds the sampled strategies and the labelling samples.
        progress: show progress bars.

    Example:
        >>> from tokenwise.models import load
        >>> m = {"tw-small": load("tw-small")}
        >>> d = collect([RouteItem("2+2=", ("4",))], m, [Strategy("s", model="tw-small")],
        ...             feature_model="tw-small", k=2, progress=False)
        >>> bool(d.right["s"][0]), d.features.shape[0]
        (True, 1)
    """
    if not items:
        raise TokenwiseError("collect needs at least one question")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TokenwiseError(f"k must be an integer >= 1, got {k!r}")
    if feature_model not in models:
        raise TokenwiseError(f"feature model {feature_model!r} is not loaded "
                             f"(loaded: {', '.join(sorted(models))})")
    sampler = Strategy("_labels", model=feature_model, sampler=LABEL_SAMPLER, n=k,
                       max_new_tokens=label_max_new_tokens)
    n = len(items)
    right = {s.name: np.zeros(n, bool) for s in strategies}
    flops = {s.name: np.zeros(n) for s in strategies}
    acc, ent, tok, sflops = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    fm = models[feature_model]
    for i, item in enumerate(progress_bar(items, desc="answering", enabled=progress)):
        for s in strategies:
            a = run_strategy(s, models, item.prompt, seed=seed + 1000 * i)
            right[s.name][i] = (not a.abstained) and item.is_right(a.text)
            flops[s.name][i] = a.flops
        drawn = run_strategy(sampler, models, item.prompt, seed=seed + 1000 * i + 500)
        acc[i] = np.mean([item.is_right(t) for t in drawn.samples])
        ent[i] = answer_entropy(drawn.samples)
        tok[i] = drawn.mean_entropy
        sflops[i] = drawn.flops
    features = prompt_features(fm, [it.prompt for it in items], layer=layer, extras=extras,
                               progress=progress)
    fflops = np.array([feature_flops(fm, it.prompt) for it in items])
    meta = {"feature_model": feature_model, "layer": layer, "extras": list(extras), "k": k,
            "seed": seed,
            "strategies": [s.as_dict() for s in strategies]}
    return RoutingData([it.prompt for it in items], [it.group for it in items], features,
                       fflops, right, flops, acc, ent, tok, meta, sflops)


def simulate(data: RoutingData, choices: Sequence[str], *, abstain: str | None = None
             ) -> dict[str, float]:
    """Accuracy and FLOPs of answering each question with the strategy in ``choices``
    (probe reads included), from what :func:`collect` recorded.

    Args:
        data: the measured questions.
        choices: one strategy name per question.
        abstain: the abstaining strategy's name, if any (its questions count as abstained).

    Returns:
        ``accuracy`` (right / all), ``answered`` (share not abstained), ``accuracy_answered``
        (right / answered), ``flops`` (mean per question).
    """
    if len(choices) != len(data):
        raise TokenwiseError(f"{len(data)} questions but {len(choices)} choices")
    idx = np.arange(len(data))
    pairs = list(zip(idx, choices, strict=True))
    right = np.array([c != abstain and data.right[c][i] for i, c in pairs], bool)
    flops = np.array([0.0 if c == abstain else data.flops[c][i] for i, c in pairs])
    flops = flops + data.feature_flops
    answered = np.array([c != abstain for c in choices], bool)
    return {"accuracy": float(right.mean()), "answered": float(answered.mean()),
            "accuracy_answered": float(right[answered].mean()) if answered.any() else 0.0,
            "flops": float(flops.mean())}


def _folds(n: int, folds: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[f::folds] for f in range(folds)]


def cross_val_proba(features: np.ndarray, labels: Sequence[str], *, folds: int = 5,
                    kind: Kind = "logistic", seed: int = 0, **probe_kwargs: Any
                    ) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold probabilities: each question scored by a probe fitted without it.

    Args:
        features: ``(N, D)``.
        labels: N labels.
        folds: number of folds (>= 2).
        kind: the probe kind.
        seed: shuffles the folds.
        probe_kwargs: other :class:`DifficultyProbe` settings.

    Returns:
        ``(N, classes)`` probabilities and the class names (sorted).
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise TokenwiseError(f"folds must be an integer >= 2, got {folds!r}")
    labels = [str(v) for v in labels]
    if folds > len(labels):
        raise TokenwiseError(f"folds={folds} needs at least {folds} questions, got "
                             f"{len(labels)}; use fewer folds or more questions")
    classes = sorted(set(labels))
    out = np.zeros((len(labels), len(classes)))
    for held in _folds(len(labels), folds, seed):
        train = np.setdiff1d(np.arange(len(labels)), held)
        train_labels = [labels[i] for i in train]
        if len(set(train_labels)) < 2:  # a fold saw one class: predict it
            out[np.ix_(held, [classes.index(train_labels[0])])] = 1.0
            continue
        probe = DifficultyProbe(kind, seed=seed, **probe_kwargs).fit(features[train],
                                                                     train_labels)
        p = probe.predict_proba(features[held])
        for j, c in enumerate(probe.classes):
            out[held, classes.index(c)] = p[:, j]
    return out, classes


@dataclass
class Candidate:
    """One setting tried during selection, with its cross-validated accuracy and FLOPs."""

    setting: dict[str, Any]
    accuracy: float
    flops: float
    answered: float = 1.0


def _pick(cands: list[Candidate], floor: float) -> Candidate:
    ok = [c for c in cands if c.accuracy >= floor]
    if ok:
        return min(ok, key=lambda c: (c.flops, -c.accuracy))
    return max(cands, key=lambda c: (c.accuracy, -c.flops))


def fit_router(data: RoutingData, strategies: Sequence[Strategy], *, policy: Policy = "value",
               reference: str | None = None, target: float = 0.98, kind: Kind = "logistic",
               folds: int = 5, seed: int = 0, abstain: str | None = None,
               label_kwargs: Mapping[str, Any] | None = None,
               probe_kwargs: Mapping[str, Any] | None = None,
               cost_weights: Sequence[float] | None = None,
               select_on: Sequence[int] | None = None,
               abstain_below: float | None = None) -> Router:
    """Fit the probes on all of ``data`` and choose the policy's setting by cross-validation.

    Selection rule: among the candidate settings (every label -> strategy mapping for the
    difficulty policy; every cost weight of ``cost_weights`` for the value policy), the one
    with the lowest mean FLOPs whose out-of-fold accuracy is at least ``target`` x the
    ``reference`` strategy's accuracy on the same questions; if none reaches it, the most
    accurate. The candidates' numbers are stored in ``router.meta["selection"]``.

    Args:
        data: from :func:`collect`.
        strategies: the table ``data`` was collected with.
        policy: ``"value"`` or ``"difficulty"``.
        reference: the strategy whose accuracy the target is relative to (default: the one
            with the most FLOPs, e.g. the large model).
        target: the accuracy ratio to keep (0-1].
        kind: probe kind.
        folds: cross-validation folds.
        seed: fold shuffling and probe seeds.
        abstain: an abstaining strategy to allow in difficulty mappings.
        label_kwargs: thresholds for :func:`~tokenwise.routing.difficulty_labels`.
        probe_kwargs: other probe settings.
        cost_weights: value-policy candidates (default 0 to 2 in 41 steps).
        select_on: judge the candidates on these questions only (e.g. those drawn like the
            test set), while the probes learn from all of ``data``; default all.
        abstain_below: value policy with ``abstain``: answer with the abstaining strategy when
            the best out-of-fold P(right) is under this (the selection counts those
            questions as not right).
    """
    table = {s.name: s for s in strategies}
    runnable = [s.name for s in strategies if not s.abstain]
    if abstain is not None and (abstain not in table or not table[abstain].abstain):
        raise TokenwiseError(f"abstain must name an abstaining strategy of the table, got "
                             f"{abstain!r}")
    missing = [s for s in runnable if s not in data.right]
    if missing:
        raise TokenwiseError(f"data has no measurements for strategies {missing}; collect "
                             "with the same table")
    if abstain_below is not None and (policy != "value" or abstain is None
                                      or not 0 <= abstain_below <= 1):
        raise TokenwiseError(f"abstain_below={abstain_below!r} needs policy='value', an "
                             "abstain strategy and a value in [0, 1]")
    if not 0 < target <= 1:
        raise TokenwiseError(f"target must lie in (0, 1], got {target!r}")
    mean_flops = {s: float(data.flops[s].mean()) for s in runnable}
    reference = reference or max(runnable, key=lambda s: mean_flops[s])
    if reference not in runnable:
        raise TokenwiseError(f"reference {reference!r} is not a runnable strategy: {runnable}")
    sel = np.arange(len(data)) if select_on is None else np.asarray(select_on, dtype=int)
    if sel.size == 0 or sel.min() < 0 or sel.max() >= len(data):
        raise TokenwiseError(f"select_on must index the {len(data)} questions")
    judged = data.subset(sel)
    floor = target * float(judged.right[reference].mean())
    probe_kwargs = dict(probe_kwargs or {})
    meta: dict[str, Any] = {"n": len(data), "reference": reference, "target": target,
                            "reference_accuracy": float(judged.right[reference].mean()),
                            "judged_on": int(sel.size),
                            "kind": kind, "folds": folds}
    top = max(mean_flops.values()) or 1.0
    costs = {s: mean_flops[s] / top for s in runnable}
    cands: list[Candidate] = []
    if policy == "difficulty":
        labels = data.labels(**dict(label_kwargs or {}))
        proba, classes = cross_val_proba(data.features, labels, folds=folds, kind=kind,
                                         seed=seed, **probe_kwargs)
        predicted = [pick_label(dict(zip(classes, row, strict=True))) for row in proba[sel]]
        options = runnable + ([abstain] if abstain else [])
        for combo in itertools.product(options, repeat=len(classes)):
            mapping = dict(zip(classes, combo, strict=True))
            r = simulate(judged, [mapping[p] for p in predicted], abstain=abstain)
            cands.append(Candidate({"mapping": mapping}, r["accuracy"], r["flops"],
                                   r["answered"]))
        best = _pick(cands, floor)
        probe = DifficultyProbe(kind, seed=seed, **probe_kwargs).fit(data.features, labels)
        router = Router(strategies, feature_model=str(data.meta.get("feature_model")),
                        layer=int(data.meta.get("layer", -1)),
                        extras=tuple(data.meta.get("extras", ())), policy="difficulty",
                        probes={"difficulty": probe}, mapping=best.setting["mapping"],
                        abstain=abstain)
        meta["label_counts"] = {c: labels.count(c) for c in classes}
    elif policy == "value":
        ys = {s: [RIGHT if v else "wrong" for v in data.right[s]] for s in runnable}
        oof = {}
        for s in runnable:
            y = ys[s]
            if len(set(y)) < 2:
                raise TokenwiseError(f"strategy {s!r} was {'right' if y[0] == RIGHT else 'wrong'}"
                                     " on every training question: nothing for its probe to "
                                     "learn; add harder/easier questions or drop it")
            p, classes = cross_val_proba(data.features, y, folds=folds, kind=kind, seed=seed,
                                         **probe_kwargs)
            oof[s] = p[:, classes.index(RIGHT)]
        weights = list(cost_weights) if cost_weights is not None else list(
            np.round(np.linspace(0.0, 2.0, 41), 4))
        for w in weights:
            choice = [abstain if abstain_below is not None and abstain is not None
                      and max(oof[s][i] for s in runnable) < abstain_below
                      else pick_strategy({s: oof[s][i] - w * costs[s] for s in runnable}, costs)
                      for i in sel]
            r = simulate(judged, choice, abstain=abstain)
            cands.append(Candidate({"cost_weight": float(w)}, r["accuracy"], r["flops"],
                                   r["answered"]))
        best = _pick(cands, floor)
        probes = {s: DifficultyProbe(kind, seed=seed, **probe_kwargs).fit(data.features, ys[s])
                  for s in runnable}
        router = Router(strategies, feature_model=str(data.meta.get("feature_model")),
                        layer=int(data.meta.get("layer", -1)),
                        extras=tuple(data.meta.get("extras", ())), policy="value", probes=probes,
                        costs=costs, cost_weight=best.setting["cost_weight"],
                        abstain=abstain, abstain_below=abstain_below)
    else:
        raise TokenwiseError(f"policy must be 'difficulty' or 'value', got {policy!r}")
    meta["chosen"] = {**best.setting, "cv_accuracy": best.accuracy, "cv_flops": best.flops,
                      "meets_target": bool(best.accuracy >= floor)}
    meta["selection"] = [c.__dict__ for c in cands]
    router.meta = meta
    return router
