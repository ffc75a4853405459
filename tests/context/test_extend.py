"""tokenwise.context.extend / restore on the built-in reader, a tiny Gemma 3 and GPT-2."""

import json
import math
import subprocess
import sys

import pytest
import torch

from tokenwise.context import (
    ATTENTION_NAME,
    attention_entropies,
    estimate_memory,
    extend,
    query_scale,
    restore,
)
from tokenwise.context import load as load_extended
from tokenwise.errors import TokenwiseError
from tokenwise.models import load


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 1000, (1, 400), generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def reader():
    return load("tw-reader")


def _logits(lm, ids):
    with torch.no_grad():
        return lm.hf_model(ids).logits


@pytest.mark.parametrize("method,rope_type", [("pi", "linear"), ("ntk", "default"),
                                               ("yarn", "yarn"), ("entropy_abf", "default")])
def test_each_method_changes_rope_and_restore_is_exact(reader, ids, method, rope_type):
    before = _logits(reader, ids)
    extend(reader, 1024, method=method)
    assert reader.context_length == 1024
    assert reader.config.rope_parameters["rope_type"] == rope_type
    assert not torch.allclose(_logits(reader, ids), before)
    restore(reader)
    assert reader.context_length == 256
    assert reader.config.rope_parameters == {"rope_theta": 10000.0, "rope_type": "default"}
    assert reader.config._attn_implementation == "sdpa"
    assert torch.equal(_logits(reader, ids), before)


def test_entropy_abf_base_and_ntk_base_follow_their_rules(reader):
    extend(reader, 1024, method="entropy_abf")
    assert reader.config.rope_parameters["rope_theta"] == 500_000.0  # 10,000 x 50, the paper
    extend(reader, 1024, method="entropy_abf", base=123_456.0)
    assert reader.config.rope_parameters["rope_theta"] == 123_456.0
    extend(reader, 1024, method="ntk")  # head_dim 16: 10,000 * 4 ** (16 / 14)
    assert reader.config.rope_parameters["rope_theta"] == pytest.approx(1e4 * 4 ** (16 / 14))


def test_query_scale_is_the_papers_rule():
    pos = torch.tensor([0, 100, 255, 256, 511, 2047])
    want = [max(1.0, math.log(p + 1) / math.log(256)) for p in pos.tolist()]
    assert query_scale(pos, 256).tolist() == pytest.approx(want)


def test_query_scaling_changes_only_positions_past_the_trained_length(reader, ids):
    extend(reader, 1024, method="entropy_abf", scale_queries=False)
    plain = _logits(reader, ids)
    extend(reader, 1024, method="entropy_abf")
    scaled = _logits(reader, ids)
    assert torch.equal(scaled[:, :256], plain[:, :256])  # lambda = 1 inside the window
    assert not torch.allclose(scaled[:, 300:], plain[:, 300:])


def test_skip_layers_leaves_the_first_layers_unscaled(reader, ids):
    # Reference: lambda folded into the query projection of layer 1 of an unscaled model.
    extend(reader, 1024, method="entropy_abf", skip_layers=1)
    ours = attention_entropies(reader, ids[0])
    extend(reader, 1024, method="entropy_abf", scale_queries=False)
    plain = attention_entropies(reader, ids[0])
    assert torch.equal(ours[0], plain[0])  # layer 0 skipped
    assert not torch.allclose(ours[1, :, 300:], plain[1, :, 300:])
    assert torch.allclose(ours[1, :, :256], plain[1, :, :256])
    # Scaled logits are sharper: entropy drops past the window.
    assert ours[1, :, 300:].mean() < plain[1, :, 300:].mean()


def test_kv_cache_decoding_matches_a_full_pass(reader, ids):
    extend(reader, 1024, method="entropy_abf")
    full = _logits(reader, ids)
    with torch.no_grad():
        out = reader.hf_model(ids[:, :399], use_cache=True)
        step = reader.hf_model(ids[:, 399:], cache=out.past_key_values).logits
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-4)


def test_attention_entropies_match_transformers_eager_weights(reader, ids):
    ours = attention_entropies(reader, ids[0, :64])
    reader.hf_model.set_attn_implementation("eager")
    with torch.no_grad():
        out = reader.hf_model(ids[:, :64], output_attentions=True)
    reader.hf_model.set_attn_implementation("sdpa")
    ref = torch.stack([-(a * a.clamp_min(1e-30).log()).sum(-1)[0] for a in out.attentions])
    assert torch.allclose(ours, ref, atol=1e-4)


def test_saved_extension_reloads_identically(reader, ids, tmp_path):
    extend(reader, 1024, method="entropy_abf")
    want = _logits(reader, ids)
    reader.hf_model.save_pretrained(tmp_path)
    reader.tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attn_implementation"] == ATTENTION_NAME
    assert saved["tokenwise_context"]["original_length"] == 256
    again = load_extended(str(tmp_path))
    assert again.context_length == 1024
    assert torch.equal(_logits(again, ids), want)
    restore(again)  # the trained model comes back from the saved settings alone
    assert torch.equal(_logits(again, ids), _logits(load("tw-reader"), ids))


