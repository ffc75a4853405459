"""tokenwise.vllm: per-token entropy from vLLM against tokenwise's own HF path.

``token_stats`` against closed forms and tokenwise.signals (no engine); the in-engine
``EntropyRecorder`` driven by hand-built ``BatchUpdate``\\ s (no engine); and
``generate_with_stats`` in the shared engine on tw-small (fp32) against
``tokenwise.generate`` on the Hugging Face model and against re-scoring sampled tokens.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.on_vllm.batch_plan import replay_plan

pytest.importorskip("vllm")

from vllm import SamplingParams
from vllm.logprobs import Logprob
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

import tokenwise
import tokenwise.vllm as tv
from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.vllm import backend
from tokenwise.vllm import recorder as tv_recorder

PROMPTS = ["Q: What is 2+3?\nA:", "7+5=", "The code of Tavoun is", "Q: Where was Ana born?\nA:"]
ATOL = 1e-4  # fp32 logits through two implementations of the same model


@pytest.fixture(scope="module")
def hf():
    return load("tw-small", dtype=torch.float32)  # the shared engine runs fp32 too


def _hf_rescore(lm, prompt: str, tokens: list[int]) -> signals.TokenStats:
    """The model's own statistics of ``tokens`` after ``prompt``, from one HF forward pass."""
    ids = lm.encode(prompt, add_bos=True)
    seq = torch.tensor([ids + tokens])  # (1, P + N)
    logits = lm.forward(seq).logits[0, len(ids) - 1:-1].float()  # (N, V)
    return signals.token_stats(logits, torch.tensor(tokens), top_k=0)


# -- token_stats: closed forms and bad input --------------------------------------------------


def test_token_stats_uniform_and_two_point():
    h, v = tv.token_stats([-math.log(8)] * 8)
    assert h == pytest.approx(math.log(8), abs=1e-12) and v == pytest.approx(0.0, abs=1e-12)
    p = 0.3
    h, v = tv.token_stats(np.log([p, 1 - p]))
    assert h == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)), abs=1e-12)
    # varentropy of a two-point law: p (1-p) (log p - log(1-p))^2
    assert v == pytest.approx(p * (1 - p) * math.log(p / (1 - p)) ** 2, abs=1e-12)


def test_token_stats_reads_vllm_dict_tensor_and_masked_entries():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0)) * 3
    logits[[3, 7]] = float("-inf")  # masked by an engine: probability 0
    lp = torch.log_softmax(logits, -1)
    want = (float(signals.entropy(logits)), float(signals.varentropy(logits)))
    as_dict = {i: Logprob(logprob=float(x), rank=None) for i, x in enumerate(lp.tolist())}
    for given in (as_dict, lp, lp.tolist(), lp.numpy(), {i: float(x) for i, x in
                                                          enumerate(lp.tolist())}):
        got = tv.token_stats(given, vocab_size=50)
        assert got == pytest.approx(want, abs=1e-5)


def test_token_stats_refuses_top_k():
    lp = torch.log_softmax(torch.randn(100, generator=torch.Generator().manual_seed(1)), -1)
    top = dict(zip(*[t.tolist() for t in reversed(lp.topk(20))], strict=True))
    with pytest.raises(TokenwiseError, match=r"20 token ids for a vocabulary of 100.*logprobs=-1"):
        tv.token_stats(top, vocab_size=100)
    with pytest.raises(TokenwiseError, match=r"probability mass.*not a full-vocabulary"):
        tv.token_stats(top)  # without the vocabulary size the missing mass gives it away


@pytest.mark.parametrize("bad, match", [
    ([0.0, float("nan")], "NaN"),
    ([0.0, float("inf")], r"\+inf"),
    ([float("-inf")] * 3, "every log-probability is -inf"),
    ([], "non-empty 1-D"),
    ([[-0.7, -0.7]], "non-empty 1-D"),
    ("abc", "allowed a vLLM dict"),
    ({}, "empty mapping"),
    ({"a": -0.1}, "allowed an integer token id"),
    ({0: "x"}, "allowed a vLLM Logprob or a number"),
    ([2.0, 1.0, 0.5], "probability mass"),  # logits, not logprobs
])
def test_token_stats_bad_input(bad, match):
    with pytest.raises(TokenwiseError, match=match):
        tv.token_stats(bad)


