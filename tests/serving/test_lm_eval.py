"""lm-evaluation-harness (0.4.x, ``local-completions``) against ``tokenwise serve``: a
loglikelihood (multiple-choice) task and a generate-until task, both built here (YAML and a
local JSON-lines dataset in ``tmp_path``; nothing from a hub).

What ``local-completions`` sends (lm_eval/models/openai_completions.py): for a loglikelihood
request ``{"model", "prompt": [[context + continuation token ids], ...], "temperature": 0,
"max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": true}``, and it reads
``token_logprobs[ctxlen:-1]`` (the continuation; the last entry is the generated token) and
compares each with ``max(top_logprobs[i].values())`` for ``is_greedy``. For generate-until:
``{"prompt": [[ids], ...], "max_tokens", "temperature": 0, "stop", "seed"}``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import tokenwise as tw
from tokenwise.models import builtin_path
from tokenwise.scoring import token_surprisal

CHOICE_DOCS = [  # tw-small learnt sums; some answers it gets, some it does not
    {"question": "7+2=", "choices": ["9", "8", "5"], "answer": 0},
    {"question": "12+30=", "choices": ["24", "42", "40"], "answer": 1},
    {"question": "3+3=", "choices": ["6", "7", "33"], "answer": 2},
    {"question": "10+5=", "choices": ["105", "51", "15"], "answer": 2},
]
GEN_DOCS = [{"question": "7+2=", "answer": "9"}, {"question": "12+30=", "answer": "42"},
            {"question": "markov: ka", "answer": "nothing like this"}]

MC_TASK = """task: tw_sums_mc
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
"""
GEN_TASK = """task: tw_sums_gen
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _write_task(tmp_path, name: str, template: str, docs: list[dict]) -> None:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / f"{name}.yaml").write_text(template.format(data=data, cache=tmp_path / "cache"))


@pytest.mark.slow  # importing lm-eval (datasets, pandas) takes seconds
def test_lm_eval_local_completions_scores_and_generates_like_the_library(tmp_path,
                                                                         monkeypatch, small):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.evaluator import evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    _write_task(tmp_path, "mc", MC_TASK, CHOICE_DOCS)
    _write_task(tmp_path, "gen", GEN_TASK, GEN_DOCS)
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False).load(
        ["tw_sums_mc", "tw_sums_gen"])
    with serve_in_thread(ServerConfig(port=0), models={"tw-small": small}) as url:
        # tw-small reads a start token first, as it was trained: lm-eval sends none unless
        # asked (and the server, like vLLM, adds none to token ids)
        lm = LocalCompletionsAPI(base_url=url + "/v1/completions", model="tw-small",
                                 tokenizer=str(builtin_path("tw-small")),
                                 tokenizer_backend="huggingface", add_bos_token=True,
                                 max_length=small.context_length, batch_size=16,
                                 max_retries=1)
        out = evaluate(lm, tasks, bootstrap_iters=0, log_samples=True, verbosity="ERROR")

    # every choice's loglikelihood is tw.score's sum over the continuation's tokens, and it
    # is "greedy" where the model's top token is each of the continuation's
    samples = sorted(out["samples"]["tw_sums_mc"], key=lambda s: s["doc_id"])
    right = 0
    for doc, sample in zip(CHOICE_DOCS, samples, strict=True):
        context = small.encode(doc["question"])
        want, greedy = [], []
        for choice in doc["choices"]:
            continuation = small.encode(doc["question"] + choice)[len(context):]
            want.append(-float(token_surprisal(small, continuation, prefix=context).sum()))
            seq = [*small.start_ids, *context, *continuation]
            with torch.no_grad():
                top = small.hf_model(torch.tensor([seq])).logits[0].argmax(-1).tolist()
            greedy.append(top[len(seq) - len(continuation) - 1:-1] == continuation)
        assert [resp[0][0] for resp in sample["resps"]] == pytest.approx(want, abs=1e-4)
        assert [resp[0][1] for resp in sample["resps"]] == greedy
        right += max(range(len(want)), key=want.__getitem__) == doc["answer"]
    accuracy = out["results"]["tw_sums_mc"]["acc,none"]
    assert accuracy == right / len(CHOICE_DOCS)
    assert 0 < accuracy < 1  # the task tells right from wrong for this model

    gens = sorted(out["samples"]["tw_sums_gen"], key=lambda s: s["doc_id"])
    matches = 0
    for doc, sample in zip(GEN_DOCS, gens, strict=True):
        ref = tw.generate(small, doc["question"], max_new_tokens=6, stop=["\n", "</s>"]).text
        assert sample["resps"][0][0] == ref
        matches += ref == doc["answer"]
    assert math.isclose(out["results"]["tw_sums_gen"]["exact_match,none"],
                        matches / len(GEN_DOCS))
    assert matches >= 1
