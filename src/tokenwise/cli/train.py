"""`tokenwise train`: fine-tune a local causal LM (CE or EMO, fused or not, ssToken selection)."""

from __future__ import annotations

import click

from tokenwise.errors import TokenwiseError


@click.command("train")
@click.argument("model")
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: the trained model, training.json and checkpoint/.")
@click.option("--loss", type=click.Choice(["ce", "emo"]), default="ce", show_default=True,
              help="Cross-entropy, or EMO (mixed with MLE as in its paper).")
@click.option("--fused/--no-fused", default=True, show_default=True,
              help="Compute the loss without materialising the full logits (Llama, Qwen2, "
                   "Mistral, Gemma classes).")
@click.option("--select", type=click.Choice(["sstoken"]), default=None,
              help="Token selection: ssToken (needs --history-model).")
@click.option("--history-model", default=None,
              help="ssToken's frozen history model (built-in name or directory; same "
                   "tokenizer), e.g. the model before fine-tuning.")
@click.option("--rho", type=click.FloatRange(0, 1, min_open=True), default=0.6,
              show_default=True, help="ssToken: share of response tokens kept.")
@click.option("--gamma", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="ssToken: weight of the loss term against attention to the prompt.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Total optimizer steps (a resumed run counts the steps already done) "
                   "[default: 100; 6 with --extend-context].")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Sequences per step [default: 8; 16 with --extend-context].")
@click.option("--seq-len", type=click.IntRange(min=2), default=None,
              help="Tokens per sequence (default: the model's context length).")
@click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True,
              help="Linear warm-up steps.")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant",
              show_default=True, help="Learning rate after warm-up.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--save-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Checkpoint every N steps (0: only at the end, or when stopped).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--extend-context", type=click.IntRange(min=1), default=None, metavar="N",
              help="Extend the model's context to N tokens first (the 100-sample recipe of "
                   "Entropy-ABF: the first --samples examples, 6 steps of 16, sequences of "
                   "N tokens); the saved model keeps the extension.")
@click.option("--extend-method", type=click.Choice(["entropy_abf", "pi", "ntk", "yarn"]),
              default=None, help="Extension method [default: entropy_abf].")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Train on the first N examples of DATA only [default: all; 100 with "
                   "--extend-context].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoint (same settings and data); bit-identical.")
@click.option("--overwrite", is_flag=True,
              help="Use a non-empty --out that is not a run of this command: delete its "
                   "contents just before the first step (never mixed with the new files).")
def train_command(model: str, data: str, out: str, loss: str, fused: bool, select: str | None,
                  history_model: str | None, rho: float, gamma: float, steps: int, lr: float,
                  batch_size: int, seq_len: int | None, warmup: int, schedule: str,
                  weight_decay: float, save_every: int, seed: int, extend_context: int | None,
                  extend_method: str | None, samples: int | None, device: str,
                  resume: bool, overwrite: bool) -> None:
    """Fine-tune MODEL (built-in name or directory) on DATA (.jsonl or text).

    DATA: a .jsonl file with one {"text": ...} or {"prompt": ..., "response": ...} object
    per line (only responses are targets), or any UTF-8 text file. The result in --out
    loads with `tokenwise.models.load(OUT)` and every `--model OUT` option.

    --out must be new or empty, or hold a run of this command (continue it with --resume);
    anything else needs --overwrite. SIGTERM or Ctrl-C saves a checkpoint after the step in
    progress and exits; rerun the same command with --resume to continue.

    With --extend-context N the model is first extended to N tokens (see
    tokenwise.context.extend) and fine-tuned on the first 100 examples for 6 steps,
    the recipe of "Extending LLMs' Context Window with 100 Samples"; DATA should hold long
    texts (texts are cut into windows of N tokens).
    """
    from tokenwise.training.runs import TrainingInterrupted
    from tokenwise.training.trainer import TrainConfig, train

    if extend_method is not None and extend_context is None:
        raise click.UsageError("--extend-method needs --extend-context N")
    extending = extend_context is not None
    steps = steps if steps is not None else (6 if extending else 100)
    batch_size = batch_size if batch_size is not None else (16 if extending else 8)
    samples = samples if samples is not None else (100 if extending else None)
    cfg = TrainConfig(model=model, data=data, out=out, loss=loss, fused=fused, select=select,
                      history_model=history_model, rho=rho, gamma=gamma, steps=steps, lr=lr,
                      batch_size=batch_size, seq_len=seq_len, warmup=warmup,
                      schedule=schedule, weight_decay=weight_decay, save_every=save_every,
                      seed=seed, device=device, resume=resume, overwrite=overwrite,
                      extend_context=extend_context, extend_method=extend_method,
                      samples=samples)
    try:
        result = train(cfg, log=lambda s: click.echo(s, err=True))
    except TrainingInterrupted as exc:  # already logged, with how to resume
        raise SystemExit(exc.exit_code) from None
    except TokenwiseError as exc:  # also clean when the command runs outside the main group
        raise click.ClickException(str(exc)) from None
    click.echo(f"model: {result.model_dir} ({result.step} steps, final loss "
               f"{result.losses[-1]:.4f})")