def test_token_stats_bad_vocab_size():
    with pytest.raises(TokenwiseError, match="vocab_size=0"):
        tv.token_stats([0.0], vocab_size=0)
    with pytest.raises(TokenwiseError, match="3 logprobs for a vocabulary of 4"):
        tv.token_stats(np.log([0.2, 0.3, 0.5]), vocab_size=4)
    with pytest.raises(TokenwiseError, match="outside the vocabulary"):
        tv.token_stats({0: math.log(0.5), 9: math.log(0.5)}, vocab_size=2)


# -- the in-engine recorder, driven by hand ---------------------------------------------------


def _params(tag: str | None) -> SamplingParams:
    return SamplingParams(extra_args=None if tag is None else {tv.STATS_KEY: tag})


def test_recorder_follows_requests_through_the_batch():
    recorder = tv.EntropyRecorder(None, torch.device("cpu"), False)
    assert not recorder.is_argmax_invariant()  # so it also runs for greedy batches
    outs = {"a": [], "b": [], "c": []}
    recorder.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=[
        (0, _params("a"), [1], outs["a"]), (1, _params(None), [1], []),
        (2, _params("b"), [1], outs["b"])]))
    g = torch.Generator().manual_seed(0)
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": [], "c": []}

    def step(rows: dict[int, str], batch: int) -> None:
        logits = torch.randn(batch, 30, generator=g) * 2  # (B, 30)
        before = logits.clone()
        assert recorder.apply(logits) is logits and torch.equal(logits, before)
        for i, tag in rows.items():
            seen[tag].append(logits[i])
            outs[tag].append(int(logits[i].argmax()))

    step({0: "a", 2: "b"}, 3)
    # a swap of rows 0 and 2, then "c" joins in row 1 where the untagged request was
    recorder.update_state(BatchUpdate(batch_size=3, removed=[1], added=[
        (1, _params("c"), [1], outs["c"])], moved=[(0, 2, MoveDirectionality.SWAP)]))
    step({2: "a", 0: "b", 1: "c"}, 3)
    # "b" finishes; "c" moves into its row
    recorder.update_state(BatchUpdate(batch_size=2, removed=[0], added=[],
                                      moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    step({2: "a", 0: "c"}, 3)
    got = recorder.take(["a", "b", "c", "zzz"])
    assert got["zzz"] == []
    for tag in "abc":
        (out_ids, ent, var), = got[tag]
        assert out_ids == outs[tag]
        rows = torch.stack(seen[tag])  # (T, 30)
        np.testing.assert_allclose(ent, signals.entropy(rows).numpy(), atol=1e-5)
        np.testing.assert_allclose(var, signals.varentropy(rows).numpy(), atol=1e-5)
    assert recorder.take(["a"]) == {"a": []}  # taken once


def test_recorder_overwrites_a_rerun_step_and_validates():
    recorder = tv.EntropyRecorder(None, torch.device("cpu"), False)
    out: list[int] = []
    recorder.update_state(BatchUpdate(batch_size=1, removed=[], moved=[],
                                      added=[(0, _params("x"), [1], out)]))
    recorder.apply(torch.zeros(1, 4))  # a step whose token was discarded (partial prefill)
    recorder.apply(torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]]))
    (ids, ent, var), = recorder.take(["x"])["x"]
    assert ids == [] and ent == pytest.approx([math.log(2)]) and var == pytest.approx([0.0])
    with pytest.raises(ValueError, match="allowed a string tag"):
        tv.EntropyRecorder.validate_params(SamplingParams(extra_args={tv.STATS_KEY: 3}))


def _run_recorder(plan: list[str], seed: int = 0) -> tuple[dict, dict[str, list[int]]]:
    """Drive a recorder through ``plan``: "step" runs every request in the batch, "out:r"
    removes request r (preempted or not scheduled), "in:r" re-adds it as vLLM does (same
    SamplingParams object, same output list, tokens already generated). Each request's
    logits depend only on (request, its step), so any plan gives the same values per token."""
    recorder = tv.EntropyRecorder(None, torch.device("cpu"), False)
    params = {r: _params(r) for r in "ab"}
    outs: dict[str, list[int]] = {r: [] for r in "ab"}

    def step(live: list[tuple[int, str]], batch: int) -> None:
        logits = torch.zeros(batch, 30)  # (B, 30)
        for i, r in live:
            g = torch.Generator().manual_seed(seed + 1000 * (r == "b") + len(outs[r]))
            logits[i] = torch.randn(30, generator=g) * 2
        recorder.apply(logits)
        for i, r in live:
            outs[r].append(int(logits[i].argmax()))

    replay_plan(recorder, params, outs, plan, step)
    return recorder.take(["a", "b"]), outs


