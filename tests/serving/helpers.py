"""Test doubles shared by the serving tests."""

from __future__ import annotations


class InlineBackend:
    """Refuses nothing and runs model work on the caller's thread."""

    def check(self, req):
        pass

    def check_plan(self, plan):
        pass

    async def call(self, fn):
        return fn()
