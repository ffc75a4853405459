"""What a difficulty probe reads: one layer's hidden state at the prompt's last token.

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
def prompt_features(model: LanguageModel, prompts: Sequence[str], *, layer: int = -1,
                    progress: bool = False) -> np.ndarray:
    """``(N, D)`` float32 features: the chosen layer's hidden state at each prompt's last token.

    Args:
        model: the model whose hidden states are read.
        prompts: the questions, as the model will see them (start tokens are added).
        layer: which hidden state (0 = embeddings, -1 = last layer).
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
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TokenwiseError("prompts must be a list of strings")
    rows = []
    for i, prompt in enumerate(progress_bar(prompts, desc="features", enabled=progress)):
        if not isinstance(prompt, str) or not prompt:
            raise TokenwiseError(f"prompt {i} must be a non-empty string, got {prompt!r}")
        ids = model.encode(prompt, add_bos=True)[-model.context_length:]
        out = model.forward(torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1)
        assert out.hidden_states is not None
        rows.append(out.hidden_states[layer][0, -1].float().cpu().numpy())
    if not rows:
        return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
    return np.stack(rows).astype(np.float32)


def feature_flops(model: LanguageModel, prompt: str) -> float:
    """Forward FLOPs of reading ``prompt`` for its features (``2 x parameters x tokens``).

    Args:
        model: the feature model.
        prompt: the question.
    """
    n = min(len(model.encode(prompt, add_bos=True)), model.context_length)
    return 2.0 * model.num_parameters() * n
