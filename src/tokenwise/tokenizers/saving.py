"""Save a tokenizer, or a model with its tokenizer, so that any loader reloads them.

transformers 5 writes ``tokenizer_class: TokenizersBackend`` into ``tokenizer_config.json``,
a class transformers 4 and some other loaders do not know. The files written here name
``PreTrainedTokenizerFast``, which transformers 4 and 5 both read (the tokenizer itself is the
library-neutral ``tokenizer.json``), and leave out the loader state (``is_local``,
``local_files_only``) that transformers 5 also writes there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tokenwise.errors import TokenwiseError

__all__ = ["save_model_dir", "save_tokenizer"]

_LOADER_STATE = ("is_local", "local_files_only")


def _directory(out: str | os.PathLike[str]) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise TokenwiseError(f"output {str(path)!r} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_tokenizer(tokenizer: Any, out: str | os.PathLike[str]) -> Path:
    """Save ``tokenizer`` in ``out`` with a ``tokenizer_class`` every loader knows.

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        out: the directory (created; files of the same names are replaced).

    Example:
        >>> from tokenwise.models import load
        >>> path = save_tokenizer(load("tw-small").tokenizer, "tok-copy")
        >>> json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"]
        'PreTrainedTokenizerFast'
    """
    path = _directory(out)
    tokenizer.save_pretrained(path)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in _LOADER_STATE:
        config.pop(key, None)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return path


def save_model_dir(lm: Any, out: str | os.PathLike[str],
                   extra: dict[str, dict] | None = None) -> Path:
    """Save a model and its tokenizer as a Hugging Face directory (safetensors).

    Args:
        lm: a :class:`~tokenwise.models.LanguageModel`.
        out: the directory (created; files of the same names are replaced).
        extra: more JSON files to write, by file name.

    Example:
        >>> from tokenwise.models import load
        >>> path = save_model_dir(load("tw-small"), "tw-small-copy")
        >>> load(path).vocab_size
        1024
    """
    path = _directory(out)
    lm.hf_model.save_pretrained(path, safe_serialization=True)
    save_tokenizer(lm.tokenizer, path)
    for name, content in (extra or {}).items():
        (path / name).write_text(json.dumps(content, indent=1) + "\n")
    return path
