"""`tokenwise analyze`: the theory papers as measurements on a model.

``tokenwise analyze directed-info --context FILE --prompt TEXT --answer TEXT`` prints how many
nats each answer token takes from the context; ``tokenwise analyze surplus FILE`` what the
hidden states know about token t+2 beyond the model's own two-step rollout;
``tokenwise analyze embeddings`` how k-means clusterings of word embeddings trade compression
for agreement with categories.
"""

from __future__ import annotations

import json

import click

from tokenwise.cli.common import check_output_path, console, model_option, read_text, show_piece
from tokenwise.errors import TokenwiseError


@click.group("analyze")
def analyze_group() -> None:
    """Measurements from the theory papers: directed information, surplus, embedding IB."""


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