def test_plain_tokenwise_load_reads_a_saved_entropy_abf_model_saved_twice(reader, ids, tmp_path):
    # a fresh process, where nothing has registered the scaled attention yet
    extend(reader, 1024, method="entropy_abf")
    reader.hf_model.save_pretrained(tmp_path)
    reader.tokenizer.save_pretrained(tmp_path)
    torch.save({"ids": ids, "want": _logits(reader, ids)}, tmp_path / "want.pt")
    script = ("import sys, torch, tokenwise as tw\n"
              "lm = tw.load(sys.argv[1])\n"
              "saved = torch.load(sys.argv[1] + '/want.pt')\n"
              "ids, want = saved['ids'], saved['want']\n"
              # saved again: transformers drops attn_implementation on load, the record stays
              "lm.hf_model.save_pretrained(sys.argv[1] + '/again')\n"
              "lm.tokenizer.save_pretrained(sys.argv[1] + '/again')\n"
              "lm = tw.load(sys.argv[1] + '/again')\n"
              "with torch.no_grad():\n"
              "    got = lm.hf_model(ids).logits\n"
              "print(lm.context_length, got.shape == want.shape and bool(torch.equal(got, want)))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1024", "True"]


def test_extending_twice_counts_from_the_trained_length(reader):
    extend(reader, 512, method="pi")
    extend(reader, 1024, method="pi")
    assert reader.config.rope_parameters["factor"] == 4.0


@pytest.mark.parametrize("target", [256, 100])
def test_target_not_longer_than_trained_is_refused(reader, target):
    with pytest.raises(TokenwiseError, match=f"target_length={target} .*trained length 256"):
        extend(reader, target)


def test_unknown_method_and_bad_skip_are_refused(reader):
    with pytest.raises(TokenwiseError, match="method='rope'"):
        extend(reader, 512, method="rope")
    with pytest.raises(TokenwiseError, match=r"skip_layers=3: allowed 0\.\.2"):
        extend(reader, 512, skip_layers=3)


def test_length_that_does_not_fit_says_how_much_it_needs(reader):
    with pytest.raises(TokenwiseError, match=r"needs about [\d.]+ GiB, but only"):
        extend(reader, 10_000_000)
    assert reader.context_length == 256  # nothing changed
    assert estimate_memory(reader, 2048) > estimate_memory(reader, 1024)


def test_model_without_rope_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=64,
                                       vocab_size=32))
    with pytest.raises(TokenwiseError, match="no rotary position embedding"):
        extend(model, 128)


def test_gemma3_sliding_layers_keep_their_rope():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=16, max_position_embeddings=64, sliding_window=16,
                           layer_types=["sliding_attention", "full_attention"])
    model = Gemma3ForCausalLM(cfg).eval()
    x = torch.randint(0, 64, (1, 100))
    with torch.no_grad():
        before = model(x).logits
    sliding = dict(model.config.rope_parameters["sliding_attention"])
    extend(model, 256, method="entropy_abf")
    params = model.config.rope_parameters
    assert params["sliding_attention"] == sliding
    assert params["full_attention"]["rope_theta"] == 50 * 1e6
    with torch.no_grad():
        after = model(x).logits
    assert torch.isfinite(after).all() and not torch.allclose(after, before)
    restore(model)
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)


def test_windowed_layers_are_never_query_scaled(monkeypatch):
    # Mistral passes its window to the attention function, not on the module
    from transformers import MistralConfig, MistralForCausalLM

    import tokenwise.models.attention as attention

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                        max_position_embeddings=64, sliding_window=16)
    model = extend(MistralForCausalLM(cfg).eval(), 256, method="entropy_abf")
    scaled = []
    real = attention.query_scale
    monkeypatch.setattr(attention, "query_scale", lambda *a: scaled.append(1) or real(*a))
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 100)))
    assert scaled == []


def test_softcapped_attention_goes_through_the_explicit_softmax():
    # Gemma 2 caps attention logits, which SDPA cannot do
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                       max_position_embeddings=64, attn_logit_softcapping=50.0,
                       sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    model = extend(Gemma2ForCausalLM(cfg).eval(), 256, method="entropy_abf")
    with torch.no_grad():
        logits = model(torch.randint(0, 64, (1, 100))).logits
    assert torch.isfinite(logits).all()


def test_a_refused_call_leaves_the_earlier_extension_in_place(reader):
    extend(reader, 512, method="pi")
    with pytest.raises(TokenwiseError, match="GiB"):
        extend(reader, 10_000_000, method="yarn")
    assert reader.context_length == 512
    assert reader.config.rope_parameters["rope_type"] == "linear"
