"""Other engines' model objects are adapted by the package registered for them."""

from __future__ import annotations

import sys
import types

import pytest

from tokenwise.models import adapters


def test_an_engines_object_loads_its_registered_adapter_package(monkeypatch):
    engine = types.ModuleType("fakeengine")
    exec("class LLM:\n    pass", engine.__dict__)
    monkeypatch.setitem(sys.modules, "fakeengine", engine)
    monkeypatch.setattr(adapters, "_ADAPTERS", [])
    monkeypatch.setattr(adapters, "_LOOKED_UP", set())
    loaded = []

    class Entry:
        name = "fakeengine"

        def load(self):
            loaded.append(self.name)
            adapters.register_adapter(
                lambda obj: "adapted" if type(obj).__module__ == "fakeengine" else None)

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [Entry()] if group == adapters.ENTRY_POINT_GROUP else [])
    llm = engine.LLM()
    assert adapters.adapt(llm) == "adapted"
    assert adapters.adapt(engine.LLM()) == "adapted" and loaded == ["fakeengine"]  # once
    assert adapters.adapt("tw-small") == "tw-small"


def test_the_vllm_adapter_is_declared_as_an_entry_point():
    import importlib.metadata

    names = {e.name: e.value for e in importlib.metadata.entry_points(
        group=adapters.ENTRY_POINT_GROUP)}
    if not names:
        pytest.skip("tokenwise's metadata predates the entry point; reinstall (pip install -e .)")
    assert names.get("vllm") == "tokenwise.vllm"
