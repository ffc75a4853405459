"""Loading GGUF files: the conversion, its cache, and what a bad file or a full disk gives."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tests.models.helpers import CHAT_TEMPLATE, write_tiny_gguf

import tokenwise.models.gguf as tw_gguf
from tokenwise.errors import ModelNotFoundError, TokenwiseError
from tokenwise.models import declared_context_length, load, resolve
from tokenwise.models.gguf import CONVERTED_FORMAT, MANIFEST, file_sha256

TEXT = "hello the world, hello or world"


def _converted_root(cache: Path) -> Path:
    return cache / "converted" / CONVERTED_FORMAT


def _entries(cache: Path) -> list[str]:
    root = _converted_root(cache)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _assert_one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_gguf_logits_equal_the_same_weights_as_a_plain_hf_model(tiny_gguf, tw_cache, tmp_path):
    path, reference = tiny_gguf
    plain_dir = tmp_path / "plain"
    reference.save_pretrained(plain_dir)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(plain_dir).eval()
    lm = load(path)
    ids = torch.tensor([lm.encode(TEXT)])
    with torch.no_grad():
        expected = plain(ids).logits
    assert lm.name == "tiny-llama"
    assert lm.vocab_size == reference.config.vocab_size
    torch.testing.assert_close(lm.forward(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_gguf_untied_head_is_kept(tmp_path, tw_cache):
    path = tmp_path / "untied.gguf"
    reference = write_tiny_gguf(path, tied=False, seed=3)
    lm = load(path)
    head = lm.hf_model.get_output_embeddings().weight
    assert not lm.hf_model.config.tie_word_embeddings
    torch.testing.assert_close(head, reference.lm_head.weight)
    assert head.data_ptr() != lm.hf_model.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("add_bos", [False, True])
def test_gguf_tokenizer_chat_template_and_bos_rule_survive_the_cache(tmp_path, tw_cache,
                                                                     add_bos):
    from transformers import AutoTokenizer

    path = tmp_path / f"bos-{add_bos}.gguf"
    write_tiny_gguf(path, add_bos=add_bos)
    direct = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    lm = load(path)
    for text in (TEXT, "  two  spaces\n", "<|im_end|> as text", "ünï"):
        assert lm.tokenizer(text)["input_ids"] == direct(text)["input_ids"]
    starts_with_bos = lm.tokenizer("hello")["input_ids"][0] == lm.tokenizer.bos_token_id
    assert starts_with_bos is add_bos  # the file's add_bos_token, as transformers reads it
    assert lm.tokenizer.chat_template == CHAT_TEMPLATE
    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                            add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert lm.end_token_ids == {lm.tokenizer.convert_tokens_to_ids("<|im_end|>")}


def test_directory_holding_one_gguf_loads_it(tiny_gguf, tw_cache):
    path, _ = tiny_gguf
    name, folder = resolve(path.parent)
    assert name == "ggufs"
    assert (folder / MANIFEST).is_file()
    assert json.loads((folder / MANIFEST).read_text())["sha256"] == file_sha256(path)


def test_declared_context_length_of_a_gguf(tiny_gguf, tw_cache):
    path, _ = tiny_gguf
    assert declared_context_length(path) == 128
    assert load(path).context_length == 128


def test_directory_with_several_ggufs_lists_them(tiny_gguf, tw_cache):
    path, _ = tiny_gguf
    (path.parent / "other.gguf").write_bytes(path.read_bytes())
    with pytest.raises(ModelNotFoundError) as exc:
        load(path.parent)
    message = _assert_one_line(exc)
    assert "2 GGUF files" in message and "other.gguf" in message and "tiny-llama.gguf" in message
    assert _entries(tw_cache) == []


def test_second_load_reads_the_cache_without_converting_again(tiny_gguf, tw_cache,
                                                             monkeypatch):
    path, _ = tiny_gguf
    first = load(path)
    reads = []
    monkeypatch.setattr(tw_gguf, "_read_gguf", lambda *a, **k: reads.append(a) or 1 / 0)
    second = load(path)
    assert reads == []  # nothing dequantised the second time
    assert second.path == first.path
    assert _entries(tw_cache) == [file_sha256(path)]
    ids = torch.tensor([first.encode(TEXT)])
    torch.testing.assert_close(second.forward(ids).logits, first.forward(ids).logits)


def test_a_changed_file_is_converted_again(tmp_path, tw_cache):
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, seed=1)
    first = load(path)
    write_tiny_gguf(path, seed=2)  # same name, new weights: a new content hash
    second = load(path)
    assert first.path != second.path
    ids = torch.tensor([first.encode(TEXT)])
    assert not torch.allclose(first.forward(ids).logits, second.forward(ids).logits)


def test_dtype_is_honoured_and_the_cache_stays_float32(tiny_gguf, tw_cache):
    path, _ = tiny_gguf
    lm = load(path, dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    with safe_open(str(lm.path / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F32"}  # noqa: SIM118
    assert load(path).dtype == torch.float32


def test_bad_dtype_is_refused_before_converting(tiny_gguf, tw_cache):
    path, _ = tiny_gguf
    with pytest.raises(TokenwiseError, match="dtype='int4'"):
        load(path, dtype="int4")
    assert _entries(tw_cache) == []


@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.5, 0.995])  # header, metadata, tensors
def test_truncated_gguf_is_a_one_line_error_and_nothing_is_cached(tiny_gguf, tw_cache,
                                                                  fraction):
    path, _ = tiny_gguf
    data = path.read_bytes()
    cut = path.with_name("cut.gguf")
    cut.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(TokenwiseError) as exc:
        load(cut)
    message = _assert_one_line(exc)
    assert "'" + str(cut) + "'" in message and "truncated" in message
    assert _entries(tw_cache) == []


def test_file_that_is_not_gguf_says_so(tmp_path, tw_cache):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(TokenwiseError) as exc:
        load(bogus)
    message = _assert_one_line(exc)
    assert "is not a GGUF file" in message and "b'PK\\x03\\x04'" in message
    assert _entries(tw_cache) == []


def test_gguf_missing_weights_its_architecture_needs_is_refused(tmp_path, tw_cache):
    path = tmp_path / "mamba.gguf"
    write_tiny_gguf(path, arch="mamba")  # llama tensors under a mamba name
    with pytest.raises(TokenwiseError) as exc:
        load(path)
    message = _assert_one_line(exc)
    assert "lacks" in message and "MambaForCausalLM" in message and "random" in message
    assert _entries(tw_cache) == []


def test_architecture_transformers_cannot_load_is_named(tmp_path, tw_cache):
    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, arch="tokenwise-odd")
    with pytest.raises(TokenwiseError) as exc:
        load(path)
    message = _assert_one_line(exc)
    assert "'tokenwise-odd'" in message and "cannot load from GGUF" in message
    assert "llama" in message  # the loadable ones are listed
    assert _entries(tw_cache) == []


def test_full_disk_while_caching_leaves_nothing_and_a_retry_works(tiny_gguf, tw_cache,
                                                                   monkeypatch):
    import safetensors.torch

    path, _ = tiny_gguf
    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # part of the file got written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(TokenwiseError) as exc:
        load(path)
    message = _assert_one_line(exc)
    assert "no space left on device" in message and "TOKENWISE_CACHE" in message
    assert _entries(tw_cache) == []  # neither the entry nor its temporary folder
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert load(path).name == "tiny-llama"


def test_leftover_of_a_crashed_conversion_is_ignored_and_swept(tiny_gguf, tw_cache):
    path, _ = tiny_gguf
    digest = file_sha256(path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    leftover = _converted_root(tw_cache) / f".tmp-{digest}.{socket.gethostname()}.{pid}.abcd1234"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{")  # half-written
    lm = load(path)
    assert lm.path.name == digest
    assert _entries(tw_cache) == [digest]


def test_a_live_conversion_elsewhere_is_not_swept(tiny_gguf, tw_cache):
    path, _ = tiny_gguf
    busy = _converted_root(tw_cache) / f".tmp-x.{socket.gethostname()}.{os.getpid()}.abcd1234"
    busy.mkdir(parents=True)
    load(path)
    assert busy.is_dir()


def test_unknown_name_lists_built_in_and_real_models(tw_cache):
    with pytest.raises(ModelNotFoundError) as exc:
        load("no-such-model")
    message = _assert_one_line(exc)
    for name in ("tw-small", "tw-large", "smollm2-135m", "gemma3-270m"):
        assert name in message
    assert "tokenwise models fetch NAME" in message


def test_non_gguf_file_is_refused_with_what_is_allowed(tmp_path, tw_cache):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    with pytest.raises(ModelNotFoundError, match=r"not a GGUF model; give a \.gguf file"):
        load(notes)
