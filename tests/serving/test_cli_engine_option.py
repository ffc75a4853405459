"""`tokenwise serve --engine`: the vLLM engine's options reach VLLMOptions, options of the
other engine are refused by name, and a missing vLLM is a clear error, not a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("fastapi")

from tokenwise.cli.serve import serve_command
from tokenwise.errors import TokenwiseError
from tokenwise.vllm import server as vllm_engine


@pytest.fixture
def no_serving(monkeypatch):
    seen = {}
    monkeypatch.setattr("tokenwise.serving.server.run",
                        lambda config, log_level: seen.update(engine="tokenwise"))
    monkeypatch.setattr(vllm_engine, "run", lambda config, model, options, log_level:
                        seen.update(engine="vllm", model=model, options=options,
                                    config=config))
    return seen


def test_without_vllm_installed_the_vllm_engine_says_how_to_get_it(no_serving, monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: False)
    result = CliRunner().invoke(serve_command, ["--engine", "vllm", "--model", "tw-small"])
    assert result.exit_code != 0
    assert "--engine vllm needs the vllm package" in result.output
    assert "--engine tokenwise" in result.output and "Traceback" not in result.output
    assert no_serving == {}


def test_vllm_options_reach_the_engine(no_serving, monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: True)
    result = CliRunner().invoke(serve_command, [
        "--engine", "vllm", "--model", "tw-small", "--gpu-memory-utilization", "0.5",
        "--max-model-len", "128", "--tensor-parallel-size", "2", "--dtype", "float32",
        "--enforce-eager", "--max-batch-rows", "16", "--distributed-executor-backend", "ray",
        "--port", "9124"])
    assert result.exit_code == 0, result.output
    assert no_serving["engine"] == "vllm" and no_serving["model"] == "tw-small"
    assert no_serving["config"].port == 9124
    assert no_serving["options"] == vllm_engine.VLLMOptions(
        gpu_memory_utilization=0.5, max_model_len=128, tensor_parallel_size=2,
        dtype="float32", enforce_eager=True, max_num_seqs=16,
        distributed_executor_backend="ray")
    kwargs = no_serving["options"].engine_kwargs("/m")
    assert kwargs["max_logprobs"] == -1 and kwargs["max_num_seqs"] == 16
    assert "engine vllm" in result.output


@pytest.mark.parametrize("args, fragment", [
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size: vLLM engine option"),
    (["--engine", "vllm", "--model", "tw-small", "--no-batching"],
     "--no-batching: not used by --engine vllm"),
    (["--engine", "vllm", "--model", "tw-small", "--device", "cuda"],
     "--device: not used by --engine vllm"),
    (["--engine", "vllm"], "exactly one model"),
    (["--engine", "vllm", "-m", "tw-small", "-m", "tw-large"], "exactly one model"),
])
def test_options_of_the_other_engine_are_refused_by_name(no_serving, monkeypatch, args,
                                                          fragment):
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: True)
    result = CliRunner().invoke(serve_command, args)
    assert result.exit_code != 0 and fragment in result.output
    assert no_serving == {}


def test_the_default_engine_is_tokenwise(no_serving):
    result = CliRunner().invoke(serve_command, ["--model", "tw-small"])
    assert result.exit_code == 0, result.output
    assert no_serving == {"engine": "tokenwise"}


def test_bad_vllm_option_values_are_refused():
    with pytest.raises(TokenwiseError, match=r"gpu_memory_utilization=1\.5: allowed"):
        vllm_engine.VLLMOptions(gpu_memory_utilization=1.5)
    with pytest.raises(TokenwiseError, match=r"distributed_executor_backend='slurm'"):
        vllm_engine.VLLMOptions(distributed_executor_backend="slurm")
