"""tokenwise's vLLM logits processors against the plain tokenwise samplers.

Three levels: hand-built ``BatchUpdate``\\ s driving one processor (add, remove, move,
swap); vLLM's own persistent batch (``InputBatch``) and ``Sampler`` in this process, with
processed logits returned; and the shared engine (``llm`` fixture), where sampled tokens
must lie in the set our plain sampler keeps on the raw logprobs vLLM returns.
"""

from __future__ import annotations

import pytest
import torch
from tests.on_vllm.batch_plan import replay_plan

pytest.importorskip("vllm")

from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import MirostatV2, get
from tokenwise.vllm.processors import (
    PROCESSORS,
    EntropyRegimeLogitsProcessor,
    EpsilonLogitsProcessor,
    EtaLogitsProcessor,
    MirostatV2LogitsProcessor,
    TopHLogitsProcessor,
    TypicalLogitsProcessor,
    to_vllm,
)

V = 64
SWAP, ONE_WAY = MoveDirectionality.SWAP, MoveDirectionality.UNIDIRECTIONAL

# (processor, extra_args, tokenwise sampler name, its params) for requests that ask.
CASES = [
    (TopHLogitsProcessor, {"top_h": 0.4}, "top_h", {"alpha": 0.4}),
    (TopHLogitsProcessor, {"top_h": 0.6, "top_h_rule": "bound", "top_h_top_n": "none"},
     "top_h", {"alpha": 0.6, "rule": "bound", "top_n": None}),
    (TypicalLogitsProcessor, {"typical": 0.5}, "typical", {"mass": 0.5}),
    (EpsilonLogitsProcessor, {"epsilon": 0.02, "epsilon_min_tokens_to_keep": 3},
     "epsilon", {"epsilon": 0.02, "min_tokens_to_keep": 3}),
    (EtaLogitsProcessor, {"eta": 0.05}, "eta", {"epsilon": 0.05}),
    (EntropyRegimeLogitsProcessor, {"entropy_regime": True, "entropy_regime_h_low": 1.0},
     "entropy_regime", {"h_low": 1.0}),
]


def _logits(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 4.0, batch)[:, None]  # flat to peaked rows: regimes vary
    return torch.randn(batch, V, generator=g) * scale  # (B, V)


def _params(extra: dict | None) -> SamplingParams:
    return SamplingParams(temperature=1.0, extra_args=extra)


def _expected(rows: dict[int, tuple[str, dict] | None], logits: torch.Tensor) -> torch.Tensor:
    out = logits.clone()
    for i, asked in rows.items():
        if asked is not None:
            out[i:i + 1] = get(asked[0], **asked[1])(logits[i:i + 1])
    return out


# --- parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "extra", "name", "params"), CASES)
def test_request_params_map_keys_to_sampler_params(cls, extra, name, params):
    assert cls.sampler == name
    assert cls.request_params(extra) == params
    assert cls.request_params(None) is None
    assert cls.request_params({"something_else": 1}) is None


