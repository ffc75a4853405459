"""Find and load models: built-in names or local Hugging Face directories, never the hub."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from tokenwise.errors import ModelNotFoundError, TokenwiseError, UnsafeCheckpointError
from tokenwise.models.attention import register as register_attention
from tokenwise.models.attention import scales_queries
from tokenwise.models.builtin import BUILTIN_DIR, builtin_names
from tokenwise.models.hf_checks import check_causal_lm, quiet_weights_loading
from tokenwise.models.language_model import CONTEXT_KEYS, LanguageModel, context_value

try:  # transformers 5 checks config fields through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # pragma: no cover - older huggingface_hub
    class StrictDataclassError(Exception):  # type: ignore[no-redef]
        """Stand-in: never raised."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def _known_names() -> str:
    from tokenwise.models.real import real_model_names

    return (f"not a built-in model ({', '.join(builtin_names())}), not a real model "
            f"({', '.join(real_model_names())}; `tokenwise models fetch NAME` gets one)")


def _real_model_dir(name: str) -> Path:
    """The converted directory of fetched real model ``name`` (converted on first use)."""
    from tokenwise.models.gguf import cached_conversion, convert_gguf, file_sha256
    from tokenwise.models.real import fetch_command, real_model, require_fetched

    spec = real_model(name)
    done = cached_conversion(spec.sha256)
    if done is not None:
        return done
    gguf = require_fetched(name)
    # Checked once, before the first conversion: later loads find the conversion by the
    # pinned hash and never read the GGUF again.
    if file_sha256(gguf) != spec.sha256:
        raise TokenwiseError(
            f"the fetched GGUF of {name!r} at {str(gguf)!r} no longer matches its pinned "
            f"SHA-256 (damaged on disk?); run `{fetch_command(name)}` to fetch it again"
        )
    return convert_gguf(gguf, sha256=spec.sha256, name=name)


def resolve(path_or_name: str | os.PathLike[str]) -> tuple[str, Path]:
    """Turn a model name, directory or GGUF file into ``(name, Hugging Face directory)``.

    A GGUF file (a ``.gguf`` path, a directory holding exactly one and no config.json, or a
    fetched real model's name) is converted once into a safetensors directory in the user
    cache (see :mod:`tokenwise.models.gguf`); the directory returned is that copy.

    Raises a :class:`ModelNotFoundError` that says how to get the model when it is a hub id
    that is not on disk, or a real model not fetched yet: tokenwise never downloads here.

    Args:
        path_or_name: a built-in name (``"tw-small"``), a real model's name
            (``"smollm2-135m"``), a directory in Hugging Face format, or a ``.gguf`` file.

    Example:
        >>> resolve("tw-small")[0]
        'tw-small'
    """
    from tokenwise.models.gguf import convert_gguf, gguf_in_dir, is_gguf_file
    from tokenwise.models.real import real_model_names

    text = os.fspath(path_or_name)
    if not text.strip():
        raise ModelNotFoundError(
            f"empty model name; use a built-in model ({', '.join(builtin_names())}), a real "
            "model, a directory or a .gguf file"
        )
    if text in builtin_names():
        return text, BUILTIN_DIR / text
    if text in real_model_names():
        return text, _real_model_dir(text)
    path = Path(text).expanduser()
    if path.is_dir():
        gguf = gguf_in_dir(path)
        if gguf is not None:
            return path.resolve().name, convert_gguf(gguf, name=path.resolve().name)
        return path.resolve().name, path.resolve()
    if is_gguf_file(path):
        return path.stem, convert_gguf(path)
    if path.exists():
        raise ModelNotFoundError(
            f"model path {text!r} is a file but not a GGUF model; give a .gguf file or the "
            "directory that holds config.json and the *.safetensors weights"
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
        f"unknown model {text!r}: {_known_names()}, and not an existing directory or "
        ".gguf file. If it is a Hugging Face hub id: tokenwise never downloads; "
        f"run `hf download {text} --local-dir DIR` on a machine with network access, copy DIR "
        "here and use `load('DIR')` / `--model DIR`."
    )


def declared_context_length(path_or_name: str | os.PathLike[str]) -> int | None:
    """The context length a model's config.json declares, read without loading weights.

    Args:
        path_or_name: a built-in name or a local model directory.

    Returns:
        ``max_position_embeddings`` (or ``n_positions``), or None when the config has none
        (or there is no config.json, which :func:`load` reports).

    Raises:
        TokenwiseError: config.json is not a JSON object, or a value tokenwise reads from it
            is invalid (e.g. ``"max_position_embeddings": -4``).

    Example:
        >>> declared_context_length("tw-small")
        256
    """
    _, path = resolve(path_or_name)
    if not (path / "config.json").is_file():
        return None  # load() says what is missing
    config = _read_config(path)
    for key in CONTEXT_KEYS:
        if config.get(key) is not None:
            return int(config[key])
    return None


