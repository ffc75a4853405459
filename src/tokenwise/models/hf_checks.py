"""Checks and quiet switches around transformers' loading, shared by every model format:
HF directories (:mod:`~tokenwise.models.loading`) and GGUF files (:mod:`~tokenwise.models.gguf`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokenwise.errors import TokenwiseError


@contextmanager
def quiet_weights_loading() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar inside the block, then restore it.

    Our models load in milliseconds from local files; a progress bar per load only clutters
    a CLI's output. The bar's global switch is put back as it was, so a caller's own
    transformers use is unaffected.

    Example:
        >>> with quiet_weights_loading():
        ...     pass
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def check_causal_lm(name: str, path: Path, config: dict[str, Any]) -> None:
    """Refuse a config whose model is not a causal LM (a classifier, an encoder, ...).

    transformers would build its causal LM class for the model type anyway (BERT's
    ``BertLMHeadModel`` for a BERT token classifier), fill the head with random numbers
    and only warn.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if "AutoModelForCausalLM" in (config.get("auto_map") or {}):
        return  # the model's own code declares a causal LM (trust_remote_code was checked)
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if archs:
        # Custom or newer classes keep the naming convention of transformers' own.
        if any(a in causal or a.endswith("ForCausalLM") for a in archs):
            return
        what = f"names {', '.join(archs)}"
    elif model_type in CONFIG_MAPPING_NAMES and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        what = "has no architectures"
    else:
        return  # a causal model type, or one transformers does not know (it says so itself)
    hint = ""
    if any(a.endswith("ForTokenClassification") for a in archs):
        hint = ("; a token classifier is for `tokenwise compress --method token_classifier "
                "--model DIR`")
    raise TokenwiseError(
        f"model {name!r} at {str(path)!r} is not a causal language model: its config.json "
        f"{what} (model_type {model_type!r}); tokenwise needs a text-generation model whose "
        "architectures name a ...ForCausalLM class (e.g. LlamaForCausalLM, Qwen2ForCausalLM, "
        f"GPT2LMHeadModel){hint}"
    )
