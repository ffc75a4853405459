"""`tokenwise uncertainty`: how sure is the model of its answer, and how well do scores flag errors.

``tokenwise uncertainty "question"`` samples answers, clusters them by meaning and prints
every estimator's score; ``tokenwise uncertainty eval`` runs the evaluation harness on the
testbed's fact world and prints AUROC, AUPRC, PRR, AURAC, ECE and Brier per estimator.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from tokenwise.cli.common import check_output_path, model_option
from tokenwise.errors import TokenwiseError

#: Estimators the single-question view shows when --method is not given.
DEFAULT_METHODS = ("semantic_entropy", "discrete_semantic_entropy", "num_semantic_sets",
                   "predictive_entropy", "predictive_entropy_normalised",
                   "maximum_sequence_probability", "semantic_volume")

#: Estimators `eval` compares when --estimators is not given (no paraphrase sampling).
DEFAULT_EVAL = ("semantic_entropy", "discrete_semantic_entropy", "num_semantic_sets",
                "predictive_entropy", "predictive_entropy_normalised",
                "maximum_sequence_probability", "mean_token_entropy", "semantic_volume",
                "eigenscore")

#: Estimators that read answers to paraphrased questions.
NEEDS_PARAPHRASES = ("inv_entropy", "semantic_volume_questions")


# --------------------------------------------------------------------------------------------
# helpers shared with benchmarks/uncertainty_eval.py
# --------------------------------------------------------------------------------------------


def make_equivalence(spec: str, world: Any = None, embedder: Any = None) -> Any:
    """An equivalence from its command-line spelling.

    Args:
        spec: ``embedding`` (MiniLM, cosine >= 0.75), ``exact`` (after normalisation),
            ``nli:DIR`` (a local NLI model), or ``oracle`` (the fact world's own meaning
            of each answer: what a perfect NLI model would say; needs ``world``).
        world: the fact world, for ``oracle``.
        embedder: for ``embedding``: the embedding model (an :class:`Embedder`); None for
            the shared MiniLM.

    Example:
        >>> make_equivalence("exact")
        ExactEquivalence(...)
    """
    from tokenwise.uncertainty import ExactEquivalence, NLIEquivalence

    if spec == "embedding":
        from tokenwise.uncertainty.equivalence import EmbeddingEquivalence, default_equivalence

        return default_equivalence() if embedder is None else EmbeddingEquivalence(embedder)
    if spec == "exact":
        return ExactEquivalence()
    if spec.startswith("nli:") and len(spec) > 4:
        return NLIEquivalence(spec[4:])
    if spec == "oracle":
        if world is None:
            raise TokenwiseError("--equivalence oracle needs the fact world (eval --world facts)")
        return FactOracle(world)
    raise TokenwiseError(f"--equivalence {spec!r}: allowed embedding, exact, nli:DIR "
                         "(a local NLI model directory) or oracle (fact world only)")


class FactOracle:
    """The fact world's meaning relation: two answers are equivalent when they name the
    same value of the attribute the question asks about (unknown forms only equal
    themselves after normalisation). A perfect NLI model would agree with it.

    Args:
        world: a :class:`~tokenwise.testbed.facts.FactWorld`.
    """

    def __init__(self, world: Any):
        self.world = world
        self._attribute: dict[str, str] = {}
        for name, attr in world.attributes.items():
            for template in attr.questions:
                self._attribute[template] = name

    def __repr__(self) -> str:
        return "FactOracle()"

    def attribute_of(self, question: str) -> str:
        """The attribute a fact question asks about (by its template)."""
        for entity_free, name in self._attribute.items():
            head, _, tail = entity_free.partition("{e}")
            if question.startswith(head) and question.endswith(tail):
                return name
        raise TokenwiseError(f"{question!r} is not a fact-world question")

    def meaning(self, question: str, answer: str) -> str:
        """The value an answer names (or its normalised text when it names none)."""
        from tokenwise.testbed.facts import normalise_answer

        attr = self.attribute_of(question)
        found = self.world.meaning_of(attr, answer)
        return f"={found}" if found is not None else normalise_answer(answer)

    def __call__(self, question: str, a: str, b: str) -> bool:
        return self.meaning(question, a) == self.meaning(question, b)


def fact_items(world: Any, questions: int, seed: int = 0,
               buckets: Sequence[str] = ("frequent", "medium", "rare", "unseen")) -> list:
    """A balanced, seeded mix of fact questions: ``questions / len(buckets)`` per bucket.

    Frequent facts are mostly answered right and rare/unseen ones mostly wrong, so an
    equal share per bucket gives both labels in good number.

    Args:
        world: the fact world.
        questions: how many items (>= len(buckets); more than a bucket holds is an error).
        seed: which questions are drawn (and their question templates).
        buckets: the frequency buckets to draw from.

    Example:
        >>> from tokenwise.testbed.facts import FactWorld
        >>> items = fact_items(FactWorld(0), 8)
        >>> [it.group for it in items][:4], len(items)
        (['frequent', 'frequent', 'medium', 'medium'], 8)
    """
    from tokenwise.uncertainty.evaluate import EvalItem

    if questions < len(buckets):
        raise TokenwiseError(f"--questions {questions}: allowed at least {len(buckets)} "
                             f"(one per bucket: {', '.join(buckets)})")
    rng = random.Random(f"uncertainty-eval/{seed}")
    pool = world.questions(tuple(buckets), seed=seed)
    per, extra = divmod(questions, len(buckets))
    items = []
    for i, bucket in enumerate(buckets):
        want = per + (i < extra)
        chosen = [q for q in pool if q.bucket == bucket]
        if want > len(chosen):
            raise TokenwiseError(f"--questions {questions}: bucket {bucket!r} has only "
                                 f"{len(chosen)} questions (balanced mix needs {want})")
        for q in rng.sample(chosen, want):
            items.append(EvalItem(q.question, _Judge(world, q), group=bucket))
    return items


class _Judge:
    """``is_correct`` of one fact question (a class, not a lambda, so it pickles)."""

    def __init__(self, world: Any, item: Any):
        self.world, self.item = world, item

    def __call__(self, answer: str) -> bool:
        return bool(self.world.is_correct(self.item, answer))


def fact_paraphraser(world: Any):
    """``(question, k) -> paraphrases``: the fact world's other templates of the question.

    Each attribute has three question templates, so this gives up to two paraphrases;
    they are the forms the model saw in training, unlike a tiny model's own rewording.
    """
    templates = {name: attr.questions for name, attr in world.attributes.items()}
    oracle = FactOracle(world)

    def paraphrase(question: str, k: int) -> list[str]:
        attr = oracle.attribute_of(question)
        for t in templates[attr]:
            head, _, tail = t.partition("{e}")
            if question.startswith(head) and question.endswith(tail):
                entity = question[len(head): len(question) - len(tail)]
                others = [u.format(e=entity) for u in templates[attr] if u != t]
                return others[:k]
        raise TokenwiseError(f"{question!r} is not a fact-world question")

    return paraphrase


def make_embedder(directory: str | None) -> Any:
    """The embedding model of ``--embedder``: None keeps the shared MiniLM.

    Args:
        directory: a local Hugging Face encoder directory (mean-pooled), or None.

    Example:
        >>> make_embedder(None) is None
        True
    """
    if directory is None:
        return None
    from tokenwise.models.embedding import shared_embedder

    if not Path(directory).is_dir():
        raise TokenwiseError(f"--embedder {directory!r}: not a directory; give a local "
                             "Hugging Face encoder directory (e.g. a sentence-transformers "
                             "model saved with save_pretrained)")
    return shared_embedder(directory)


_EMBEDDER_HELP = ("A local encoder directory for the embedding-based parts (--equivalence "
                  "embedding, semantic_volume, eigenscore); default: the bundled "
                  "all-MiniLM-L6-v2.")


def parse_names(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``, checked against the estimator registry.

    Example:
        >>> parse_names("semantic_entropy, predictive_entropy")
        ['semantic_entropy', 'predictive_entropy']
    """
    from tokenwise.uncertainty.estimators import names

    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names()]
    if not chosen or unknown:
        raise TokenwiseError(f"estimators {text!r}: unknown {unknown or 'empty list'}; "
                             f"allowed: {', '.join(names())}")
    if len(set(chosen)) != len(chosen):
        raise TokenwiseError(f"estimators {text!r}: a name is given twice")
    return chosen


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