def _json_kind(value: Any) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _read_config(path: Path) -> dict[str, Any]:
    """config.json of ``path`` as a dict, with every value tokenwise reads from it checked."""
    file = path / "config.json"
    where = repr(str(file))
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TokenwiseError(f"cannot read {where}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenwiseError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise TokenwiseError(
            f"{where} holds a JSON {_json_kind(config)}; a model config is a JSON object "
            '({"model_type": ..., "architectures": [...], ...})'
        )
    for key in CONTEXT_KEYS:
        context_value(key, config.get(key), where)
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if value is None or value == "auto":
            continue
        if not isinstance(value, str) or not isinstance(getattr(torch, value, None), torch.dtype):
            raise TokenwiseError(
                f"{where}: {key}={value!r} is not a torch dtype; allowed: 'float32', "
                "'float16', 'bfloat16' (or another torch dtype name), 'auto', or leave the key out"
            )
    model_type = config.get("model_type")
    if model_type is not None and not (isinstance(model_type, str) and model_type):
        raise TokenwiseError(
            f"{where}: model_type={model_type!r} is not a model type; allowed: a transformers "
            "model type such as 'llama', 'gpt2' or 'qwen2'"
        )
    archs = config.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and all(isinstance(a, str) and a for a in archs)
    ):
        raise TokenwiseError(
            f"{where}: architectures={archs!r} is not a list of class names; allowed: e.g. "
            '["LlamaForCausalLM"], or leave the key out'
        )
    auto_map = config.get("auto_map")
    if auto_map is not None and not isinstance(auto_map, dict):
        raise TokenwiseError(
            f"{where}: auto_map={auto_map!r} is not a JSON object; allowed: e.g. "
            '{"AutoModelForCausalLM": "modeling_x.Model"}, or leave the key out'
        )
    return config


def _read_generation_eos(path: Path) -> list[int]:
    """The end-of-text ids generation_config.json lists ([] without the file or the key)."""
    file = path / "generation_config.json"
    if not file.is_file():
        return []
    where = repr(str(file))
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenwiseError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise TokenwiseError(
            f"{where} holds a JSON {_json_kind(config)}; a generation config is a JSON object "
            '({"eos_token_id": ..., ...}); fix it or delete the file'
        )
    eos = config.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise TokenwiseError(
            f"{where}: eos_token_id={eos!r} is not a token id; allowed: a token id (an int "
            ">= 0), a list of them, or leave the key out"
        )
    return ids


#: checkpoint entries that models no longer keep as weights: rotary tables and causal masks
#: (recomputed at load), found in older Llama / GPT-2 style checkpoints.
_HARMLESS_UNEXPECTED = (r"(^|\.)inv_freq$", r"(^|\.)attn\.masked_bias$", r"(^|\.)attn\.bias$")


def _few(keys: Iterable[str], shown: int = 3) -> str:
    keys = sorted(keys)
    head = ", ".join(keys[:shown])
    return head if len(keys) <= shown else f"{head} and {len(keys) - shown} more"


def _drop_ignored(keys: Iterable[str], patterns: Iterable[str] | None) -> list[str]:
    compiled = [re.compile(p) for p in patterns or ()]
    return [k for k in keys if not any(p.search(k) for p in compiled)]


