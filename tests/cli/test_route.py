"""`tokenwise route train|eval|answer`: a router fitted from the command line answers as the
library's router does; eval compares it with every single strategy on the same questions;
bad input is a usage error (exit 2) naming the option and the value."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tokenwise.cli.main import cli
from tokenwise.routing import Router, RoutingData, load_strategies, run_strategy

#: single-digit sums: tw-large gets 9 of these 12 right, tw-small 4
TRAIN = [("2+3=", "5"), ("4+1=", "5"), ("7+2=", "9"), ("1+2=", "3"), ("0+7=", "7"),
         ("8+5=", "13"), ("3+5=", "8"), ("0+3=", "3"), ("6+6=", "12"), ("9+7=", "16"),
         ("5+5=", "10"), ("6+2=", "8")]
TEST = [("1+4=", "5"), ("3+9=", "12"), ("9+6=", "15"), ("2+2=", "4")]
TABLE = [{"name": "small", "model": "tw-small", "max_new_tokens": 4},
         {"name": "large", "model": "tw-large", "max_new_tokens": 4},
         {"name": "idk", "abstain": True}]


def write_items(path, pairs):
    path.write_text("".join(json.dumps({"prompt": p, "answer": a, "group": "sum"}) + "\n"
                            for p, a in pairs))
    return path


def run(*args):
    return CliRunner().invoke(cli, ["route", *map(str, args)])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One router trained from the command line, its inputs and the answers it cached."""
    folder = tmp_path_factory.mktemp("route")
    files = {"train": write_items(folder / "train.jsonl", TRAIN),
             "test": write_items(folder / "test.jsonl", TEST),
             "table": folder / "table.json", "cache": folder / "cache.npz",
             "router": folder / "router"}
    files["table"].write_text(json.dumps(TABLE))
    result = run("train", "--items", files["train"], "--strategies", files["table"],
                 "--feature-model", "tw-small", "--k", 2, "--folds", 2,
                 "--data-cache", files["cache"], "--out", files["router"])
    assert result.exit_code == 0, result.output
    return files, result.output


@pytest.fixture(scope="module")
def models(small, large):
    return {"tw-small": small, "tw-large": large}


def test_train_saves_the_router_and_says_what_it_chose(made, models):
    files, output = made
    router = Router.load(files["router"])
    assert router.policy == "value" and router.feature_model == "tw-small"
    assert [s.name for s in router.strategies] == ["small", "large", "idk"]
    chosen = router.meta["chosen"]
    assert f"chosen: cost weight {chosen['cost_weight']:g}" in output
    assert f"accuracy {chosen['cv_accuracy']:.3f} vs 0.750 for reference 'large'" in output
    data = RoutingData.load(files["cache"])
    assert int(data.right["large"].sum()) == 9 and int(data.right["small"].sum()) == 4
    assert "small: right on 4/12" in output and "large: right on 9/12" in output
    labels = data.labels()
    assert (f"easy {labels.count('easy')}, normal {labels.count('normal')}, "
            f"hard {labels.count('hard')}") in output
    # the saved router is the library's: it answers as its chosen strategy does
    routed = router.answer(models, "2+3=")
    assert routed.text == run_strategy(router.by_name[routed.decision.strategy], models,
                                       "2+3=").text


def test_a_refit_from_the_cache_answers_nothing_again(made, tmp_path, monkeypatch):
    files, _ = made

    def refuse(*args, **kwargs):
        raise AssertionError("the refit loaded a model or answered a question")

    monkeypatch.setattr("tokenwise.models.load", refuse)
    monkeypatch.setattr("tokenwise.routing.collect", refuse)
    out = tmp_path / "difficulty"
    result = run("train", "--items", files["train"], "--strategies", files["table"],
                 "--feature-model", "tw-small", "--k", 2, "--folds", 2, "--policy",
                 "difficulty", "--abstain", "idk", "--data-cache", files["cache"], "--out", out)
    assert result.exit_code == 0, result.output
    assert "read the collected answers from" in result.output
    router = Router.load(out)
    assert router.policy == "difficulty" and router.abstain == "idk"
    assert set(router.mapping.values()) <= {"small", "large", "idk"}


def test_value_policy_abstains_below_its_bar(made, tmp_path):
    files, _ = made
    out = tmp_path / "value_idk"
    result = run("train", "--items", files["train"], "--strategies", files["table"],
                 "--feature-model", "tw-small", "--k", 2, "--folds", 2, "--abstain", "idk",
                 "--abstain-below", "1.0", "--data-cache", files["cache"], "--out", out)
    assert result.exit_code == 0, result.output
    router = Router.load(out)
    assert router.policy == "value" and router.abstain == "idk" and router.abstain_below == 1.0
    # every candidate declines at least the questions no probe is certain of
    assert all(c["answered"] < 1.0 for c in router.meta["selection"])


def test_a_cache_of_other_questions_or_settings_is_refused(made, tmp_path):
    files, _ = made
    other = write_items(tmp_path / "other.jsonl", TRAIN[:6])
    for items, extra, says in ((other, [], "other questions"),
                               (files["train"], ["--k", 3], "other k")):
        result = run("train", "--items", items, "--strategies", files["table"],
                     "--feature-model", "tw-small", "--k", 2, "--folds", 2,
                     "--data-cache", files["cache"], "--out", tmp_path / "r", *extra)
        assert result.exit_code == 2, result.output
        assert "--data-cache" in result.output and says in result.output