def test_recorder_continues_a_request_vllm_removed_and_re_added():
    straight, outs = _run_recorder(["step"] * 8)
    broken, outs2 = _run_recorder(["step", "step", "out:a", "step", "in:a", "step", "out:b",
                                   "out:a", "in:b", "in:a", "step", "step", "step"])
    for r in "ab":
        assert outs2[r] == outs[r][:len(outs2[r])]
        (ids, ent, var), = broken[r]  # one track, as if never interrupted
        (_, ent0, var0), = straight[r]
        n = len(ids)
        assert ids == outs2[r] and n >= 4
        assert ent == pytest.approx(ent0[:n], abs=1e-6) and var == pytest.approx(var0[:n], abs=1e-6)
        assert tv_recorder._match_track(broken[r], ids) == (ent, var)


def test_recorder_re_add_of_an_async_rebuilt_list_and_a_fresh_request():
    recorder = tv.EntropyRecorder(None, torch.device("cpu"), False)
    p, out = _params("t"), []
    recorder.update_state(BatchUpdate(1, [], [(0, p, [1], out)], []))
    for _ in range(3):
        recorder.apply(torch.randn(1, 8))
        out.append(5)
    out[-1] = -1  # an async-scheduling placeholder the removed list still holds
    recorder.update_state(BatchUpdate(0, [0], [], []))
    # vLLM rebuilds the list from the scheduler's tokens under async scheduling
    recorder.update_state(BatchUpdate(1, [], [(0, p, [1], [5, 5, 7])], []))
    # the same params object with no tokens is a new request: a track of its own
    recorder.update_state(BatchUpdate(2, [], [(1, p, [1], [])], []))
    recorder.apply(torch.randn(2, 8))
    tracks = recorder.take(["t"])["t"]
    assert sorted((ids, len(e)) for ids, e, _ in tracks) == [([], 1), ([5, 5, 7], 4)]


def test_recorder_marks_steps_it_never_saw_instead_of_shifting():
    recorder = tv.EntropyRecorder(None, torch.device("cpu"), False)
    # re-added with 3 tokens but no earlier track (another params object): steps 0..2 lost
    recorder.update_state(BatchUpdate(1, [], [(0, _params("t"), [1], [4, 4, 4])], []))
    recorder.apply(torch.zeros(1, 4))
    tracks = recorder.take(["t"])["t"]
    (_, ent, _), = tracks
    assert len(ent) == 4 and all(math.isnan(x) for x in ent[:3])
    assert ent[3] == pytest.approx(math.log(4))
    with pytest.raises(TokenwiseError, match=r"lost the statistics of steps \[0, 1, 2\]"):
        tv_recorder._match_track(tracks, [4, 4, 4])
    with pytest.raises(TokenwiseError, match=r"do not cover a generation of 3 tokens"):
        tv_recorder._match_track([([4, 4, 4], [0.1], [0.1])], [4, 4, 4])
    with pytest.raises(TokenwiseError, match="recorded no statistics"):
        tv_recorder._match_track([], [4])


def test_engine_route_survives_real_preemption(builtin_small_path):
    """An engine with too few KV blocks for its requests preempts and re-adds them; the
    in-engine statistics must still equal the full-vocabulary route's. Its own engine
    (~25 s), placed before the first test of the shared one so only one runs at a time."""
    import gc

    from tests.on_vllm.conftest import ENGINE_KWARGS
    from vllm import LLM

    from tokenwise.vllm.processors import PROCESSORS

    engine = LLM(model=builtin_small_path, logits_processors=[tv.EntropyRecorder, *PROCESSORS],
                 worker_extension_cls=tv.WORKER_EXTENSION, num_gpu_blocks_override=12,
                 block_size=32, disable_log_stats=False, **ENGINE_KWARGS)
    try:
        prompts = ["The city of", "3 + 4 =", "Q: Where is the", "In 1990 the", "markov: ka",
                   "7+2="]
        params = SamplingParams(temperature=1.0, seed=1, max_tokens=120, ignore_eos=True)
        by_engine = tv.generate_with_stats(engine, prompts, params, route="engine")
        preempted = sum(m.value for m in engine.get_metrics()
                        if m.name == "vllm:num_preemptions")
        assert preempted > 0, "the engine did not preempt: the test would show nothing"
        by_logprobs = tv.generate_with_stats(engine, prompts, params, route="logprobs")
        for a, b in zip(by_engine, by_logprobs, strict=True):
            assert [r.id for r in a.tokens] == [r.id for r in b.tokens] and len(a.tokens) == 120
            np.testing.assert_allclose([r.entropy for r in a.tokens],
                                       [r.entropy for r in b.tokens], atol=ATOL)
            np.testing.assert_allclose([r.varentropy for r in a.tokens],
                                       [r.varentropy for r in b.tokens], atol=ATOL)
    finally:
        engine.llm_engine.engine_core.shutdown()
        del engine
        gc.collect()


