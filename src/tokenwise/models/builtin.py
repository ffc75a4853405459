"""The built-in models shipped inside the package: their names and directories."""

from __future__ import annotations

from pathlib import Path

from tokenwise.errors import ModelNotFoundError

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


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
