"""Find and load models: built-in names or local Hugging Face directories, never the hub."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from tokenwise.errors import ModelNotFoundError, TokenwiseError, UnsafeCheckpointError
from tokenwise.models.language_model import CONTEXT_KEYS, LanguageModel

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}



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

def builtin_names() -> list[str]:
    """Names of the built-in models shipped inside the package (e.g. ``tw-small``).

    Example:
        >>> "tw-large" in builtin_names()
        True
    """
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(
        p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").is_file()
    )


def builtin_path(name: str) -> Path:
    """The directory of built-in model ``name`` (raises if there is none)."""
    path = BUILTIN_DIR / name
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"unknown built-in model {name!r}; built-in models: {', '.join(builtin_names())}"
        )
    return path


def resolve(path_or_name: str | os.PathLike[str]) -> tuple[str, Path]:
    """Turn a built-in name or a local directory into ``(name, directory)``.

    Raises a :class:`ModelNotFoundError` that says how to get the model when it is a hub id
    that is not on disk: tokenwise never downloads.

    Args:
        path_or_name: ``"tw-small"``, ``"tw-large"`` or a directory in Hugging Face format.

    Example:
        >>> resolve("tw-small")[0]
        'tw-small'
    """
    text = os.fspath(path_or_name)
    if not text.strip():
        raise ModelNotFoundError(
            f"empty model name; use a built-in ({', '.join(builtin_names())}) or a directory"
        )
    if text in builtin_names():
        return text, BUILTIN_DIR / text
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve().name, path.resolve()
    if path.exists():
        raise ModelNotFoundError(
            f"model path {text!r} is a file; give the directory that holds config.json and "
            "the *.safetensors weights"
        )
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if looks_like_hub_id:
        raise ModelNotFoundError(
            f"model {text!r} is not on disk, and tokenwise never downloads. On a machine with "
            f"network access run `huggingface-cli download {text} --local-dir DIR` (or `hf "
            f"download {text} --local-dir DIR`), copy DIR here, then use `load('DIR')` / "
            "`--model DIR`."
        )
    raise ModelNotFoundError(
        f"unknown model {text!r}: not a built-in model ({', '.join(builtin_names())}) and not "
        "an existing directory. If it is a Hugging Face hub id: tokenwise never downloads; "
        f"run `hf download {text} --local-dir DIR` on a machine with network access, copy DIR "
        "here and use `load('DIR')` / `--model DIR`."
    )


def declared_context_length(path_or_name: str | os.PathLike[str]) -> int | None:
    """The context length a model's config.json declares, read without loading weights.

    Args:
        path_or_name: a built-in name or a local model directory.

    Returns:
        ``max_position_embeddings`` (or ``n_positions``), or None when the config has none.

    Example:
        >>> declared_context_length("tw-small")
        256
    """
    _, path = resolve(path_or_name)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_weights(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{str(path)!r} has no config.json; a Hugging Face model directory is needed"
        )
    files = [p.name for p in path.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickled = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
    if pickled:
        raise UnsafeCheckpointError(
            f"{str(path)!r} holds only pickle checkpoints ({', '.join(pickled)}); tokenwise "
            "loads safetensors only, because unpickling can run arbitrary code. Convert it on "
            "a machine you trust: `AutoModelForCausalLM.from_pretrained(DIR)"
            ".save_pretrained(DIR, safe_serialization=True)`."
        )
    raise ModelNotFoundError(f"{str(path)!r} has no weights (*.safetensors)")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                    "vocab.txt", "spiece.model")


def _check_tokenizer(path: Path) -> None:
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelNotFoundError(
            f"{str(path)!r} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)}); "
            "save the tokenizer beside the weights with tokenizer.save_pretrained(DIR)"
        )


def pick_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` ("auto"/None = CUDA when available, else CPU).

    Args:
        device: "auto", None, "cpu", "cuda", "cuda:N" or a ``torch.device``.

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TokenwiseError(f"device={device!r}: allowed 'auto', 'cpu', 'cuda', 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TokenwiseError(f"device={device!r} asked for, but no CUDA GPU is available")
    return dev


def _pick_dtype(dtype: str | torch.dtype | None, device: torch.device,
                saved: str | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise TokenwiseError(f"dtype={dtype}: allowed float32, float16, bfloat16")
        return dtype
    if dtype is None or dtype == "auto":
        # CPUs run float32 fastest and exactly. GPUs take the half type the weights were
        # saved in (a float16 model cast to bfloat16 loses 3 bits of mantissa for nothing),
        # else bfloat16 where supported.
        if device.type == "cuda":
            bf16_ok = torch.cuda.is_bf16_supported()
            if saved == "float16" or (saved != "bfloat16" and not bf16_ok):
                return torch.float16
            return torch.bfloat16 if bf16_ok else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise TokenwiseError(f"dtype={dtype!r}: allowed 'auto', {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def load(
    path_or_name: str | os.PathLike[str],
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
) -> LanguageModel:
    """Load a built-in model or a local Hugging Face causal LM directory.

    Only safetensors weights are read, nothing is downloaded, and code shipped with a
    model runs only with ``trust_remote_code=True``.

    Args:
        path_or_name: a built-in name (see :func:`builtin_names`) or a local directory.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``"auto"`` (float32 on CPU, bfloat16/float16 on GPU), ``"float32"``,
            ``"float16"`` or ``"bfloat16"``.
        trust_remote_code: allow the directory's own modelling code to run.

    Example:
        >>> lm = load("tw-small")
        >>> lm.name, lm.hf_model.training
        ('tw-small', False)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, path = resolve(path_or_name)
    _check_weights(path)
    _check_tokenizer(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenwiseError(f"{str(path / 'config.json')!r} is not valid JSON: {exc}") from exc
    dev = pick_device(device)
    saved = config.get("dtype", config.get("torch_dtype"))
    torch_dtype = _pick_dtype(dtype, dev, saved if isinstance(saved, str) else None)
    if config.get("auto_map") and not trust_remote_code:
        raise TokenwiseError(
            f"model {name!r} needs its own code (config.json has auto_map); pass "
            "trust_remote_code=True (CLI: --trust-remote-code) only if you trust it"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        with quiet_weights_loading():
            model = AutoModelForCausalLM.from_pretrained(
                path,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
                dtype=torch_dtype,
            )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        detail = " ".join(str(exc).split())  # one line, whatever transformers wrote
        raise TokenwiseError(f"could not load model {name!r} from {str(path)!r}: {detail}") from exc
    model.to(dev)
    return LanguageModel(model, tokenizer, name=name, path=path)