def test_is_vllm_llm_and_adapter(llm, hf):
    assert tv.is_vllm_llm(llm) and not tv.is_vllm_llm(hf) and not tv.is_vllm_llm("tw-small")
    model = tv.as_vllm_model(llm)
    assert tv.as_vllm_model(model) is model
    assert model.vocab_size == hf.vocab_size
    assert (model.bos_token_id, model.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    assert model.context_length == llm.llm_engine.model_config.max_model_len - 2
    for text in [*PROMPTS, "<s> looks special", ""]:
        assert model.encode(text, add_bos=True) == hf.encode(text, add_bos=True)


# -- generate_with_stats in the shared engine ------------------------------------------------


def _assert_same(gen, ref):
    assert gen.text == ref.text and gen.finish_reason == ref.finish_reason
    assert gen.prompt_tokens == ref.prompt_tokens
    assert [t.id for t in gen.tokens] == [t.id for t in ref.tokens]
    assert [t.rank for t in gen.tokens] == [t.rank for t in ref.tokens]
    for name in ("logprob", "entropy", "varentropy"):
        np.testing.assert_allclose([getattr(t, name) for t in gen.tokens],
                                   [getattr(t, name) for t in ref.tokens], atol=ATOL,
                                   err_msg=name)


def test_greedy_records_equal_tokenwise_generate(llm, hf):
    params = SamplingParams(temperature=0.0, max_tokens=6, stop=["\n"])
    gens = tv.generate_with_stats(llm, PROMPTS, params)
    assert len(gens) == len(PROMPTS)
    reasons = set()
    for i, (prompt, gen) in enumerate(zip(PROMPTS, gens, strict=True)):
        ref = tokenwise.generate(hf, prompt, max_new_tokens=6, stop="\n")
        _assert_same(gen, ref)
        assert all(t.row == i for t in gen.tokens) and gen.seed is None
        reasons.add(gen.finish_reason)
    assert reasons == {"stop", "length"}  # both endings were compared
    one = tv.generate_with_stats(llm, PROMPTS[1], params)
    assert len(one) == 1 and one[0].text == gens[1].text


def test_sampled_records_equal_hf_rescoring(llm, hf):
    params = SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=8, stop=["\n"])
    gens = tv.generate_with_stats(llm, PROMPTS[:2], params)
    assert len(gens) == 6
    assert [g.seed for g in gens] == [7, 8, 9, 7, 8, 9]  # vLLM's seed + i per child
    assert len({g.text for g in gens[:3]}) > 1  # really sampled
    for k, gen in enumerate(gens):
        tokens = [t.id for t in gen.tokens]
        ref = _hf_rescore(hf, PROMPTS[k // 3], tokens)
        np.testing.assert_allclose([t.logprob for t in gen.tokens], ref.logprobs, atol=ATOL)
        np.testing.assert_allclose([t.entropy for t in gen.tokens], ref.entropies, atol=ATOL)
        np.testing.assert_allclose([t.varentropy for t in gen.tokens], ref.varentropies,
                                   atol=ATOL)
    again = tv.generate_with_stats(llm, PROMPTS[:2], params)
    assert [g.text for g in again] == [g.text for g in gens]  # seeded: reproducible


def test_plain_vllm_logprobs_through_token_stats(llm, hf):
    """vLLM's own dict[int, Logprob] output, read position by position."""
    from vllm.inputs import TokensPrompt

    ids = hf.encode(PROMPTS[0], add_bos=True)
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)],
                       SamplingParams(temperature=0.0, max_tokens=3, logprobs=-1),
                       use_tqdm=False)[0].outputs[0]
    ref = _hf_rescore(hf, PROMPTS[0], list(out.token_ids))
    for t, position in enumerate(out.logprobs):
        h, v = tv.token_stats(position, vocab_size=hf.vocab_size)
        assert h == pytest.approx(float(ref.entropies[t]), abs=ATOL)
        assert v == pytest.approx(float(ref.varentropies[t]), abs=ATOL)
    top5 = llm.generate([TokensPrompt(prompt_token_ids=ids)],
                        SamplingParams(temperature=0.0, max_tokens=1, logprobs=5),
                        use_tqdm=False)[0].outputs[0].logprobs[0]
    with pytest.raises(TokenwiseError, match="not the full vocabulary"):
        tv.token_stats(top5, vocab_size=hf.vocab_size)


