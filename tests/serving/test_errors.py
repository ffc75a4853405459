"""Validation errors become OpenAI-shaped 400s that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tokenwise.serving.errors import from_validation
from tokenwise.serving.schemas import ChatCompletionRequest, CompletionRequest


def error_for(body: str):
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate_json(body)
    return from_validation(err.value)


def test_every_unknown_field_is_named():
    e = error_for('{"model": "m", "messages": [{"role": "user", "content": "x", "nam": "a"}],'
                  ' "functions": []}')
    assert e.status == 400 and e.code == "unknown_field"
    assert "messages.0.nam" in e.message and "functions" in e.message


def test_type_errors_name_the_field_and_value():
    e = error_for('{"model": "m", "messages": [{"role": "user", "content": "x"}], '
                  '"temperature": "0.5"}')
    assert e.param == "temperature" and "'0.5'" in e.message
    assert error_for('{"model": "m"}').code == "missing_required_parameter"
    assert error_for("{nope").code == "invalid_json"
    body = error_for('{"model": "m", "messages": [{"role": "robot", "content": "x"}]}').body()
    assert set(body["error"]) == {"message", "type", "param", "code"}


def completion_error_for(body: str):
    with pytest.raises(ValidationError) as err:
        CompletionRequest.model_validate_json(body)
    return from_validation(err.value)


def test_an_empty_prompt_list_says_so():
    e = completion_error_for('{"model": "m", "prompt": []}')
    assert e.status == 400 and e.param == "prompt"
    assert "the list is empty" in e.message and "valid string" not in e.message
    e = error_for('{"model": "m", "messages": []}')
    assert e.param == "messages" and "the list is empty" in e.message


def test_a_union_error_names_the_member_the_value_was_meant_for():
    # a list of numbers is a list of the wrong items, not "not a string"
    e = completion_error_for('{"model": "m", "prompt": ["a", 7]}')
    assert e.param == "prompt.1" and "(got 7)" in e.message
    e = completion_error_for('{"model": "m", "prompt": 5}')
    assert e.param == "prompt" and "(got 5)" in e.message
