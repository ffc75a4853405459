"""`tokenwise generate`: generate from a prompt with a sampler, showing each token's entropy."""

from __future__ import annotations

import json
import math

import click

from tokenwise.cli.common import console, model_option, show_piece
from tokenwise.errors import TokenwiseError

#: Options that only entropy-adaptive decoding (--small) reads: (parameter, option).
_EAD_OPTIONS = (("switch_up", "--switch-up"), ("switch_down", "--switch-down"),
                ("switch_window", "--switch-window"), ("switch_judge", "--switch-judge"))


def parse_params(pairs: tuple[str, ...]) -> dict[str, object]:
    """``("top_p=0.9", "top_k=40")`` -> ``{"top_p": 0.9, "top_k": 40}``.

    Example:
        >>> parse_params(("alpha=0.4", "rule=bound"))
        {'alpha': 0.4, 'rule': 'bound'}
    """
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise TokenwiseError(f"--param {pair!r}: write NAME=VALUE, e.g. --param top_p=0.9")
        value: object = {"true": True, "false": False}.get(raw.lower(), raw)
        for cast in (int, float) if isinstance(value, str) else ():
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def check_ead_options(ctx: click.Context, model: str, small: str | None, switch_up: float,
                      switch_down: float | None, switch_judge: str) -> float | None:
    """Check the entropy-adaptive decoding options together; return the hand-back threshold.

    Options that only ``--small`` reads are refused without it, ``--small`` must be another
    model than ``--model``, and the thresholds are checked here so that the message names the
    options (``generate_ead`` knows them as ``up`` and ``down``).

    Args:
        ctx: the command's context (to tell given options from defaults).
        model: ``--model``.
        small: ``--small``, or None.
        switch_up: ``--switch-up`` (bits).
        switch_down: ``--switch-down`` (bits), or None for its default.
        switch_judge: ``--switch-judge``.

    Returns:
        The ``down`` threshold for ``generate_ead``, or None without ``--small``.

    Example:
        >>> ctx = click.Context(generate_command)
        >>> check_ead_options(ctx, "tw-large", "tw-small", 2.0, None, "active")
        1.5
    """
    from click.core import ParameterSource

    if small is None:
        given = [option for name, option in _EAD_OPTIONS
                 if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
        if given:
            many = len(given) > 1
            raise TokenwiseError(
                f"{' and '.join(given)} only appl{'y' if many else 'ies'} to entropy-adaptive "
                "decoding: add --small MODEL (the smaller model that writes by default) or "
                f"drop {'them' if many else 'it'}"
            )
        return None
    from tokenwise.models.loading import resolve

    if resolve(small)[1] == resolve(model)[1]:
        raise TokenwiseError(f"--small {small!r} is the same model as --model {model!r}; "
                             "entropy-adaptive decoding needs a smaller second model")
    if not math.isfinite(switch_up) or switch_up <= 0:
        raise TokenwiseError(f"--switch-up {switch_up:g}: allowed a number of bits > 0")
    if switch_down is None:
        return switch_up if switch_judge == "small" else 0.75 * switch_up
    if not math.isfinite(switch_down) or not 0 <= switch_down <= switch_up:
        raise TokenwiseError(f"--switch-down {switch_down:g}: allowed a number of bits from 0 "
                             f"to --switch-up ({switch_up:g})")
    return switch_down


@click.command("generate")
@click.argument("prompt")
@model_option()
@click.option("--sampler", default=None,
              help="Sampler name (see `tokenwise samplers`); default: greedy.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Sampler parameter, repeatable (e.g. --param alpha=0.4).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Sampling seed.")
@click.option("--stop", multiple=True, help="Stop string, repeatable (default: none).")
@click.option("--small", default=None,
              help="Entropy-adaptive decoding: this smaller model writes, --model takes over "
                   "where the rolling entropy rises.")
@click.option("--switch-up", type=float, default=1.25, show_default=True,
              help="EAD: rolling mean entropy (bits) above which --model takes over.")
@click.option("--switch-down", type=float, default=None,
              help="EAD: rolling mean entropy (bits) below which --small takes back "
                   "(default: 0.75 x --switch-up; with --switch-judge small: --switch-up).")
@click.option("--switch-window", type=click.IntRange(min=1), default=5, show_default=True,
              help="EAD: tokens in the rolling entropy mean.")
@click.option("--switch-judge", type=click.Choice(["active", "small"]), default="active",
              show_default=True,
              help="EAD: whose entropy decides: the model that wrote each token (the paper's "
                   "rule) or the small model's alone, every token.")
@click.option("--json", "as_json", is_flag=True, help="Print the generation as JSON.")
@click.pass_context
def generate_command(ctx: click.Context, prompt: str, model: str, sampler: str | None,
                     params: tuple[str, ...], max_new_tokens: int, seed: int | None,
                     stop: tuple[str, ...], small: str | None, switch_up: float,
                     switch_down: float | None, switch_window: int, switch_judge: str,
                     as_json: bool) -> None:
    """Generate a continuation of PROMPT; every token comes with its entropy and rank.

    With --small, entropy-adaptive decoding: the small model writes and --model writes
    where the small one's rolling entropy rises; each token says which model wrote it.
    """
    from tokenwise.generation import generate
    from tokenwise.models import load
    from tokenwise.sampling import get

    if not prompt.strip():
        raise TokenwiseError(f"PROMPT {prompt!r}: a non-empty prompt is needed")
    if "" in stop:
        raise TokenwiseError("--stop '': a stop string must not be empty (it would stop at once)")
    kwargs = parse_params(params)
    if kwargs and sampler is None:
        raise TokenwiseError("--param needs --sampler (greedy decoding has no parameters)")
    down = check_ead_options(ctx, model, small, switch_up, switch_down, switch_judge)
    chosen = get(sampler, **kwargs) if sampler else None
    if small is not None:
        from tokenwise.generation.ead import generate_ead

        gen = generate_ead(load(small), load(model), prompt, chosen, up=switch_up, down=down,
                           window=switch_window, judge=switch_judge,
                           max_new_tokens=max_new_tokens, seed=seed, stop=list(stop) or None)
    else:
        gen = generate(load(model), prompt, chosen, max_new_tokens=max_new_tokens, seed=seed,
                       stop=list(stop) or None)
    if as_json:
        click.echo(json.dumps(gen.as_dict(), indent=2, ensure_ascii=False))
        return
    from rich.markup import escape
    from rich.text import Text

    out = console()
    shown = Text(prompt, style="dim")
    for t in gen.tokens:  # colour by entropy: green sure, yellow unsure, red guessing
        style = "green" if t.entropy < 0.5 else "yellow" if t.entropy < 1.5 else "red"
        shown.append(t.text, style=style)
    out.print(shown)
    used = escape(repr(chosen) if chosen else "greedy")
    seed = getattr(gen, "seed", seed)
    seed_note = "" if seed is None else f"; seed {seed}"
    mean = sum(t.entropy for t in gen.tokens) / max(1, len(gen.tokens))
    out.print(f"[dim]finish: {gen.finish_reason}; {len(gen.tokens)} tokens; mean entropy "
              f"{mean:.2f} nats; sampler {used}{seed_note}[/dim]")
    if small is not None:
        out.print(f"[dim]{escape(model)} wrote {100 * gen.large_share:.0f}% of the tokens "
                  f"({gen.switches} hand-overs; forward passes {gen.forward_passes})[/dim]")
    for t in gen.tokens:
        who = f"  [{t.model}]" if small is not None else ""
        out.print(escape(f"  {show_piece(t.text):>12}  p {math.exp(t.logprob):.2f}  "
                         f"entropy {t.entropy:.2f}  rank {t.rank}{who}"))