def test_generate_with_stats_bad_arguments(llm):
    with pytest.raises(TokenwiseError, match="route='bogus'"):
        tv.generate_with_stats(llm, "x", route="bogus")
    with pytest.raises(TokenwiseError, match="prompts="):
        tv.generate_with_stats(llm, [])
    with pytest.raises(TokenwiseError, match=r"expected a vllm\.LLM"):
        tv.generate_with_stats("tw-small", "x")


def _has_recorder(llm) -> bool:
    config = llm.llm_engine.vllm_config
    names = [getattr(p, "__name__", str(p)) for p in
             (getattr(config.model_config, "logits_processors", None) or [])]
    return ("EntropyRecorder" in " ".join(names)
            and config.parallel_config.worker_extension_cls == tv.WORKER_EXTENSION)


def test_engine_route_equals_logprobs_route(llm, hf):
    if not _has_recorder(llm):
        pytest.skip("the shared engine was started without EntropyRecorder and "
                    "worker_extension_cls=tokenwise.vllm.recorder.StatsWorkerExtension")
    greedy = SamplingParams(temperature=0.0, max_tokens=10, stop=["\n"])
    for gen, prompt in zip(tv.generate_with_stats(llm, PROMPTS, greedy, route="engine"),
                           PROMPTS, strict=True):
        _assert_same(gen, tokenwise.generate(hf, prompt, max_new_tokens=10, stop="\n"))
    sampled = SamplingParams(temperature=1.0, n=3, seed=3, max_tokens=8, stop=["\n"])
    a = tv.generate_with_stats(llm, PROMPTS[:2], sampled, route="engine")
    b = tv.generate_with_stats(llm, PROMPTS[:2], sampled, route="logprobs")
    for x, y in zip(a, b, strict=True):
        _assert_same(x, y)


class _ModeConfig:
    """The engine's model config with another ``logprobs_mode`` (what an engine started
    with ``LLM(..., logprobs_mode=mode)`` reports); everything else is the real config."""

    def __init__(self, config, mode: str):
        self._config, self.logprobs_mode = config, mode

    def __getattr__(self, name):
        return getattr(self._config, name)


def with_logprobs_mode(llm, mode: str) -> tv.VLLMModel:
    model = tv.VLLMModel(llm)
    model._config = _ModeConfig(model._config, mode)
    return model


def test_logprobs_mode_is_read_from_the_engine_and_checked(llm):
    real = tv.VLLMModel(llm)
    assert real.logprobs_mode == llm.llm_engine.model_config.logprobs_mode == "raw_logprobs"
    params = SamplingParams(temperature=0, max_tokens=2)
    for mode in ("raw_logits", "processed_logits", "processed_logprobs"):
        model = with_logprobs_mode(llm, mode)
        for route in ("logprobs", "engine"):
            with pytest.raises(TokenwiseError, match=rf"generate_with_stats.*logprobs_mode="
                                                     rf"'{mode}'.*raw_logprobs"):
                tv.generate_with_stats(model, "7+5=", params, route=route)
        with pytest.raises(TokenwiseError, match=rf"sample_logprobs.*'{mode}'.*raw_logprobs"):
            tv.sample_logprobs(model, "7+5=", params)
    for mode in ("raw_logits", "processed_logits"):
        model = with_logprobs_mode(llm, mode)
        with pytest.raises(TokenwiseError, match=rf"prompt_logprobs.*'{mode}'.*returns logits"):
            model.prompt_logprobs([[1, 5, 6]])
        with pytest.raises(TokenwiseError, match=rf"'{mode}'"):
            tv.prompt_surprisal(model, "7+5=12")
    # prompt tokens skip every processor: processed_logprobs gives the raw values there
    ids = real.encode("7+5=12", add_bos=True)
    np.testing.assert_array_equal(
        with_logprobs_mode(llm, "processed_logprobs").prompt_logprobs([ids])[0],
        real.prompt_logprobs([ids])[0])


