"""`tokenwise route train|eval|answer`: fit a strategy router on questions, measure it, use it.

``train`` answers the training questions with every strategy of a table (JSON, see
:class:`tokenwise.routing.Strategy`), labels them, fits the difficulty probes on the feature
model's hidden state and saves the router with the setting chosen by cross-validation.
``eval`` routes and answers held-out questions and, in the same run, answers them with every
single strategy, so the router's accuracy and compute are compared on the same questions.
``answer`` routes one question.

Items are JSONL, one ``{"prompt": ..., "answers": [...] | "answer": ..., "group": ...}``
a line (:func:`tokenwise.routing.read_items`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from tokenwise.cli.common import check_output_path
from tokenwise.errors import TokenwiseError

if TYPE_CHECKING:
    from tokenwise.models import LanguageModel
    from tokenwise.routing import RouteItem, Router, RoutingData, Strategy
    from tokenwise.routing.probe import Kind
    from tokenwise.routing.router import Policy

#: JSON layout written by ``route eval --json``.
EVAL_FORMAT = "tokenwise-route-eval/1"


def _bad(option: str, exc: TokenwiseError | str) -> click.BadParameter:
    """A usage error (exit code 2) naming the option whose value is at fault."""
    return click.BadParameter(str(exc), param_hint=f"'{option}'")


def read_route_items(path: str, option: str = "--items") -> list[RouteItem]:
    """The questions of a JSONL items file, or a usage error naming ``option``.

    Args:
        path: the file.
        option: the option that gave it (named in errors).

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "q.jsonl")
        >>> _ = open(p, "w").write('{"prompt": "2+3=", "answer": "5"}\\n')
        >>> read_route_items(p)[0].answers
        ('5',)
    """
    from tokenwise.routing import read_items

    try:
        return read_items(path)
    except TokenwiseError as exc:
        raise _bad(option, exc) from None
    except UnicodeDecodeError as exc:
        raise _bad(option, f"{path!r} is not UTF-8 text (byte offset {exc.start})") from None


def read_table(path: str) -> list[Strategy]:
    """The strategy table of a JSON file, or a usage error naming ``--strategies``.

    Args:
        path: the JSON file (a list of strategy objects).

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "t.json")
        >>> _ = open(p, "w").write('[{"name": "small", "model": "tw-small"}]')
        >>> [s.name for s in read_table(p)]
        ['small']
    """
    from tokenwise.routing import load_strategies

    try:
        return load_strategies(path)
    except TokenwiseError as exc:
        raise _bad("--strategies", exc) from None


def load_models(names: Iterable[str], users: Mapping[str, Sequence[str]], option: str
                ) -> dict[str, LanguageModel]:
    """Load every named model once (offline), keyed by the name the table gives it.

    Args:
        names: the models to load (built-in names or local directories).
        users: model -> who names it (``["strategy 'large'", "--feature-model"]``), for errors.
        option: the option blamed when a model does not load, unless only options name it
            (then the first of them).

    Raises:
        click.BadParameter: a model that does not load, naming who asked for it and why.

    Example:
        >>> sorted(load_models(["tw-small"], {}, "--strategies"))
        ['tw-small']
    """
    from tokenwise.models import load

    models = {}
    for name in sorted(set(names)):
        try:
            models[name] = load(name)
        except (TokenwiseError, OSError, ValueError) as exc:
            who = list(users.get(name, ()))
            hint = who[0] if who and all(u.startswith("--") for u in who) else option
            raise _bad(hint, f"{' and '.join(who) or 'the router'} names model {name!r}, "
                             f"which does not load: {exc}") from None
    return models


def _table_users(table: Sequence[Strategy]) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for s in table:
        if not s.abstain:
            users.setdefault(s.model, []).append(f"strategy {s.name!r}")
    return users


def _check_out_dir(path: str) -> None:
    """``--out`` must be a new or empty directory, or a router directory (overwritten)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise _bad("--out", f"{path!r} is a file; give a directory for the router")
    if target.is_dir() and any(target.iterdir()) and not (target / "router.json").is_file():
        raise _bad("--out", f"{path!r} is a non-empty directory that holds no router; give a "
                            "new or empty directory (or a router directory to replace)")


