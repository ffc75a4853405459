"""Loading models: built-ins, local directories, and every way a path can be wrong."""

from __future__ import annotations

import json

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
    with pytest.raises(TokenwiseError, match=r"trust_remote_code=True"):
        load(target)


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
