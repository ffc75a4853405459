"""End-to-end tests of the `tokenwise` command through its installed console script.

Every test starts the real entry point in a subprocess (``tokenwise`` next to the running
interpreter, or ``python -m tokenwise`` when there is no script), so argument parsing, error
handling, exit codes and what lands on stdout and stderr are all exercised as a user sees
them. A process start costs a few seconds (torch and transformers are imported), so checks
that can share one run do, and runs that several tests read are module-scoped fixtures.

The built-in models must be present: a missing one fails the tests that need it, it is
never skipped.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import tokenwise
from tokenwise.models import BUILTIN_DIR
from tokenwise.scoring import plan_windows

_SCRIPT = Path(sys.executable).parent / ("tokenwise.exe" if os.name == "nt" else "tokenwise")
TOKENWISE: list[str] = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "tokenwise"]

BUILTINS = ("tw-large", "tw-reader", "tw-small")
CLASSIFIERS = ("tw-keep",)  # built-in token classifiers of `tokenwise compress`
GENERAL = ("tw-large", "tw-small")  # tw-reader only answers needle questions
CONTEXT = 256  # the built-in models' context length

#: A short text with questions, an addition, Markov symbols, HTML-special characters and a
#: non-ASCII character (round trips through JSON, HTML and the tokenizer).
SAMPLE = (
    "Q: What is the profession of Dalvin Orsk?\nA: baker\n"
    "38+45=83\n"
    "markov: ka ro yi tu ka ro zu\n"
    'x < y & z > "w" <b>café</b>\n'
)


# --------------------------------------------------------------------------- helpers


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path,
    stdin: str | None = None,
    timeout: float = 300,
    unset: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``tokenwise ARGS`` in ``cwd``, offline, with a wide terminal for rich tables.

    ``unset`` names environment variables to remove (e.g. ``COLUMNS``, to see what a pipe
    with no terminal width gets).

    Torch gets one thread unless ``OMP_NUM_THREADS`` says otherwise: these models are tiny,
    and on a busy machine threads that wait for each other make a run ten times slower.
    """
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COLUMNS": "1000",
        "NO_COLOR": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    for name in unset:
        env.pop(name, None)
    return subprocess.run(
        [*TOKENWISE, *(os.fspath(a) for a in args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        env=env,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert a run succeeded without a traceback; show its output when it did not."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stdout + result.stderr
    return result


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """A user error: non-zero exit, no traceback, one ``Error:`` line on stderr naming it."""
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode != 0, output
    assert "Traceback" not in result.stdout + result.stderr, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # Only the message itself: one ``Error:`` line, the last thing printed. (Progress bars
    # of model loading may come before it, and nothing else.)
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected a one-line message\n{output}"
    assert all("it/s]" in line or "s/it]" in line for line in lines[:-1]), output
    message = lines[-1]
    assert message.startswith("Error: "), output
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def require_builtin(*names: str) -> None:
    """Fail (never skip) when a built-in model the test needs is not in the package."""
    for name in names:
        weights = BUILTIN_DIR / name / "model.safetensors"
        assert weights.is_file(), (
            f"built-in model {name!r} is missing ({weights}); train it with "
            "`tokenwise testbed train --out src/tokenwise/models/builtin`"
        )


def builtin_tokenizer_ids(text: str) -> list[int]:
    """The ids the built-in tokenizer gives ``text`` (no special tokens)."""
    from tokenizers import Tokenizer

    require_builtin("tw-small")
    tok = Tokenizer.from_file(str(BUILTIN_DIR / "tw-small" / "tokenizer.json"))
    return tok.encode(text, add_special_tokens=False).ids


def show_piece(piece: str) -> str:
    """How the score table prints a piece (whitespace made visible)."""
    return piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def corpus_like_text(lines: int = 140, seed: int = 0) -> str:
    """Deterministic text in the style of the testbed corpus: facts, sums, Markov lines."""
    rng = random.Random(seed)
    syllables = ["ka", "ro", "yi", "tu", "zu", "va", "mi", "qa"]
    names = ["Dalvin Orsk", "Brelix Tamm", "Oria Venn", "Cadmus Hale", "Ilse Maro"]
    jobs = ["baker", "pilot", "weaver", "doctor", "miner"]
    out = []
    for i in range(lines):
        kind = i % 3
        if kind == 0:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            out.append(f"{a}+{b}={a + b}")
        elif kind == 1:
            out.append("markov: " + " ".join(rng.choice(syllables) for _ in range(6)))
        else:
            out.append(f"Q: What is the profession of {rng.choice(names)}?\n"
                       f"A: {rng.choice(jobs)}")
    return "\n".join(out) + "\n"


class _MainText(HTMLParser):
    """Collects the text inside ``<main>`` of a heatmap page (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "main":
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "main":
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth > 0:
            self.parts.append(data)


def check_scored(
    doc: dict[str, Any], text: str, *, model: str, window: int, stride: int
) -> list[dict[str, Any]]:
    """Invariants of a ``score --json`` document for ``text``; returns its token rows."""
    tokens = doc["tokens"]
    assert doc["model"] == model
    assert doc["text"] == text
    assert doc["units"] == "nats"
    assert doc["window"] == window and doc["stride"] == stride
    assert doc["n_tokens"] == len(tokens) > 0
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert "".join(t["piece"] for t in tokens) == text
    for t in tokens:
        assert t["entropy"] >= 0 and t["varentropy"] >= 0, t
        assert t["logprob"] <= 0 and math.isclose(t["surprisal"], -t["logprob"]), t
        assert 1 <= t["context"] <= window, t
        assert [a["logprob"] for a in t["top"]] == sorted(
            (a["logprob"] for a in t["top"]), reverse=True
        )
    mean = sum(t["entropy"] for t in tokens) / len(tokens)
    assert math.isclose(doc["mean_entropy"], mean, rel_tol=1e-5, abs_tol=1e-6)
    return tokens


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory (the working directory of module-scoped runs)."""
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def sample_file(work: Path) -> Path:
    path = work / "sample.txt"
    path.write_text(SAMPLE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sample_json(work: Path, sample_file: Path) -> dict[str, Any]:
    """``tokenwise score SAMPLE --model tw-small --json``, parsed."""
    require_builtin("tw-small")
    result = ok(run_cli("score", sample_file, "--model", "tw-small", "--json", cwd=work))
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def long_text(work: Path) -> tuple[Path, str, list[int]]:
    """A testbed-like text of about 2,000 tokens: its file, text and token ids."""
    text = corpus_like_text()
    ids = builtin_tokenizer_ids(text)
    assert 1500 <= len(ids) <= 3000, len(ids)
    path = work / "long.txt"
    path.write_text(text, encoding="utf-8")
    return path, text, ids


@pytest.fixture(scope="module")
def long_json(work: Path, long_text: tuple[Path, str, list[int]]) -> dict[str, Any]:
    """``tokenwise score LONG --model tw-small --json`` (default window), parsed."""
    result = ok(run_cli("score", long_text[0], "-m", "tw-small", "--json", cwd=work))
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- help, version


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = ok(run_cli("--help", cwd=tmp_path)).stdout
    assert "Usage: tokenwise" in out
    for command in ("score", "models", "samplers", "testbed", "demo"):
        assert f"  {command} " in out, out
    assert "--version" in out and "--help" in out


def test_score_help_documents_its_options(tmp_path: Path) -> None:
    out = ok(run_cli("score", "-h", cwd=tmp_path)).stdout
    assert "Usage: tokenwise score [OPTIONS] FILE|-" in out
    for option in ("--model", "--json", "--html", "--window", "--stride", "--bits", "--top-k"):
        assert option in out
    assert "tw-large" in out  # the default model is shown


def test_version_matches_the_package(tmp_path: Path) -> None:
    result = ok(run_cli("--version", cwd=tmp_path))
    assert result.stdout.strip() == f"tokenwise, version {tokenwise.__version__}"


# --------------------------------------------------------------------------- models


def test_models_table_lists_every_builtin_with_its_role(tmp_path: Path) -> None:
    require_builtin(*BUILTINS)
    # No COLUMNS: a pipe's table must still come out whole (rich assumed 80 columns and
    # squeezed or cropped it).
    out = ok(run_cli("models", cwd=tmp_path, unset=("COLUMNS",))).stdout
    assert "built-in models" in out
    rows = {line.split()[1]: line for line in out.splitlines()
            if line.startswith("│") and line.split()[1].startswith("tw-")}
    assert sorted(rows) == sorted(BUILTINS + CLASSIFIERS)
    for name in BUILTINS:
        assert "LlamaForCausalLM" in rows[name] and str(CONTEXT) in rows[name]
    assert "token classifier of `tokenwise compress`" in rows["tw-keep"]
    assert "BertForTokenClassification" in rows["tw-keep"] and "149,186" in rows["tw-keep"]
    assert "the default --model" in rows["tw-large"]
    assert max(len(line) for line in out.splitlines()) > 80


def test_models_json(tmp_path: Path) -> None:
    from tokenwise.compression.token_classifier import BUILTIN_CLASSIFIERS

    require_builtin(*BUILTINS)
    rows = json.loads(ok(run_cli("models", "--json", cwd=tmp_path)).stdout)
    real = [row for row in rows if row["kind"] == "real"]
    assert sorted(r["name"] for r in real) == ["gemma3-270m", "smollm2-135m"]
    assert all(isinstance(r["fetched"], bool) and r["size"] > 0 for r in real)
    by_name = {row["name"]: row for row in rows if row["kind"] != "real"}
    assert sorted(by_name) == sorted(BUILTINS + CLASSIFIERS)
    for name, row in by_name.items():
        assert isinstance(row["parameters"], int) and row["parameters"] > 0, row
        assert row["context"] == CONTEXT and row["vocab_size"] > 0
        assert row["layers"] > 0 and row["hidden_size"] > 0
        if name in CLASSIFIERS:
            assert row["kind"] == "token_classifier"
            assert Path(row["path"]) == BUILTIN_CLASSIFIERS[name]
        else:
            assert row["kind"] == "causal_lm"
            assert Path(row["path"]) == BUILTIN_DIR / name
        assert row["role"], row
        assert (Path(row["path"]) / "model.safetensors").is_file()
    assert by_name["tw-large"]["parameters"] > by_name["tw-small"]["parameters"]


# --------------------------------------------------------------------------- score


def test_score_table(work: Path, sample_file: Path, sample_json: dict[str, Any]) -> None:
    result = ok(run_cli("score", sample_file, "--model", "tw-small", cwd=work))
    out = result.stdout
    n = sample_json["n_tokens"]
    assert f"tw-small: {n} tokens" in out
    for col in ("logprob", "surprisal (nats)", "entropy (nats)", "varentropy", "ctx"):
        assert col in out
    for token in sample_json["tokens"]:
        assert show_piece(token["piece"]) in out, token["piece"]
    assert f"mean entropy {sample_json['mean_entropy']:.3f} nats" in out
    assert f"window {CONTEXT}, stride {CONTEXT // 2}" in out


def test_score_json(sample_json: dict[str, Any]) -> None:
    tokens = check_scored(sample_json, SAMPLE, model="tw-small", window=CONTEXT,
                          stride=CONTEXT // 2)
    assert [t["id"] for t in tokens] == builtin_tokenizer_ids(SAMPLE)
    # The whole text fits one window: token i saw BOS and the i tokens before it.
    assert [t["context"] for t in tokens] == list(range(1, len(tokens) + 1))
    assert all(len(t["top"]) == 3 for t in tokens)  # the default --top-k
    perplexity = math.exp(-sum(t["logprob"] for t in tokens) / len(tokens))
    assert math.isclose(sample_json["perplexity"], perplexity, rel_tol=1e-4)


def test_score_reads_stdin(work: Path, sample_json: dict[str, Any]) -> None:
    # A leading byte order mark (Windows editors write one) is not text: dropped on reading.
    result = ok(run_cli("score", "-", "-m", "tw-small", "--json", cwd=work,
                        stdin="\ufeff" + SAMPLE))
    doc = json.loads(result.stdout)
    assert doc["text"] == SAMPLE
    assert [t["id"] for t in doc["tokens"]] == [t["id"] for t in sample_json["tokens"]]
    for got, want in zip(doc["tokens"], sample_json["tokens"], strict=True):
        assert math.isclose(got["logprob"], want["logprob"], abs_tol=1e-5)
    assert math.isclose(doc["perplexity"], sample_json["perplexity"], rel_tol=1e-5)


def test_score_json_shows_progress_on_stderr_and_drops_a_bom(
    work: Path, long_text: tuple[Path, str, list[int]], long_json: dict[str, Any]
) -> None:
    _, text, _ = long_text
    bom_file = work / "long-bom.txt"
    bom_file.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    result = ok(run_cli("score", bom_file, "-m", "tw-small", "--json", cwd=work))
    doc = json.loads(result.stdout)  # stdout is the JSON alone, no progress mixed in
    assert doc["text"] == text and doc["n_tokens"] == long_json["n_tokens"]
    assert math.isclose(doc["perplexity"], long_json["perplexity"], rel_tol=1e-5)
    windows = len(plan_windows(doc["n_tokens"], doc["window"], doc["stride"]))
    assert windows > 1
    bar = result.stderr.replace("\r", "\n")
    assert "score: 100%" in bar and f"{windows}/{windows}" in bar, result.stderr


def test_score_html_and_bits(
    tmp_path: Path, sample_file: Path, sample_json: dict[str, Any]
) -> None:
    out_file = tmp_path / "nested" / "heat.html"
    result = ok(run_cli("score", sample_file, "-m", "tw-small", "--html", out_file, "--bits",
                        cwd=tmp_path))
    # The table is in bits, and its mean is the JSON's nats mean divided by ln 2.
    assert "entropy (bits)" in result.stdout and "surprisal (bits)" in result.stdout
    assert "(nats)" not in result.stdout
    bits = sample_json["mean_entropy"] / math.log(2)
    assert f"mean entropy {bits:.3f} bits" in result.stdout
    assert f"wrote {out_file}" in result.stderr

    page = out_file.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>" in page and "<body>" in page and "</body>" in page
    assert "bits" in page and "tw-small" in page
    # Every piece is there, escaped: the text's markup is shown, never interpreted.
    assert "<b>" not in page and "</b>" not in page
    assert "&lt;" in page and "&gt;" in page and "&amp;" in page
    assert "<script" not in page
    parser = _MainText()
    parser.feed(page)
    assert "".join(parser.parts) == SAMPLE
    assert page.count('class="tok') == sample_json["n_tokens"]


def test_score_text_longer_than_the_context(
    long_text: tuple[Path, str, list[int]], long_json: dict[str, Any]
) -> None:
    _, text, ids = long_text
    tokens = check_scored(long_json, text, model="tw-small", window=CONTEXT, stride=CONTEXT // 2)
    # Every token is scored exactly once, in order.
    assert long_json["n_tokens"] == len(ids) > 4 * CONTEXT
    assert [t["id"] for t in tokens] == ids
    contexts = [t["context"] for t in tokens]
    assert max(contexts) == CONTEXT
    assert contexts[:CONTEXT] == list(range(1, CONTEXT + 1))
    # After the first window each prediction keeps window - stride + 1 tokens of context.
    assert min(contexts[CONTEXT:]) >= CONTEXT - CONTEXT // 2 + 1


def test_score_window_and_stride(
    work: Path, long_text: tuple[Path, str, list[int]], long_json: dict[str, Any]
) -> None:
    path, text, ids = long_text
    result = ok(run_cli("score", path, "-m", "tw-small", "--window", "64", "--stride", "16",
                        "--json", cwd=work))
    doc = json.loads(result.stdout)
    tokens = check_scored(doc, text, model="tw-small", window=64, stride=16)
    assert [t["id"] for t in tokens] == ids
    contexts = [t["context"] for t in tokens]
    assert contexts[:64] == list(range(1, 65))
    assert max(contexts) == 64 and min(contexts[64:]) >= 64 - 16 + 1
    # The first window sees the same context as the default run: same numbers there.
    for got, want in zip(tokens[:64], long_json["tokens"][:64], strict=True):
        assert math.isclose(got["logprob"], want["logprob"], abs_tol=1e-4)
        assert math.isclose(got["entropy"], want["entropy"], abs_tol=1e-4)
    # Later tokens saw a shorter context than in the default run, so some numbers differ.
    assert any(
        abs(got["logprob"] - want["logprob"]) > 1e-3
        for got, want in zip(tokens[64:], long_json["tokens"][64:], strict=True)
    )


def test_score_local_model_directory(
    tmp_path: Path, sample_file: Path, sample_json: dict[str, Any], tiny_llama_dir: Path
) -> None:
    result = ok(run_cli("score", sample_file, "--model", tiny_llama_dir, "--json",
                        cwd=tmp_path))
    doc = json.loads(result.stdout)
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    window = config["max_position_embeddings"]
    tokens = check_scored(doc, SAMPLE, model=tiny_llama_dir.name, window=window,
                          stride=window // 2)
    # Same tokenizer as tw-small, so the same tokens; a random model is near-uniform.
    assert [t["id"] for t in tokens] == [t["id"] for t in sample_json["tokens"]]
    assert doc["mean_entropy"] > math.log(config["vocab_size"]) - 1.0


# --------------------------------------------------------------------------- bad input


def _file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def _model_dir(directory: Path, name: str, extra: dict[str, bytes]) -> Path:
    """A model directory with tw-small's config.json and the given extra files."""
    require_builtin("tw-small")
    path = directory / name
    path.mkdir()
    (path / "config.json").write_text((BUILTIN_DIR / "tw-small" / "config.json").read_text())
    for filename, data in extra.items():
        (path / filename).write_bytes(data)
    return path


def _bad_score_input(case: str, d: Path) -> tuple[list[str | Path], list[str]]:
    """The arguments of one bad ``score`` call in ``d``, and what its message must say."""
    text = _file(d, "ok.txt", SAMPLE.encode())
    # Files are named relative to ``d`` (the working directory), as a user would type them.
    if case == "empty file":
        _file(d, "empty.txt", b"")
        return ["empty.txt"], ["empty or whitespace only", "0 characters", "nothing to score"]
    if case == "whitespace-only file":
        _file(d, "blank.txt", b" \n\t  \n")
        return ["blank.txt"], ["empty or whitespace only", "6 characters"]
    if case == "non-UTF-8 file":
        _file(d, "latin1.txt", b"caf\xe9")
        return ["latin1.txt"], ["'latin1.txt'", "not UTF-8", "0xe9", "offset 3", "iconv"]
    if case == "missing file":
        return ["nope.txt"], ["'nope.txt'", "does not exist"]
    if case == "directory as FILE":
        (d / "adir").mkdir()
        return ["adir"], ["'adir'", "is a directory", "- for stdin"]
    if case == "unknown model name":
        return [text, "--model", "tw-huge"], ["'tw-huge'", "not a built-in model",
                                              "tw-large, tw-reader, tw-small"]
    if case == "hub id":
        return [text, "--model", "org/name"], ["'org/name'", "never downloads",
                                               "huggingface-cli download org/name",
                                               "--model DIR"]
    if case == "config without weights":
        model = _model_dir(d, "noweights", {})
        return [text, "--model", model], ["noweights", "no weights", "safetensors"]
    if case == "pickle-only checkpoint":
        model = _model_dir(d, "pickled", {"pytorch_model.bin": b"not really a pickle"})
        return [text, "--model", model], ["pickled", "pytorch_model.bin", "pickle",
                                          "safetensors only", "safe_serialization=True"]
    if case == "window 1":
        return [text, "-m", "tw-small", "--window", "1"], ["window=1", "from 2 to",
                                                          f"context length {CONTEXT}"]
    if case == "window too large":
        return [text, "-m", "tw-small", "--window", "100000"], ["window=100000", "from 2 to",
                                                               f"{CONTEXT}"]
    if case == "stride 0":
        return [text, "-m", "tw-small", "--stride", "0"], ["stride=0", "from 1 to window - 1",
                                                          f"= {CONTEXT - 1}"]
    if case == "stride equal to window":
        return [text, "-m", "tw-small", "--window", "64", "--stride", "64"], [
            "stride=64", "from 1 to window - 1 = 63"]
    raise AssertionError(case)


BAD_SCORE_CASES = [
    "empty file",
    "whitespace-only file",
    "non-UTF-8 file",
    "missing file",
    "directory as FILE",
    "unknown model name",
    "hub id",
    "config without weights",
    "pickle-only checkpoint",
    "window 1",
    "window too large",
    "stride 0",
    "stride equal to window",
]


@pytest.mark.parametrize("case", BAD_SCORE_CASES)
def test_score_bad_input_is_a_clean_one_line_error(case: str, tmp_path: Path) -> None:
    if case == "unknown model name":
        require_builtin(*BUILTINS)  # the message lists them
    elif case not in ("non-UTF-8 file", "missing file", "directory as FILE"):
        require_builtin("tw-small")  # (the text is read before the model is loaded)
    args, fragments = _bad_score_input(case, tmp_path)
    source, *rest = args
    if "--model" not in rest and "-m" not in rest:
        rest = [*rest, "-m", "tw-small"]
    result = run_cli("score", source, *rest, cwd=tmp_path)
    assert_clean_error(result, *fragments)
    assert result.stdout == ""


def test_testbed_train_unknown_model_is_a_clean_error(tmp_path: Path) -> None:
    result = run_cli("testbed", "train", "--models", "tw-bogus", "--out", tmp_path / "m",
                     cwd=tmp_path)
    assert_clean_error(result, "--models 'tw-bogus'", "unknown ['tw-bogus']",
                       "allowed: tw-small, tw-large")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- testbed


def test_testbed_eval_quick_json(tmp_path: Path) -> None:
    require_builtin("tw-small")
    report_file = tmp_path / "reports" / "small.json"
    result = ok(run_cli("testbed", "eval", "--model", "tw-small", "--quick", "--json",
                        report_file, cwd=tmp_path, timeout=600))
    out = result.stdout
    for title in ("tw-small", "fact questions (greedy)", "additions (greedy, exact)",
                  "needle contexts (greedy)", "Markov source"):
        assert title in out, out

    report = json.loads(report_file.read_text())
    assert report["model"] == "tw-small" and report["parameters"] > 0
    assert f"{report['parameters']:,} parameters" in out
    assert {"frequent", "rare", "unseen"} <= set(report["facts"])
    for section in ("facts", "arithmetic", "needle"):
        assert report[section], section
        for key, r in report[section].items():
            assert 0.0 <= r["accuracy"] <= 1.0, (section, key, r)
            assert r["n"] > 0 and 0 <= r["correct"] <= r["n"]
            assert math.isclose(r["accuracy"], r["correct"] / r["n"], abs_tol=1e-4)
            lo, hi = r["ci95"]
            assert 0.0 <= lo <= r["accuracy"] <= hi <= 1.0
            assert f"{r['accuracy']:.3f}" in out
    for r in report["facts"].values():
        assert 0.0 <= r["chance"] <= 1.0
    markov = report["markov"]
    assert markov["positions"] > 0 and markov["units"] == "nats"
    assert markov["true_entropy_mean"] >= 0 and markov["model_entropy_mean"] >= 0
    assert markov["cross_entropy"] >= 0 and -1.0 <= markov["correlation"] <= 1.0


@pytest.mark.slow
def test_testbed_train_writes_a_loadable_model(tmp_path: Path) -> None:
    out_dir = tmp_path / "models"
    result = ok(run_cli("testbed", "train", "--models", "tw-small", "--steps", "2",
                        "--out", out_dir, cwd=tmp_path, timeout=900))
    target = out_dir / "tw-small"
    for filename in ("config.json", "model.safetensors", "tokenizer.json", "training.json"):
        assert (target / filename).is_file(), filename
    assert sorted(p.name for p in out_dir.iterdir()) == ["tw-small"]
    assert "corpus:" in result.stderr and f"-> {target}" in result.stderr
    facts = json.loads((target / "training.json").read_text())
    assert facts["parameters"] > 0 and facts["seed"] == 0
    assert facts["spec"]["name"] == "tw-small" and facts["spec"]["steps"] == 2
    # Same architecture as the shipped tw-small, only less trained.
    shipped = json.loads((BUILTIN_DIR / "tw-small" / "config.json").read_text())
    config = json.loads((target / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"):
        assert config[key] == shipped[key], key

    from tokenwise.models import load

    lm = load(target)
    assert lm.name == "tw-small" and lm.context_length == CONTEXT
    assert lm.num_parameters() == facts["parameters"]
    assert lm.decode(lm.encode("38+45=83")) == "38+45=83"


@pytest.mark.slow
def test_demo_runs_on_both_builtins(tmp_path: Path) -> None:
    require_builtin(*BUILTINS)
    out_dir = tmp_path / "demo"
    result = ok(run_cli("demo", "--out", out_dir, cwd=tmp_path, timeout=900))
    out = result.stdout
    heatmap = out_dir / "heatmap.html"
    assert heatmap.is_file()
    page = heatmap.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "tokenwise demo" in page
    parser = _MainText()
    parser.feed(page)
    assert "38+45=83\nmarkov: ka ro yi tu" in "".join(parser.parts)
    for name in GENERAL:
        assert f"loaded {name}:" in out
    # One answer line per bucket and model, labelled with its bucket.
    for bucket in ("frequent", "rare", "unseen"):
        for name in GENERAL:
            label = f"[{bucket:>8}] {name:>8}:"
            assert label in out, f"no line labelled {label!r} in the demo output:\n{out}"
    assert "mean entropy" in out and f"heatmap written to {heatmap}" in out
    assert "answered 6 questions" in out
    # the compression section: tw-reader answers from the whole and the compressed memo
    assert "tw-reader reads the whole memo and answers" in out
    assert out.count("tw-reader answers from what was kept:") == 2
    assert not (tmp_path / "tokenwise-demo").exists()


def test_unwritable_outputs_and_bad_seeds_fail_before_any_work(tmp_path: Path) -> None:
    text = _file(tmp_path, "t.txt", b"7+5=12\n")
    blocker = _file(tmp_path, "afile", b"")
    message = assert_clean_error(
        run_cli("score", text, "-m", "tw-small", "--html", blocker / "x.html", cwd=tmp_path),
        "--html", "is a file, not a folder")
    assert "afile" in message
    bad_seed = run_cli("testbed", "eval", "-m", "tw-small", "--seed", "-1", cwd=tmp_path)
    assert bad_seed.returncode == 2 and "Traceback" not in bad_seed.stderr
    assert "Invalid value for '--seed': -1 is not in the range x>=0" in bad_seed.stderr


def test_samplers_lists_every_registered_sampler(tmp_path: Path) -> None:
    from tokenwise.sampling import SAMPLERS

    rows = json.loads(ok(run_cli("samplers", "--json", cwd=tmp_path)).stdout)
    assert {r["name"] for r in rows} == set(SAMPLERS)
    top_p = next(r for r in rows if r["name"] == "top_p")
    assert top_p["params"] == {"top_p": 0.9, "min_tokens_to_keep": 1}
    table = ok(run_cli("samplers", cwd=tmp_path)).stdout
    assert all(name in table for name in SAMPLERS)


def test_generate_greedy_json_and_sampled_table(tmp_path: Path) -> None:
    data = json.loads(ok(run_cli("generate", "7+2=", "-m", "tw-large", "--max-new-tokens", "4",
                                 "--stop", "\n", "--json", cwd=tmp_path)).stdout)
    assert data["text"] == "9" and data["finish_reason"] == "stop"
    assert data["tokens"][0]["rank"] == 1 and data["tokens"][0]["entropy"] >= 0
    out = ok(run_cli("generate", "markov: ka", "-m", "tw-small", "--sampler", "top_p",
                     "--param", "top_p=0.8", "--seed", "4", "--max-new-tokens", "5",
                     cwd=tmp_path)).stdout
    assert "TopP(top_p=0.8" in out and "seed 4" in out and "entropy" in out
    assert_clean_error(run_cli("generate", "x", "-m", "tw-small", "--sampler", "top_p",
                               "--param", "top_p=2", cwd=tmp_path), "top_p=2")


def test_generate_with_entropy_adaptive_switching(tmp_path: Path) -> None:
    data = json.loads(ok(run_cli("generate", "markov: ka ro", "-m", "tw-large", "--small",
                                 "tw-small", "--switch-up", "1.5", "--max-new-tokens", "8",
                                 "--json", cwd=tmp_path)).stdout)
    models = {t["model"] for t in data["tokens"]}
    assert models == {"tw-small", "tw-large"} and 0 < data["large_share"] < 1
    assert data["forward_passes"]["tw-large"] >= 1


def test_generate_switch_judge_and_window_reach_generate_ead(tmp_path: Path) -> None:
    from tokenwise.generation.ead import generate_ead
    from tokenwise.models import load

    data = json.loads(ok(run_cli("generate", "7+5=", "-m", "tw-large", "--small", "tw-small",
                                 "--switch-up", "1.0", "--switch-window", "1",
                                 "--switch-judge", "small", "--max-new-tokens", "4",
                                 "--stop", "\n", "--json", cwd=tmp_path)).stdout)
    ref = generate_ead(load("tw-small"), load("tw-large"), "7+5=", up=1.0, down=1.0, window=1,
                       judge="small", max_new_tokens=4, stop="\n")
    assert data["text"] == ref.text
    assert [t["model"] for t in data["tokens"]] == [t.model for t in ref.tokens]
    assert data["large_share"] == ref.large_share
    bad = run_cli("generate", "7+5=", "-m", "tw-large", "--small", "tw-small",
                  "--switch-judge", "both", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'both' is not one of 'active', 'small'" in bad.stderr