def _cached(path: Path, items: Sequence[RouteItem], table: Sequence[Strategy],
            feature_model: str, layer: int, k: int, seed: int) -> RoutingData | None:
    """The data cached at ``path`` when it was collected on the same questions, table and
    settings; None when there is no file; a usage error when it was collected otherwise."""
    from tokenwise.routing import RoutingData

    if not path.is_file():
        return None
    try:
        data = RoutingData.load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise _bad("--data-cache", f"{str(path)!r} is not routing data written by "
                                   f"`tokenwise route train` ({exc})") from None
    want = {"feature_model": feature_model, "layer": layer, "k": k, "seed": seed,
            "strategies": [s.as_dict() for s in table]}
    differ = [key for key, value in want.items() if data.meta.get(key) != value]
    if data.prompts != [it.prompt for it in items]:
        differ.insert(0, "questions")
    if differ:
        raise _bad("--data-cache", f"{str(path)!r} was collected with other "
                                   f"{', '.join(differ)} than this command's; delete it, or "
                                   "give another file to collect anew")
    return data


@click.group("route")
def route_group() -> None:
    """Adaptive compute: a difficulty probe routes each question to a strategy of a table
    (a small model, a large one, a majority vote, or "I don't know")."""


@route_group.command("train")
@click.option("--items", "items_path", required=True, type=click.Path(exists=True,
                                                                      dir_okay=False),
              help='Training questions, JSONL: {"prompt", "answers" or "answer", "group"}.')
