"""Training-side tools: memory-light losses and token selection.

Example:
    >>> import torch
    >>> from tokenwise.training import linear_cross_entropy
    >>> e, c = torch.zeros(3, 4), torch.zeros(5, 4)
    >>> round(float(linear_cross_entropy(e, c, torch.tensor([0, 1, 2]))), 4)  # log(5)
    1.6094
"""

from tokenwise.training.linear_ce import linear_cross_entropy, resolve_filter_eps

# --- other training modules: the lead adds their imports here -------------------------------

__all__ = [
    "linear_cross_entropy",
    "resolve_filter_eps",
]