def test_worker_replies_are_merged_keeping_the_tracks_with_values():
    # pipeline parallelism: the first stage follows the batch but records no values
    first_stage = {"a": [([3, 4], [], [])], "b": [([5], [], [])]}
    last_stage = {"a": [([3, 4], [0.5, 0.25], [0.1, 0.2])], "b": [([5], [0.7], [0.3])]}
    for replies in ([first_stage, last_stage], [last_stage, first_stage]):
        assert tv_recorder._merge_replies(replies) == last_stage
    # tensor parallelism: identical replies; a tag only one rank reports is kept; None
    assert tv_recorder._merge_replies([last_stage, last_stage]) == last_stage
    assert tv_recorder._merge_replies([None, {"c": [([1], [0.0], [0.0])]}, {}]) == {
        "c": [([1], [0.0], [0.0])]}
    assert tv_recorder._merge_replies([]) == {}


def test_recorder_store_is_bounded(monkeypatch):
    monkeypatch.setattr(tv_recorder, "MAX_FINISHED_TAGS", 3)
    monkeypatch.setattr(tv_recorder, "STALE_TAKES", 2)
    recorder = tv.EntropyRecorder(None, torch.device("cpu"), False)

    def run(tag: str) -> None:  # one request that runs a step and leaves the batch
        recorder.update_state(BatchUpdate(1, [], [(0, _params(tag), [1], [])], []))
        recorder.apply(torch.zeros(1, 4))
        recorder.update_state(BatchUpdate(0, [0], [], []))

    for tag in "abcde":
        run(tag)
    assert list(recorder.finished) == ["c", "d", "e"]  # the oldest tags went first
    # never taken: gone once STALE_TAKES later takes have passed; fresh ones stay
    assert recorder.take(["e"])["e"] and list(recorder.finished) == ["c", "d"]
    run("f")
    recorder.take([])
    assert list(recorder.finished) == ["c", "d", "f"]
    recorder.take([])
    assert list(recorder.finished) == ["f"]
    assert len(recorder.take(["f"])["f"]) == 1 and recorder.finished == {}


def test_engine_route_refuses_more_prompts_than_the_recorder_keeps(llm, monkeypatch):
    monkeypatch.setattr(tv_recorder, "MAX_FINISHED_TAGS", 2)
    with pytest.raises(TokenwiseError, match=r"3 prompts for route='engine'.*at most 2"):
        tv.generate_with_stats(llm, ["a", "b", "c"], route="engine")


def test_any_token_vllm_stops_on_ends_the_text(llm):
    from types import SimpleNamespace

    def done(ids, reason, stop_reason):
        return SimpleNamespace(token_ids=ids, finish_reason=reason, stop_reason=stop_reason)

    # in the engine: stopping on a token id gives the same records as before it, no more
    prompt = "The code of Tavoun is"
    free = tv.generate_with_stats(llm, prompt, SamplingParams(temperature=0, max_tokens=8))[0]
    ids = [r.id for r in free.tokens]
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    params = SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[ids[k]])
    for route in ("logprobs", "engine"):
        cut = tv.generate_with_stats(llm, prompt, params, route=route)[0]
        assert cut.finish_reason == "eos" and [r.id for r in cut.tokens] == ids[:k]
        assert [r.entropy for r in cut.tokens] == pytest.approx(
            [r.entropy for r in free.tokens[:k]], abs=ATOL)
    (_, lps, reason), = tv.sample_logprobs(llm, prompt, params)
    assert reason == "eos" and lps == pytest.approx([r.logprob for r in free.tokens[:k]],
                                                     abs=ATOL)
    # a Llama-3 style model: EOS 2 from the tokenizer, 7 another EOS of generation_config
    assert backend._kept_tokens(done([5, 6, 7], "stop", 7), 2) == [5, 6]
    assert backend._kept_tokens(done([5, 6, 2], "stop", None), 2) == [5, 6]
    assert backend._kept_tokens(done([5, 6, 7], "stop", "\n"), 2) == [5, 6, 7]  # a stop string
    assert backend._kept_tokens(done([5, 6, 7], "length", None), 2) == [5, 6, 7]