@pytest.mark.parametrize(("extra", "key"), [
    ({"top_h": 1.5}, "top_h"),
    ({"top_h": 0.4, "top_h_rule": "nope"}, "top_h_rule"),
    ({"top_h": 0.4, "top_h_top_n": 0}, "top_h_top_n"),
    ({"top_h": 0.4, "top_h_alfa": 0.1}, "top_h_alfa"),
    ({"top_h_rule": "bound"}, "top_h"),
    ({"top_h": [0.4, 0.5]}, "top_h"),
    ({"typical": 0.0}, "typical"),
    ({"epsilon": 1.0}, "epsilon"),
    ({"eta": -0.1}, "eta"),
    ({"eta": 0.1, "eta_min_tokens_to_keep": 1.5}, "eta_min_tokens_to_keep"),
    ({"mirostat_v2": 0}, "mirostat_v2"),
    ({"mirostat_v2": 3.0, "mirostat_v2_eta": "fast"}, "mirostat_v2_eta"),
    ({"entropy_regime": 2}, "entropy_regime"),
    ({"entropy_regime": True, "entropy_regime_h_low": 3.0, "entropy_regime_h_high": 1.0},
     "entropy_regime_h_high"),
])
def test_bad_extra_args_are_refused_naming_the_key(extra, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        for cls in PROCESSORS:
            cls.validate_params(_params(extra))


def test_argmax_invariance_is_declared_as_the_samplers_behave():
    # Every sampler but typical keeps the most likely token (and only rescales by T > 0);
    # typical drops the mode when it is atypical.
    # p(mode) = 0.3 over a flat tail: surprisal 1.2 nats, far from H = 3.5 (the tail's 4.5
    # is nearer), so typical at mass 0.5 fills its set from the tail.
    logits = torch.tensor([[3.3] + [0.0] * (V - 1)])
    for cls, _extra, name, params in CASES:
        kept_mode = torch.isfinite(get(name, **params)(logits))[0, 0].item()
        assert cls(None, torch.device("cpu"), False).is_argmax_invariant() == kept_mode, name
    assert MirostatV2LogitsProcessor(None, "cpu", False).is_argmax_invariant()


# --- hand-built BatchUpdates ---------------------------------------------------------


@pytest.mark.parametrize(("cls", "extra", "name", "params"), CASES)
def test_rows_follow_add_remove_move_swap(cls, extra, name, params):
    proc = cls(None, torch.device("cpu"), False)
    other = dict(extra)
    other[cls.sampler] = {"top_h": 0.8, "typical": 0.9, "epsilon": 0.05, "eta": 0.01,
                          "entropy_regime": 1}[cls.sampler]
    other_params = cls.request_params(other)
    asks = {"a": (name, params), "b": None, "c": (name, other_params), "d": (name, params),
            "e": None, "f": (name, other_params)}
    extras = {"a": extra, "b": None, "c": other, "d": extra, "e": {"unrelated": 1}, "f": other}

    def added(index, req):
        return (index, _params(extras[req]), [1, 2], [])

    slots: list[str] = []  # what vLLM's persistent batch holds, row by row
    steps = [
        # 4 requests join
        (BatchUpdate(4, [], [added(i, r) for i, r in enumerate("abcd")], []), list("abcd")),
        # b leaves; vLLM condenses d (row 3) into row 1
        (BatchUpdate(3, [1], [], [(3, 1, ONE_WAY)]), list("adc")),
        # rows 0 and 2 swap
        (BatchUpdate(3, [], [], [(0, 2, SWAP)]), list("cda")),
        # c leaves and e (not asking) takes its row; f joins at the end
        (BatchUpdate(4, [0], [added(0, "e"), added(3, "f")], []), list("edaf")),
        # no change this step
        (None, list("edaf")),
        # a leaves; f moves down into its row; then rows 0 and 1 swap
        (BatchUpdate(3, [2], [], [(3, 2, ONE_WAY), (0, 1, SWAP)]), list("def")),
    ]
    for step, (update, expected_slots) in enumerate(steps):
        proc.update_state(update)
        slots = expected_slots
        logits = _logits(len(slots), seed=step)
        got = proc.apply(logits.clone())
        want = _expected({i: asks[r] for i, r in enumerate(slots)}, logits)
        assert torch.equal(got, want), f"step {step}: rows {slots}"
        assert sorted(proc.rows) == [i for i, r in enumerate(slots) if asks[r] is not None]


def test_sampler_cache_is_bounded_and_results_stay_right(monkeypatch):
    import tokenwise.vllm.processors as sv

    monkeypatch.setattr(sv, "MAX_SAMPLERS", 2)
    proc = TopHLogitsProcessor(None, torch.device("cpu"), False)
    alphas = [0.3, 0.4, 0.5, 0.6, 0.3]
    for step, alpha in enumerate(alphas):  # a new request per step, each its own alpha
        proc.update_state(BatchUpdate(1, [0] if step else [], [(0, _params({"top_h": alpha}),
                                                                [1], [])], []))
        logits = _logits(1, seed=step)
        assert torch.equal(proc.apply(logits.clone()), get("top_h", alpha=alpha)(logits))
        assert len(proc._samplers) <= 2
    assert [dict(k)["alpha"] for k in proc._samplers] == [0.6, 0.3]


def test_mirostat_mu_follows_each_request_and_learns_from_its_sampled_token():
    proc = MirostatV2LogitsProcessor(None, torch.device("cpu"), False)
    taus = {"a": 2.0, "b": 3.0, "c": 1.5, "d": 2.5}
    outputs = {r: [] for r in taus}  # vLLM's per-request output lists (appended in place)
    refs = {r: MirostatV2(tau=t, eta=0.5) for r, t in taus.items()}  # plain samplers

    def added(index, req):
        extra = {"mirostat_v2": taus[req], "mirostat_v2_eta": 0.5}
        return (index, _params(extra), [1], outputs[req])

    plan = [
        (BatchUpdate(3, [], [added(0, "a"), added(1, "b"), added(2, "c")], []), "abc"),
        (None, "abc"),
        (BatchUpdate(3, [], [], [(0, 2, SWAP)]), "cba"),
        (BatchUpdate(2, [1], [], [(2, 1, ONE_WAY)]), "ca"),  # b finished
        (BatchUpdate(3, [], [added(2, "d")], []), "cad"),
        (None, "cad"),
        (BatchUpdate(2, [0], [], [(2, 0, ONE_WAY)]), "da"),  # c finished
        (None, "da"),
    ]
    g = torch.Generator().manual_seed(0)
    checked = 0
    for step, (update, slots) in enumerate(plan):
        proc.update_state(update)
        logits = _logits(len(slots), seed=100 + step)
        got = proc.apply(logits.clone())
        for i, r in enumerate(slots):
            if outputs[r]:  # the plain sampler observes what "vLLM" sampled last step
                refs[r].observe(torch.tensor([outputs[r][-1]]))
            want = refs[r](logits[i:i + 1])
            assert torch.equal(got[i:i + 1], want), f"step {step}, request {r}"
            assert proc.mu[i] == pytest.approx(float(refs[r].mu[0]))
            # vLLM samples from the processed row and appends to the request's list
            probs = got[i].softmax(-1)
            outputs[r].append(int(torch.multinomial(probs, 1, generator=g)))
            checked += 1
    assert checked == 21
    # mu moved away from its start for every request that ran twice or more
    assert all(float(refs[r].mu[0]) != 2 * taus[r] for r in "acd")


def test_mirostat_does_not_observe_a_step_whose_token_vllm_discarded():
    # A chunked prefill runs the processor but appends no token: the next observation
    # must use the distribution of the step that did produce the token.
    proc = MirostatV2LogitsProcessor(None, torch.device("cpu"), False)
    out: list[int] = []
    proc.update_state(BatchUpdate(1, [], [(0, _params({"mirostat_v2": 2.0}), [1], out)], []))
    ref = MirostatV2(tau=2.0)
    first, second, third = _logits(1, 1), _logits(1, 2), _logits(1, 3)
    proc.apply(first.clone())  # partial prefill: its token is thrown away
    assert torch.equal(proc.apply(second.clone()), ref(second))  # last prompt chunk
    out.append(int(second.argmax()))
    ref.observe(torch.tensor(out))
    assert torch.equal(proc.apply(third.clone()), ref(third))
    assert proc.mu[0] == pytest.approx(float(ref.mu[0]))


def _run_mirostat(plan: list[str]) -> tuple[dict[str, list[torch.Tensor]], dict[str, list]]:
    """Drive Mirostat through ``plan`` ("step"; "out:r" removes request r as vLLM does when it
    preempts it or does not schedule it; "in:r" re-adds it with the same SamplingParams
    object and output list). Logits and draws depend only on (request, its step)."""
    proc = MirostatV2LogitsProcessor(None, torch.device("cpu"), False)
    params = {"a": _params({"mirostat_v2": 2.0, "mirostat_v2_eta": 1.0}),
              "b": _params({"mirostat_v2": 1.0, "mirostat_v2_eta": 0.5})}
    outs: dict[str, list[int]] = {r: [] for r in "ab"}
    rows: dict[str, list[torch.Tensor]] = {r: [] for r in "ab"}
    mus: dict[str, list[float]] = {r: [] for r in "ab"}

    def step(live: list[tuple[int, str]], batch: int) -> None:
        logits = torch.zeros(batch, V)  # (B, V)
        for i, r in live:
            logits[i] = _logits(1, 7 * len(outs[r]) + (r == "b"))[0] * 3
        got = proc.apply(logits)
        for i, r in live:
            rows[r].append(got[i].clone())
            mus[r].append(proc.mu[i])
            g = torch.Generator().manual_seed(len(outs[r]))
            outs[r].append(int(torch.multinomial(got[i].softmax(-1), 1, generator=g)))

    replay_plan(proc, params, outs, plan, step)
    return rows, mus


def test_mirostat_continues_a_request_vllm_removed_and_re_added():
    straight_rows, straight_mu = _run_mirostat(["step"] * 8)
    rows, mus = _run_mirostat(["step", "step", "out:a", "step", "in:a", "step", "out:b",
                               "out:a", "in:b", "in:a", "step", "step", "step"])
    for r in "ab":
        n = len(rows[r])
        assert n >= 5
        assert mus[r] == pytest.approx(straight_mu[r][:n])
        for t in range(n):
            assert torch.equal(rows[r][t], straight_rows[r][t]), f"request {r}, step {t}"
    assert len(set(straight_mu["a"])) > 2  # mu does move in this plan


def test_mirostat_parks_finished_requests_within_a_bound(monkeypatch):
    import tokenwise.vllm.processors as sv

    monkeypatch.setattr(sv, "MAX_PARKED", 3)
    proc = MirostatV2LogitsProcessor(None, torch.device("cpu"), False)
    kept = [_params({"mirostat_v2": 2.0}) for _ in range(5)]  # alive: cannot be dropped
    for p in kept:
        out = [1]
        proc.update_state(BatchUpdate(1, [], [(0, p, [1], out)], []))
        proc.apply(_logits(1, 0))
        proc.update_state(BatchUpdate(0, [0], [], []))
    assert sum(map(len, proc._parked.values())) == 3
    # the newest three are the ones kept; a fresh request (no tokens) never takes one
    assert [rows[0].params() for rows in proc._parked.values()] == kept[2:]
    proc.update_state(BatchUpdate(1, [], [(0, kept[4], [1], [])], []))
    assert proc.rows[0].seen is None and sum(map(len, proc._parked.values())) == 3


# --- vLLM's own persistent batch and sampler, in this process -------------------------


def _input_batch(processors):
    from vllm.config import VllmConfig
    from vllm.v1.sample.logits_processor import build_logitsprocs
    from vllm.v1.worker.gpu_input_batch import InputBatch

    cpu = torch.device("cpu")
    procs = build_logitsprocs(VllmConfig(), cpu, False, False, processors)
    return InputBatch(max_num_reqs=8, max_model_len=64, max_num_batched_tokens=64, device=cpu,
                      vocab_size=V, block_sizes=[16], max_num_blocks_per_req=[4],
                      logitsprocs=procs, logitsprocs_need_output_token_ids=bool(processors))


def _request(req_id: str, params: SamplingParams, seed: int):
    from vllm.v1.worker.gpu_input_batch import CachedRequestState

    return CachedRequestState(req_id=req_id, prompt_token_ids=[1, 2, 3], mm_features=[],
                              sampling_params=params, generator=torch.Generator().manual_seed(seed),
                              block_ids=([0],), num_computed_tokens=3, output_token_ids=[])


def _processed(sampler, logits, batch) -> tuple[torch.Tensor, list[int]]:
    """vLLM's processed logits (full rows, rebuilt from its top-V gather) and samples."""
    out = sampler(logits.clone(), batch.sampling_metadata)
    ids = out.logprobs_tensors.logprob_token_ids[:, 1:].long()  # col 0: the sampled token
    full = torch.full_like(logits, float("-inf")).scatter(-1, ids,
                                                          out.logprobs_tensors.logprobs[:, 1:])
    return full, out.sampled_token_ids[:, 0].tolist()


def test_inside_vllms_input_batch_and_sampler():
    """Real InputBatch bookkeeping (add, remove + condense, swap) and vLLM's Sampler in
    processed_logits mode: rows that asked equal our plain sampler after vLLM's
    temperature (typical before it); other rows equal vLLM without our processors."""
    from vllm.v1.sample.sampler import Sampler

    ours, plain = _input_batch(list(PROCESSORS)), _input_batch([])
    sampler = Sampler(logprobs_mode="processed_logits")
    requests = {  # id: (extra_args, temperature, plain-sampler chain as (name, params))
        "top_h": ({"top_h": 0.4}, 0.7, [("temperature", {"temperature": 0.7}),
                                        ("top_h", {"alpha": 0.4})]),
        "none": (None, 0.9, [("temperature", {"temperature": 0.9})]),
        "typical": ({"typical": 0.6}, 1.3, [("typical", {"mass": 0.6}),
                                            ("temperature", {"temperature": 1.3})]),
        "eta": ({"eta": 0.03}, 1.0, [("eta", {"epsilon": 0.03})]),
        "regime": ({"entropy_regime": 1}, 1.0, [("entropy_regime", {})]),
        "bound": ({"top_h": 0.5, "top_h_rule": "bound"}, 1.0,
                  [("top_h", {"alpha": 0.5, "rule": "bound"})]),
        "other": ({"unrelated_key": 3}, 1.0, []),
        "miro": ({"mirostat_v2": 2.0}, 1.0, None),
    }
    order = list(requests)
    for seed, rid in enumerate(order):
        extra, temperature, _ = requests[rid]
        for batch in (ours, plain):
            params = SamplingParams(temperature=temperature, extra_args=extra, logprobs=-1,
                                    seed=seed)
            batch.add_request(_request(rid, params, seed))
    miro_ref = MirostatV2(tau=2.0)
    for step in range(4):
        if step == 1:  # two requests finish; vLLM condenses the batch
            for batch in (ours, plain):
                batch.remove_request("none")
                batch.remove_request("eta")
                batch.condense()
        if step == 2:
            for batch in (ours, plain):
                batch.swap_states(0, ours.num_reqs - 1)
        for batch in (ours, plain):
            batch.refresh_metadata()
        assert ours.req_ids == plain.req_ids
        logits = _logits(ours.num_reqs, seed=step) * 2  # (B, V)
        got, sampled = _processed(sampler, logits, ours)
        base, _ = _processed(sampler, logits, plain)
        for i, rid in enumerate(ours.req_ids):
            chain = requests[rid][2]
            if chain is None:  # mirostat: the plain sampler, fed what vLLM sampled
                want = miro_ref(logits[i:i + 1])
            elif all(name == "temperature" for name, _ in chain):
                want = base[i:i + 1]  # untouched: exactly what vLLM does without us
            else:
                want = logits[i:i + 1]
                for name, params in chain:
                    want = get(name, **params)(want)
            assert torch.equal(torch.isfinite(got[i:i + 1]), torch.isfinite(want)), (step, rid)
            finite = torch.isfinite(want)
            torch.testing.assert_close(got[i:i + 1][finite], want[finite], rtol=1e-5,
                                       atol=1e-5)
        # What the model runner does after sampling: append to each output list.
        for i, rid in enumerate(ours.req_ids):
            ours.req_output_token_ids[i].append(sampled[i])
            plain.req_output_token_ids[i].append(sampled[i])
            if rid == "miro":
                miro_ref.observe(torch.tensor([sampled[i]]))


def test_mirostat_state_survives_vllms_own_remove_and_re_add():
    """vLLM's InputBatch: a request that is not scheduled in a step is removed and its
    CachedRequestState (same SamplingParams, same output list) is added back later."""
    batch = _input_batch([MirostatV2LogitsProcessor])
    proc = next(p for p in batch.logitsprocs.all if isinstance(p, MirostatV2LogitsProcessor))
    params = SamplingParams(temperature=1.0, extra_args={"mirostat_v2": 2.0,
                                                         "mirostat_v2_eta": 1.0})
    state = _request("miro", params, 0)
    other = _request("other", SamplingParams(temperature=1.0), 1)
    batch.add_request(state)
    batch.add_request(other)
    ref = MirostatV2(tau=2.0, eta=1.0)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        if step in (2, 4):  # not scheduled this step: out of the persistent batch
            batch.remove_request("miro")
            batch.condense()
        if step in (3, 5):
            batch.add_request(state)
        batch.refresh_metadata()
        logits = _logits(batch.num_reqs, seed=step) * 3  # (B, V)
        got = logits.clone()
        for p in batch.logitsprocs.all:
            got = p.apply(got)
        if "miro" in batch.req_ids:
            i = batch.req_ids.index("miro")
            assert torch.equal(got[i:i + 1], ref(logits[i:i + 1])), step
            assert proc.mu[i] == pytest.approx(float(ref.mu[0]))
            token = int(torch.multinomial(got[i].softmax(-1), 1, generator=g))
            state.output_token_ids.append(token)  # the list the batch also holds
            ref.observe(torch.tensor([token]))
    assert float(ref.mu[0]) != 4.0


# --- to_vllm ---------------------------------------------------------------------------


def test_to_vllm_splits_native_and_extra_args_and_refuses_other_orders():
    native, extra = to_vllm([("typical", {"mass": 0.9}), ("temperature", {"temperature": 0.5}),
                             ("min_p", {"min_p": 0.1}), ("top_h", {"top_n": None}),
                             ("mirostat_v2", {"tau": 4.0, "eta": 0.2}), ("top_k", {"top_k": 40})])
    assert native == {"temperature": 0.5, "top_k": 40, "top_p": 1.0, "min_p": 0.1}
    assert extra == {"typical": 0.9, "top_h": 0.4, "top_h_top_n": "none", "mirostat_v2": 4.0,
                     "mirostat_v2_eta": 0.2}
    for cls in PROCESSORS:  # what to_vllm writes, the processors accept
        cls.validate_params(SamplingParams(**native, extra_args=extra))
    assert to_vllm([("entropy_regime", {})])[1] == {"entropy_regime": True}
    # top-k commutes with temperature; temperature 1 is the identity
    native, _ = to_vllm([("top_k", {"top_k": 5}), ("temperature", {"temperature": 2.0})])
    assert native["top_k"] == 5
    to_vllm([("top_h", {}), ("temperature", {"temperature": 1.0})])
    for spec, match in [
        ([("top_h", {}), ("temperature", {"temperature": 0.7})], "temperature before top_h"),
        ([("temperature", {"temperature": 0.7}), ("typical", {})], "typical before temperature"),
        ([("top_p", {"top_p": 0.9}), ("min_p", {"min_p": 0.1})], "min_p before top_p"),
        ([("top_h", {}), ("top_h", {})], "twice"),
        ([("top_p", {"top_p": [0.9, 0.8]})], "one value per request"),
        ([("top_k", {"top_k": 5, "min_tokens_to_keep": 2})], "min_tokens_to_keep"),
        ([("top_h", {"alpha": 3})], "alpha=3"),
        ([("nope", {})], "unknown sampler"),
        ("top_h", "sequence of"),
    ]:
        with pytest.raises(TokenwiseError, match=match):
            to_vllm(spec)


# --- the shared engine ----------------------------------------------------------------

PROMPTS = ["The city of", "3 + 4 =", "Q: Where is the", "In 1990 the"]
ENGINE_CASES = [  # (extra_args, plain sampler name, params): each keeps a small set
    ({"top_h": 0.3}, "top_h", {"alpha": 0.3}),
    ({"top_h": 0.3, "top_h_rule": "bound"}, "top_h", {"alpha": 0.3, "rule": "bound"}),
    ({"typical": 0.3}, "typical", {"mass": 0.3}),
    ({"epsilon": 0.05}, "epsilon", {"epsilon": 0.05}),
    ({"eta": 0.2}, "eta", {"epsilon": 0.2}),
    ({"entropy_regime": True, "entropy_regime_default_min_p": 0.3}, "entropy_regime",
     {"default_min_p": 0.3}),
]


def _raw_row(position_logprobs: dict, vocab: int) -> torch.Tensor:
    """vLLM's raw logprobs at one position (a dict over the whole vocabulary) as (1, V)."""
    row = torch.full((1, vocab), float("-inf"))
    for token, lp in position_logprobs.items():
        row[0, token] = lp.logprob
    assert torch.isfinite(row).sum() == vocab  # max_logprobs=-1: every token came back
    return row


def _vocab(llm) -> int:
    return llm.llm_engine.model_config.get_vocab_size()


def test_engine_samples_only_what_our_samplers_keep(llm):
    """Seeded one-token draws: with a processor, every sampled token is in the set our
    plain sampler keeps on vLLM's raw logprobs for that prompt; the same seeds without it
    land outside that set (so the check can fail)."""
    vocab, seeds = _vocab(llm), range(24)
    configs = [None, *[extra for extra, _, _ in ENGINE_CASES]]
    jobs = [(c, p, s) for c in range(len(configs)) for p in range(len(PROMPTS)) for s in seeds]
    params = [SamplingParams(temperature=1.0, max_tokens=1, seed=s, logprobs=-1,
                             extra_args=configs[c]) for c, _, s in jobs]
    outs = llm.generate([PROMPTS[p] for _, p, _ in jobs], params, use_tqdm=False)
    drawn: dict[tuple[int, int], set[int]] = {}
    kept_sets: dict[tuple[int, int], set[int]] = {}
    for (c, p, _), out in zip(jobs, outs, strict=True):
        token = out.outputs[0].token_ids[0]
        drawn.setdefault((c, p), set()).add(token)
        if c and (c, p) not in kept_sets:
            _, name, sampler_params = ENGINE_CASES[c - 1]
            raw = _raw_row(out.outputs[0].logprobs[0], vocab)
            kept = torch.isfinite(get(name, **sampler_params)(raw))[0]
            kept_sets[(c, p)] = set(torch.nonzero(kept)[:, 0].tolist())
    for (c, p), kept in kept_sets.items():
        assert drawn[(c, p)] <= kept, (ENGINE_CASES[c - 1][0], PROMPTS[p])
    for c in range(1, len(configs)):
        outside = sum(len(drawn[(0, p)] - kept_sets[(c, p)]) for p in range(len(PROMPTS)))
        assert outside > 0, f"{configs[c]}: unfiltered draws never leave the kept set"


def test_engine_leaves_other_requests_untouched_and_mirostat_survives_finishing_requests(llm):
    """One generate call mixing Mirostat requests and plain ones, with different lengths
    (requests finish mid-batch, vLLM condenses and moves rows). Plain requests give what
    they give alone; each Mirostat request's tokens replay under the plain MirostatV2,
    fed the raw logprobs and the tokens vLLM sampled."""
    vocab = _vocab(llm)
    miro = {"mirostat_v2": 1.5, "mirostat_v2_eta": 1.0}
    mixed = [  # (prompt, seed, max_tokens, extra_args)
        (PROMPTS[0], 1, 12, miro), (PROMPTS[1], 2, 3, None), (PROMPTS[2], 3, 5, miro),
        (PROMPTS[3], 4, 20, None), (PROMPTS[1], 5, 16, {**miro, "mirostat_v2": 2.5}),
        (PROMPTS[2], 6, 7, {"unrelated": "x"}), (PROMPTS[0], 7, 2, miro),
    ]

    def params(seed, max_tokens, extra):
        return SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, logprobs=-1,
                              ignore_eos=True, extra_args=extra)

    together = llm.generate([m[0] for m in mixed], [params(*m[1:]) for m in mixed],
                            use_tqdm=False)
    plain = [i for i, m in enumerate(mixed) if m[3] is None or "mirostat_v2" not in m[3]]
    alone = llm.generate([mixed[i][0] for i in plain],
                         [params(mixed[i][1], mixed[i][2], None) for i in plain], use_tqdm=False)
    for i, out in zip(plain, alone, strict=True):
        assert together[i].outputs[0].token_ids == out.outputs[0].token_ids, mixed[i]

    sizes = []
    for (_, _, max_tokens, extra), out in zip(mixed, together, strict=True):
        tokens = out.outputs[0].token_ids
        assert len(tokens) == max_tokens
        if extra is None or "mirostat_v2" not in extra:
            continue
        ref = MirostatV2(tau=extra["mirostat_v2"], eta=extra["mirostat_v2_eta"])
        for step, token in enumerate(tokens):
            kept = torch.isfinite(ref(_raw_row(out.outputs[0].logprobs[step], vocab)))[0]
            assert kept[token], f"{extra}: step {step} sampled {token} outside the kept set"
            sizes.append(int(kept.sum()))
            ref.observe(torch.tensor([token]))
    # mu moved the kept set (several sizes), so a lost or swapped mu would show
    assert len(set(sizes)) > 2, sizes


@pytest.mark.parametrize(("extra", "key"), [
    ({"top_h": 2.0}, "top_h"),
    ({"mirostat_v2": 3.0, "mirostat_v2_tau": 1.0}, "mirostat_v2_tau"),
    ({"entropy_regime": True, "entropy_regime_branch_k": 0}, "entropy_regime_branch_k"),
])
def test_engine_refuses_bad_parameters(llm, extra, key):
    with pytest.raises(Exception, match=f"'{key}'") as info:
        llm.generate(["x"], SamplingParams(max_tokens=1, extra_args=extra), use_tqdm=False)
    assert "Validation" in type(info.value).__name__ or isinstance(info.value, ValueError)
