"""GGUF files as models: converted once into a safetensors directory in the user cache.

transformers reads a GGUF file (through the ``gguf`` package) by dequantising every tensor to
float32, which takes tens of seconds for a 100M-parameter model. tokenwise does that once per
file: the float32 weights, the config, the tokenizer (transformers' conversion of the GGUF
vocabulary, with its chat template and BOS rule) and the generation config are written as a
plain Hugging Face directory under ``<cache>/converted/v1/<sha256 of the GGUF>``, and every
load after that reads the directory like any local model (seconds), casting to the dtype asked
for. The directory appears in one rename once complete, so an interrupted conversion is
simply done again.

Weights from a quantised GGUF are the quantised values, dequantised: a Q4 model's outputs
differ from those of its bf16 original.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from tokenwise.errors import ModelNotFoundError, TokenwiseError
from tokenwise.models.cache import atomic_dir, cache_dir

#: the first four bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"
#: bumped whenever the converted layout changes, so old conversions are never misread.
CONVERTED_FORMAT = "v1"
#: written last into a converted directory: what it was made from.
MANIFEST = "tokenwise-gguf.json"
_CHUNK = 1 << 22


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that claims to be GGUF (``.gguf`` suffix or GGUF magic).

    A ``.gguf`` file without the magic still counts, so that loading it says what is wrong
    with it rather than calling it an unknown model.

    Args:
        path: any path.

    Example:
        >>> is_gguf_file("/nonexistent.gguf")
        False
    """
    p = Path(path)
    if not p.is_file():
        return False
    return p.suffix.lower() == ".gguf" or _magic(p) == GGUF_MAGIC


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError:
        return b""


