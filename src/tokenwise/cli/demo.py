"""`tokenwise demo`: a tour on the built-in models, with no download; with ``--model``, the
tour of one model (e.g. a fetched real model, see :mod:`tokenwise.cli.demo_model`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from tokenwise.cli.common import console as make_console
from tokenwise.cli.common import show_piece

PASSAGE = (
    "Q: What is the profession of {frequent}?\nA: {frequent_answer}\n"
    "{statement}\n"
    "38+45=83\n"
    "markov: ka ro yi tu ka ro zu va mi qa\n"
)


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="tokenwise-demo",
              show_default=True, help="Where the HTML heatmap is written.")
@click.option("--model", "-m", default=None, metavar="NAME|PATH",
              help="Tour this one model instead of the built-ins: a fetched real model "
                   "(smollm2-135m, gemma3-270m; see `tokenwise models`), a built-in name, a "
                   "local Hugging Face directory or a .gguf file. Parts that need the "
                   "built-in models are skipped, and the tour says why.")
def demo_command(out: str, model: str | None) -> None:
    """Score a passage, answer fact questions, decode, score uncertainty, compress a memo.

    With --model, the same on one model (real questions, an English paragraph and memo).
    """
    if model is not None:
        from tokenwise.cli.demo_model import model_tour

        model_tour(make_console(), model, out)
        return
    from rich.markup import escape

    from tokenwise.heatmap import write_html
    from tokenwise.models import builtin_names, load
    from tokenwise.scoring import score
    from tokenwise.testbed.evaluate import greedy_complete
    from tokenwise.testbed.worlds import Testbed

    console = make_console()
    start = time.perf_counter()
    # The general models; tw-reader only answers needle questions (section 5 uses it).
    models = {name: load(name) for name in builtin_names() if name != "tw-reader"}
    console.rule("[bold]tokenwise demo")
    for lm in models.values():
        console.print(f"loaded {lm.name}: {lm.num_parameters():,} parameters, "
                      f"context {lm.context_length} tokens")
    large = models.get("tw-large") or next(iter(models.values()))
    world = Testbed(0).fact_world
    wanted = ("profession", "birthplace")
    by_bucket = {b: [q for q in world.questions((b,)) if q.attribute in wanted]
                 for b in ("frequent", "rare", "unseen")}
    freq = by_bucket["frequent"][0]
    passage = PASSAGE.format(
        frequent=freq.entity, frequent_answer=freq.answers[0],
        statement=f"{by_bucket['rare'][0].entity} was born in the city of Velmora.",
    )

    console.rule("1. per-token entropy of a passage")
    trace = score(large, passage)
    console.print(f"{large.name} scored {len(trace)} tokens: mean entropy "
                  f"{trace.mean_entropy:.2f} nats, perplexity {trace.perplexity:.2f}")
    order = trace.entropies.argsort(descending=True)[:5].tolist()
    console.print("most uncertain positions (the model was guessing before these tokens):")
    for i in order:
        console.print(f"  {escape(show_piece(trace.pieces[i])):>14}  "
                      f"entropy {float(trace.entropies[i]):.2f}  "
                      f"p(token) {math.exp(float(trace.logprobs[i])):.2f}")
    html = write_html(trace, Path(out) / "heatmap.html", title="tokenwise demo")
    console.print(f"heatmap written to {html} (hover a token for its numbers)")

    console.rule("2. fact questions: known, rare, never seen")
    console.print("Questions on facts seen often, rarely and never in training. Entropy of the "
                  "answer's first token tells a known fact from a guess.")
    for bucket, items in by_bucket.items():
        item = items[0]
        for lm in models.values():
            answer = greedy_complete(lm, [item.prompt])[0]
            ans_trace = score(lm, f"{item.prompt} {answer}")
            first = len(lm.encode(item.prompt))
            ent = float(ans_trace.entropies[first]) if first < len(ans_trace) else float("nan")
            verdict = "correct" if world.is_correct(item, answer) else "wrong"
            console.print(escape(
                f"  [{bucket:>8}] {lm.name:>8}: {item.question!r} -> {answer!r} "
                f"({verdict}; truth {item.answers[0]!r}); first-token entropy {ent:.2f}"))

    console.rule("3. decoding: samplers and entropy-adaptive switching")
    from tokenwise.generation import generate
    from tokenwise.generation.ead import generate_ead
    from tokenwise.sampling import Chain, MinP, Temperature, TopH

    prompt = "markov: ka ro"
    samplers = {"greedy": None, "top-h 0.4": TopH(0.4),
                "min-p 0.1, T 1.5": Chain([MinP(0.1), Temperature(1.5)])}
    for label, sampler in samplers.items():
        gen = generate(large, prompt, sampler, max_new_tokens=10, seed=0)
        console.print(escape(f"  {label:>16}: {prompt}{gen.text}   (mean entropy "
                             f"{gen.mean_entropy:.2f} nats)"))
    small = models.get("tw-small")
    if small is not None and small is not large:
        for item_prompt in ("38+45=", f"{by_bucket['frequent'][1].prompt}"):
            # The setting chosen on held-out-validated testbed items (BENCHMARKS.md).
            ead = generate_ead(small, large, item_prompt, judge="small", window=1, up=2.0,
                               max_new_tokens=10, stop="\n")
            marked = "".join(f"[{t.text}]" if t.model == large.name else t.text
                             for t in ead.tokens)
            console.print(escape(f"  EAD {item_prompt!r} -> {marked!r}: tw-large wrote "
                                 f"{100 * ead.large_share:.0f}% ([brackets]), "
                                 f"{ead.flops / 1e6:.1f} MFLOPs"))

    console.rule("4. uncertainty: should this answer be trusted?")
    from tokenwise.uncertainty import get as get_estimator
    from tokenwise.uncertainty import sample_answers

    console.print("Ten answers sampled at T = 1 per question, grouped by meaning (MiniLM "
                  "embeddings); semantic entropy is low when they agree, high when they scatter.")
    semantic_entropy = get_estimator("semantic_entropy")
    for bucket in ("frequent", "unseen"):
        item = by_bucket[bucket][2]
        samples = sample_answers(large, item.question, n=10, seed=0)
        counts: dict[str, int] = {}
        for text in samples.texts:
            counts[text] = counts.get(text, 0) + 1
        shown = ", ".join(f"{text!r} x{k}" for text, k in
                          sorted(counts.items(), key=lambda kv: -kv[1])[:4])
        console.print(escape(f"  [{bucket:>8}] {item.question!r}: {shown}"))
        console.print(f"             semantic entropy {semantic_entropy(samples):.2f} nats "
                      f"(truth {escape(repr(item.answers[0]))})")

    console.rule("5. prompt compression: does the needle survive?")
    from tokenwise.cli.compress import demo_lines

    demo_lines(console, reader="tw-reader" if "tw-reader" in builtin_names() else None)

    console.rule("done")
    console.print(f"What happened: loaded {len(models)} built-in models from the package, scored "
                  f"a {len(trace)}-token passage, answered {3 * len(models)} questions, decoded "
                  f"with three samplers and with entropy-adaptive switching, scored answers' "
                  f"uncertainty, compressed a memo, and wrote {html}, "
                  f"in {time.perf_counter() - start:.1f} s. Next: `tokenwise score FILE --html "
                  "out.html`, `tokenwise generate PROMPT --sampler top_h`, `tokenwise "
                  "uncertainty \"QUESTION\"`, `tokenwise compress FILE --rate 0.33 --show`, "
                  "`tokenwise serve`.")