def test_eval_routes_and_compares_with_every_strategy_on_the_same_questions(made, models,
                                                                           tmp_path):
    files, _ = made
    out = tmp_path / "rows.json"
    result = run("eval", "--router", files["router"], "--items", files["test"], "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows, summary = report["items"], report["summary"]
    assert [r["prompt"] for r in rows] == [p for p, _ in TEST]
    router = Router.load(files["router"])
    for i, row in enumerate(rows):
        routed = router.answer(models, row["prompt"], seed=1000 * i)
        assert (row["text"], row["strategy"], row["flops"]) == (
            routed.text, routed.decision.strategy, routed.flops)
        assert row["right"] == (row["text"] == dict(TEST)[row["prompt"]])
        for s in router.strategies[:2]:
            alone = run_strategy(s, models, row["prompt"], seed=1000 * i)
            assert row["strategies"][s.name]["text"] == alone.text
            assert row["strategies"][s.name]["flops"] == alone.flops
    assert summary["accuracy"] == np.mean([r["right"] for r in rows])
    assert summary["answered"] == 1.0
    mean_large = np.mean([r["strategies"]["large"]["flops"] for r in rows])
    assert summary["strategies"]["large"]["flops_ratio"] == pytest.approx(
        summary["flops"] / mean_large)
    assert sum(c["questions"] for c in summary["routed"].values()) == len(TEST)
    assert f"router: accuracy {summary['accuracy']:.3f}" in result.output
    assert "router / it" in result.output and "routed to" in result.output


def test_answer_prints_the_routed_answer(made, models):
    files, _ = made
    router = Router.load(files["router"])
    routed = router.answer(models, "7+2=", seed=3)
    result = run("answer", "--router", files["router"], "--seed", 3, "7+2=")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [routed.text]
    assert f"strategy {routed.decision.strategy!r}" in result.stderr
    as_json = run("answer", "--router", files["router"], "--seed", 3, "--json", "7+2=")
    assert json.loads(as_json.stdout)["decision"] == routed.decision.as_dict()


def _train(files, tmp_path, **changes):
    args = {"--items": files["train"], "--strategies": files["table"],
            "--feature-model": "tw-small", "--k": 2, "--folds": 2,
            "--out": tmp_path / "out", **changes}
    flat = [str(x) for key, value in args.items() if value is not None
            for x in (key, value)]
    return run("train", *flat)


def test_train_refuses_bad_input_naming_it(made, tmp_path):
    files, _ = made
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    ghost = tmp_path / "ghost.json"
    ghost.write_text(json.dumps([*TABLE, {"name": "ghost", "model": "no-such-model"}]))
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        ({"--items": tmp_path / "absent.jsonl"}, "'--items'", "does not exist"),
        ({"--strategies": tmp_path / "absent.json"}, "'--strategies'", "does not exist"),
        ({"--items": empty}, "'--items'", "holds no questions"),
        ({"--strategies": ghost}, "'--strategies'",
         "strategy 'ghost' names model 'no-such-model', which does not load"),
        ({"--strategies": broken}, "'--strategies'", "is not valid JSON"),
        ({"--feature-model": "no-such-model"}, "'--feature-model'",
         "--feature-model names model 'no-such-model', which does not load"),
        ({"--abstain": "small", "--policy": "difficulty"}, "'--abstain'",
         "'small' is not an abstaining strategy of the table; allowed: idk"),
        ({"--abstain": "idk"}, "'--abstain'", "the value policy abstains only below"),
        ({"--abstain-below": "0.3"}, "'--abstain-below'", "needs --policy value and --abstain"),
        ({"--reference": "idk"}, "'--reference'", "allowed a strategy that runs a model"),
        ({"--folds": 20}, "'--folds'", "20 folds need at least 20 questions"),
        ({"--layer": 99}, "'--layer'", "layer must be an integer from"),
        ({"--out": a_file}, "'--out'", "is a file"),
    ]
    for changes, option, says in cases:
        result = _train(files, tmp_path, **changes)
        assert result.exit_code == 2, (changes, result.output)
        assert option in result.output and says in result.output, (changes, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_eval_and_answer_refuse_bad_input_naming_it(made, tmp_path):
    files, _ = made
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    not_a_router = tmp_path / "plain"
    not_a_router.mkdir()
    ghost = tmp_path / "ghost-router"
    shutil.copytree(files["router"], ghost)
    config = json.loads((ghost / "router.json").read_text())
    config["strategies"][1]["model"] = "no-such-model"
    (ghost / "router.json").write_text(json.dumps(config))
    assert load_strategies(config["strategies"])[1].model == "no-such-model"
    cases = [
        (["eval", "--router", tmp_path / "absent", "--items", files["test"]], "'--router'",
         "does not exist"),
        (["eval", "--router", not_a_router, "--items", files["test"]], "'--router'",
         "holds no router.json"),
        (["eval", "--router", files["router"], "--items", empty], "'--items'",
         "holds no questions"),
        (["eval", "--router", files["router"], "--items", tmp_path / "absent.jsonl"],
         "'--items'", "does not exist"),
        (["eval", "--router", ghost, "--items", files["test"]], "'--router'",
         "strategy 'large' names model 'no-such-model', which does not load"),
        (["answer", "--router", files["router"], "  "], "QUESTION", "the question is empty"),
    ]
    for args, option, says in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert option in result.output and says in result.output, (args, result.output)
