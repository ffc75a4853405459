"""Tests for tokenwise.routing.train: items, collecting, simulating, cross-validating, fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tokenwise
from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.routing.features import feature_flops, prompt_features
from tokenwise.routing.probe import DifficultyProbe
from tokenwise.routing.strategy import Strategy
from tokenwise.routing.train import (
    RouteItem,
    RoutingData,
    collect,
    cross_val_proba,
    fit_router,
    read_items,
    simulate,
)
from tokenwise.sampling import get
from tokenwise.uncertainty.equivalence import normalise_text

TABLE = [Strategy("small", model="tw-small", max_new_tokens=6),
         Strategy("large", model="tw-large", max_new_tokens=6),
         Strategy("idk", abstain=True)]


def make_data(n=20, small_right=None, large_right=None):
    """Hand-built data on 1-D features x = linspace(-1, 1, n): by default the small strategy
    is right exactly where x < 0, the large one everywhere but the two leftmost questions.
    FLOPs: small 1, large 10, abstain 0, reading the features 0.5."""
    x = np.linspace(-1.0, 1.0, n)
    small = (x < 0) if small_right is None else np.asarray(small_right, bool)
    if large_right is None:
        large = np.ones(n, bool)
        large[:2] = False
    else:
        large = np.asarray(large_right, bool)
    return RoutingData(
        prompts=[f"q{i}" for i in range(n)], groups=["g"] * n,
        features=x[:, None].astype(np.float32), feature_flops=np.full(n, 0.5),
        right={"small": small, "large": large, "idk": np.zeros(n, bool)},
        flops={"small": np.ones(n), "large": np.full(n, 10.0), "idk": np.zeros(n)},
        sample_accuracy=np.where(x < 0, 1.0, 0.0), sample_entropy=np.zeros(n),
        token_entropy=np.zeros(n), meta={"feature_model": "tw-small", "layer": -1})


# -- items ----------------------------------------------------------------------------------


def test_is_right_normalises_both_sides():
    item = RouteItem("Capital of France?", ("Paris", "the City of Light"))
    assert item.is_right("paris")
    assert item.is_right("  The PARIS. ")
    assert item.is_right("city of light!")
    assert not item.is_right("Lyon")
    assert not item.is_right("Paris France")
    assert RouteItem("2+2=", ("4",)).is_right("4.")
    assert not RouteItem("q", ()).is_right("anything")


def test_is_right_uses_grade_when_given():
    item = RouteItem("q", ("4",), grade=lambda t: t.startswith("x"))
    assert item.is_right("xyz") and not item.is_right("4")
    assert RouteItem("q", grade=lambda t: 1) == RouteItem("q", grade=lambda t: 0)


def test_read_items_good_file(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"prompt": "2+2=", "answers": ["4", "four"], "group": "arith"}\n'
                    "\n"
                    '{"prompt": "Capital?", "answer": "Paris"}\n'
                    '{"prompt": "n", "answers": ["1"], "answer": "2", "group": 7}\n',
                    encoding="utf-8")
    items = read_items(path)
    assert items == [RouteItem("2+2=", ("4", "four"), "arith"),
                     RouteItem("Capital?", ("Paris",), ""),
                     RouteItem("n", ("1",), "7")]
    assert read_items(str(path)) == items


@pytest.mark.parametrize(("lines", "needle"), [
    (['{"prompt": "a", "answer": "1"}', "", '{"prompt": oops}'], ":3: not JSON"),
    (['{"answer": "1"}'], ':1: each line needs a non-empty "prompt"'),
    (['{"prompt": "", "answer": "1"}'], ":1: each line needs"),
    (['{"prompt": 5, "answer": "1"}'], ":1: each line needs"),
    (['["prompt", "answer"]'], ":1: each line needs"),
    (['{"prompt": "a", "answer": "1"}', '{"prompt": "b"}'], ':2: needs "answers"'),
    (['{"prompt": "a", "answers": []}'], ':1: needs "answers"'),
    (['{"prompt": "a", "answers": "4"}'], ':1: needs "answers"'),
    (['{"prompt": "a", "answer": 4}'], ':1: needs "answers"'),
    ([], "holds no questions"),
    (["", "   "], "holds no questions"),
])
def test_read_items_errors(tmp_path, lines, needle):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenwiseError) as err:
        read_items(path)
    assert needle in str(err.value)


def test_read_items_missing_file(tmp_path):
    with pytest.raises(TokenwiseError, match="does not exist"):
        read_items(tmp_path / "none.jsonl")


# -- simulate -------------------------------------------------------------------------------


def test_simulate_by_hand():
    data = make_data(n=4)  # x = -1, -1/3, 1/3, 1; small right on 0, 1; large on 2, 3
    r = simulate(data, ["small", "large", "large", "idk"], abstain="idk")
    # right: yes (small@0), no (large@1), yes (large@2), no (idk)
    assert r["accuracy"] == 0.5
    assert r["answered"] == 0.75
    assert r["accuracy_answered"] == pytest.approx(2 / 3)
    assert r["flops"] == pytest.approx((1 + 10 + 10 + 0) / 4 + 0.5)
    everyone = simulate(data, ["small"] * 4)
    assert everyone == {"accuracy": 0.5, "answered": 1.0, "accuracy_answered": 0.5,
                        "flops": 1.5}
    none = simulate(data, ["idk"] * 4, abstain="idk")
    assert none["answered"] == 0.0 and none["accuracy_answered"] == 0.0
    with pytest.raises(TokenwiseError, match="4 questions but 3 choices"):
        simulate(data, ["small"] * 3)


def test_subset_keeps_rows_aligned():
    data = make_data(n=6)
    sub = data.subset([4, 0])
    assert sub.prompts == ["q4", "q0"] and len(sub) == 2
    np.testing.assert_array_equal(sub.features[:, 0], data.features[[4, 0], 0])
    np.testing.assert_array_equal(sub.right["small"], [False, True])


# -- cross-validation -----------------------------------------------------------------------


def test_cross_val_proba_equals_manual_leave_one_out_fits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 2))
    y = ["a", "b", "a", "b", "a", "b", "a", "a", "b"]
    proba, classes = cross_val_proba(x, y, folds=9, seed=4)  # one question per fold
    assert classes == ["a", "b"]
    for i in range(9):
        keep = [j for j in range(9) if j != i]
        probe = DifficultyProbe(seed=4).fit(x[keep], [y[j] for j in keep])
        np.testing.assert_allclose(proba[i], probe.predict_proba(x[i:i + 1])[0], atol=1e-12)


def test_cross_val_proba_never_sees_the_row_it_scores():
    # the only "c" question: a probe that saw it would give it some P(c); out of fold it
    # cannot know the class exists, whichever fold it falls in
    x = np.concatenate([np.linspace(0, 1, 10), np.linspace(5, 6, 10), [20.0]])[:, None]
    y = ["a"] * 10 + ["b"] * 10 + ["c"]
    for folds, seed in [(2, 0), (3, 1), (5, 2), (21, 0)]:
        proba, classes = cross_val_proba(x, y, folds=folds, seed=seed)
        assert classes == ["a", "b", "c"]
        assert proba[20, classes.index("c")] == 0.0
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    # while a probe fitted on everything gives it most of the mass
    assert DifficultyProbe().fit(x, y).predict(x[20:]) == ["c"]


def test_cross_val_proba_duplicated_points():
    # each point appears twice with opposite labels, except point 0, labelled "b" once; its
    # out-of-fold P(b) must not exceed that of an identical fit without it
    x = np.repeat(np.linspace(-1, 1, 8), 2)[:, None]
    y = ["a", "b"] * 8
    x = np.concatenate([x, [[3.0]]])
    y = [*y, "b"]
    proba, classes = cross_val_proba(x, y, folds=len(y), seed=0)
    without = DifficultyProbe(seed=0).fit(x[:-1], y[:-1]).predict_proba(x[-1:])[0]
    np.testing.assert_allclose(proba[-1], without, atol=1e-12)
    with_it = DifficultyProbe(seed=0).fit(x, y).predict_proba(x[-1:])[0]
    assert with_it[classes.index("b")] > proba[-1, classes.index("b")]


def test_cross_val_proba_one_class_folds_and_errors():
    x = np.arange(4.0)[:, None]
    proba, classes = cross_val_proba(x, ["a", "a", "a", "b"], folds=4)
    # leaving "b" out leaves only "a": that fold predicts "a" for sure
    assert classes == ["a", "b"] and proba[3].tolist() == [1.0, 0.0]
    with pytest.raises(TokenwiseError, match="folds must be an integer >= 2, got 1"):
        cross_val_proba(x, ["a", "b", "a", "b"], folds=1)


# -- fit_router -----------------------------------------------------------------------------


def _manual_candidate(data, oof, costs, w, sel):
    """Accuracy and FLOPs of the value policy at cost weight w, by a plain loop."""
    right = flops = 0.0
    for i in sel:
        vs = oof["small"][i] - w * costs["small"]
        vl = oof["large"][i] - w * costs["large"]
        pick = "small" if vs >= vl else "large"
        right += data.right[pick][i]
        flops += data.flops[pick][i] + data.feature_flops[i]
    return right / len(sel), flops / len(sel)


def test_fit_router_value_selects_the_cheapest_setting_meeting_the_target():
    data = make_data()
    router = fit_router(data, TABLE, policy="value", target=0.98, folds=5)
    meta = router.meta
    assert meta["reference"] == "large"  # the dearest by default
    assert meta["reference_accuracy"] == 0.9 and meta["judged_on"] == 20
    assert len(meta["selection"]) == 41  # cost weights 0, 0.05, ..., 2
    weights = [c["setting"]["cost_weight"] for c in meta["selection"]]
    assert weights == pytest.approx(np.linspace(0, 2, 41).tolist())
    # the candidates' numbers, recomputed from out-of-fold probabilities by hand
    oof = {}
    for s in ("small", "large"):
        y = ["right" if v else "wrong" for v in data.right[s]]
        p, classes = cross_val_proba(data.features, y, folds=5, seed=0)
        oof[s] = p[:, classes.index("right")]
    costs = {"small": 0.1, "large": 1.0}
    assert dict(router.costs) == pytest.approx(costs)
    for c in meta["selection"]:
        acc, fl = _manual_candidate(data, oof, costs, c["setting"]["cost_weight"], range(20))
        assert c["accuracy"] == pytest.approx(acc) and c["flops"] == pytest.approx(fl)
    # the choice: lowest FLOPs among those at >= 0.98 x 0.9, most accurate on ties
    floor = 0.98 * 0.9
    ok = [c for c in meta["selection"] if c["accuracy"] >= floor]
    assert ok
    cheapest = min(c["flops"] for c in ok)
    assert meta["chosen"]["cv_flops"] == cheapest
    assert meta["chosen"]["cv_accuracy"] == max(c["accuracy"] for c in ok
                                                if c["flops"] == cheapest)
    assert router.cost_weight == meta["chosen"]["cost_weight"]
    assert cheapest < 10.5  # cheaper than always asking the large model
    # the fitted router sends clear cases where they belong
    assert [d.strategy for d in router.decide_many(np.array([[-0.9], [0.9]]))] == [
        "small", "large"]
    assert router.policy == "value" and set(router.probes) == {"small", "large"}


def test_fit_router_value_hand_computed_cost_weights():
    data = make_data()
    # at w = 5 the small model always wins (values p - 0.5 vs p - 5): accuracy 0.5, FLOPs 1.5
    strict = fit_router(data, TABLE, policy="value", cost_weights=[0.0, 5.0], target=0.98)
    sel = strict.meta["selection"]
    assert sel[1] == {"setting": {"cost_weight": 5.0}, "accuracy": 0.5, "flops": 1.5,
                      "answered": 1.0}
    assert sel[0]["accuracy"] >= 0.98 * 0.9
    assert strict.cost_weight == 0.0
    lax = fit_router(data, TABLE, policy="value", cost_weights=[0.0, 5.0], target=0.5)
    assert lax.cost_weight == 5.0  # 0.5 >= 0.5 x 0.9 and cheaper
    assert lax.meta["chosen"] == {"cost_weight": 5.0, "cv_accuracy": 0.5, "cv_flops": 1.5,
                                  "meets_target": True}


def test_fit_router_falls_back_on_the_most_accurate():
    data = make_data()
    r = fit_router(data, TABLE, policy="value", cost_weights=[5.0, 10.0], target=1.0)
    assert [c["accuracy"] for c in r.meta["selection"]] == [0.5, 0.5]  # none reaches 0.9
    assert r.cost_weight == 5.0  # the most accurate (first on a full tie)


def test_fit_router_honours_select_on():
    data = make_data()
    right_half = list(range(10, 20))  # x > 0: large always right, small never
    r = fit_router(data, TABLE, policy="value", cost_weights=[0.0, 5.0], target=0.5,
                   select_on=right_half)
    assert r.meta["judged_on"] == 10 and r.meta["reference_accuracy"] == 1.0
    sel = r.meta["selection"]
    assert sel[1]["accuracy"] == 0.0 and sel[1]["flops"] == 1.5
    assert r.cost_weight == 0.0  # on all the data, target 0.5 chose 5.0
    # the probes still learnt from every question
    assert r.probes["small"].predict(np.array([[-0.9]])) == ["right"]


@pytest.mark.parametrize("bad", [[], [20], [-1]])
def test_fit_router_select_on_errors(bad):
    with pytest.raises(TokenwiseError, match="select_on must index the 20 questions"):
        fit_router(make_data(), TABLE, select_on=bad, cost_weights=[0.0])


def test_fit_router_difficulty_policy():
    data = make_data()  # labels: easy where x < 0 (sample accuracy 1), hard where x > 0
    r = fit_router(data, TABLE, policy="difficulty", target=0.98, abstain="idk")
    assert r.meta["label_counts"] == {"easy": 10, "hard": 10}
    sel = r.meta["selection"]
    assert len(sel) == 3 ** 2  # {small, large, idk} for each of 2 labels
    floor = 0.98 * 0.9
    ok = [c for c in sel if c["accuracy"] >= floor]
    assert r.meta["chosen"]["cv_flops"] == min(c["flops"] for c in ok)
    assert dict(r.mapping) == {"easy": "small", "hard": "large"}
    always_idk = next(c for c in sel if c["setting"]["mapping"] == {"easy": "idk",
                                                                    "hard": "idk"})
    assert always_idk["accuracy"] == 0.0 and always_idk["answered"] == 0.0
    assert always_idk["flops"] == 0.5
    assert r.abstain == "idk" and r.policy == "difficulty"


def test_fit_router_value_policy_refuses_a_strategy_right_everywhere():
    data = make_data(small_right=np.ones(20, bool))
    with pytest.raises(TokenwiseError, match="strategy 'small' was right on every training"):
        fit_router(data, TABLE, policy="value")
    data = make_data(large_right=np.zeros(20, bool))
    with pytest.raises(TokenwiseError, match="strategy 'large' was wrong on every training"):
        fit_router(data, TABLE, policy="value")


def test_fit_router_errors():
    data = make_data()
    with pytest.raises(TokenwiseError, match="no measurements for strategies \\['medium'\\]"):
        fit_router(data, [*TABLE, Strategy("medium", model="x")])
    with pytest.raises(TokenwiseError, match="target must lie in"):
        fit_router(data, TABLE, target=0.0)
    with pytest.raises(TokenwiseError, match="reference 'idk' is not a runnable"):
        fit_router(data, TABLE, reference="idk")
    with pytest.raises(TokenwiseError, match="policy must be"):
        fit_router(data, TABLE, policy="oracle")


# -- RoutingData save / load ----------------------------------------------------------------


def test_routing_data_save_load_round_trip(tmp_path):
    data = make_data(n=5)
    data.sample_entropy = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    data.meta["strategies"] = [s.as_dict() for s in TABLE]
    back = RoutingData.load(data.save(tmp_path / "d" / "data.npz"))
    assert back.prompts == data.prompts and back.groups == data.groups
    assert back.meta == data.meta
    for name in ("features", "feature_flops", "sample_accuracy", "sample_entropy",
                 "token_entropy"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
        assert getattr(back, name).dtype == getattr(data, name).dtype
    assert set(back.right) == set(data.right) == set(back.flops)
    for k in data.right:
        np.testing.assert_array_equal(back.right[k], data.right[k])
        np.testing.assert_array_equal(back.flops[k], data.flops[k])
    assert back.labels() == data.labels()


# -- collect (real models) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    return {"tw-small": load("tw-small"), "tw-large": load("tw-large")}


ITEMS = [RouteItem(f"{a}+{b}=", (str(a + b),), group="sum")
         for a, b in [(2, 2), (7, 5), (13, 8), (3, 4), (9, 9), (6, 1)]]


@pytest.fixture(scope="module")
def collected(models):
    return collect(ITEMS, models, TABLE, feature_model="tw-small", k=2, progress=False)


def test_collect_right_flags_equal_a_direct_greedy_check(models, collected):
    for name, model in (("small", "tw-small"), ("large", "tw-large")):
        lm = models[model]
        for i, item in enumerate(ITEMS):
            g = tokenwise.generate(lm, item.prompt, max_new_tokens=6, stop="\n")
            assert bool(collected.right[name][i]) == (g.text.strip() == item.answers[0])
            read = g.prompt_tokens + len(g.tokens) - (0 if g.finish_reason == "eos" else 1)
            assert collected.flops[name][i] == 2 * lm.num_parameters() * read
    assert not collected.right["idk"].any() and not collected.flops["idk"].any()
    # arithmetic the built-in models are known to get right and wrong
    assert collected.right["large"][0] and not collected.right["large"][2]  # 13+8= -> 9


def test_collect_labels_features_and_meta(models, collected):
    lm = models["tw-small"]
    prompts = [it.prompt for it in ITEMS]
    np.testing.assert_array_equal(collected.features, prompt_features(lm, prompts))
    assert collected.feature_flops.tolist() == [feature_flops(lm, p) for p in prompts]
    assert collected.prompts == prompts and collected.groups == ["sum"] * 6
    # the k = 2 labelling samples, redrawn by hand: temperature 1, seeds 500 + 1000 i, +1
    temp = get("temperature", temperature=1.0)
    for i, item in enumerate(ITEMS):
        seed = 1000 * i + 500
        gens = tokenwise.generate(lm, [item.prompt] * 2, temp, max_new_tokens=16, stop="\n",
                                  seed=[seed, seed + 1])
        texts = [g.text.strip() for g in gens]
        assert collected.sample_accuracy[i] == np.mean([item.is_right(t) for t in texts])
        keys = {normalise_text(t) for t in texts}
        assert collected.sample_entropy[i] == pytest.approx(0.0 if len(keys) == 1
                                                            else np.log(2))
        ents = [t.entropy for g in gens for t in g.tokens]
        assert collected.token_entropy[i] == pytest.approx(np.mean(ents))
    assert collected.meta["k"] == 2 and collected.meta["feature_model"] == "tw-small"
    assert [s["name"] for s in collected.meta["strategies"]] == ["small", "large", "idk"]


def test_collect_errors(models):
    with pytest.raises(TokenwiseError, match="at least one question"):
        collect([], models, TABLE, feature_model="tw-small")
    with pytest.raises(TokenwiseError, match="k must be an integer >= 1, got 0"):
        collect(ITEMS, models, TABLE, feature_model="tw-small", k=0)
    with pytest.raises(TokenwiseError, match="feature model 'tw-huge' is not loaded"):
        collect(ITEMS, models, TABLE, feature_model="tw-huge")


def test_collect_with_one_label_sample(models):
    data = collect(ITEMS[:2], models, TABLE[:1], feature_model="tw-large", k=1, layer=0,
                   progress=False)
    assert set(data.sample_accuracy.tolist()) <= {0.0, 1.0}
    assert data.sample_entropy.tolist() == [0.0, 0.0]
    assert data.features.shape == (2, models["tw-large"].config.hidden_size)
    assert data.meta["layer"] == 0


def test_collected_data_round_trips_and_fits(tmp_path, collected):
    back = RoutingData.load(collected.save(tmp_path / "c.npz"))
    np.testing.assert_array_equal(back.features, collected.features)
    assert json.dumps(back.meta) == json.dumps(collected.meta)


def test_routing_data_save_returns_the_file_it_wrote(tmp_path):
    data = make_data(n=3)
    written = data.save(tmp_path / "data")
    assert written.is_file()
    assert RoutingData.load(written).prompts == data.prompts


def test_cross_val_proba_with_more_folds_than_questions():
    x = np.arange(3.0)[:, None]
    try:
        proba, classes = cross_val_proba(x, ["a", "b", "a"], folds=5)
    except TokenwiseError as exc:  # a clear refusal is fine too
        assert "folds" in str(exc)
    else:
        assert classes == ["a", "b"] and proba.shape == (3, 2)
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)


def test_a_fitted_router_saves_and_loads_with_its_selection(tmp_path):
    from tokenwise.routing.router import Router

    r = fit_router(make_data(), TABLE, policy="value", cost_weights=[0.0, 0.5, 5.0])
    back = Router.load(r.save(tmp_path / "router"))
    grid = np.linspace(-1, 1, 9)[:, None]
    assert [d.as_dict() for d in back.decide_many(grid)] == [
        d.as_dict() for d in r.decide_many(grid)]
    assert back.meta["selection"] == r.meta["selection"]
