"""Training-side tools: memory-light losses, token selection, test-time adaptation.

``linear_cross_entropy`` is the fused linear cross-entropy (no ``[N, V]`` logits);
``patch(model)`` makes an HF causal LM use it (or EMO) for ``model(ids, labels=...)``;
``vocab_parallel_linear_cross_entropy`` shards the classifier over ranks; ``select_tokens``
is ssToken; ``EntropyMinimization``/``tent`` adapt a classifier at test time; ``train`` is
the loop behind ``tokenwise train``.

Example:
    >>> import torch
    >>> from tokenwise.training import linear_cross_entropy
    >>> e, c = torch.zeros(3, 4), torch.zeros(5, 4)
    >>> round(float(linear_cross_entropy(e, c, torch.tensor([0, 1, 2]))), 4)  # log(5)
    1.6094
"""

from tokenwise.training.aepo import (
    DEFAULT_SHAPING,
    DEFAULT_TARGET_SCALES,
    ShapingCoefficients,
    adaptive_kl_coef,
    aepo_rewards,
    bucket_targets,
    difficulty_buckets,
)
from tokenwise.training.distributed import ddp_num_items, vocab_parallel_linear_cross_entropy
from tokenwise.training.emo import emo_distance, emo_loss, frozen_embedding
from tokenwise.training.linear_ce import linear_cross_entropy, resolve_filter_eps
from tokenwise.training.patch import (
    KNOWN_MODEL_CLASSES,
    LOSSES,
    LossSpec,
    patch,
    patched_loss,
    register_loss,
    unpatch,
)
from tokenwise.training.sstoken import select_tokens, sstoken_mask, token_losses
from tokenwise.training.trainer import TrainConfig, train
from tokenwise.training.tta import EntropyMinimization, norm_parameters, tent

__all__ = [
    "DEFAULT_SHAPING",
    "DEFAULT_TARGET_SCALES",
    "KNOWN_MODEL_CLASSES",
    "LOSSES",
    "EntropyMinimization",
    "LossSpec",
    "ShapingCoefficients",
    "TrainConfig",
    "adaptive_kl_coef",
    "aepo_rewards",
    "bucket_targets",
    "ddp_num_items",
    "difficulty_buckets",
    "emo_distance",
    "emo_loss",
    "frozen_embedding",
    "linear_cross_entropy",
    "norm_parameters",
    "patch",
    "patched_loss",
    "register_loss",
    "resolve_filter_eps",
    "select_tokens",
    "sstoken_mask",
    "tent",
    "token_losses",
    "train",
    "unpatch",
    "vocab_parallel_linear_cross_entropy",
]
