"""`tokenwise analyze`: the theory papers as measurements on a model.

``tokenwise analyze directed-info --context FILE --prompt TEXT --answer TEXT`` prints how many
nats each answer token takes from the context; ``tokenwise analyze surplus FILE`` what the
hidden states know about token t+2 beyond the model's own two-step rollout;
``tokenwise analyze embeddings`` how k-means clusterings of word embeddings trade compression
for agreement with categories; ``tokenwise analyze spectral`` how the prediction head's singular
subspaces align with the predictive similarity operator's eigenspaces; ``tokenwise analyze
semantic-info`` the G-theory semantic information of answers beside their Shannon surprisal.
"""

from __future__ import annotations

import json

import click

from tokenwise.cli.common import check_output_path, console, model_option, read_text, show_piece
from tokenwise.errors import TokenwiseError


@click.group("analyze")
def analyze_group() -> None:
    """Measurements from the theory papers: directed information, surplus, embedding IB,
    spectral alignment of the head, semantic information."""


def _text_or_file(value: str | None) -> str:
    if value is None:
        return ""
    if value.startswith("@"):
        return read_text(value[1:])
    return value


@analyze_group.command("directed-info")
@model_option("tw-reader")
@click.option("--context", "context", required=True,
              help="The context (memo, document): text, or @FILE to read it from a file.")
@click.option("--prompt", default=None,
              help="Text between context and answer, kept in both readings (the question); "
                   "text or @FILE.")
@click.option("--answer", required=True, help="The answer to measure: text, or @FILE.")
@click.option("--window", type=int, default=None, help="Tokens per forward pass "
              "(default: the model's context length); longer inputs are read in windows.")
@click.option("--stride", type=int, default=None, help="New answer tokens per window.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--png", default=None, help="Write a bar chart of DI per token to this PNG file.")
def directed_info_command(model: str, context: str, prompt: str | None, answer: str,
                          window: int | None, stride: int | None, as_json: bool,
                          png: str | None) -> None:
    """Nats each ANSWER token takes from the CONTEXT:
    log p(y_t | context, prompt, y_<t) - log p(y_t | prompt, y_<t)."""
    from tokenwise.analysis import directed_information
    from tokenwise.models import load

    check_output_path(png, "--png")
    lm = load(model)
    [d] = directed_information(lm, _text_or_file(answer),
                               _text_or_file(context),
                               _text_or_file(prompt), window=window, stride=stride)
    if as_json:
        click.echo(json.dumps({
            "model": model, "total_nats": d.total, "context_tokens": d.context_tokens,
            "tokens": [{"piece": p, "di": float(v), "logprob_with": float(a),
                        "logprob_without": float(b), "context_seen": int(s)}
                       for p, v, a, b, s in zip(d.pieces, d.per_token, d.logprob_with,
                                                d.logprob_without, d.context_seen, strict=True)],
        }))
    else:
        from rich.table import Table

        table = Table("token", "DI (nats)", "log p with", "log p without", "context seen")
        for p, v, a, b, s in zip(d.pieces, d.per_token, d.logprob_with, d.logprob_without,
                                 d.context_seen, strict=True):
            table.add_row(show_piece(p), f"{v:+.3f}", f"{a:.3f}", f"{b:.3f}",
                          f"{s}/{d.context_tokens}")
        out = console()
        out.print(table)
        out.print(f"total: {d.total:+.3f} nats from the context")
    if png:
        _bar_png(png, [show_piece(p) for p in d.pieces], d.per_token,
                 f"{model}: directed information per token (total {d.total:+.2f} nats)")


