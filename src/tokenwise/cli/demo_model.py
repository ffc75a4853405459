"""`tokenwise demo --model NAME|PATH`: the tour of one model, e.g. a fetched real model.

The built-in tour (`tokenwise demo`) needs the testbed's models: fact questions whose training
frequency is known, and a small and a large model sharing a tokenizer for entropy-adaptive
decoding. On one model of any kind this tour runs what makes sense there: per-token entropy
and surprisal of an English paragraph, decoding with greedy, Top-H and min-p, the uncertainty
of answers to real questions (through the model's chat template when it has one), and
extractive and perplexity compression of a paragraph with a planted fact; it says which parts
it skips and why.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenwise.cli.common import show_piece
from tokenwise.errors import TokenwiseError

if TYPE_CHECKING:
    from rich.console import Console

    from tokenwise.models import LanguageModel

#: Section 1's text: plain English of ours, with a few words a model cannot predict.
PARAGRAPH = (
    "The harbour town of Port Ellery grew up around a fishing fleet in the eighteenth "
    "century. Its lighthouse, built of grey granite, stands on a rock at the mouth of the "
    "bay, and the keeper's cottage beside it is now a small museum of charts, brass lamps "
    "and logbooks. Ferries leave for the islands twice a day in summer and once a day in "
    "winter."
)

#: Section 2's prompt.
STORY_PROMPT = "The old lighthouse keeper climbed the stairs and"

#: Section 3: real questions with known answers, one most small models know, one they
#: often get wrong (Sydney is the usual guess).
QUESTIONS = (("What is the capital of France?", "Paris"),
             ("What is the capital of Australia?", "Canberra"))

#: Section 4: a memo with one fact the question needs (the needle), among distractors.
MEMO = (
    "Port Ellery has a market in the square every Saturday, selling fish, bread and wool "
    "from the hill farms. The lifeboat station was rebuilt in 1998 after a winter storm. "
    "The lighthouse museum opens at ten o'clock and closes at four, except on Mondays. "
    "The ferry to the islands takes forty minutes and carries bicycles free of charge. "
    "A footpath runs along the cliffs to the next village, a walk of about two hours."
)
MEMO_QUESTION = "At what time does the lighthouse museum open?"
MEMO_ANSWERS = ("ten", "10")
#: Most tokens of an answer from the memo.
ANSWER_TOKENS = 16

#: What the single-model tour leaves out, and why (printed as given).
SKIPPED = (
    ("entropy-adaptive decoding (EAD)",
     "needs a small and a large model that share a tokenizer (the two real models, SmolLM2 "
     "and Gemma 3, do not); `tokenwise demo` runs it on tw-small + tw-large"),
    ("fact questions seen often, rarely and never in training",
     "they need the testbed's fact world, which only the built-in models learned (so how "
     "often each fact was seen is known); `tokenwise demo` runs them"),
    ("tw-reader's answers from compressed memos",
     "tw-reader is a built-in model that reads only the testbed's memos; here the model "
     "itself answers from the compressed paragraph"),
)


@dataclass
class Asker:
    """How a question reaches a model: its chat template, or the plain ``Q: ... A:`` form.

    Attributes:
        lm: the model.
        chat: True when the model's tokenizer has a chat template.
    """

    lm: LanguageModel
    chat: bool

    @classmethod
    def of(cls, lm: LanguageModel) -> Asker:
        """The asker for ``lm`` (chat when its tokenizer carries a chat template).

        Example:
            >>> from tokenwise.models import load
            >>> Asker.of(load("tw-small")).chat
            False
        """
        return cls(lm, bool(getattr(lm.tokenizer, "chat_template", None)))

    @property
    def how(self) -> str:
        """One line that says how questions are asked."""
        if self.chat:
            return f"Questions go through {self.lm.name}'s own chat template."
        return (f"{self.lm.name} has no chat template (a base model): questions are asked "
                "in the plain form 'Q: ...' + newline + 'A:', and an answer ends at the line "
                "break.")

    def prompt(self, question: str) -> str:
        """The prompt that asks ``question``.

        Args:
            question: the user's question (for the chat form, the whole user message).

        Example:
            >>> from tokenwise.models import load
            >>> Asker.of(load("tw-small")).prompt("What is 2+3?")
            'Q: What is 2+3?\\nA:'
        """
        from tokenwise.serving.chat_format import render

        return render(self.lm.tokenizer, [{"role": "user", "content": question}]).text


def _timed(console: Console, start: float) -> None:
    console.print(f"[dim]({time.perf_counter() - start:.1f} s)[/dim]")


def _contains(answer: str, truths: tuple[str, ...] | str) -> bool:
    truths = (truths,) if isinstance(truths, str) else truths
    return any(re.search(rf"(?<!\w){re.escape(t)}(?!\w)", answer, re.I) for t in truths)


def _one_line(text: str, limit: int = 160) -> str:
    # A leading space is kept: it is the generated text's own (" stepped", not "stepped").
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_out(out: str) -> None:
    """Fail before loading anything when ``out`` cannot be the heatmap's folder.

    Args:
        out: the ``--out`` folder.

    Raises:
        TokenwiseError: ``out`` (or a folder above it) is a file.

    Example:
        >>> check_out("tokenwise-demo")
    """
    path = Path(out)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise TokenwiseError(f"--out {out!r}: {str(folder)!r} is a file, not a folder")
            return


def model_tour(console: Console, model: str, out: str) -> dict[str, Any]:
    """Run the single-model tour of ``model`` and print it to ``console``.

    Args:
        console: where the tour prints.
        model: a built-in name, a fetched real model's name, a directory or a ``.gguf`` file.
        out: folder for the heatmap HTML.

    Returns:
        What was done: ``model``, ``chat`` (whether the chat template was used), ``tokens``
        (of the scored paragraph), ``answers`` (question -> the model's answer),
        ``compression`` (method -> needle survived), ``skipped`` (part names), ``heatmap``.

    Raises:
        TokenwiseError: an unknown model, a real model not fetched (the message names the
            `tokenwise models fetch` command; nothing is downloaded), or ``out`` is a file.

    Example:
        >>> from rich.console import Console
        >>> done = model_tour(Console(quiet=True), "tw-small", "/tmp/tw-demo")  # doctest: +SKIP
        >>> done["chat"]  # doctest: +SKIP
        False
    """
    from rich.markup import escape

    from tokenwise.heatmap import write_html
    from tokenwise.models import load, real_model_names
    from tokenwise.scoring import score

    check_out(out)
    start = time.perf_counter()
    lm = load(model)
    asker = Asker.of(lm)
    done: dict[str, Any] = {"model": lm.name, "chat": asker.chat, "answers": {},
                            "compression": {}}
    console.rule(f"[bold]tokenwise demo --model {escape(model)}")
    console.print(f"loaded {escape(lm.name)}: {lm.num_parameters():,} parameters, vocabulary "
                  f"{lm.vocab_size:,}, context {lm.context_length:,} tokens, chat template: "
                  f"{'yes' if asker.chat else 'no'} ({time.perf_counter() - start:.1f} s)")
    if model in real_model_names():
        console.print("Its weights are a 4-bit quantisation (dequantised to float32): figures "
                      "differ from the original model's.")

    console.rule("1. per-token entropy and surprisal of a paragraph")
    t0 = time.perf_counter()
    trace = score(lm, PARAGRAPH)
    done["tokens"] = len(trace)
    console.print(f"{escape(lm.name)} scored {len(trace)} tokens of an English paragraph: mean "
                  f"entropy {trace.mean_entropy:.2f} nats, perplexity {trace.perplexity:.1f}")
    surprisal = trace.surprisals
    console.print("most surprising tokens (surprisal = -log p; the model did not expect them):")
    for i in surprisal.argsort(descending=True)[:4].tolist():
        before = "".join(trace.pieces[max(0, i - 4):i])
        console.print(f"  {escape(show_piece(trace.pieces[i])):>14}  surprisal "
                      f"{float(surprisal[i]):5.2f}  entropy {float(trace.entropies[i]):5.2f}"
                      f"   after {escape(repr(before[-30:]))}")
    console.print("most uncertain positions (high entropy: the model was guessing):")
    for i in trace.entropies.argsort(descending=True)[:4].tolist():
        top = ", ".join(repr(p) for p in trace.top_pieces[i][:3])
        console.print(f"  {escape(show_piece(trace.pieces[i])):>14}  entropy "
                      f"{float(trace.entropies[i]):5.2f}  its top guesses {escape(top)}")
    html = write_html(trace, Path(out) / "heatmap.html", title=f"tokenwise demo: {lm.name}")
    done["heatmap"] = html
    console.print(f"heatmap written to {escape(str(html))} (hover a token for its numbers)")
    _timed(console, t0)

    console.rule("2. decoding: greedy, Top-H, min-p")
    from tokenwise.generation import generate
    from tokenwise.sampling import Chain, MinP, Temperature, TopH

    t0 = time.perf_counter()
    samplers = {"greedy": None, "top-h 0.4": TopH(0.4),
                "min-p 0.1, T 1.5": Chain([MinP(0.1), Temperature(1.5)])}
    for label, sampler in samplers.items():
        gen = generate(lm, STORY_PROMPT, sampler, max_new_tokens=16, seed=0, stop="\n")
        console.print(escape(f"  {label:>16}: {STORY_PROMPT}{_one_line(gen.text)}") +
                      f"   (mean entropy {gen.mean_entropy:.2f} nats)")
    _timed(console, t0)

    console.rule("3. uncertainty: should this answer be trusted?")
    from tokenwise.uncertainty import get as get_estimator
    from tokenwise.uncertainty import sample_answers

    t0 = time.perf_counter()
    console.print(escape(asker.how) + " The answer is the model's greedy one; five more are "
                  "sampled at T = 1 and grouped by meaning (MiniLM embeddings): semantic "
                  "entropy is low when they agree, high when they scatter.")
    estimators = (("semantic entropy", "semantic_entropy", "{:.2f} nats"),
                  ("meaning groups", "num_semantic_sets", "{:.0f}"),
                  ("predictive entropy per token", "predictive_entropy_normalised",
                   "{:.2f} nats"))
    for question, truth in QUESTIONS:
        prompt = asker.prompt(question)
        answer = generate(lm, prompt, None, max_new_tokens=20, stop="\n").text.strip()
        samples = sample_answers(lm, prompt, n=5, seed=0, max_new_tokens=20,
                                 prompt_template="{question}", reference_temperature=None)
        done["answers"][question] = answer
        verdict = "correct" if _contains(answer, truth) else "wrong"
        console.print(escape(f"  {question!r} -> {_one_line(answer.strip())!r} ({verdict}; "
                             f"truth {truth!r})"), highlight=False)
        shown = "; ".join(repr(_one_line(t.strip(), 50)) for t in samples.texts)
        agree = sum(_contains(t, truth) for t in samples.texts)
        console.print(escape(f"     samples: {shown}"), highlight=False)
        values = {label: get_estimator(name)(samples) for label, name, _ in estimators}
        scores = ", ".join(f"{label} {unit.format(values[label])}"
                           for label, _, unit in estimators)
        console.print(f"     {agree} of {samples.n} samples name {escape(truth)}; {scores}",
                      highlight=False)
        if 0 < agree < samples.n and values["meaning groups"] == 1:
            console.print("     (MiniLM compares whole sentences, and put answers naming "
                          f"{escape(truth)} and answers that do not in one group; `tokenwise "
                          "uncertainty --equivalence nli:DIR` with a local NLI model tells "
                          "them apart)", highlight=False)
    _timed(console, t0)

    console.rule("4. prompt compression: does the needle survive?")
    t0 = time.perf_counter()
    done["compression"] = _compression(console, asker)
    _timed(console, t0)

    console.rule("skipped on a single model")
    for part, why in SKIPPED:
        console.print(escape(f"  {part}: {why}."), highlight=False)
    done["skipped"] = [part for part, _ in SKIPPED]

    console.rule("done")
    kept = sum(done["compression"].values())
    console.print(
        f"What happened: loaded {escape(lm.name)}, scored a {len(trace)}-token paragraph "
        f"(heatmap {escape(str(html))}), decoded with greedy, Top-H and min-p, answered "
        f"{len(QUESTIONS)} real questions "
        f"{'through its chat template' if asker.chat else 'in the plain Q/A form'} and scored "
        f"their uncertainty, and compressed a memo with "
        f"{len(done['compression'])} methods (the needle survived in {kept} of them), in "
        f"{time.perf_counter() - start:.1f} s; skipped {len(SKIPPED)} parts that need the "
        f"built-in models (above). Next: `tokenwise score FILE --model {escape(model)} --html "
        f"out.html`, `tokenwise serve --model {escape(model)}` (the playground).")
    return done


def _compression(console: Console, asker: Asker) -> dict[str, bool]:
    """Compress :data:`MEMO` with extractive and perplexity; the model answers from each."""
    from rich.markup import escape

    from tokenwise.compression import compress, get
    from tokenwise.generation import generate

    lm = asker.lm

    def answer(context: str) -> str | None:
        """The model's answer from ``context``; None when the prompt exceeds its context."""
        ask = f"{context.strip()}\n{MEMO_QUESTION}" if not asker.chat else \
            f"{context.strip()}\n\nAnswer briefly: {MEMO_QUESTION}"
        prompt = asker.prompt(ask)
        # one token to spare for a start token the decode loop may add
        if len(lm.encode(prompt)) + 1 + ANSWER_TOKENS > lm.context_length:
            return None
        return generate(lm, prompt, None, max_new_tokens=ANSWER_TOKENS, stop="\n").text.strip()

    def said(answer: str | None, survived: bool = True) -> str:
        if answer is None:
            return (f"not asked: the prompt does not fit {escape(lm.name)}'s context of "
                    f"{lm.context_length} tokens")
        verdict = ("[red]wrong[/red]" if not _contains(answer, MEMO_ANSWERS) else
                   "[green]right[/green]" if survived else
                   "right, a guess: the fact was not there")
        return f"{escape(repr(_one_line(answer)))} {verdict}"

    console.print(f"{escape(lm.name)} reads the whole memo and answers: {said(answer(MEMO))} "
                  "(truth: ten o'clock)", highlight=False)
    survived: dict[str, bool] = {}
    methods = {"extractive": get("extractive"), "perplexity": get("perplexity", model=lm)}
    for method, compressor in methods.items():
        result = compress(MEMO, compressor, rate=0.33, question=MEMO_QUESTION, target_model=lm)
        reads_with = "MiniLM sentence embeddings" if method == "extractive" else \
            f"{lm.name}'s surprisal"
        console.print(f"[bold]{method}[/bold] ({escape(reads_with)}): {result.tokens_before} -> "
                      f"{result.tokens_after} tokens, {result.seconds:.2f} s", highlight=False)
        console.print(escape(f"  kept: {_one_line(result.text, 400)}"), highlight=False)
        survived[method] = _contains(result.text, MEMO_ANSWERS)
        console.print("  the needle (ten o'clock) " + ("[green]survived[/green]" if
                                                       survived[method] else
                                                       "[red]was dropped[/red]")
                      + f"; {escape(lm.name)} answers from what was kept: "
                      + said(answer(result.text), survived[method]), highlight=False)
    return survived
