"""Loading models: built-ins, local directories, and every way a path can be wrong."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tokenwise.errors import ModelNotFoundError, TokenwiseError, UnsafeCheckpointError
from tokenwise.models import LanguageModel, builtin_names, load


def test_builtin_names_are_shipped():
    assert builtin_names() == ["tw-large", "tw-reader", "tw-small"]


def test_builtin_loads_in_eval_mode_on_cpu_float32(small):
    assert isinstance(small, LanguageModel)
    assert small.hf_model.training is False
    assert small.device.type == "cpu" and small.dtype == torch.float32
    assert small.context_length == 256 and small.vocab_size == len(small.tokenizer)
    assert small.hf_model.config.model_type == "llama"


def test_large_is_larger_with_the_same_tokenizer(small, large):
    assert large.num_parameters() > 3 * small.num_parameters()
    assert small.tokenizer.get_vocab() == large.tokenizer.get_vocab()


def test_encode_decode_round_trip_and_bos(small):
    text = "Q: Where was Dalvin Orsk born?\nA: 1742 ka"
    ids = small.encode(text, add_bos=True)
    assert ids[0] == small.bos_token_id and small.decode(ids[1:]) == text


def test_special_token_strings_in_text_stay_text(small):
    ids = small.encode("a <s> b </s> <pad>")
    assert not {small.bos_token_id, small.eos_token_id, small.tokenizer.pad_token_id} & set(ids)
    assert small.decode(ids) == "a <s> b </s> <pad>"


def test_directory_without_tokenizer(tiny_llama_dir, tmp_path):
    import shutil

    target = tmp_path / "no-tokenizer"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama_dir / name, target / name)
    with pytest.raises(ModelNotFoundError, match=r"no tokenizer files"):
        load(target)


def test_corrupt_weights_are_a_clean_error(tiny_llama_dir, tmp_path):
    import shutil

    target = tmp_path / "corrupt"
    shutil.copytree(tiny_llama_dir, target)
    (target / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(TokenwiseError, match=r"could not load model 'corrupt'"):
        load(target)


def test_kv_cache_matches_full_forward(large):
    ids = torch.tensor([large.encode("The code of Brelix is 382.", add_bos=True)])
    full = large.forward(ids).logits
    out = large.forward(ids[:, :-3], use_cache=True)
    for i in range(ids.shape[1] - 3, ids.shape[1]):
        out = large.forward(ids[:, i : i + 1], cache=out.cache,
                            use_cache=True)
        torch.testing.assert_close(out.logits[0, -1], full[0, i], atol=1e-4, rtol=1e-4)


def test_logits_to_keep_and_hidden_states(small):
    ids = torch.tensor([small.encode("12+30=42", add_bos=True)])
    full = small.forward(ids).logits
    tail = small.forward(ids, logits_to_keep=2).logits
    torch.testing.assert_close(tail, full[:, -2:])
    hs = small.hidden_states("12+30=42")
    assert hs.shape == (ids.shape[1], small.config.hidden_size)
    with pytest.raises(TokenwiseError, match="exceed the context length"):
        small.hidden_states(list(range(300)))


def test_local_directory_loads_and_matches_its_weights(tiny_llama_dir):
    from transformers import LlamaForCausalLM

    lm = load(tiny_llama_dir)
    assert lm.name == tiny_llama_dir.name and lm.path == tiny_llama_dir
    assert lm.context_length == 64
    reference = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor([lm.encode("12+30=42 ka", add_bos=True)])
    with torch.no_grad():
        torch.testing.assert_close(lm.forward(ids).logits, reference(ids).logits)
    bf = load(tiny_llama_dir, dtype="bfloat16")
    assert bf.dtype == torch.bfloat16


def test_unknown_name_says_what_is_allowed():
    with pytest.raises(ModelNotFoundError, match=r"tw-huge.*tw-large, tw-reader, tw-small"):
        load("tw-huge")


def test_hub_id_fails_at_once_with_instructions():
    with pytest.raises(ModelNotFoundError, match=r"never downloads.*huggingface-cli download"):
        load("meta-llama/Llama-3.2-1B")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load(empty)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsafeCheckpointError, match=r"pytorch_model\.bin.*safetensors"):
        load(tmp_path)


def test_remote_code_needs_consent(tiny_llama_dir, tmp_path):
    import shutil

    target = tmp_path / "remote"
    shutil.copytree(tiny_llama_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.Model"}
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(TokenwiseError, match=r"trust_remote_code=True") as caught:
        load(target)
    # No command has a --trust-remote-code flag, so the hint must not send users to one.
    assert "--trust-remote-code" not in str(caught.value)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dtype": "float8"}, "dtype='float8'"),
    ({"device": "tpu9"}, "device='tpu9'"),
])
def test_bad_device_and_dtype(kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        load("tw-small", **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_load_and_forward():
    lm = load("tw-small", device="cuda")
    ids = torch.tensor([lm.encode("1+1=", add_bos=True)])
    assert lm.forward(ids).logits.device.type == "cuda"


def test_declared_context_length_reads_the_config_only(tiny_llama_dir, tmp_path):
    from tokenwise.models import declared_context_length

    assert declared_context_length("tw-large") == 256
    assert declared_context_length(tiny_llama_dir) == 64
    (tmp_path / "config.json").write_text("{}")
    assert declared_context_length(tmp_path) is None


# --- wrong or broken models are refused (transformers only warns "newly initialized") ---


def _copy_model(source, target, config=None, tensors=None):
    """A copy of model directory ``source`` with config.json keys and/or tensors changed.

    ``config``: keys to set (None as a value deletes the key), or a whole replacement when it
    is not a dict. ``tensors``: a function from the state dict to the one to save.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    if config is not None:
        data = json.loads((target / "config.json").read_text())
        if isinstance(config, dict):
            for key, value in config.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
        else:
            data = config
        (target / "config.json").write_text(json.dumps(data))
    if tensors is not None:
        weights = target / "model.safetensors"
        save_file(tensors(load_file(weights)), weights, metadata={"format": "pt"})
    return target


