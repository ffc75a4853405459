"""Validation errors become OpenAI-shaped 400s that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tokenwise.serving.errors import from_validation
from tokenwise.serving.schemas import ChatCompletionRequest


def error_for(body: str):
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate_json(body)
    return from_validation(err.value)


def test_every_unknown_field_is_named():
    e = error_for('{"model": "m", "messages": [{"role": "user", "content": "x", "name": "a"}],'
                  ' "tools": []}')
    assert e.status == 400 and e.code == "unknown_field"
    assert "messages.0.name" in e.message and "tools" in e.message


def test_type_errors_name_the_field_and_value():
    e = error_for('{"model": "m", "messages": [{"role": "user", "content": "x"}], '
                  '"temperature": "0.5"}')
    assert e.param == "temperature" and "'0.5'" in e.message
    assert error_for('{"model": "m"}').code == "missing_required_parameter"
    assert error_for("{nope").code == "invalid_json"
    body = error_for('{"model": "m", "messages": [{"role": "tool", "content": "x"}]}').body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