@click.option("--strategies", "table_path", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The strategy table, JSON: a list of {name, model, sampler, "
                   "max_new_tokens, n, prompt, stop, abstain, abstain_text}.")
@click.option("--feature-model", required=True,
              help="The model whose hidden state the probes read and whose samples label "
                   "difficulty (a built-in name or a local directory).")
@click.option("--layer", type=int, default=-1, show_default=True,
              help="The hidden state read (0 = embeddings, -1 = last layer).")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Sampled answers per question for the difficulty labels.")
@click.option("--policy", type=click.Choice(["value", "difficulty"]), default="value",
              show_default=True,
              help="value: one P(right) probe per strategy, cost-weighted; difficulty: one "
                   "easy/normal/hard probe and a label -> strategy mapping.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=0.98,
              show_default=True,
              help="Share of the reference strategy's accuracy to keep (the cheapest setting "
                   "that keeps it under cross-validation is chosen).")
@click.option("--reference", default=None,
              help="The strategy the target is relative to [the one with the most FLOPs].")
@click.option("--abstain", default=None,
              help="An abstaining strategy of the table that difficulty labels may map to "
                   "(--policy difficulty), or that answers when the best P(right) is under "
                   "--abstain-below (--policy value).")
@click.option("--abstain-below", type=click.FloatRange(0, 1), default=None,
              help="Value policy: abstain when no strategy's predicted P(right) reaches this.")
@click.option("--kind", type=click.Choice(["logistic", "mlp"]), default="logistic",
              show_default=True, help="Probe kind.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Cross-validation folds.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the sampled strategies, the labelling samples, folds and probes.")
@click.option("--data-cache", type=click.Path(dir_okay=False), default=None,
              help="An .npz of the answers collected: read when it exists (and matches the "
                   "questions, table and settings), else written, so a refit answers nothing "
                   "again.")
@click.option("--out", required=True, type=click.Path(),
              help="Directory for the router (router.json and the probes).")
def train_command(items_path: str, table_path: str, feature_model: str, layer: int, k: int,
                  policy: str, target: float, reference: str | None, abstain: str | None,
                  abstain_below: float | None, kind: str, folds: int, seed: int,
                  data_cache: str | None, out: str) -> None:
    """Answer the --items questions with every strategy of --strategies, fit the probes and
    save a router to --out (the cheapest setting keeping --target of the reference's
    accuracy under cross-validation).

    Example: tokenwise route train --items train.jsonl --strategies table.json
    --feature-model tw-small --out router
    """
    from tokenwise.routing import check_layer, collect, fit_router

    check_output_path(data_cache, "--data-cache")
    _check_out_dir(out)
    table = read_table(table_path)
    names = [s.name for s in table]
    runnable = [s.name for s in table if not s.abstain]
    if not runnable:
        raise _bad("--strategies", f"{table_path!r} holds only abstaining strategies; a "
                                   "router needs at least one that runs a model")
    if abstain is not None:
        allowed = [s.name for s in table if s.abstain]
        if policy == "value" and abstain_below is None:
            raise _bad("--abstain", "the value policy abstains only below a P(right) bar: "
                                    "add --abstain-below P (or use --policy difficulty to let "
                                    "labels map to an abstaining strategy)")
        if abstain not in allowed:
            raise _bad("--abstain", f"{abstain!r} is not an abstaining strategy of the table; "
                                    f"allowed: {', '.join(allowed) or 'none (add one with '}"
                                    f"{'' if allowed else 'abstain: true)'}")
    if abstain_below is not None and (policy != "value" or abstain is None):
        raise _bad("--abstain-below", "needs --policy value and --abstain NAME")
    if reference is not None and reference not in runnable:
        raise _bad("--reference", f"{reference!r}: allowed a strategy that runs a model: "
                                  f"{', '.join(runnable)}")
    items = read_route_items(items_path)
    if folds > len(items):
        raise _bad("--folds", f"{folds} folds need at least {folds} questions; "
                              f"{items_path!r} holds {len(items)}")
    cache = Path(data_cache) if data_cache else None
    data = _cached(cache, items, table, feature_model, layer, k, seed) if cache else None
    if data is None:
        users = _table_users(table)
        users.setdefault(feature_model, []).append("--feature-model")
        models = load_models(users, users, "--strategies")
        try:
            check_layer(models[feature_model], layer)
        except TokenwiseError as exc:
            raise _bad("--layer", exc) from None
        data = collect(items, models, table, feature_model=feature_model, layer=layer, k=k,
                       seed=seed, progress=True)
        if cache is not None:
            data.save(cache)
            click.echo(f"saved the collected answers to {cache}", err=True)
    else:
        click.echo(f"read the collected answers from {cache} ({len(data)} questions)",
                   err=True)
    router = fit_router(data, table, policy=cast("Policy", policy), reference=reference,
                        target=target, kind=cast("Kind", kind), folds=folds, seed=seed,
                        abstain=abstain, abstain_below=abstain_below)
    router.meta.update({"items": len(items), "k": k, "seed": seed})
    router.save(out)
    click.echo(train_summary(router, data, names, out))


def train_summary(router: Router, data: RoutingData, names: Sequence[str], out: str) -> str:
    """What ``route train`` prints: the chosen setting, its cross-validated accuracy and
    FLOPs against the reference strategy, the labels and each strategy on the questions.

    Args:
        router: the fitted router (its ``meta`` as :func:`~tokenwise.routing.fit_router`
            writes it).
        data: the collected answers it was fitted on.
        names: the table's strategy names, in order.
        out: where it was saved.
    """
    meta = router.meta
    chosen = meta["chosen"]
    ref = meta["reference"]
    ref_flops = float(data.flops[ref].mean())
    setting = (f"cost weight {chosen['cost_weight']:g}" if router.policy == "value" else
               "mapping " + ", ".join(f"{label} -> {name}" for label, name in
                                      chosen["mapping"].items()))
    lines = [f"saved {out}: {router.policy} policy, {meta['kind']} probe(s) on "
             f"{router.feature_model} layer {router.layer}, {len(data)} questions",
             f"chosen: {setting}" + ("" if chosen.get("meets_target", True) else
                                     " (no setting kept the target under cross-validation: "
                                     "the most accurate one was chosen)"),
             f"cross-validated ({meta['folds']} folds): accuracy {chosen['cv_accuracy']:.3f} "
             f"vs {meta['reference_accuracy']:.3f} for reference {ref!r} (target "
             f"{meta['target']:g} x = {meta['target'] * meta['reference_accuracy']:.3f}); "
             f"mean FLOPs {chosen['cv_flops']:.3g} = "
             f"{_ratio(chosen['cv_flops'], ref_flops)} the reference's {ref_flops:.3g} "
             "(probe read included)"]
    labels = Counter(data.labels())
    lines.append("difficulty labels (k samples of the feature model): " + ", ".join(
        f"{label} {labels.get(label, 0)}" for label in ("easy", "normal", "hard")))
    for name in names:
        if name not in data.right:
            continue
        if router.by_name[name].abstain:
            lines.append(f"  {name}: abstains (0 FLOPs)")
            continue
        right = int(data.right[name].sum())
        lines.append(f"  {name}: right on {right}/{len(data)}, mean FLOPs "
                     f"{float(data.flops[name].mean()):.3g}")
    return "\n".join(lines)


def _ratio(flops: float, other: float) -> str:
    return f"{flops / other:.2f} x" if other > 0 else "n/a x"


@route_group.command("eval")
@click.option("--router", "router_dir", required=True,
              type=click.Path(exists=True, file_okay=False),
              help="A router directory written by `tokenwise route train`.")
@click.option("--items", "items_path", required=True, type=click.Path(exists=True,
                                                                      dir_okay=False),
              help='Test questions, JSONL: {"prompt", "answers" or "answer", "group"}.')
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds sampled strategies (question i uses seed + 1000 i).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the summary and one row per question (every strategy's answer) "
                   "as JSON to this file.")
def eval_command(router_dir: str, items_path: str, seed: int, json_out: str | None) -> None:
    """Route and answer every --items question, and answer each with every single strategy
    of the router's table too: accuracy, answered share and mean FLOPs side by side.

    Example: tokenwise route eval --router router --items test.jsonl --json rows.json
    """
    from tokenwise.progress import progress_bar
    from tokenwise.routing import run_strategy

    check_output_path(json_out, "--json")
    router = load_router(router_dir)
    items = read_route_items(items_path)
    models = load_models(router.models_needed(), _router_users(router), "--router")
    runnable = [s for s in router.strategies if not s.abstain]
    rows = []
    for i, item in enumerate(progress_bar(items, desc="routing", unit="question")):
        item_seed = seed + 1000 * i
        routed = router.answer(models, item.prompt, seed=item_seed)
        singles = {}
        for s in runnable:  # the routed strategy's run is the same run: not repeated
            a = routed.answer if s.name == routed.decision.strategy else run_strategy(
                s, models, item.prompt, seed=item_seed)
            singles[s.name] = {"text": a.text, "right": item.is_right(a.text),
                               "flops": a.flops}
        rows.append({"prompt": item.prompt, "answers": list(item.answers), "group": item.group,
                     "text": routed.text,
                     "right": (not routed.abstained) and item.is_right(routed.text),
                     "strategy": routed.decision.strategy, "abstained": routed.abstained,
                     "flops": routed.flops, "decision": routed.decision.as_dict(),
                     "votes": routed.answer.votes, "strategies": singles})
    summary = eval_summary(rows, [s.name for s in runnable], [s.name for s in router.strategies])
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps({"format": EVAL_FORMAT, "router": router_dir,
                                              "summary": summary, "items": rows}, indent=2)
                                  + "\n", encoding="utf-8")
    click.echo(eval_table(summary, len(rows)))