def test_token_classifier_is_not_a_causal_lm(tmp_path):
    from transformers import BertConfig, BertForTokenClassification

    tok = load("tw-small").tokenizer
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                     num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=64,
                     num_labels=2)
    BertForTokenClassification(cfg).save_pretrained(tmp_path / "bert-tagger")
    tok.save_pretrained(tmp_path / "bert-tagger")
    with pytest.raises(TokenwiseError, match=r"'bert-tagger'.*not a causal language model.*"
                                             r"BertForTokenClassification.*ForCausalLM"):
        load(tmp_path / "bert-tagger")


def test_encoder_config_without_architectures_is_not_a_causal_lm(tiny_llama_dir, tmp_path):
    target = _copy_model(tiny_llama_dir, tmp_path / "t5ish",
                         config={"model_type": "t5", "architectures": None})
    with pytest.raises(TokenwiseError, match=r"not a causal language model.*'t5'"):
        load(target)


def test_checkpoint_missing_a_layer_is_refused(tiny_llama_dir, tmp_path):
    target = _copy_model(tiny_llama_dir, tmp_path / "no-layer-1",
                         tensors=lambda sd: {k: v for k, v in sd.items() if ".layers.1." not in k})
    with pytest.raises(TokenwiseError, match=r"'no-layer-1'.*lacks 9 weight\(s\).*"
                                             r"model\.layers\.1\.input_layernorm\.weight.*6 more"):
        load(target)


def test_unexpected_and_misshapen_weights_are_refused(tiny_llama_dir, tmp_path):
    extra = _copy_model(tiny_llama_dir, tmp_path / "extra",
                        tensors=lambda sd: {**sd, "model.head2.weight": torch.ones(3)})
    with pytest.raises(TokenwiseError, match=r"1 weight\(s\) that config\.json's "
                                             r"LlamaForCausalLM has no place for.*head2"):
        load(extra)
    narrow = _copy_model(tiny_llama_dir, tmp_path / "narrow", config={"intermediate_size": 48})
    with pytest.raises(TokenwiseError, match=r"6 weight\(s\) have the wrong shape.*"
                                             r"\(32, 64\) in the checkpoint, \(32, 48\)"):
        load(narrow)


