"""High-window-entropy (HWE) on what users hold: `TokenTrace` and `Generation` methods, and
`tokenwise score --hwe-window` (in process, tw-small)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tokenwise as tw
from tokenwise.cli.main import cli
from tokenwise.errors import TokenwiseError
from tokenwise.generation.records import Generation, TokenRecord

TEXT = "Q: Where was Dalvin Orsk born?\nA: the city of Velmora\n12+345=357\n"


def loop_windows(h: list[float], w: int) -> list[float]:
    """ARES's forward window by a loop: the mean of h[t .. t + w - 1], fewer at the end."""
    return [float(np.mean(h[t:t + w])) for t in range(len(h))]


def loop_hwe(h: list[float], w: int, q: float) -> list[bool]:
    means = loop_windows(h, w)
    limit = np.percentile(means, q)
    return [m > limit for m in means]


@pytest.fixture(scope="module")
def trace(small):
    return tw.score(small, TEXT, top_k=3)  # the CLI's default --top-k


def test_trace_window_entropies_and_flags_follow_its_tokens(trace) -> None:
    h = trace.entropies.double().tolist()
    got = trace.window_entropies(4)
    assert got.shape == (len(trace),)
    np.testing.assert_allclose(got.numpy(), loop_windows(h, 4), rtol=1e-6)
    trailing = trace.window_entropies(3, direction="trailing")
    np.testing.assert_allclose(trailing[5].item(), np.mean(h[3:6]), rtol=1e-6)
    flags = trace.high_window_entropy(4, percentile=80)
    assert flags.tolist() == loop_hwe(h, 4, 80) and 0 < int(flags.sum()) <= len(trace) // 5 + 1
    fixed = trace.high_window_entropy(4, threshold=1.0)
    assert fixed.tolist() == [m > 1.0 for m in loop_windows(h, 4)]
    running = trace.high_window_entropy(4, percentile=80, running=True)
    assert not running[0] and running.shape == (len(trace),)
    # a slice is a trace of its own tokens
    np.testing.assert_allclose(trace[5:15].window_entropies(2).numpy(),
                               loop_windows(h[5:15], 2), rtol=1e-6)


def test_trace_methods_leave_its_json_alone(trace) -> None:
    before = trace.to_json()
    trace.window_entropies(3)
    trace.high_window_entropy(3, percentile=50)
    assert trace.to_json() == before
    with pytest.raises(TokenwiseError, match="exactly one of threshold"):
        trace.high_window_entropy(3)


def _generation(entropies: list[float]) -> Generation:
    tokens = [TokenRecord(id=i, text=str(i), logprob=-1.0, entropy=e, varentropy=0.0,
                          rank=1, step=i) for i, e in enumerate(entropies)]
    return Generation(prompt="p", text="".join(t.text for t in tokens), tokens=tokens)


def test_generation_methods_read_its_records() -> None:
    h = [0.1, 0.2, 2.0, 2.4, 0.3, 0.1, 1.9, 0.2]
    gen = _generation(h)
    before = json.dumps(gen.as_dict())
    np.testing.assert_allclose(gen.window_entropies(3).numpy(), loop_windows(h, 3), rtol=1e-6)
    assert gen.window_entropies(3).dtype == torch.float32
    assert gen.high_window_entropy(3, percentile=75).tolist() == loop_hwe(h, 3, 75)
    assert gen.high_window_entropy(2, threshold=1.0).tolist() == \
        [m > 1.0 for m in loop_windows(h, 2)]
    # running, trailing: the flag of token t is known when it is generated
    flags = gen.high_window_entropy(1, percentile=50, running=True, direction="trailing")
    assert flags.tolist() == [False, True, True, True, False, False, True, False]
    assert json.dumps(gen.as_dict()) == before
    empty = _generation([])
    assert empty.window_entropies(3).shape == (0,)
    assert empty.high_window_entropy(3, percentile=80).shape == (0,)


def test_a_real_generation_is_flagged_token_by_token(small) -> None:
    gen = tw.generate(small, "5+3=", max_new_tokens=6)
    h = [t.entropy for t in gen.tokens]
    assert gen.high_window_entropy(2, percentile=50).tolist() == loop_hwe(h, 2, 50)


# ------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hwe") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def score(*args: str):
    result = CliRunner().invoke(cli, ["score", *args])
    assert result.exit_code == 0, result.output
    return result


def test_score_json_gains_window_entropy_and_hwe_only_when_asked(text_file, trace) -> None:
    plain = score(text_file, "-m", "tw-small", "--json").stdout
    assert plain == trace.to_json() + "\n"  # the option off: today's output, byte for byte
    assert "hwe" not in plain and "window_entropy" not in plain
    doc = json.loads(score(text_file, "-m", "tw-small", "--json", "--hwe-window", "4").stdout)
    h = trace.entropies.double().tolist()
    rows = doc.pop("tokens")
    assert doc.pop("hwe") == {"window": 4, "percentile": 80.0, "direction": "leading",
                              "marked": sum(loop_hwe(h, 4, 80))}
    np.testing.assert_allclose([r.pop("window_entropy") for r in rows], loop_windows(h, 4),
                               rtol=1e-6)
    assert [r.pop("hwe") for r in rows] == loop_hwe(h, 4, 80)
    assert {**doc, "tokens": rows} == json.loads(plain)  # nothing else changed
    doc90 = json.loads(score(text_file, "-m", "tw-small", "--json", "--hwe-window", "2",
                             "--hwe-percentile", "90").stdout)
    assert [r["hwe"] for r in doc90["tokens"]] == loop_hwe(h, 2, 90)


def test_score_table_shows_the_hwe_columns(text_file) -> None:
    plain = score(text_file, "-m", "tw-small").stdout
    with_hwe = score(text_file, "-m", "tw-small", "--hwe-window", "3").stdout
    assert "window entropy" not in plain and "hwe" not in plain
    assert "window entropy (nats)" in with_hwe and "yes" in with_hwe


@pytest.mark.parametrize(("args", "fragment"), [
    (["--hwe-percentile", "90"], "--hwe-percentile goes with --hwe-window N"),
    (["--hwe-window", "0"], "--hwe-window"),
    (["--hwe-window", "3", "--hwe-percentile", "100"], "--hwe-percentile"),
    (["--hwe-window", "3", "--attention-entropy"], "--hwe-window flags scored tokens"),
])
def test_score_refuses_bad_hwe_options(text_file, args, fragment) -> None:
    result = CliRunner().invoke(cli, ["score", text_file, "-m", "tw-small", *args])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert fragment in result.output, result.output


def test_score_help_documents_hwe() -> None:
    out = CliRunner().invoke(cli, ["score", "--help"]).output
    assert "--hwe-window N" in out and "--hwe-percentile P" in out and "ARES" in out
