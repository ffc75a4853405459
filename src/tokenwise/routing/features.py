"""What a difficulty probe reads: one layer's hidden state at the prompt's last token, and
optionally the entropy of the next-token distribution there.

DiffAdapt reads the final hidden state of the model on the question; any layer can be chosen
here (``layer=-1`` is the last, ``0`` the embeddings). Prompts are read one at a time, so no
padding or position shift can change a feature: a prompt gives the same vector alone or in
a list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models import LanguageModel
from tokenwise.progress import progress_bar
from tokenwise.signals import entropy, log_probs

#: Extra scalar features :func:`prompt_features` can append.
EXTRAS = ("entropy", "top_logprob")


def check_layer(model: LanguageModel, layer: object) -> int:
    """``layer`` as a valid index into the model's hidden states (0 = embeddings).

    Args:
        model: the model.
        layer: an integer from ``-(L+1)`` to ``L`` for a model of ``L`` layers.
    """
    n = int(model.config.num_hidden_layers) + 1  # embeddings + one per layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise TokenwiseError(f"layer must be an integer from {-n} to {n - 1} for "
                             f"{model.name!r} ({n - 1} layers; 0 = embeddings, -1 = last), "
                             f"got {layer!r}")
    return layer


@torch.inference_mode()
def check_extras(extras: object) -> tuple[str, ...]:
    """``extras`` as a tuple of known extra feature names.

    Args:
        extras: a sequence drawn from :data:`EXTRAS`.
    """
    if isinstance(extras, str) or not isinstance(extras, Sequence):
        raise TokenwiseError(f"extras must be a list drawn from {list(EXTRAS)}, got {extras!r}")
    bad = [e for e in extras if e not in EXTRAS]
    if bad or len(set(extras)) != len(extras):
        raise TokenwiseError(f"extras must be distinct names from {list(EXTRAS)}, got "
                             f"{list(extras)}")
    return tuple(extras)


def prompt_features(model: LanguageModel, prompts: Sequence[str], *, layer: int = -1,
                    extras: Sequence[str] = (), progress: bool = False) -> np.ndarray:
    """``(N, D + E)`` float32 features: the chosen layer's hidden state at each prompt's last
    token, then the ``extras`` read from the same pass.

    Args:
        model: the model whose hidden states are read.
        prompts: the questions, as the model will see them (start tokens are added).
        layer: which hidden state (0 = embeddings, -1 = last layer).
        extras: scalars of the model's next-token distribution after the prompt, appended
            in this order: ``"entropy"`` (nats) and ``"top_logprob"`` (the most likely first
            answer token's log-probability). A linear probe cannot compute these from the
            hidden state, and they are what EAD decides on.
        progress: show a progress bar on standard error.

    Returns:
        One row per prompt. Prompts longer than the model's context keep their last
        ``context_length`` tokens (the end of the question is what the answer follows).

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> prompt_features(lm, ["2+2=", "Q: hi"]).shape == (2, lm.config.hidden_size)
        True
    """
    layer = check_layer(model, layer)
    extras = check_extras(extras)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TokenwiseError("prompts must be a list of strings")
    rows = []
    for i, prompt in enumerate(progress_bar(prompts, desc="features", enabled=progress)):
        if not isinstance(prompt, str) or not prompt:
            raise TokenwiseError(f"prompt {i} must be a non-empty string, got {prompt!r}")
        ids = model.encode(prompt, add_bos=True)[-model.context_length:]
        out = model.forward(torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1)
        assert out.hidden_states is not None
        row = out.hidden_states[layer][0, -1].float().cpu()  # (D,)
        if extras:
            logits = out.logits[0, -1].float().cpu()  # (V,)
            values = {"entropy": entropy(logits), "top_logprob": log_probs(logits).max()}
            row = torch.cat([row, torch.stack([values[e] for e in extras])])
        rows.append(row.numpy())
    if not rows:
        return np.zeros((0, int(model.config.hidden_size) + len(extras)), dtype=np.float32)
    return np.stack(rows).astype(np.float32)


def feature_flops(model: LanguageModel, prompt: str) -> float:
    """Forward FLOPs of reading ``prompt`` for its features (``2 x parameters x tokens``).

    Args:
        model: the feature model.
        prompt: the question.
    """
    n = min(len(model.encode(prompt, add_bos=True)), model.context_length)
    return 2.0 * model.num_parameters() * n
