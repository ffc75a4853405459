"""Extra features (next-token entropy after the prompt) and the shared tie rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.routing import (
    RoutingData,
    Strategy,
    fit_router,
    pick_label,
    pick_strategy,
    prompt_features,
)


@pytest.fixture(scope="module")
def small():
    return load("tw-small")


def test_extras_are_the_next_token_entropy_and_top_logprob(small):
    prompt = "3+4="
    x = prompt_features(small, [prompt], extras=("entropy", "top_logprob"))[0]
    plain = prompt_features(small, [prompt])[0]
    logits = small.forward(torch.tensor([small.encode(prompt, add_bos=True)])).logits[0, -1]
    lp = torch.log_softmax(logits.double(), -1)
    assert x.shape == (plain.shape[0] + 2,)
    np.testing.assert_array_equal(x[:-2], plain)
    assert x[-2] == pytest.approx(float(-(lp.exp() * lp).sum()), rel=1e-4)
    assert x[-1] == pytest.approx(float(lp.max()), rel=1e-4, abs=1e-5)
    # order follows the request
    y = prompt_features(small, [prompt], extras=("top_logprob", "entropy"))[0]
    assert y[-1] == pytest.approx(x[-2]) and y[-2] == pytest.approx(x[-1])


@pytest.mark.parametrize("extras", [("entropy", "entropy"), ("logits",), "entropy"])
def test_bad_extras_are_refused(small, extras):
    with pytest.raises(TokenwiseError, match="extras must be"):
        prompt_features(small, ["1+1="], extras=extras)


def test_tie_rules():
    assert pick_label({"easy": 0.5, "hard": 0.5}) == "hard"
    assert pick_label({"easy": 0.3, "normal": 0.3, "hard": 0.3}) == "hard"
    assert pick_label({"easy": 0.6, "hard": 0.4}) == "easy"
    assert pick_strategy({"large": 0.5, "small": 0.5}, {"large": 1.0, "small": 0.1}) == "small"
    assert pick_strategy({"a": 0.5, "b": 0.5}, {}) == "a"
    assert pick_strategy({"a": 0.4, "b": 0.5}, {"b": 9.0}) == "b"


def _data() -> RoutingData:
    # two identical feature rows per pair: the probes cannot tell them apart, so ties happen
    x = np.array([[0.0], [0.0], [1.0], [1.0]])
    right = {"small": np.array([True, False, True, False]),
             "large": np.array([True, False, True, False])}
    flops = {"small": np.full(4, 1.0), "large": np.full(4, 10.0)}
    z = np.zeros(4)
    return RoutingData(["a", "b", "c", "d"], [""] * 4, x, z, right, flops, z, z, z,
                       {"feature_model": "m", "layer": -1})


def test_selection_and_routing_break_ties_alike():
    table = [Strategy("small", model="m"), Strategy("large", model="m")]
    router = fit_router(_data(), table, policy="value", folds=2, cost_weights=[0.0])
    # P(right) is the same for both strategies everywhere: the cheaper one must be chosen, in
    # the cross-validated simulation (FLOPs 1 per question) and by the router itself
    assert router.meta["selection"][0]["flops"] == pytest.approx(1.0)
    assert {d.strategy for d in router.decide_many(_data().features)} == {"small"}


def test_fit_router_refuses_an_unknown_abstain():
    table = [Strategy("small", model="m"), Strategy("large", model="m")]
    with pytest.raises(TokenwiseError, match="abstain must name an abstaining strategy"):
        fit_router(_data(), table, policy="value", folds=2, abstain="idk")


def test_fit_router_value_policy_abstains_below_the_bar():
    from tokenwise.routing import cross_val_proba

    table = [Strategy("small", model="m"), Strategy("large", model="m"),
             Strategy("idk", abstain=True)]
    data = _data()
    router = fit_router(data, table, policy="value", folds=2, cost_weights=[0.0],
                        abstain="idk", abstain_below=0.9)
    # the reference: out-of-fold P(right) per strategy, abstain where the best is under 0.9
    best = np.zeros(4)
    for s in ("small", "large"):
        y = ["right" if v else "wrong" for v in data.right[s]]
        p, classes = cross_val_proba(data.features, y, folds=2)
        best = np.maximum(best, p[:, classes.index("right")])
    declined = best < 0.9
    cand = router.meta["selection"][0]
    assert cand["answered"] == pytest.approx(1 - declined.mean())
    assert cand["flops"] == pytest.approx((~declined).mean() * 1.0)  # small where answered
    assert router.abstain_below == 0.9
    with pytest.raises(TokenwiseError, match=r"abstain_below=0\.9 needs policy='value'"):
        fit_router(data, table, policy="difficulty", folds=2, abstain="idk",
                   abstain_below=0.9)


def test_router_refuses_a_probe_for_an_abstaining_strategy_and_a_negative_entropy_bar():
    from tokenwise.routing import DifficultyProbe, Router

    table = [Strategy("small", model="m"), Strategy("idk", abstain=True)]
    probe = DifficultyProbe().fit(np.array([[0.0], [1.0]]), ["right", "wrong"])
    with pytest.raises(TokenwiseError, match="'idk' abstains: it takes no probe"):
        Router(table, feature_model="m", policy="value", probes={"small": probe, "idk": probe})
    with pytest.raises(TokenwiseError, match="abstain_above_entropy must be >= 0"):
        Router(table, feature_model="m", policy="value", probes={"small": probe},
               abstain="idk", abstain_above_entropy=-1.0)


@pytest.mark.parametrize("target", [0.5, 1.0])
def test_fit_router_says_whether_the_target_was_met(target):
    data = _data()
    data.right["large"] = np.array([True, True, True, False])  # 0.75; small 0.5
    table = [Strategy("small", model="m"), Strategy("large", model="m")]
    router = fit_router(data, table, policy="value", folds=2, target=target,
                        cost_weights=[0.0, 10.0])
    chosen = router.meta["chosen"]
    assert chosen["meets_target"] == (chosen["cv_accuracy"] >= target * 0.75)
    if target == 0.5:  # weight 10 always picks small (0.5 >= 0.375): met, and cheapest
        assert chosen["meets_target"] and chosen["cost_weight"] == 10.0
    else:  # nothing reaches 0.75 x 1.0 unless the probes route perfectly: not met here
        assert chosen["cv_accuracy"] < 0.75 and not chosen["meets_target"]