def eval_summary(rows: Sequence[dict[str, Any]], runnable: Sequence[str],
                 names: Sequence[str]) -> dict[str, Any]:
    """The numbers ``route eval`` reports, from its per-question rows.

    Args:
        rows: one per question (``right``, ``abstained``, ``flops``, ``strategy`` and
            ``strategies``: name -> ``{"right", "flops"}``).
        runnable: the strategies that ran on every question.
        names: every strategy of the table (for the routing counts).

    Example:
        >>> rows = [{"right": True, "abstained": False, "flops": 2.0, "strategy": "s",
        ...          "strategies": {"s": {"right": True, "flops": 1.0}}}]
        >>> eval_summary(rows, ["s"], ["s"])["strategies"]["s"]["flops_ratio"]
        2.0
    """
    n = len(rows)
    flops = sum(r["flops"] for r in rows) / n
    out: dict[str, Any] = {
        "questions": n, "accuracy": sum(r["right"] for r in rows) / n,
        "answered": sum(not r["abstained"] for r in rows) / n, "flops": flops}
    answered = [r for r in rows if not r["abstained"]]
    out["accuracy_answered"] = (sum(r["right"] for r in answered) / len(answered)
                                if answered else 0.0)
    singles = {}
    for name in runnable:
        mean = sum(r["strategies"][name]["flops"] for r in rows) / n
        singles[name] = {"accuracy": sum(r["strategies"][name]["right"] for r in rows) / n,
                         "flops": mean, "flops_ratio": flops / mean if mean > 0 else None}
    out["strategies"] = singles
    counts = Counter(r["strategy"] for r in rows)
    out["routed"] = {name: {"questions": counts.get(name, 0),
                            "right": sum(r["right"] for r in rows if r["strategy"] == name)}
                     for name in names}
    return out


