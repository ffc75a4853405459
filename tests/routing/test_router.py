"""Tests for tokenwise.routing.router: deciding, answering, saving."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tokenwise
from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.routing import router as router_mod
from tokenwise.routing.probe import DifficultyProbe
from tokenwise.routing.router import Router
from tokenwise.routing.strategy import Strategy, StrategyAnswer, answer_entropy


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def hand_probe(weights, biases, classes):
    """A logistic probe on 1-D features with chosen logits ``w_k x + b_k`` (no scaling)."""
    k = len(classes)
    x = np.arange(2 * k, dtype=float)[:, None]
    probe = DifficultyProbe().fit(x, [classes[i % k] for i in range(2 * k)])
    assert probe.classes == sorted(classes)
    probe._mean = torch.zeros(1, dtype=torch.float64)
    probe._std = torch.ones(1, dtype=torch.float64)
    with torch.no_grad():
        probe._net.weight.copy_(torch.tensor(weights, dtype=torch.float32)[:, None])
        probe._net.bias.copy_(torch.tensor(biases, dtype=torch.float32))
    return probe


def right_probe(a, c):
    """P(right | x) = sigmoid(a x + c)."""
    return hand_probe([a, 0.0], [c, 0.0], ["right", "wrong"])


TABLE = [Strategy("small", model="tw-small", max_new_tokens=6),
         Strategy("large", model="tw-large", max_new_tokens=6),
         Strategy("vote", model="tw-large", n=3, max_new_tokens=4,
                  sampler=({"name": "temperature", "temperature": 1.5},)),
         Strategy("idk", abstain=True, abstain_text="pass")]


@pytest.fixture(scope="module")
def models():
    return {"tw-small": load("tw-small"), "tw-large": load("tw-large")}


@pytest.fixture(scope="module")
def three_labels():
    """A fitted 1-D difficulty probe: easy near 0, normal near 1, hard near 2."""
    x = np.array([0.0, 0.1, 0.2, 1.0, 1.1, 1.2, 2.0, 2.1, 2.2])[:, None]
    return DifficultyProbe().fit(x, ["easy"] * 3 + ["normal"] * 3 + ["hard"] * 3)


MAPPING = {"easy": "small", "normal": "large", "hard": "idk"}


def value_router(**kwargs):
    probes = {"small": right_probe(1.0, 0.0), "large": right_probe(1.0, 2.0)}
    base = {"feature_model": "tw-small", "policy": "value", "probes": probes,
            "costs": {"small": 0.2, "large": 1.0}, "cost_weight": 0.3}
    base.update(kwargs)
    return Router(TABLE, **base)


# -- difficulty policy --------------------------------------------------------------------


def test_difficulty_policy_maps_the_label_through_the_mapping(three_labels):
    r = Router(TABLE, feature_model="tw-small", probes={"difficulty": three_labels},
               mapping=MAPPING)
    for x, label in [(0.1, "easy"), (1.1, "normal"), (2.1, "hard"), (-5.0, "easy"),
                     (9.0, "hard")]:
        d = r.decide(np.array([x]))
        p = three_labels.predict_proba(np.array([[x]]))[0]
        assert d.label == label == three_labels.classes[int(p.argmax())]
        assert d.strategy == MAPPING[label]
        assert d.probabilities == pytest.approx(dict(zip(three_labels.classes, p, strict=True)))
    many = r.decide_many(np.array([[0.1], [1.1], [2.1]]))
    assert [d.strategy for d in many] == ["small", "large", "idk"]


def test_difficulty_ties_go_to_the_harder_label():
    flat = hand_probe([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], ["easy", "normal", "hard"])
    r = Router(TABLE, feature_model="tw-small", probes={"difficulty": flat}, mapping=MAPPING)
    d = r.decide(np.array([0.3]))
    assert d.probabilities == pytest.approx({"easy": 1 / 3, "hard": 1 / 3, "normal": 1 / 3})
    assert d.label == "hard" and d.strategy == "idk"
    easy_normal = hand_probe([0.0, 0.0, 0.0], [1.0, -5.0, 1.0], ["easy", "normal", "hard"])
    # classes sorted: easy, hard, normal -> easy and normal tie: normal is harder
    r2 = Router(TABLE, feature_model="tw-small", probes={"difficulty": easy_normal},
                mapping=MAPPING)
    assert r2.decide(np.array([0.0])).label == "normal"


# -- value policy -------------------------------------------------------------------------


@pytest.mark.parametrize("x", [-3.0, -1.0, 0.0, 1.0, 3.0])
def test_value_policy_picks_the_best_value_by_hand(x):
    r = value_router()
    d = r.decide(np.array([x]))
    p_small, p_large = sigmoid(x), sigmoid(x + 2.0)
    assert d.probabilities == pytest.approx({"small": p_small, "large": p_large}, abs=1e-6)
    v_small, v_large = p_small - 0.3 * 0.2, p_large - 0.3 * 1.0
    assert d.strategy == ("small" if v_small > v_large else "large")
    assert d.label is None


def test_value_policy_hand_computed_choices():
    # x = -3: 0.0474 - 0.06 = -0.013 vs 0.2689 - 0.3 = -0.031 -> small
    # x = -1: 0.2689 - 0.06 = 0.209  vs 0.7311 - 0.3 = 0.431  -> large
    # x = 3:  0.9526 - 0.06 = 0.893  vs 0.9933 - 0.3 = 0.693  -> small
    r = value_router()
    assert [d.strategy for d in r.decide_many(np.array([[-3.0], [-1.0], [3.0]]))] == [
        "small", "large", "small"]
    # no cost weight: the most likely to be right, always the large model here
    free = value_router(cost_weight=0.0)
    assert [d.strategy for d in free.decide_many(np.array([[-3.0], [-1.0], [3.0]]))] == [
        "large"] * 3


def test_value_ties_go_to_the_cheaper_strategy():
    probes = {"small": right_probe(0.0, 0.0), "large": right_probe(0.0, 0.0)}
    r = Router(TABLE, feature_model="tw-small", policy="value", probes=probes,
               costs={"small": 0.2, "large": 1.0}, cost_weight=0.0)
    assert r.decide(np.array([0.0])).strategy == "small"


def test_abstain_below():
    r = value_router(abstain="idk", abstain_below=0.5)
    low = r.decide(np.array([-3.0]))  # best P(right) = sigmoid(-1) = 0.269 < 0.5
    assert low.strategy == "idk"
    assert max(low.probabilities.values()) == pytest.approx(sigmoid(-1.0), abs=1e-6)
    assert r.decide(np.array([-1.0])).strategy == "large"  # best = sigmoid(1) = 0.731
    edge = value_router(abstain="idk", abstain_below=sigmoid(1.0) - 1e-4)
    assert edge.decide(np.array([-1.0])).strategy == "large"
    edge_hi = value_router(abstain="idk", abstain_below=sigmoid(1.0) + 1e-4)
    assert edge_hi.decide(np.array([-1.0])).strategy == "idk"


# -- answering ------------------------------------------------------------------------------


def _fake_run(samples, flops=100.0):
    def fake(strategy, models, prompt, *, seed=0):
        return StrategyAnswer(strategy.name, samples[0], list(samples), 1, flops, 3)

    return fake


@pytest.mark.parametrize(("cap", "abstains"), [(0.5, True), (0.7, False), (math.log(3), False)])
def test_abstain_above_entropy_with_controlled_samples(monkeypatch, models, cap, abstains):
    samples = ["4", "5", "4"]  # entropy -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.6365
    assert answer_entropy(samples) == pytest.approx(
        -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    monkeypatch.setattr(router_mod, "run_strategy", _fake_run(samples))
    r = value_router(abstain="idk", abstain_above_entropy=cap)
    d = router_mod.Decision("vote", None, {}, "given")
    out = r.answer(models, "2+2=", decision=d)
    assert out.abstained is abstains
    assert out.text == ("pass" if abstains else "4")
    assert out.flops == 100.0  # a given decision: no probe read counted


def test_abstain_above_entropy_ignores_single_answers(monkeypatch, models):
    monkeypatch.setattr(router_mod, "run_strategy", _fake_run(["7"]))
    r = value_router(abstain="idk", abstain_above_entropy=0.0)
    out = r.answer(models, "2+2=", decision=router_mod.Decision("small", None, {}, ""))
    assert not out.abstained and out.text == "7"


def test_abstain_above_entropy_with_a_real_sampled_strategy(models):
    r = value_router(abstain="idk", abstain_above_entropy=0.3)
    d = router_mod.Decision("vote", None, {}, "given")
    for seed in range(3):
        out = r.answer(models, "9*9=", decision=d, seed=seed)
        assert len(out.answer.samples) == 3
        scattered = answer_entropy(out.answer.samples) > 0.3
        assert out.abstained is scattered
        assert out.text == ("pass" if scattered else out.answer.text)


def test_answer_flops_are_feature_flops_plus_strategy_flops(models, three_labels):
    small, large = models["tw-small"], models["tw-large"]
    prompt = "7+5="
    # a probe on real features, mapping everything to the large model
    feats = tokenwise.routing.prompt_features(small, ["2+2=", "7+5=", "Q: hi", "hello"])
    probe = DifficultyProbe().fit(feats, ["easy", "easy", "hard", "hard"])
    r = Router(TABLE, feature_model="tw-small", probes={"difficulty": probe},
               mapping={"easy": "large", "hard": "large"})
    out = r.answer(models, prompt)
    ref = tokenwise.generate(large, prompt, max_new_tokens=6, stop="\n")
    assert out.text == ref.text.strip() and out.decision.strategy == "large"
    read = len(small.encode(prompt, add_bos=True))
    gen = ref.prompt_tokens + len(ref.tokens) - (0 if ref.finish_reason == "eos" else 1)
    want = 2 * small.num_parameters() * read + 2 * large.num_parameters() * gen
    assert out.flops == pytest.approx(want, rel=1e-12)
    assert out.answer.flops == 2 * large.num_parameters() * gen
    assert out.as_dict()["strategy"] == "large" and out.as_dict()["flops"] == out.flops
    # route() decides on the feature model's own features
    assert r.route(models, prompt).strategy == r.decide(
        tokenwise.routing.prompt_features(small, [prompt])[0]).strategy


def test_abstaining_route_costs_only_the_probe_read(models, three_labels):
    r = Router(TABLE, feature_model="tw-small", probes={"difficulty": three_labels},
               mapping=MAPPING)
    out = r.answer(models, "2+2=", decision=router_mod.Decision("idk", "hard", {}, ""))
    assert out.abstained and out.text == "pass" and out.flops == 0.0


def test_answer_needs_the_feature_model(three_labels):
    r = Router(TABLE, feature_model="tw-small", probes={"difficulty": three_labels},
               mapping=MAPPING)
    with pytest.raises(TokenwiseError, match="reads 'tw-small', which is not loaded"):
        r.answer({}, "2+2=")


def test_models_needed(three_labels):
    r = Router(TABLE, feature_model="tw-medium", probes={"difficulty": three_labels},
               mapping=MAPPING)
    assert r.models_needed() == ["tw-large", "tw-medium", "tw-small"]


# -- constructor errors -----------------------------------------------------------------------


def _cases():
    good3 = DifficultyProbe().fit(np.array([[0.0], [1.0], [2.0]]), ["easy", "normal", "hard"])
    no_right = DifficultyProbe().fit(np.array([[0.0], [1.0]]), ["ok", "wrong"])
    rp = right_probe(1.0, 0.0)
    return [
        (dict(probes={"difficulty": good3}, mapping={**MAPPING, "hard": "huge"}),
         "mapping sends 'hard' to unknown strategy 'huge'"),
        (dict(probes={"difficulty": good3}, mapping={"easy": "small", "hard": "idk"}),
         "no strategy for label(s) ['normal']"),
        (dict(probes={}, mapping=MAPPING), "needs probes={'difficulty': probe}"),
        (dict(probes={"difficulty": DifficultyProbe()}, mapping=MAPPING),
         "probe 'difficulty' must be a fitted DifficultyProbe"),
        (dict(policy="value", probes={"small": no_right}), "the probe of 'small' has no 'right'"),
        (dict(policy="value", probes={"medium": rp}), "probe for unknown strategy 'medium'"),
        (dict(policy="value", probes={}), "needs one probe per strategy"),
        (dict(policy="value", probes={"small": rp, "large": rp}, costs={"small": 0.1},
              cost_weight=0.5), "missing: ['large']"),
        (dict(policy="value", probes={"small": rp}, costs={"small": 0.1}, cost_weight=-1.0),
         "cost_weight must be >= 0, got -1.0"),
        (dict(probes={"difficulty": good3}, mapping=MAPPING, abstain="small"),
         "abstain must name an abstaining strategy of the table, got 'small'"),
        (dict(probes={"difficulty": good3}, mapping=MAPPING, abstain="nothing"),
         "got 'nothing'"),
        (dict(policy="value", probes={"small": rp}, abstain_below=0.5),
         "abstain_below needs abstain="),
        (dict(probes={"difficulty": good3}, mapping=MAPPING, abstain_above_entropy=0.5),
         "abstain_above_entropy needs abstain="),
        (dict(policy="value", probes={"small": rp}, abstain="idk", abstain_below=1.5),
         "abstain_below must lie in [0, 1], got 1.5"),
        (dict(policy="greedy", probes={"difficulty": good3}, mapping=MAPPING),
         "policy must be 'difficulty' or 'value', got 'greedy'"),
        (dict(feature_model="", probes={"difficulty": good3}, mapping=MAPPING),
         "feature_model must name"),
    ]


@pytest.mark.parametrize("case", range(16))
def test_every_constructor_error(case):
    kwargs, needle = _cases()[case]
    kwargs = {"feature_model": "tw-small", **kwargs}
    with pytest.raises(TokenwiseError) as err:
        Router(TABLE, **kwargs)
    assert needle in str(err.value)


def test_cost_weight_zero_needs_no_costs():
    r = Router(TABLE, feature_model="tw-small", policy="value",
               probes={"small": right_probe(1.0, 0.0)})
    assert r.decide(np.array([0.0])).strategy == "small"


def test_duplicate_strategy_names_are_refused(three_labels):
    with pytest.raises(TokenwiseError, match="repeated: small"):
        Router([*TABLE, Strategy("small", model="x")], feature_model="tw-small",
               probes={"difficulty": three_labels}, mapping=MAPPING)


# -- saving ---------------------------------------------------------------------------------


GRID = np.linspace(-4, 4, 33)[:, None]


def test_save_load_round_trip_difficulty(tmp_path, three_labels):
    r = Router(TABLE, feature_model="tw-small", layer=-2, probes={"difficulty": three_labels},
               mapping=MAPPING, abstain="idk", abstain_above_entropy=0.4, meta={"note": [1, 2]})
    back = Router.load(r.save(tmp_path / "r"))
    assert [d.as_dict() for d in back.decide_many(GRID)] == [
        d.as_dict() for d in r.decide_many(GRID)]
    assert [s.as_dict() for s in back.strategies] == [s.as_dict() for s in TABLE]
    assert (back.feature_model, back.layer, back.policy, dict(back.mapping), back.abstain,
            back.abstain_above_entropy, back.meta) == (
        "tw-small", -2, "difficulty", MAPPING, "idk", 0.4, {"note": [1, 2]})


def test_save_load_round_trip_value(tmp_path):
    r = value_router(abstain="idk", abstain_below=0.4)
    back = Router.load(r.save(tmp_path / "v"))
    assert [d.as_dict() for d in back.decide_many(GRID)] == [
        d.as_dict() for d in r.decide_many(GRID)]
    assert {d.strategy for d in back.decide_many(GRID)} == {"small", "large", "idk"}
    assert dict(back.costs) == {"small": 0.2, "large": 1.0} and back.cost_weight == 0.3
    assert back.abstain_below == 0.4


def test_load_errors(tmp_path):
    with pytest.raises(TokenwiseError, match=r"holds no router\.json"):
        Router.load(tmp_path)
    (tmp_path / "router.json").write_text("{", encoding="utf-8")
    with pytest.raises(TokenwiseError, match="not valid JSON"):
        Router.load(tmp_path)
    (tmp_path / "router.json").write_text('{"format": "other/2"}', encoding="utf-8")
    with pytest.raises(TokenwiseError, match="format 'other/2'"):
        Router.load(tmp_path)
