"""`tokenwise.score` and `token_surprisal`: windows, equality with one forward pass, long
texts, bad input, any scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.compression.test_perplexity import MEMO, QUESTION, long_text, naive_surprisal

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.scoring import plan_windows, token_surprisal

TEXT = ("Q: Where was Dalvin Orsk born?\nA: the city of Velmora\n12+345=357\n"
        "markov: ka ro yi tu ka ro zu va mi qa\nThe code of Brelix is 382.\n")


def _reference(lm, ids: list[int], begin_of: dict[int, int]) -> torch.Tensor:
    """Log-prob of each target j computed alone from inputs seq[begin_of[j]:j]."""
    seq = [lm.bos_token_id, *ids]
    out = []
    for j in range(1, len(seq)):
        ctx = torch.tensor([seq[begin_of[j] : j]])
        logits = lm.forward(ctx).logits[0, -1].double()
        out.append(torch.log_softmax(logits, -1)[seq[j]])
    return torch.stack(out).float()


def test_one_window_equals_one_forward_pass(large):
    trace = tw.score(large, TEXT)
    ids = large.encode(TEXT)
    assert trace.token_ids.tolist() == ids
    seq = torch.tensor([[large.bos_token_id, *ids]])
    logp = torch.log_softmax(large.forward(seq).logits[0, :-1].double(), -1)  # (T, V)
    torch.testing.assert_close(trace.logprobs, logp.gather(1, seq[0, 1:, None])[:, 0].float(),
                               atol=1e-5, rtol=1e-5)
    ent = -(logp.exp() * logp).sum(-1).float()
    torch.testing.assert_close(trace.entropies, ent, atol=1e-4, rtol=1e-4)
    assert trace.context_lengths.tolist() == list(range(1, len(ids) + 1))
    top = logp.topk(5, dim=-1)
    assert trace.top_ids.tolist() == top.indices.tolist()


def test_sliding_windows_score_each_token_once_with_the_planned_context(small):
    ids = small.encode(TEXT)
    trace = tw.score(small, TEXT, window=12, stride=5)
    assert len(trace) == len(ids)
    begin_of = {}
    for begin, first, end in plan_windows(len(ids), 12, 5):
        for j in range(first, end + 1):
            assert j not in begin_of, "a token was scored twice"
            begin_of[j] = begin
    assert sorted(begin_of) == list(range(1, len(ids) + 1))
    torch.testing.assert_close(trace.logprobs, _reference(small, ids, begin_of),
                               atol=1e-4, rtol=1e-4)
    assert int(trace.context_lengths[12:].min()) >= 12 - 5 + 1
    assert int(trace.context_lengths.max()) <= 12


def test_text_longer_than_the_context_window(small):
    text = TEXT * 40
    n = len(small.encode(text))
    assert n > 3 * small.context_length
    trace = tw.score(small, text)
    assert len(trace) == n and trace.window == small.context_length
    assert torch.isfinite(trace.logprobs).all() and (trace.entropies >= 0).all()
    # The repeated text is predictable once seen: late copies cost less than the first.
    assert float(trace.surprisals[-50:].mean()) < float(trace.surprisals[:50].mean())


def test_only_one_windows_logits_at_a_time(small, monkeypatch):
    seen: list[tuple[int, ...]] = []
    original = type(small).forward

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(tuple(out.logits.shape))
        return out

    monkeypatch.setattr(type(small), "forward", spy)
    tw.score(small, TEXT * 10, window=64, stride=16)
    assert seen[0][1] == 64
    assert all(shape[0] == 1 and shape[1] <= 16 for shape in seen[1:])


def test_no_alternatives_with_a_tokenizer_that_decodes_an_empty_batch_to_one_piece(
        small, monkeypatch):
    # transformers 5.19 and 5.16 answer batch_decode([]) with [''] (5.24: []); top_k=0 has
    # no alternatives to decode either way. Emulate the older answer on any version.
    decode = small.tokenizer.batch_decode
    monkeypatch.setattr(small.tokenizer, "batch_decode",
                        lambda seqs, **kw: decode(seqs, **kw) if len(seqs) else [""])
    trace = tw.score(small, TEXT, top_k=0)
    assert trace.top_ids.shape == (len(small.encode(TEXT)), 0)
    assert trace.logprobs.shape == trace.top_ids.shape[:1]
    with_top = tw.score(small, TEXT, top_k=3)
    torch.testing.assert_close(trace.logprobs, with_top.logprobs)


def test_pieces_and_offsets_follow_the_text(small):
    trace = tw.score(small, TEXT)
    assert "".join(trace.pieces) == TEXT
    for (start, end), piece in zip(trace.offsets, trace.pieces, strict=True):
        assert TEXT[start:end] == piece
    assert trace.rows()[0]["piece"] == trace.pieces[0]


def test_non_ascii_text_is_scored(small):
    text = "Zoë wrote 日本語 — ok 🙂"
    trace = tw.score(small, text)
    assert len(trace) == len(small.encode(text)) and torch.isfinite(trace.logprobs).all()
    assert "".join(trace.pieces) == text
    for (start, end), piece in zip(trace.offsets, trace.pieces, strict=True):
        assert text[start:end] == piece
    # Characters of several bytes are several tokens: one holds the character, the rest none.
    assert "日" in trace.pieces and "" in trace.pieces


def test_special_token_strings_are_scored_as_text(small):
    trace = tw.score(small, "<s>bold</s>")
    assert small.eos_token_id not in trace.token_ids.tolist()
    assert "".join(trace.pieces) == "<s>bold</s>"


def test_trace_slices_are_contiguous(small):
    trace = tw.score(small, "7+5=12")
    part = trace[1:3]
    assert part.pieces == trace.pieces[1:3] and torch.equal(part.logprobs, trace.logprobs[1:3])
    with pytest.raises(TokenwiseError, match="only contiguous slices"):
        trace[::2]
    with pytest.raises(TokenwiseError, match="only contiguous slices"):
        trace[0]


def test_json_export_is_consistent(small):
    import json

    data = json.loads(tw.score(small, "7+5=12").to_json())
    assert data["n_tokens"] == len(data["tokens"]) == 6
    assert all(row["surprisal"] == pytest.approx(-row["logprob"]) for row in data["tokens"])


def test_score_accepts_a_model_name():
    assert tw.score("tw-small", "1+1=2").model == "tw-small"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"text": ""}, "empty or whitespace"),
    ({"text": " \n\t"}, "empty or whitespace"),
    ({"window": 1}, "window=1: allowed an integer from 2"),
    ({"window": 257}, "window=257"),
    ({"window": 32, "stride": 0}, "stride=0: allowed an integer from 1 to window - 1 = 31"),
    ({"window": 32, "stride": 32}, "stride=32"),
    ({"top_k": -1}, "top_k=-1"),
])
def test_bad_input_is_named(small, kwargs, match):
    args = {"text": "hello", **kwargs}
    with pytest.raises(TokenwiseError, match=match):
        tw.score(small, args.pop("text"), **args)


def test_plan_covers_all_targets_once():
    for n in (1, 5, 31, 100):
        for w, s in ((2, 1), (8, 3), (16, 15), (64, 32)):
            covered = [j for _, first, end in plan_windows(n, w, s)
                       for j in range(first, end + 1)]
            assert covered == list(range(1, n + 1))
            assert all(end - begin <= w for begin, _, end in plan_windows(n, w, s))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scoring_on_cuda_matches_cpu(small):
    from tokenwise.models import load

    gpu = load("tw-small", device="cuda", dtype="float32")
    cpu_trace, gpu_trace = tw.score(small, TEXT * 3, window=64), tw.score(gpu, TEXT * 3, window=64)
    assert gpu_trace.token_ids.tolist() == cpu_trace.token_ids.tolist()
    torch.testing.assert_close(gpu_trace.logprobs.cpu(), cpu_trace.logprobs, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gpu_trace.entropies.cpu(), cpu_trace.entropies, atol=1e-3, rtol=1e-3)
    bf16 = tw.score(load("tw-small", device="cuda", dtype="bfloat16"), TEXT)
    assert torch.isfinite(bf16.entropies).all() and bf16.entropies.dtype == torch.float32


def test_progress_goes_to_stderr_and_is_throttled_off_a_terminal(small, monkeypatch):
    import io
    import sys

    import tqdm.auto

    from tokenwise.progress import FILE_INTERVAL

    seen = {}

    class Recording(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    err, out = io.StringIO(), io.StringIO()  # a log file, not a terminal
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", out)
    trace = tw.score(small, TEXT * 2, window=32, stride=16, progress=True)
    n = len(plan_windows(len(trace), 32, 16))
    assert n > 3
    assert seen["file"] is err and seen["mininterval"] == FILE_INTERVAL
    assert "score" in err.getvalue() and f"{n}/{n}" in err.getvalue()
    assert out.getvalue() == ""  # progress never goes where results go


def test_a_bom_in_python_text_is_scored_as_given(small):
    # Files lose a leading BOM when the CLI reads them (tokenwise.cli.common.read_text); a
    # str handed to tw.score is the text itself, and its pieces must join back to it.
    text = "\ufeff" + TEXT
    trace = tw.score(small, text)
    assert trace.text == text and "".join(trace.pieces) == text


def test_token_surprisal_matches_one_full_pass(small):
    ids = small.encode(MEMO)
    np.testing.assert_allclose(token_surprisal(small, ids), naive_surprisal(small, ids),
                               atol=2e-4)
    prefix = small.encode(QUESTION + "\n")
    np.testing.assert_allclose(token_surprisal(small, ids, prefix),
                               naive_surprisal(small, ids, prefix), atol=2e-4)


def test_token_surprisal_windows_match_tokenwise_score(small):
    text = long_text(24)
    ids = small.encode(text)
    assert len(ids) > small.context_length  # really past the window
    ours = token_surprisal(small, ids, window=64, stride=16)
    trace = tw.score(small, text, window=64, stride=16, top_k=0)
    np.testing.assert_allclose(ours, -trace.logprobs.double().numpy(), atol=2e-4)


class _PromptLogprobScorer:
    """A scorer that has prompt logprobs and no forward (as the vLLM backend), over tw-small."""

    def __init__(self, lm):
        self.lm = lm
        self.bos_token_id = lm.bos_token_id
        self.context_length = lm.context_length
        self.calls: list[int] = []

    def prompt_logprobs(self, prompts):
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            seq = torch.tensor([p])
            logp = torch.log_softmax(self.lm.hf_model(seq).logits[0].float(), -1)
            out.append(logp[:-1].gather(-1, seq[0, 1:, None])[:, 0].double().numpy())
        return out


def test_token_surprisal_reads_a_scorer_by_its_prompt_logprobs(small):
    scorer = _PromptLogprobScorer(small)
    ids = small.encode(long_text(16))
    prefix = small.encode(QUESTION + "\n")
    for kwargs in ({}, {"window": 16, "stride": 5}):
        scorer.calls.clear()
        np.testing.assert_allclose(token_surprisal(scorer, ids, prefix, **kwargs),
                                   token_surprisal(small, ids, prefix, **kwargs), atol=2e-4)
        assert scorer.calls == [scorer.calls[0]]  # every window in one call
    # Compression still imports it from where it was.
    from tokenwise.compression import perplexity

    assert perplexity.token_surprisal is token_surprisal


# --- tokenizers that put no start token in front of a text (SmolLM2, Qwen, GPT-2) ---

@pytest.fixture(scope="module")
def no_bos(tmp_path_factory):
    """A tiny Llama whose tokenizer adds no BOS (its bos_token is a turn marker, as SmolLM2's)."""
    from tests.models.helpers import load_tiny_chat_model

    return load_tiny_chat_model(tmp_path_factory.mktemp("no-bos"))


NO_BOS_TEXT = "hello the world, hello the world again"


def test_score_without_a_start_token_scores_from_the_second_token(no_bos):
    ids = no_bos.tokenizer(NO_BOS_TEXT)["input_ids"]  # the tokenizer's own rule: no BOS
    assert ids == no_bos.encode(NO_BOS_TEXT) and no_bos.start_ids == ()
    trace = tw.score(no_bos, NO_BOS_TEXT, top_k=2)
    assert trace.unscored == 1 and trace.token_ids.tolist() == ids[1:]
    logits = no_bos.forward(torch.tensor([ids])).logits[0, :-1].double()
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(trace.logprobs, expected.float(), atol=1e-5, rtol=1e-5)
    # every invariant holds: pieces tile the text, offsets match, contexts count inputs
    assert "".join(trace.pieces) == NO_BOS_TEXT
    assert all(NO_BOS_TEXT[a:b] == p for (a, b), p in zip(trace.offsets, trace.pieces,
                                                           strict=True))
    assert trace.context_lengths.tolist() == list(range(1, len(ids)))
    assert trace.to_dict()["unscored_tokens"] == 1 and trace[0:3].unscored == 1
    assert trace[2:4].unscored == 0


def test_score_without_a_start_token_in_windows_equals_one_pass(no_bos):
    one = tw.score(no_bos, NO_BOS_TEXT * 3, top_k=0)
    windowed = tw.score(no_bos, NO_BOS_TEXT * 3, window=8, stride=3, top_k=0)
    assert windowed.token_ids.tolist() == one.token_ids.tolist()
    ours = token_surprisal(no_bos, no_bos.encode(NO_BOS_TEXT * 3), window=8, stride=3)
    assert np.isnan(ours[0])
    np.testing.assert_allclose(ours[1:], -windowed.logprobs.double().numpy(), atol=2e-5)


def test_one_token_text_without_a_start_token_is_refused(no_bos):
    with pytest.raises(TokenwiseError, match=r"puts no start token .* give a longer text"):
        tw.score(no_bos, "h")


def test_token_surprisal_does_not_invent_a_first_prediction(no_bos):
    ids = no_bos.encode(NO_BOS_TEXT)
    plain = token_surprisal(no_bos, ids)
    assert np.isnan(plain[0]) and np.isfinite(plain[1:]).all() and len(plain) == len(ids)
    # with a prefix the first id is predicted
    prefixed = token_surprisal(no_bos, ids[3:], ids[:3])
    np.testing.assert_allclose(prefixed, plain[3:], atol=1e-5)
    assert np.isnan(token_surprisal(no_bos, ids[:1])).all()


def test_builtin_models_still_score_every_token_after_their_bos(small):
    assert small.start_ids == (small.tokenizer.bos_token_id,)
    trace = tw.score(small, TEXT)
    assert trace.unscored == 0 and trace.token_ids.tolist() == small.encode(TEXT)
    assert "unscored_tokens" not in trace.to_dict()