def eval_table(summary: Mapping[str, Any], n: int) -> str:
    """``route eval``'s printout of :func:`eval_summary`.

    Args:
        summary: from :func:`eval_summary`.
        n: questions.
    """
    lines = [f"router: accuracy {summary['accuracy']:.3f}, answered "
             f"{summary['answered']:.3f} (accuracy on answered "
             f"{summary['accuracy_answered']:.3f}), mean FLOPs {summary['flops']:.3g} "
             f"(probe read included), {n} questions",
             f"{'strategy alone':<20} {'accuracy':>8} {'mean FLOPs':>11} {'router / it':>12}"]
    for name, s in summary["strategies"].items():
        ratio = "n/a" if s["flops_ratio"] is None else f"{s['flops_ratio']:.2f} x"
        lines.append(f"{name:<20} {s['accuracy']:>8.3f} {s['flops']:>11.3g} {ratio:>12}")
    lines.append(f"{'routed to':<20} {'questions':>9} {'right':>6}")
    for name, c in summary["routed"].items():
        lines.append(f"{name:<20} {c['questions']:>9} {c['right']:>6}")
    return "\n".join(lines)


def load_router(path: str) -> Router:
    """The router saved in ``path``, or a usage error naming ``--router``.

    Args:
        path: a directory written by ``tokenwise route train``.
    """
    from tokenwise.routing import Router

    try:
        return Router.load(path)
    except TokenwiseError as exc:
        raise _bad("--router", exc) from None
    except (OSError, ValueError, KeyError) as exc:
        raise _bad("--router", f"{path!r} holds a damaged router ({exc})") from None


def _router_users(router: Router) -> dict[str, list[str]]:
    users = _table_users(router.strategies)
    users.setdefault(router.feature_model, []).append("the router's feature model")
    return users


@route_group.command("answer")
@click.option("--router", "router_dir", required=True,
              type=click.Path(exists=True, file_okay=False),
              help="A router directory written by `tokenwise route train`.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds a sampled strategy.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the decision, the answer and the FLOPs as JSON.")
@click.argument("question")
def answer_command(router_dir: str, seed: int, as_json: bool, question: str) -> None:
    """Route QUESTION and answer it: the answer on standard output, the decision on
    standard error (or everything as JSON with --json).

    Example: tokenwise route answer --router router "2+3="
    """
    if not question.strip():
        raise _bad("QUESTION", "the question is empty; give the text to answer")
    router = load_router(router_dir)
    models = load_models(router.models_needed(), _router_users(router), "--router")
    routed = router.answer(models, question, seed=seed)
    if as_json:
        click.echo(json.dumps(routed.as_dict(), indent=2))
        return
    click.echo(routed.text)
    d = routed.decision
    click.echo(f"strategy {d.strategy!r} ({d.reason}){', abstained' if routed.abstained else ''}"
               f"; {routed.flops:.3g} FLOPs", err=True)