class _UncertaintyGroup(click.Group):
    """``tokenwise uncertainty QUESTION`` runs the single-question view; ``eval`` is a
    sub-command. A first argument that is not a sub-command is taken as the question."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["ask", *args]
        return super().parse_args(ctx, args)


@click.group("uncertainty", cls=_UncertaintyGroup, invoke_without_command=False)
def uncertainty_group() -> None:
    """How sure is a model of its answer: `tokenwise uncertainty "QUESTION"`, or
    `tokenwise uncertainty eval` to measure how well the scores flag wrong answers."""


@uncertainty_group.command("ask", hidden=True)
@click.argument("question")
@model_option()
@click.option("--n", "n", type=int, default=10, show_default=True,
              help="Answers to sample (>= 2).")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--method", "methods", multiple=True,
              help="Estimator name, repeatable or comma-separated (default: a standard set).")
@click.option("--equivalence", default="embedding", show_default=True,
              help="Meaning relation: embedding | exact | nli:DIR (a local NLI model).")
@click.option("--embedder", default=None, metavar="DIR", help=_EMBEDDER_HELP)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=24, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ask_command(question: str, model: str, n: int, temperature: float,
                methods: tuple[str, ...], equivalence: str, embedder: str | None, seed: int,
                max_new_tokens: int, as_json: bool) -> None:
    """Sample N answers to QUESTION, cluster them by meaning and score the uncertainty."""
    from tokenwise.models import load
    from tokenwise.uncertainty import sample_answers
    from tokenwise.uncertainty.evaluate import build_estimators

    chosen = parse_names(",".join(methods)) if methods else list(DEFAULT_METHODS)
    needs = [m for m in chosen if m in NEEDS_PARAPHRASES]
    if needs:
        raise TokenwiseError(f"{', '.join(needs)} need answers to paraphrased questions; "
                             "use `tokenwise uncertainty eval` or the Python API "
                             "(tokenwise.uncertainty.perturbation.add_paraphrases)")
    emb = make_embedder(embedder)
    eq = make_equivalence(equivalence, embedder=emb)
    estimators = build_estimators(chosen, equivalence=eq, embedder=emb)
    lm = load(model)
    samples = sample_answers(lm, question, n=n, temperature=temperature, seed=seed,
                             max_new_tokens=max_new_tokens)
    ids = samples.stats.clusters(eq).ids
    scores = {name: est(samples) for name, est in estimators.items()}
    lls = samples.log_likelihoods() if samples.has_logprobs else [None] * samples.n
    ref = samples.reference
    if as_json:
        click.echo(json.dumps({
            "question": samples.question, "model": lm.name, "n": samples.n,
            "temperature": samples.temperature, "equivalence": repr(eq),
            "reference": None if ref is None else ref.text,
            "answers": [{"text": a.text, "cluster": c,
                         "log_likelihood": None if ll is None else round(float(ll), 4)}
                        for a, c, ll in zip(samples.answers, ids, lls, strict=True)],
            "scores": {k: round(v, 4) + 0.0 for k, v in scores.items()},  # no -0.0
        }, indent=2, ensure_ascii=False))
        return
    from rich.markup import escape
    from rich.table import Table

    from tokenwise.cli.common import console as make_console

    console = make_console()
    console.print(f"[bold]{escape(samples.question)}[/bold]  ({escape(lm.name)}, n={samples.n}, "
                  f"T={temperature:g}, equivalence {escape(repr(eq))})")
    if ref is not None:
        console.print(f"low-temperature answer: [bold]{escape(ref.text or '(empty)')}[/bold]")
    table = Table(title="samples")
    for col in ("#", "answer", "cluster", "log p"):
        table.add_column(col, justify="right" if col != "answer" else "left")
    for i, (a, c, ll) in enumerate(zip(samples.answers, ids, lls, strict=True)):
        table.add_row(str(i), escape(a.text or "(empty)"), str(c),
                      "" if ll is None else f"{ll:.2f}")
    console.print(table)
    k = max(ids) + 1
    console.print(f"{k} meaning cluster(s) among {samples.n} answers")
    scored = Table(title="uncertainty (higher = less certain)")
    scored.add_column("estimator", no_wrap=True)
    scored.add_column("score", justify="right")
    for name, value in scores.items():
        scored.add_row(name, f"{value:.4f}")
    console.print(scored)


@uncertainty_group.command("eval")
@click.option("--world", type=click.Choice(["facts"]), default="facts", show_default=True,
              help="Testbed world whose questions are asked.")
@model_option()
@click.option("--estimators", default=",".join(DEFAULT_EVAL), show_default=True,
              help="Comma-separated estimator names.")
@click.option("--questions", type=click.IntRange(min=4), default=200, show_default=True,
              help="Questions, an equal share from each frequency bucket.")
@click.option("--n", "n", type=int, default=10, show_default=True,
              help="Answers sampled per question.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--equivalence", default="embedding", show_default=True,
              help="Meaning relation: embedding | exact | nli:DIR | oracle (the world's "
                   "own meanings, i.e. a perfect NLI model).")
@click.option("--embedder", default=None, metavar="DIR", help=_EMBEDDER_HELP)
@click.option("--bootstrap", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Bootstrap resamples for the AUROC interval.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the question draw, the sampling and the bootstrap.")
@click.option("--testbed-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Testbed seed (the built-in models were trained on seed 0).")
@click.option("--png", default=None, help="Write the rejection curves to this PNG.")
@click.option("--json", "json_out", default=None, help="Write the table as JSON here.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(world: str, model: str, estimators: str, questions: int, n: int,
                 temperature: float, equivalence: str, embedder: str | None, bootstrap: int,
                 seed: int,
                 testbed_seed: int, png: str | None, json_out: str | None,
                 quiet: bool) -> None:
    """Measure how well each estimator flags wrong answers on the testbed's fact questions.

    Each question is sampled once (N answers at --temperature plus a T=0.1 answer whose
    correctness is the label) and every estimator scores the same samples.
    """
    from tokenwise.models import load
    from tokenwise.testbed.worlds import Testbed
    from tokenwise.uncertainty.evaluate import evaluate, plot_rejection_curves
    from tokenwise.uncertainty.perturbation import add_paraphrases

    check_output_path(png, "--png")
    check_output_path(json_out, "--json")
    chosen = parse_names(estimators)
    facts = Testbed(testbed_seed).fact_world
    emb = make_embedder(embedder)
    eq = make_equivalence(equivalence, world=facts, embedder=emb)
    items = fact_items(facts, questions, seed=seed)
    lm = load(model)
    prepare = None
    if any(c in NEEDS_PARAPHRASES for c in chosen):
        para = fact_paraphraser(facts)

        def prepare(s, item):
            return add_paraphrases(lm, s, para, k=2, seed=seed)

    result = evaluate(items, lm, chosen, n=n, temperature=temperature, seed=seed,
                      equivalence=eq, embedder=emb, bootstrap=bootstrap, prepare=prepare,
                      progress=not quiet)
    if json_out:
        report = {"model": lm.name, "world": world, "equivalence": equivalence,
                  "n": n, "temperature": temperature, "seed": seed, **result.as_dict()}
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
    if png:
        plot_rejection_curves(result, png, title=f"{lm.name} on {len(items)} fact questions "
                              f"(accuracy {100 * result.accuracy:.0f}%, {equivalence})")
    _print_eval(result, lm.name, equivalence, png)


def _print_eval(result: Any, model_name: str, equivalence: str, png: str | None) -> None:
    import math

    from rich.markup import escape
    from rich.table import Table

    from tokenwise.cli.common import console as make_console

    console = make_console()
    by_group = ", ".join(f"{g} {r}/{t}" for g, (r, t) in result.accuracy_by_group().items())
    console.print(f"[bold]{escape(model_name)}[/bold]: {len(result.incorrect)} questions, "
                  f"accuracy {100 * result.accuracy:.1f}% ({by_group}); equivalence "
                  f"{escape(equivalence)}")
    pct = round(100 * result.level)
    table = Table(title="uncertainty vs wrong answers (positive class: incorrect)")
    table.add_column("estimator", no_wrap=True)  # names matter more than column widths
    table.add_column("AUROC", justify="right", min_width=5)
    table.add_column(f"{pct}% CI", justify="right", no_wrap=True)
    for col in ("AUPRC", "PRR", "AURAC", "ECE", "Brier"):
        table.add_column(col, justify="right", min_width=5)

    def f(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.3f}"

    for r in result.results:
        ci = "n/a" if math.isnan(r.auroc.low) else f"[{r.auroc.low:.3f}, {r.auroc.high:.3f}]"
        table.add_row(r.name, f(r.auroc.estimate), ci, f(r.auprc), f(r.prr), f(r.aurac),
                      f(r.ece), f(r.brier))
    console.print(table)
    if png:
        console.print(f"rejection curves written to {escape(png)}")