def _check_loading_info(name: str, path: Path, model: Any, info: dict[str, Any]) -> None:
    """Refuse weights that do not fill the model exactly (transformers only warns).

    Tied weights (an ``lm_head`` shared with the embeddings) are not reported missing by
    transformers, so a tied checkpoint passes.
    """
    cls = type(model)
    missing = _drop_ignored(info.get("missing_keys") or (),
                            getattr(cls, "_keys_to_ignore_on_load_missing", None))
    unexpected = _drop_ignored(
        _drop_ignored(info.get("unexpected_keys") or (),
                      getattr(cls, "_keys_to_ignore_on_load_unexpected", None)),
        _HARMLESS_UNEXPECTED)
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: str(m[0]))
    errors = [str(e) for e in info.get("error_msgs") or ()]
    problems = []
    if missing:
        problems.append(
            f"the checkpoint lacks {len(missing)} weight(s) that config.json's "
            f"{cls.__name__} needs ({_few(missing)}); they would be random numbers"
        )
    if unexpected:
        problems.append(
            f"the checkpoint holds {len(unexpected)} weight(s) that config.json's "
            f"{cls.__name__} has no place for ({_few(unexpected)})"
        )
    if mismatched:
        shapes = [f"{key} {tuple(saved)} in the checkpoint, {tuple(wanted)} per config.json"
                  for key, saved, wanted, *_ in mismatched]
        shown = "; ".join(shapes[:3]) + (f" and {len(shapes) - 3} more" if len(shapes) > 3
                                          else "")
        problems.append(f"{len(mismatched)} weight(s) have the wrong shape ({shown})")
    if errors:
        problems.append("transformers reported: " + " ".join(" ".join(errors).split()))
    if problems:
        raise TokenwiseError(
            f"model {name!r} at {str(path)!r} is broken: {'; '.join(problems)}. Check that "
            "every *.safetensors shard is there and that config.json belongs to these weights."
        )


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


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device,
               saved: str | None = None) -> torch.dtype:
    """The torch dtype for ``dtype`` on ``device``: one rule for every model tokenwise loads.

    Args:
        dtype: "auto"/None (float32 on CPU; on a GPU the half type the weights were saved in,
            else bfloat16 where supported), a name ("float32", "fp16", "bf16", ...) or a
            torch dtype.
        device: where the model will run.
        saved: the dtype name the checkpoint was saved in, for "auto" on a GPU.

    Example:
        >>> pick_dtype("bf16", torch.device("cpu"))
        torch.bfloat16
    """
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
    """Load a built-in model, a fetched real model, a local HF directory or a GGUF file.

    Only safetensors weights are read, nothing is downloaded, and code shipped with a
    model runs only with ``trust_remote_code=True``. A GGUF file is converted once to a
    float32 safetensors directory in the user cache (see :mod:`tokenwise.models.gguf`), so
    only its first load takes long; ``dtype`` casts on load.

    Args:
        path_or_name: a built-in name (see :func:`builtin_names`), a real model's name
            once fetched (see :func:`tokenwise.models.real_model_names`), a local
            directory, or a ``.gguf`` file (or a directory holding exactly one).
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``"auto"`` (float32 on CPU, bfloat16/float16 on GPU), ``"float32"``,
            ``"float16"`` or ``"bfloat16"``.
        trust_remote_code: allow the directory's own modelling code to run (no CLI
            command offers this).

    Raises:
        ModelNotFoundError: no such model, a real model not fetched yet (the message
            names the command that fetches it), or no config.json, weights or tokenizer.
        UnsafeCheckpointError: the weights are pickle files only.
        TokenwiseError: config.json (or generation_config.json) is malformed, the model is
            not a causal LM (e.g. a token classifier), or the weights do not fill it exactly
            (missing, unexpected or misshapen tensors, which transformers would only warn
            about and fill with random numbers); a GGUF file is truncated, corrupt or of an
            architecture transformers cannot load; the cache cannot be written.

    Example:
        >>> lm = load("tw-small")
        >>> lm.name, lm.hf_model.training
        ('tw-small', False)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    pick_dtype(dtype, dev)  # a bad dtype is refused before a GGUF's long first conversion
    name, path = resolve(path_or_name)
    _check_weights(path)
    _check_tokenizer(path)
    config = _read_config(path)
    end_ids = _read_generation_eos(path)
    saved = config.get("dtype", config.get("torch_dtype"))
    torch_dtype = pick_dtype(dtype, dev, saved if isinstance(saved, str) else None)
    if config.get("auto_map") and not trust_remote_code:
        raise TokenwiseError(
            f"model {name!r} needs its own code (config.json has auto_map); pass "
            "trust_remote_code=True to tokenwise.models.load only if you trust it (the "
            "tokenwise commands never run a model's own code)"
        )
    check_causal_lm(name, path, config)
    # saved after tokenwise.context.extend(method="entropy_abf"): its attention, by name
    attention = {"attn_implementation": register_attention()} if scales_queries(config) else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        with quiet_weights_loading():
            model, info = AutoModelForCausalLM.from_pretrained(
                path,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
                dtype=torch_dtype,
                output_loading_info=True,
                # Report wrong shapes in _check_loading_info, with the rest, not as a
                # RuntimeError that points at a log table.
                ignore_mismatched_sizes=True,
                **attention,
            )
    except (OSError, ValueError, KeyError, SafetensorError, StrictDataclassError) as exc:
        detail = " ".join(str(exc).split())  # one line, whatever transformers wrote
        raise TokenwiseError(f"could not load model {name!r} from {str(path)!r}: {detail}") from exc
    _check_loading_info(name, path, model, info)
    head = model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else None
    outside = sorted(t for t in end_ids if vocab is not None and t >= vocab)
    if outside:
        raise TokenwiseError(
            f"{str(path / 'generation_config.json')!r}: eos_token_id {outside} outside the "
            f"model's vocabulary; allowed: token ids 0..{vocab - 1}"
        )
    model.to(dev)
    return LanguageModel(model, tokenizer, name=name, path=path)
