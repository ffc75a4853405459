"""The shape and training schedule of a built-in model, shared by the trainers of the
language models (:mod:`~tokenwise.testbed.train`) and of the reader
(:mod:`~tokenwise.testbed.reader`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and training schedule of one built-in model (Llama architecture).

    Args:
        name: the built-in name.
        hidden_size: model width.
        layers: transformer blocks.
        heads: attention heads.
        intermediate_size: MLP width.
        steps: optimizer steps.
        batch_size: sequences per step.
        context: tokens per sequence, and the model's context length.
        lr: peak learning rate (linear warm-up, cosine decay to 10%).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay.
    """

    name: str
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    steps: int
    batch_size: int = 32
    context: int = 256
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.01