def _bar_png(path: str, labels: list[str], values, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise TokenwiseError("--png needs matplotlib: pip install 'tokenwise[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(labels)), 3.2))
    ax.bar(range(len(labels)), values, color=["tab:blue" if v >= 0 else "tab:red"
                                              for v in values])
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("nats from the context")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@analyze_group.command("surplus")
@model_option()
@click.argument("file")
@click.option("--top-k", type=int, default=8, show_default=True,
              help="Next-token candidates the two-step rollout marginalises over.")
@click.option("--chunk", type=int, default=64, show_default=True,
              help="Tokens per chunk (the cross-validation folds split chunks).")
@click.option("--folds", type=int, default=5, show_default=True)
@click.option("--l2", "l2", default=None,
              help="The probe's L2 penalty, or comma-separated penalties to choose from per "
                   "fold (default: 0.001,0.01,0.1,1,10,100).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
def surplus_command(model: str, file: str, top_k: int, chunk: int, folds: int, l2: str | None,
                    seed: int, as_json: bool) -> None:
    """What the last hidden state knows about token t+2 beyond the model's two-step rollout,
    in nats per token (cross-validated linear probe, 95% bootstrap interval). FILE holds one
    text per line (- for standard input)."""
    from tokenwise.analysis.surplus import L2_GRID, information_surplus, two_step_data
    from tokenwise.models import load

    try:
        penalties = L2_GRID if l2 is None else tuple(float(v) for v in l2.split(","))
    except ValueError:
        raise TokenwiseError(f"--l2 {l2!r}: allowed numbers >= 0, comma-separated") from None
    texts = [t for t in read_text(file).splitlines() if t.strip()]
    if not texts:
        raise TokenwiseError(f"{file!r} holds no text")
    data = two_step_data(load(model), texts, top_k=top_k, chunk=chunk)
    s = information_surplus(data, folds=folds, l2=penalties, seed=seed)
    row = {"model": model, "surplus_nats": s.surplus, "ci95": [s.ci_low, s.ci_high],
           "ce_rollout": s.ce_rollout, "ce_probe": s.ce_probe, "tokens": s.n_tokens,
           "chunks": s.n_groups, "rollout_coverage": s.coverage}
    if as_json:
        click.echo(json.dumps(row))
        return
    click.echo(f"surplus {s.surplus:+.4f} nats/token (95% CI {s.ci_low:+.4f} .. {s.ci_high:+.4f})"
               f"\ncross-entropy of x[t+2]: rollout {s.ce_rollout:.4f}, probe {s.ce_probe:.4f}"
               f"\n{s.n_tokens} positions in {s.n_groups} chunks; rollout covers "
               f"{s.coverage:.1%} of next-token mass")


@analyze_group.command("embeddings")
@model_option()
@click.option("--words", "words_file", default=None,
              help="TSV file of 'word<TAB>category' lines (default: the testbed's attribute "
                   "values, category = attribute).")
@click.option("--k", "ks", default="2,4,8,16,32", show_default=True,
              help="Comma-separated cluster counts.")
@click.option("--beta", type=float, default=1.0, show_default=True,
              help="Weight of the distortion in the IB objective.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def embeddings_command(model: str, words_file: str | None, ks: str, beta: float, seed: int,
                       as_json: bool) -> None:
    """k-means clusterings of the model's word embeddings: complexity I(X;C), distortion,
    IB objective and AMI with the categories; the categories themselves scored alike."""
    from tokenwise.analysis.embedding_ib import ib_curve, score_partition, word_embeddings
    from tokenwise.models import load

    try:
        k_list = [int(k) for k in ks.split(",")]
    except ValueError:
        raise TokenwiseError(f"--k {ks!r}: allowed comma-separated integers, e.g. 2,4,8") from None
    if words_file is None:
        from tokenwise.testbed import FactWorld

        world = FactWorld(0)
        pairs = [(v.forms[0].removeprefix("a ").removeprefix("an "), name)
                 for name, attr in world.attributes.items() for v in attr.values]
    else:
        pairs = []
        for n, line in enumerate(read_text(words_file).splitlines(), 1):
            if line.strip():
                parts = line.split("\t")
                if len(parts) != 2:
                    raise TokenwiseError(f"{words_file}:{n}: {line!r}: allowed 'word<TAB>"
                                         "category'")
                pairs.append((parts[0], parts[1]))
    words, cats = [w for w, _ in pairs], [c for _, c in pairs]
    x, _ = word_embeddings(load(model), words)
    bad = [k for k in k_list if not 1 <= k <= len(words)]
    if bad:
        raise TokenwiseError(f"--k {bad[0]}: allowed 1..{len(words)} (the words)")
    points = ib_curve(x, cats, ks=k_list, beta=beta, seed=seed)
    human = score_partition(x, cats, cats, beta)
    rows = [{"clustering": f"k-means k={p.k}", "complexity": p.complexity,
             "distortion": p.distortion, "objective": p.objective, "ami": p.ami}
            for p in points]
    rows.append({"clustering": f"categories ({human.k})", "complexity": human.complexity,
                 "distortion": human.distortion, "objective": human.objective, "ami": 1.0})
    if as_json:
        click.echo(json.dumps({"model": model, "words": len(words), "rows": rows}))
        return
    from rich.table import Table

    table = Table("clustering", "I(X;C) nats", "distortion", f"L (beta={beta:g})", "AMI")
    for r in rows:
        table.add_row(r["clustering"], f"{r['complexity']:.3f}", f"{r['distortion']:.3f}",
                      f"{r['objective']:.3f}", f"{r['ami']:.3f}")
    console().print(table)


def _int_list(value: str, flag: str) -> list[int]:
    try:
        return [int(k) for k in value.split(",")]
    except ValueError:
        raise TokenwiseError(f"{flag} {value!r}: allowed comma-separated integers, e.g. "
                             "1,2,4") from None


@analyze_group.command("spectral")
@model_option("tw-small")
@click.option("--text", "text_file", default=None,
              help="Estimate the operator from the model's own predictions on this file (one "
                   "text per line, - for standard input) instead of the testbed's exact Markov "
                   "source.")
@click.option("--tokens", type=int, default=400, show_default=True,
              help="With --text: the operator's tokens are the most frequent next tokens.")
@click.option("--k", "ks", default="1,2,4,8", show_default=True,
              help="Comma-separated subspace dimensions.")
@click.option("--random", "n_random", type=int, default=100, show_default=True,
              help="Gaussian heads of the same shape for the baseline.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def spectral_command(model: str, text_file: str | None, tokens: int, ks: str, n_random: int,
                     seed: int, as_json: bool) -> None:
    """Overlap of the head's top-k singular subspace with the top-k eigenspace of the
    predictive similarity operator S(v,w) = sum_c pi(c) P(v|c) P(w|c) / sqrt(p(v) p(w)),
    beside random heads of the same shape."""
    from collections import Counter

    from tokenwise.analysis.spectral import (
        head_rows,
        markov_contexts,
        model_contexts,
        random_head_overlaps,
        spectral_alignment,
    )
    from tokenwise.models import load

    k_list = _int_list(ks, "--k")
    if n_random < 1:
        raise TokenwiseError(f"--random {n_random}: allowed >= 1")
    lm = load(model)
    if text_file is None:
        from tokenwise.testbed import MarkovSource
        from tokenwise.testbed.markov import SYMBOLS

        ids = [lm.encode(" " + s) for s in SYMBOLS]
        if any(len(i) != 1 for i in ids):
            raise TokenwiseError(f"model {model!r} does not read the Markov symbols as one "
                                 "token each: pass --text FILE")
        ids = [i[0] for i in ids]
        probs, w = markov_contexts(MarkovSource(0))
        source = "exact Markov source (testbed seed 0)"
    else:
        if tokens < 2:
            raise TokenwiseError(f"--tokens {tokens}: allowed >= 2")
        texts = [t for t in read_text(text_file).splitlines() if t.strip()]
        if not texts:
            raise TokenwiseError(f"{text_file!r} holds no text")
        counts = Counter(t for text in texts for t in lm.encode(text, add_bos=True)[1:])
        ids = [t for t, _ in counts.most_common(tokens)]
        probs, w = model_contexts(lm, texts, ids)
        source = f"{model}'s predictions on {len(w)} positions"
    head = head_rows(lm, ids)
    got = spectral_alignment(head, probs, w, k_list)
    rnd = random_head_overlaps(head.shape, probs, w, k_list, n=n_random, seed=seed)
    rows = [{"k": k, "overlap": o, "chance": c, "random_mean": float(r.mean()),
             "random_sd": float(r.std()), "beats_random": float((r < o).mean()),
             "eigenvalue": float(got.eigenvalues[k - 1]),
             "singular_value": float(got.singular_values[k - 1])}
            for k, o, c, r in zip(got.ks, got.overlap, got.chance, rnd.T, strict=True)]
    if as_json:
        click.echo(json.dumps({"model": model, "operator": source, "tokens": len(ids),
                               "rows": rows}))
        return
    from rich.table import Table

    table = Table("k", "overlap", "random heads (mean ± sd)", "beats random", "chance k/(V-1)",
                  "eigenvalue k", title=f"{model}: head vs {source}, {len(ids)} tokens")
    for r in rows:
        table.add_row(str(r["k"]), f"{r['overlap']:.3f}",
                      f"{r['random_mean']:.3f} ± {r['random_sd']:.3f}",
                      f"{r['beats_random']:.0%}", f"{r['chance']:.3f}", f"{r['eigenvalue']:.3f}")
    console().print(table)


@analyze_group.command("semantic-info")
@model_option("tw-large")
@click.option("--attribute", required=True,
              help="The testbed fact-world attribute the answers are about (e.g. pet, "
                   "profession, birthplace, birth_year).")
@click.option("--truth", required=True, help="The true value (any surface form of it).")
@click.option("--answer", "answers", multiple=True, required=True,
              help="An answer to score (repeat the option for several).")
@click.option("--question", default=None,
              help="The prompt the answers follow (e.g. 'Q: What animal does X own?\\nA:'); "
                   "with it, each answer's Shannon surprisal under the model is shown too "
                   "(the answer after a space, ended by a newline).")
@click.option("--floor", type=float, default=0.0, show_default=True,
              help="Truth of an answer in a state it does not mean (0: crisp).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def semantic_info_command(model: str, attribute: str, truth: str, answers: tuple[str, ...],
                          question: str | None, floor: float, as_json: bool) -> None:
    """Semantic information (G theory) of each ANSWER about the TRUTH:
    I = log(T(theta|x) / T(theta)), T(theta) = sum_x P(x) T(theta|x), with truth functions from
    the testbed's meaning equivalence and the world's uniform prior over the attribute's values;
    beside it the Shannon surprisal -log p(answer | question)."""
    import math

    import numpy as np

    from tokenwise.analysis.semantic_information import (
        logical_probability,
        meaning_truth,
        semantic_information,
    )
    from tokenwise.testbed import Testbed

    world = Testbed(0).fact_world
    if attribute not in world.attributes:
        raise TokenwiseError(f"--attribute {attribute!r}: allowed "
                             f"{', '.join(sorted(world.attributes))}")
    states = [v.meaning for v in world.attributes[attribute].values]
    true_meaning = world.meaning_of(attribute, truth)
    if true_meaning is None:
        raise TokenwiseError(f"--truth {truth!r} names no {attribute}: allowed e.g. "
                             f"{', '.join(states[:5])}")
    prior = np.full(len(states), 1 / len(states))
    x = states.index(true_meaning)
    rows = []
    for ans in answers:
        meaning = world.meaning_of(attribute, ans)
        t = meaning_truth([ans], states, lambda _a, _m=meaning: _m, floor=floor)
        lp = float(logical_probability(t, prior)[0])
        info = float(semantic_information(t, prior)[0, x]) if lp > 0 else -math.inf
        rows.append({"answer": ans, "meaning": meaning, "logical_probability": lp,
                     "semantic_information": info, "surprisal": None})
    if question is not None:
        import torch

        from tokenwise.models import load

        lm = load(model)
        prompt = question.replace("\\n", "\n")
        ids_p = lm.encode(prompt, add_bos=True)
        for r in rows:
            # the newline that ends the answer makes it complete: "a dog" must not also count
            # "a dog named Rex"
            ids_a = lm.encode(" " + r["answer"].strip() + "\n")
            with torch.inference_mode():
                logits = lm.forward(torch.tensor([ids_p + ids_a])).logits[0].double()
            logp = torch.log_softmax(logits[len(ids_p) - 1:-1], -1)
            r["surprisal"] = -float(logp[torch.arange(len(ids_a)), torch.tensor(ids_a)].sum())
    if as_json:
        click.echo(json.dumps({"attribute": attribute, "truth": true_meaning, "floor": floor,
                               "model": model if question is not None else None,
                               "rows": rows}))
        return
    from rich.table import Table

    table = Table("answer", "means", "T(theta)", "I semantic (nats)", "surprisal (nats)",
                  title=f"{attribute}, true value {true_meaning}, {len(states)} values "
                        f"(log n = {math.log(len(states)):.3f})")
    for r in rows:
        table.add_row(r["answer"], r["meaning"] or "(nothing)", f"{r['logical_probability']:.4f}",
                      f"{r['semantic_information']:.3f}",
                      "" if r["surprisal"] is None else f"{r['surprisal']:.3f}")
    console().print(table)