def test_tied_and_buffer_entries_are_not_flagged(tmp_path):
    """A tied lm_head is absent from the checkpoint; old GPT-2 files hold mask buffers."""
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = load("tw-small").tokenizer
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    tied = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32,
                                        intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, tie_word_embeddings=True, **ids))
    tied.save_pretrained(tmp_path / "tied")
    tok.save_pretrained(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    lm = load(tmp_path / "tied")
    assert lm.hf_model.lm_head.weight is lm.hf_model.model.embed_tokens.weight

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=4,
                                      n_positions=64, **ids))
    gpt2.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    weights = tmp_path / "gpt2" / "model.safetensors"
    sd = load_file(weights)
    sd["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    save_file(sd, weights, metadata={"format": "pt"})
    assert load(tmp_path / "gpt2").context_length == 64


_BAD_CONTEXTS = ["lots", -4, 0, 64.5, True]


@pytest.mark.parametrize("value", _BAD_CONTEXTS)
def test_bad_context_length_in_config_is_named(tiny_llama_dir, tmp_path, value):
    from tokenwise.models import declared_context_length

    target = _copy_model(tiny_llama_dir, tmp_path / "bad-ctx",
                         config={"max_position_embeddings": value})
    shown = re.escape(f"max_position_embeddings={value!r}")
    pattern = rf"bad-ctx/config\.json'?: {shown} .*allowed: a positive whole number"
    with pytest.raises(TokenwiseError, match=pattern):
        load(target)
    with pytest.raises(TokenwiseError, match=pattern):
        declared_context_length(target)


def test_context_length_of_a_built_model_is_checked_too(tiny_llama_dir):
    """A LanguageModel built around a model whose config was changed after loading."""
    lm = load(tiny_llama_dir)
    lm.hf_model.config.max_position_embeddings = -4
    with pytest.raises(TokenwiseError, match=r"'tiny-llama.*max_position_embeddings=-4 is not"):
        _ = lm.context_length


@pytest.mark.parametrize(("config", "match"), [
    ([{"model_type": "llama"}], r"config\.json' holds a JSON list; a model config is a JSON "
                                r"object"),
    ("llama", r"holds a JSON string"),
    ({"dtype": "garbage"}, r"dtype='garbage' is not a torch dtype; allowed: 'float32'"),
    ({"architectures": "LlamaForCausalLM"}, r"architectures='LlamaForCausalLM' is not a list"),
    ({"model_type": 5}, r"model_type=5 is not a model type"),
    ({"auto_map": ["x"]}, r"auto_map=\['x'\] is not a JSON object"),
])
def test_malformed_config_is_a_clear_error(tiny_llama_dir, tmp_path, config, match):
    from tokenwise.models import declared_context_length

    target = _copy_model(tiny_llama_dir, tmp_path / "bad-config", config=config)
    with pytest.raises(TokenwiseError, match=match):
        load(target)
    with pytest.raises(TokenwiseError, match=match):
        declared_context_length(target)


@pytest.mark.parametrize(("content", "match"), [
    ([2], r"generation_config\.json' holds a JSON list"),
    ({"eos_token_id": "x"}, r"eos_token_id='x' is not a token id"),
    ({"eos_token_id": [2, -3]}, r"eos_token_id=\[2, -3\] is not a token id"),
    ({"eos_token_id": [2, 99999]}, r"eos_token_id \[99999\] outside the model's vocabulary"),
])
def test_malformed_generation_config_is_a_clear_error(tiny_llama_dir, tmp_path, content, match):
    target = _copy_model(tiny_llama_dir, tmp_path / "bad-gen")
    (target / "generation_config.json").write_text(json.dumps(content))
    with pytest.raises(TokenwiseError, match=match):
        load(target)


def test_config_field_of_the_wrong_type_is_a_clean_error(tiny_llama_dir, tmp_path):
    """Fields tokenwise does not read itself still fail as one line, not a traceback."""
    target = _copy_model(tiny_llama_dir, tmp_path / "bad-layers",
                         config={"num_hidden_layers": "two"})
    with pytest.raises(TokenwiseError, match=r"could not load model 'bad-layers'.*"
                                             r"num_hidden_layers.*'two'"):
        load(target)


def test_start_ids_follow_the_tokenizer_own_rule(small, large, tmp_path):
    from tests.models.helpers import load_tiny_chat_model

    assert small.start_ids == large.start_ids == (1,)  # the built-ins add their BOS
    assert small.encode("7+5=", add_bos=True) == [1, *small.encode("7+5=")]
    no_bos = load_tiny_chat_model(tmp_path / "a")  # like SmolLM2: bos_token is <|im_start|>
    assert no_bos.bos_token_id == 1 and no_bos.start_ids == ()
    assert no_bos.encode("hello", add_bos=True) == no_bos.encode("hello") \
        == no_bos.tokenizer("hello")["input_ids"]
    with_bos = load_tiny_chat_model(tmp_path / "b", add_bos=True)
    assert with_bos.start_ids == (1,)
    assert with_bos.encode("hello", add_bos=True) == with_bos.tokenizer("hello")["input_ids"]