def gguf_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``*.gguf`` files directly inside ``folder``, sorted by name.

    Args:
        folder: a directory.

    Example:
        >>> gguf_files("/nonexistent")
        []
    """
    p = Path(folder)
    if not p.is_dir():
        return []
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".gguf")


def gguf_in_dir(folder: str | os.PathLike[str]) -> Path | None:
    """The one GGUF file of a directory that is not a Hugging Face directory, if any.

    A directory with a ``config.json`` is a Hugging Face model directory and is loaded as one
    (None here), whatever else it holds.

    Args:
        folder: a directory.

    Raises:
        ModelNotFoundError: the directory holds several GGUF files (they are listed: give one).

    Example:
        >>> gguf_in_dir("/nonexistent") is None
        True
    """
    p = Path(folder)
    if (p / "config.json").is_file():
        return None
    found = gguf_files(p)
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ModelNotFoundError(
            f"{str(p)!r} holds {len(found)} GGUF files ({names}); give the file to load, "
            f"e.g. {str(found[0])!r}"
        )
    return found[0] if found else None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 4 MiB chunks (a fraction of a second for the real models).

    Args:
        path: the file.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "x"
        >>> _ = f.write_bytes(b"abc")
        >>> file_sha256(f)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    except OSError as exc:
        raise TokenwiseError(f"cannot read GGUF file {str(path)!r}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def converted_path(sha256: str) -> Path:
    """Where the converted directory of the GGUF with this SHA-256 lives (or would live).

    Args:
        sha256: the GGUF file's SHA-256, as 64 hex digits.

    Example:
        >>> converted_path("ab" * 32).parent.name
        'v1'
    """
    return cache_dir() / "converted" / CONVERTED_FORMAT / sha256


def cached_conversion(sha256: str) -> Path | None:
    """The finished converted directory for this SHA-256, or None when there is none yet.

    Args:
        sha256: the GGUF file's SHA-256.

    Example:
        >>> cached_conversion("00" * 32) is None
        True
    """
    path = converted_path(sha256)
    return path if (path / MANIFEST).is_file() else None


def _supported_architectures() -> list[str] | None:
    """The GGUF architectures this transformers can load, when it says (None: unknown)."""
    names: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names.update(GGUF_SUPPORTED_ARCHITECTURES)
    except ImportError:
        return None
    try:
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS

        names.update(GGUF_CONFIG_ARCHS)
    except ImportError:
        pass
    return sorted(names - {"general", "tokenizer"})  # metadata groups, not architectures


def _diagnose(path: Path, exc: BaseException) -> TokenwiseError:
    """The one-line error for a GGUF file transformers failed on: corrupt, unsupported or other."""
    from gguf import GGUFReader

    size = path.stat().st_size
    detail = " ".join(str(exc).split()) or type(exc).__name__
    try:
        reader = GGUFReader(str(path))
        field = reader.fields.get("general.architecture")
        arch = field.contents() if field is not None else None
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as read_exc:  # any failure to parse: a damaged file
        reason = " ".join(str(read_exc).split()).rstrip(".") or type(read_exc).__name__
        return TokenwiseError(
            f"GGUF file {str(path)!r} ({size:,} bytes) is truncated or corrupt: {reason}. "
            "Download it again"
        )
    if end > size:
        return TokenwiseError(
            f"GGUF file {str(path)!r} is truncated: its tensors need {end:,} bytes, the file "
            f"has {size:,}. Download it again"
        )
    supported = _supported_architectures()
    if arch is None:
        return TokenwiseError(
            f"GGUF file {str(path)!r} names no architecture (general.architecture); it is "
            "corrupt or not a model"
        )
    if supported is not None and arch not in supported:
        import transformers

        return TokenwiseError(
            f"GGUF file {str(path)!r} holds a {arch!r} model, which transformers "
            f"{transformers.__version__} cannot load from GGUF; loadable architectures: "
            f"{', '.join(supported)}"
        )
    return TokenwiseError(f"could not load GGUF file {str(path)!r}: {detail}")


def _note(message: str) -> None:
    print(f"tokenwise: {message}", file=sys.stderr, flush=True)


def _read_gguf(path: Path, name: str) -> tuple[Any, Any]:
    """The float32 model and tokenizer transformers builds from a GGUF file."""
    from transformers.utils import logging as hf_logging

    folder, file = str(path.parent), path.name
    verbosity = hf_logging.get_verbosity()
    # transformers' warnings (a load report table, dequantisation notes) would only repeat,
    # over many lines, what the checks below say in one.
    hf_logging.set_verbosity_error()
    try:
        return _read_gguf_quietly(path, name, folder, file)
    finally:
        hf_logging.set_verbosity(verbosity)


def _read_gguf_quietly(path: Path, name: str, folder: str, file: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tokenwise.models.hf_checks import check_causal_lm, quiet_weights_loading

    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=file, local_files_only=True)
    except Exception as exc:  # whatever a damaged file makes it raise
        raise _diagnose(path, exc) from exc
    config_dict = config.to_dict()
    check_causal_lm(name, path, config_dict)
    extra: dict[str, Any] = {}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantise GGUF weights
        pass
    else:
        # transformers >= 5.2x may keep quantised blocks (with the `kernels` package) in
        # modules that cannot be saved; we want plain float32 tensors.
        extra["quantization_config"] = GgufConfig(dequantize=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
        with quiet_weights_loading():
            model, info = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=file, local_files_only=True, dtype=torch.float32,
                output_loading_info=True, **extra,
            )
    except Exception as exc:
        raise _diagnose(path, exc) from exc
    packed = sorted(k for k, v in model.state_dict().items() if not v.is_floating_point())
    if packed:
        raise TokenwiseError(
            f"transformers kept {len(packed)} weight(s) of GGUF file {str(path)!r} packed "
            f"({', '.join(packed[:3])}); tokenwise needs them dequantised"
        )
    missing = sorted(set(info.get("missing_keys") or ()) - _tied_keys(model))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        raise TokenwiseError(
            f"GGUF file {str(path)!r} lacks {len(missing)} weight(s) that its "
            f"{type(model).__name__} needs ({shown}); transformers would fill them with random "
            "numbers, so it is not loaded"
        )
    return model, tokenizer


def _tied_keys(model: Any) -> set[str]:
    """Names of parameters that share their tensor with another (a tied output head)."""
    seen: dict[int, str] = {}
    tied = set()
    for key, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied.add(key)
        else:
            seen[ptr] = key
    return tied


def _save(model: Any, tokenizer: Any, folder: Path, manifest: dict[str, Any]) -> None:
    """Write the Hugging Face directory: config, generation config, tokenizer, weights."""
    from safetensors.torch import save_file

    # GGUF configs name no class; the loader's causal-LM check (and vLLM) want one.
    model.config.architectures = [type(model).__name__]
    # The weights written are plain float32: the directory must not ask for the GGUF
    # quantiser (which would look for the .gguf file) when it is loaded.
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    model.config.dtype = torch.float32
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tied = _tied_keys(model)
    # A tied head is stored once (as the input embedding) and tied again at load.
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    weights_file = folder / "model.safetensors"
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    # safetensors creates the file private (0600); give it the mode of its neighbours.
    os.chmod(weights_file, (folder / "config.json").stat().st_mode & 0o777)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def convert_gguf(path: str | os.PathLike[str], *, sha256: str | None = None,
                 name: str | None = None) -> Path:
    """The converted Hugging Face directory of a GGUF file, converting it on first use.

    The first call dequantises the file to float32 (tens of seconds for 100M parameters,
    announced on standard error) and writes the cache; later calls find the directory by
    the file's SHA-256 and return at once.

    Args:
        path: the ``.gguf`` file.
        sha256: its SHA-256 when already known (a fetched real model, checked at fetch
            time); computed from the file otherwise.
        name: the model's name, for messages (default: the file's stem).

    Returns:
        A directory with config.json, generation_config.json, the tokenizer files and
        model.safetensors (float32), ready for :func:`tokenwise.models.load`.

    Raises:
        TokenwiseError: the file is not GGUF, truncated or corrupt; its architecture is one
            transformers cannot load from GGUF; it is not a causal LM; or the cache cannot be
            written (full disk, no permission). Nothing half-written is left in the cache.

    Example:
        >>> convert_gguf("/nonexistent.gguf")
        Traceback (most recent call last):
        ...
        tokenwise.errors.ModelNotFoundError: GGUF file '/nonexistent.gguf' does not exist
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise ModelNotFoundError(f"GGUF file {str(source)!r} does not exist")
    source = source.resolve()
    name = name or source.stem
    magic = _magic(source)
    if magic != GGUF_MAGIC:
        size = source.stat().st_size
        raise TokenwiseError(
            f"{str(source)!r} is not a GGUF file: it starts with {magic!r} ({size:,} bytes), "
            f"not {GGUF_MAGIC!r}; give a .gguf model file or a Hugging Face model directory"
        )
    digest = sha256 or file_sha256(source)
    done = cached_conversion(digest)
    if done is not None:
        return done
    import transformers

    target = converted_path(digest)
    _note(f"converting {source.name} to float32 safetensors in {target} (once; later loads "
          "read this copy)")
    model, tokenizer = _read_gguf(source, name)
    manifest = {
        "source": str(source),
        "sha256": digest,
        "name": name,
        "format": CONVERTED_FORMAT,
        "dtype": "float32",
        "transformers": transformers.__version__,
    }
    with atomic_dir(target, f"the converted weights of {source.name}") as tmp:
        _save(model, tokenizer, tmp, manifest)
    return target
