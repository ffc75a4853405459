"""Chat rendering: the QA fallback, and a model's own chat template when it has one."""

from __future__ import annotations

import copy

from tokenwise.serving.chat_format import render, render_fallback


def test_fallback_is_the_testbed_question_form():
    msgs = [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Where was Tavoun born?"},
            {"role": "assistant", "content": "the city of Velmora"},
            {"role": "user", "content": "And Brelix?"}]
    assert render_fallback(msgs) == ("Be brief.\nQ: Where was Tavoun born?\n"
                                     "A: the city of Velmora\nQ: And Brelix?\nA:")


def test_a_chat_template_is_used_when_the_tokenizer_has_one(small):
    tok = copy.deepcopy(small.tokenizer)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>"
                         "{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    out = render(tok, [{"role": "user", "content": "hi"}])
    assert out.format == "template" and out.stops == []
    assert out.text == "<|user|>hi\n<|assistant|>"  # BOS dropped: the engine adds its own
